"""Writing WebDataset tar shards and their manifest through fsspec (local disk, S3, memory, ...).

Layout under a dataset root URL (``file:///data/ds``, ``s3://bucket/ds``, ``memory://ds``)::

    root/shards/{prefix}-{index:06d}.tar     # the samples (facegs.shards.schema)
    root/records/{prefix}-{index:06d}.json   # one row of SHARD_MANIFEST_SCHEMA: the commit marker
    root/manifest.parquet                    # merge of all committed records: what readers trust

Properties:
- **Deterministic names and bytes.** Shards are named by :func:`facegs.shards.schema.shard_name`; the
  factory uses one prefix per subject (the subject id, :func:`commit_subject`) so that a rerun of a
  subject overwrites exactly the same keys. Tars are written by our code with ``tarfile`` in USTAR
  format, mtime 0, uid/gid 0, empty user/group names, mode 0o444, samples in the given order and
  the members of a sample in :func:`member_order`; image encoders and :func:`canonical_json` are
  deterministic, so equal inputs give byte-identical shards (equal sha256).
- **A shard is only ever visible whole** (:func:`open_atomic`):

  - local disk (``file://``): written to a hidden temporary file in the same directory
    (``.{name}.tmp-{random}``), flushed and fsync'ed, then ``os.replace``'d onto the final name
    (atomic within one filesystem). fsspec's own ``fs.transaction`` is NOT used locally: its local
    temporary file lives in the system temp dir and is committed with ``shutil.move``, which falls
    back to a non-atomic copy into the final path when the temp dir is on another filesystem.
  - S3 (``s3fs``): a shard of at most 8 MiB (``facegs.core.storage.SMALL_PUT_BYTES``) is kept in
    memory and written with one ``PutObject`` (atomic, one request); a larger one is streamed by
    ``fs.open(path, "wb", autocommit=False)`` as a multipart upload straight to its final key; the key appears only when ``commit()`` completes the upload
    after a clean write; on an exception the upload is aborted (``discard()``). A plain
    ``with fs.open(path, "wb")`` would be wrong: its ``__exit__`` closes, and closing commits, so
    an exception mid-shard would publish a truncated object (verified against moto: a 1000-byte
    object appeared). After ``discard()`` the file is marked closed: s3fs leaves it open, and its
    ``__del__`` -> ``close()`` would start a new multipart upload that nobody completes or aborts
    (also verified). A killed process leaves at most an incomplete multipart upload, which is
    invisible (configure the bucket's lifecycle rule ``AbortIncompleteMultipartUpload`` to
    reclaim its space).
  - any other filesystem (``memory://``, ...): the shard is staged in a local spooled temporary
    file and published with one ``fs.pipe_file`` (one put). ``memory://``'s ``open("wb")``
    registers the file at open time (visible and growing), so streaming to it is not atomic.

  ``fs.transaction`` is also avoided on S3 because it is per filesystem *instance*, and fsspec
  caches one instance per storage options: a transaction in one thread would defer the writes of
  every other thread using the same instance.
- **Commit protocol.** After a shard is closed and visible, its record JSON is written (small,
  atomically) to ``records/``. A shard without a valid record is an *orphan* (a crash between the
  two writes, or a rerun in progress); a record whose shard is missing or whose size (or sha256)
  does not match is *invalid*. :func:`list_committed` returns valid records only,
  :func:`find_orphans`/:func:`cleanup_orphans` report and delete the leftovers, and
  :func:`merge_manifest` turns the valid records into ``manifest.parquet`` (one put).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from facegs.core.errors import InputError
from facegs.core.ids import check_id
from facegs.core.storage import open_atomic
from facegs.shards.encode import EncodedSample, Sample, encode_samples
from facegs.shards.listing import key_exists
from facegs.shards.root import RECORDS_DIR, SHARDS_DIR, DatasetRoot, ShardRecord, make_record, write_record
from facegs.shards.schema import (
    sample_key,
    shard_name,
)
from facegs.shards.tar import write_tar

DEFAULT_MAXCOUNT = 1000


DEFAULT_MAXSIZE = 1 << 30  # bytes of member data per shard before a new one is started


def _take_shard(first: EncodedSample, rest: Iterator[EncodedSample], maxcount: int,
                maxsize: int) -> Iterator[EncodedSample]:
    """Stage: ``first`` then samples from ``rest`` until the shard holds maxcount or >= maxsize bytes.

    All samples of a shard must share label set, config hash and facegs version (one record row).
    """
    n, size = 1, first.nbytes
    yield first
    while n < maxcount and size < maxsize:
        e = next(rest, None)
        if e is None:
            return
        for attr in ("label_set", "config_hash", "facegs_version"):
            if getattr(e, attr) != getattr(first, attr):
                raise InputError(f"{attr} '{getattr(e, attr)}' differs from '{getattr(first, attr)}' of the "
                                 "shard's first sample (one shard holds one label set / config)",
                                 subject=e.subject_id, view=e.key, field=attr)
        n, size = n + 1, size + e.nbytes
        yield e


def write_shards(
    samples: Iterable[Sample | EncodedSample],
    root_url: str | DatasetRoot,
    prefix: str,
    *,
    start_index: int = 0,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    rgb_format: str = "jpg",
    jpeg_quality: int = 95,
    write_records: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> list[ShardRecord]:
    """Write ``samples`` (in order) to ``root/shards/{prefix}-{index:06d}.tar``, index from ``start_index``.

    A new shard starts after ``maxcount`` samples or once a shard's member data reaches ``maxsize``
    bytes. Each shard becomes visible whole (:func:`open_atomic`); with ``write_records`` its record
    is written right after it. If ``samples`` raises, the shard being written is discarded (never
    visible) and the exception propagates; shards finished before stay (committed if their record
    was written). Returns the records of the shards written, in order.
    """
    check_id(prefix, what="shard prefix", field="prefix")  # the identifier rule (facegs.core.ids)
    if maxcount < 1 or maxsize < 1:
        raise ValueError("maxcount and maxsize must be >= 1")
    root = DatasetRoot.open(root_url, storage_options)
    it = encode_samples(samples, rgb_format, jpeg_quality)
    records: list[ShardRecord] = []
    index = start_index
    while (first := next(it, None)) is not None:
        name = shard_name(prefix, index)
        with open_atomic(root.fs, root.shard_path(name)) as f:
            written, nbytes, sha = write_tar(f, _take_shard(first, it, maxcount, maxsize))
        rec = make_record(f"{SHARDS_DIR}/{name}", index, written, nbytes, sha)
        if write_records:
            write_record(root, rec)
        records.append(rec)
        index += 1
    return records


SHARD_NAME_RE = r"^{prefix}-(\d{{6}})\.{ext}$"


def _present_from(root: DatasetRoot, prefix: str, sub: str, start: int) -> list[int]:
    """Indices ``start, start + 1, ...`` of ``root/sub/{prefix}-{index:06d}.*`` that exist, up to the
    first missing one (one key probe each: a subject's files are found by key, never by a listing)."""
    out, idx = [], start
    while True:
        name = shard_name(prefix, idx)
        path = root.shard_path(name) if sub == SHARDS_DIR else root.record_path(name)
        if not key_exists(root.fs, path):
            return out
        out.append(idx)
        idx += 1


def commit_subject(
    samples: Iterable[Sample],
    root_url: str | DatasetRoot,
    subject_id: str,
    *,
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: int = DEFAULT_MAXSIZE,
    rgb_format: str = "jpg",
    jpeg_quality: int = 95,
    storage_options: dict[str, Any] | None = None,
) -> list[ShardRecord]:
    """(Re)write all shards of one subject under prefix ``subject_id`` and commit them.

    Steps (each safe to crash in; a crash leaves the subject uncommitted, never half-listed as done
    unless it dies between two record writes of step 3):
    1. delete the subject's existing records (the subject is now uncommitted; old shards are orphans);
    2. write the shards ``{subject_id}-000000.tar``, ... (each visible whole; a rerun with equal
       inputs writes byte-identical shards at the same keys);
    3. write the records, in index order;
    4. delete shards (and records) with higher indices left over from an earlier, larger run.
    Every sample must belong to ``subject_id``. Returns the records, in index order.
    A subject is complete when :func:`subject_records` lists the records this function returned.

    Cost: only the subject's own keys are touched, never a listing (the same at 10 subjects or a
    million). A subject's shards and records are numbered contiguously from 000000 (written in index
    order, deleted highest first), so steps 1 and 4 find them by probing keys upwards from 000000 and
    from the new shard count: a fresh subject costs one probe each, and one object write per shard
    and per record. Anything a crash leaves outside that contiguous run is an orphan that
    :func:`facegs.factory.finalize.finalize` removes.
    """
    sample_key(subject_id, 0)  # validates the id (no dots or slashes)
    root = DatasetRoot.open(root_url, storage_options)
    for idx in reversed(_present_from(root, subject_id, RECORDS_DIR, 0)):
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.record_path(shard_name(subject_id, idx)))

    def own(samples: Iterable[Sample]) -> Iterator[Sample]:
        for s in samples:
            if s.subject_id != subject_id:
                raise InputError(f"sample belongs to subject '{s.subject_id}', not '{subject_id}'",
                                 subject=subject_id, view=s.key, field="subject_id")
            yield s

    records = write_shards(own(samples), root, subject_id, start_index=0, maxcount=maxcount, maxsize=maxsize,
                           rgb_format=rgb_format, jpeg_quality=jpeg_quality, write_records=False)
    for rec in records:
        write_record(root, rec)
    for idx in reversed(_present_from(root, subject_id, SHARDS_DIR, len(records))):
        name = shard_name(subject_id, idx)
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.record_path(name))
        root.fs.rm_file(root.shard_path(name))
    return records
