"""Writing WebDataset tar shards and their manifest through fsspec (local disk, S3, memory, ...).

Layout under a dataset root URL (``file:///data/ds``, ``s3://bucket/ds``, ``memory://ds``)::

    root/shards/{prefix}-{index:06d}.tar     # the samples (facegs.shard_schema)
    root/records/{prefix}-{index:06d}.json   # one row of SHARD_MANIFEST_SCHEMA: the commit marker
    root/manifest.parquet                    # merge of all committed records: what readers trust

Properties:
- **Deterministic names and bytes.** Shards are named by :func:`facegs.shard_schema.shard_name`; the
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
  - S3 (``s3fs``): ``fs.open(path, "wb", autocommit=False)`` streams the shard as a multipart
    upload straight to its final key; the key appears only when ``commit()`` completes the upload
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
import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from facegs.errors import InputError
from facegs.fsutil import atomic_write_bytes
from facegs.imageio import encode_gray_png, encode_label_png, encode_rgb
from facegs.labels import IGNORE_INDEX, get_label_set
from facegs.shard_schema import (OPTIONAL_FIELDS, RGB_FIELDS, SAMPLE_FIELDS, SHARD_MANIFEST_SCHEMA, check_sample_meta,
                                 pose_histogram, sample_key, shard_name, shard_record_table)

SHARDS_DIR = "shards"
RECORDS_DIR = "records"
MANIFEST_NAME = "manifest.parquet"
TAR_MTIME = 0  # fixed member mtime: byte-reproducible tars
TAR_MODE = 0o444
TMP_MARKER = ".tmp-"  # hidden temporary files are named ".{final name}.tmp-{hex}"
DEFAULT_MAXCOUNT = 1000
DEFAULT_MAXSIZE = 1 << 30  # bytes of member data per shard before a new one is started

Verify = Literal["none", "size", "sha256"]


def member_order(rgb_format: str, alpha: bool = False) -> tuple[str, ...]:
    """Fixed order of a sample's members in a shard: the RGB image, then :data:`SAMPLE_FIELDS`
    (with ``alpha.png`` before ``json`` when the sample has an alpha map)."""
    if rgb_format not in RGB_FIELDS:
        raise ValueError(f"rgb_format must be one of {RGB_FIELDS}, got {rgb_format!r}")
    fields = SAMPLE_FIELDS[:-1] + (OPTIONAL_FIELDS if alpha else ()) + SAMPLE_FIELDS[-1:]
    return (rgb_format, *fields)


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One view of one subject, ready to be written to a shard.

    - ``rgb``: [H, W, 3] uint8 RGB.
    - ``seg``: [H, W] uint8 class indices in ``meta["label_set"]`` (255 = ignore).
    - ``conf``: [H, W] float32 in [0, 1] (stored as 8 bits: ``round(conf * 255)``).
    - ``ignore``: [H, W] bool, True where the pixel must be excluded from the loss.
    - ``alpha``: optional [H, W] float32 in [0, 1], the render's coverage (stored as 8 bits), for
      compositing the premultiplied-over-black RGB over other backgrounds.
    - ``meta``: the ``json`` member (``schemas/shard_sample.schema.json``): key, subject_id,
      view_index, pose, K, world_to_camera, label set, config hash, facegs version, ...
    """

    rgb: np.ndarray
    seg: np.ndarray
    conf: np.ndarray
    ignore: np.ndarray
    meta: dict[str, Any]
    alpha: np.ndarray | None = None

    @property
    def key(self) -> str:
        return str(self.meta.get("key"))

    @property
    def subject_id(self) -> str:
        return str(self.meta.get("subject_id"))

    @property
    def view_index(self) -> int:
        return int(self.meta.get("view_index", -1))


def to_builtin(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples inside ``obj`` to plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def canonical_json(obj: Any) -> bytes:
    """Reproducible JSON bytes: sorted keys, fixed separators, ASCII, no NaN/Inf."""
    return json.dumps(to_builtin(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def validate_sample(sample: Sample) -> dict[str, Any]:
    """Check a sample's arrays and metadata; return the metadata as plain JSON types.

    Raises :class:`InputError` naming the subject, the key and the field.
    """
    meta = to_builtin(sample.meta)
    check_sample_meta(meta)
    subject, key = meta["subject_id"], meta["key"]

    def bad(msg: str, fld: str) -> InputError:
        return InputError(msg, subject=subject, view=key, field=fld)

    if key != sample_key(subject, meta["view_index"]):
        raise bad(f"key must be '{sample_key(subject, meta['view_index'])}'", "key")
    h, w = int(meta["height"]), int(meta["width"])
    for name, arr, shape, dtype in (("rgb", sample.rgb, (h, w, 3), np.uint8), ("seg", sample.seg, (h, w), np.uint8),
                                    ("conf", sample.conf, (h, w), None), ("ignore", sample.ignore, (h, w), None)):
        arr = np.asarray(arr)
        if arr.shape != shape or (dtype is not None and arr.dtype != dtype):
            want = f"{np.dtype(dtype).name} " if dtype is not None else ""
            raise bad(f"expected {want}{list(shape)}, got {arr.dtype} {list(arr.shape)}", name)
    n_cls = get_label_set(meta["label_set"]).num_classes
    seg = np.asarray(sample.seg)
    if seg.size and ((seg >= n_cls) & (seg != IGNORE_INDEX)).any():
        raise bad(f"class index {int(seg[seg < IGNORE_INDEX].max())} outside label set "
                  f"'{meta['label_set']}' ({n_cls} classes)", "seg")
    conf = np.asarray(sample.conf, dtype=np.float32)
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0):
        raise bad("confidence must be finite and in [0, 1]", "conf")
    if sample.alpha is not None:
        alpha = np.asarray(sample.alpha, dtype=np.float32)
        if alpha.shape != (h, w):
            raise bad(f"expected {[h, w]}, got {alpha.dtype} {list(alpha.shape)}", "alpha")
        if alpha.size and (not np.isfinite(alpha).all() or alpha.min() < 0.0 or alpha.max() > 1.0):
            raise bad("alpha must be finite and in [0, 1]", "alpha")
    return meta


def encode_sample(sample: Sample, rgb_format: str = "jpg", jpeg_quality: int = 95) -> dict[str, bytes]:
    """Encode a sample's members (field name -> bytes) in :func:`member_order`.

    ``jpg|png`` (RGB), ``seg.png`` (palette PNG of class indices), ``conf.png`` (8-bit),
    ``ignore.png`` (0/255), ``alpha.png`` (8-bit, only when the sample has ``alpha``) and ``json``
    (:func:`canonical_json` of the metadata, with ``rgb_format`` set to the format actually
    written). Deterministic for equal inputs.
    """
    order = member_order(rgb_format, alpha=sample.alpha is not None)
    meta = validate_sample(sample)
    meta["rgb_format"] = rgb_format
    conf_q = quantize_unit(sample.conf)
    members = {
        rgb_format: encode_rgb(np.asarray(sample.rgb), "." + rgb_format, jpeg_quality),
        "seg.png": encode_label_png(np.asarray(sample.seg), meta["label_set"]),
        "conf.png": encode_gray_png(conf_q),
        "ignore.png": encode_gray_png(np.where(np.asarray(sample.ignore, dtype=bool), 255, 0).astype(np.uint8)),
        "json": canonical_json(meta),
    }
    if sample.alpha is not None:
        members["alpha.png"] = encode_gray_png(quantize_unit(sample.alpha))
    return {k: members[k] for k in order}


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 ``round(x * 255)`` (confidence and alpha maps)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class EncodedSample:
    """A sample's encoded members plus what the shard record needs from its metadata."""

    key: str
    members: tuple[tuple[str, bytes], ...]  # (field, bytes) in member order
    subject_id: str
    yaw: float
    pitch: float
    label_set: str
    config_hash: str
    facegs_version: str

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.members)


def encode_samples(samples: "Iterable[Sample | EncodedSample]", rgb_format: str = "jpg",
                   jpeg_quality: int = 95) -> Iterator[EncodedSample]:
    """Stage: encode samples one by one (lazily); raises on a repeated key. Already encoded samples
    (:class:`EncodedSample`, e.g. when re-sharding) pass through unchanged."""
    seen: set[str] = set()
    for s in samples:
        if isinstance(s, EncodedSample):
            if s.key in seen:
                raise InputError("duplicate sample key in one write", subject=s.subject_id, view=s.key, field="key")
            seen.add(s.key)
            yield s
            continue
        members = encode_sample(s, rgb_format, jpeg_quality)
        m = s.meta
        if s.key in seen:
            raise InputError("duplicate sample key in one write", subject=s.subject_id, view=s.key, field="key")
        seen.add(s.key)
        yield EncodedSample(key=s.key, members=tuple(members.items()), subject_id=s.subject_id,
                            yaw=float(m["yaw"]), pitch=float(m["pitch"]), label_set=str(m["label_set"]),
                            config_hash=str(m["config_hash"]), facegs_version=str(m["facegs_version"]))


# ----------------------------------------------------------------------------------------------
# Shard records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRecord:
    """One row of :data:`SHARD_MANIFEST_SCHEMA`: the commit marker of one shard."""

    shard: str  # path relative to the dataset root, e.g. "shards/s1-000000.tar"
    shard_index: int
    num_samples: int
    num_bytes: int
    sha256: str
    subjects: tuple[str, ...]
    keys: tuple[str, ...]
    yaw_hist: tuple[int, ...]
    pitch_hist: tuple[int, ...]
    label_set: str
    config_hash: str
    facegs_version: str

    @property
    def name(self) -> str:
        """File name of the shard (``{prefix}-{index:06d}.tar``)."""
        return self.shard.rsplit("/", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardRecord":
        names = [f.name for f in dataclasses.fields(cls)]
        if set(d) != set(names) or names != SHARD_MANIFEST_SCHEMA.names:
            raise ValueError(f"shard record fields {sorted(d)} differ from {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _make_record(rel: str, index: int, encoded: list[EncodedSample], nbytes: int, sha: str) -> ShardRecord:
    yh, ph = pose_histogram(np.array([e.yaw for e in encoded]), np.array([e.pitch for e in encoded]))
    return ShardRecord(shard=rel, shard_index=index, num_samples=len(encoded), num_bytes=nbytes, sha256=sha,
                       subjects=tuple(sorted({e.subject_id for e in encoded})), keys=tuple(e.key for e in encoded),
                       yaw_hist=tuple(yh), pitch_hist=tuple(ph), label_set=encoded[0].label_set,
                       config_hash=encoded[0].config_hash, facegs_version=encoded[0].facegs_version)


# ----------------------------------------------------------------------------------------------
# Filesystem plumbing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRoot:
    """An fsspec filesystem plus the dataset root path inside it."""

    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def open(cls, root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None) -> "DatasetRoot":
        if isinstance(root_url, DatasetRoot):
            return root_url
        fs, path = fsspec.core.url_to_fs(root_url, **(storage_options or {}))
        return cls(fs, path.rstrip("/"))

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def shard_path(self, name: str) -> str:
        return self.join(SHARDS_DIR, name)

    def record_path(self, name: str) -> str:
        return self.join(RECORDS_DIR, _record_name(name))

    def relative(self, path: str) -> str:
        p = self.fs._strip_protocol(path)
        base = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        if not p.startswith(base):
            raise ValueError(f"{path} is not under the dataset root {self.path}")
        return p[len(base):]

    def list_dir(self, sub: str) -> list[dict[str, Any]]:
        """Details of the files directly in ``root/sub`` (fresh listing; [] if absent)."""
        d = self.join(sub)
        self.fs.invalidate_cache(d)
        try:
            entries = self.fs.ls(d, detail=True)
        except FileNotFoundError:
            return []
        return [e for e in entries if e.get("type") == "file"]


def _record_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".json" if shard.endswith(".tar") else shard + ".json"


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _has_deferred_commit(fs: fsspec.AbstractFileSystem) -> bool:
    """Filesystems whose ``open(..., autocommit=False)`` files publish only on ``commit()``.

    Verified for s3fs (multipart upload completed on commit, aborted on discard). Others go through
    the staged single-put path.
    """
    return bool({"s3", "s3a"} & set(_protocols(fs))) and type(fs).__module__.startswith("s3fs")


def _tmp_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def open_atomic(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at ``path`` only if the block exits without an exception.

    See the module docstring for the per-filesystem mechanism (local temp + ``os.replace``, S3
    multipart commit/abort, otherwise a staged single put). On an exception nothing is published
    and any previous file at ``path`` is left untouched.
    """
    if _is_local(fs):
        final = fs._strip_protocol(path)
        parent, name = os.path.split(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, _tmp_name(name))
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    elif _has_deferred_commit(fs):
        f = fs.open(path, "wb", autocommit=False)
        try:
            yield f
            f.close()  # uploads the last part; the key is still invisible
            f.commit()  # completes the multipart upload: the key appears whole
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()  # aborts the multipart upload
            # discard() leaves the file "open": without this, its __del__ would close() it, which
            # flushes, i.e. starts a new multipart upload that is never completed nor aborted.
            f.closed = True
            raise
    else:
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024**2) as staged:
            yield staged  # type: ignore[misc]
            staged.seek(0)
            fs.pipe_file(path, staged.read())


def put_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small file whole (local: temp + rename; elsewhere: one put)."""
    if _is_local(fs):
        atomic_write_bytes(fs._strip_protocol(path), data)
    else:
        fs.pipe_file(path, data)


class _HashingWriter:
    """Forwards writes to ``f`` while counting bytes and updating a sha256."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.nbytes += len(b)
        self._f.write(b)
        return len(b)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = TAR_MTIME
    ti.mode = TAR_MODE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def write_tar(f: BinaryIO, samples: Iterable[EncodedSample]) -> tuple[list[EncodedSample], int, str]:
    """Write samples as a reproducible USTAR tar to ``f``.

    Returns (the samples' summaries without their bytes, tar size in bytes, sha256 hex of the tar).
    """
    hw = _HashingWriter(f)
    written = []
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.USTAR_FORMAT) as tf:  # type: ignore[call-overload]
        for e in samples:
            for fld, data in e.members:
                tf.addfile(_tarinfo(f"{e.key}.{fld}", len(data)), io.BytesIO(data))
            written.append(dataclasses.replace(e, members=()))  # keep what the record needs, drop the bytes
    return written, hw.nbytes, hw.sha.hexdigest()


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


def write_record(root: DatasetRoot, record: ShardRecord) -> None:
    """Write a shard's record JSON (the commit marker) after the shard is visible."""
    put_bytes_atomic(root.fs, root.record_path(record.name), canonical_json(record.as_dict()))


def write_shards(
    samples: "Iterable[Sample | EncodedSample]",
    root_url: "str | DatasetRoot",
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
    if "." in prefix or "/" in prefix or not prefix:
        raise ValueError(f"shard prefix '{prefix}' must be non-empty without '.' or '/'")
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
        rec = _make_record(f"{SHARDS_DIR}/{name}", index, written, nbytes, sha)
        if write_records:
            write_record(root, rec)
        records.append(rec)
        index += 1
    return records


_SHARD_RE = r"^{prefix}-(\d{{6}})\.{ext}$"


def _prefix_indices(names: Iterable[str], prefix: str, ext: str) -> dict[int, str]:
    pat = re.compile(_SHARD_RE.format(prefix=re.escape(prefix), ext=ext))
    out = {}
    for n in names:
        if m := pat.match(n):
            out[int(m.group(1))] = n
    return out


def commit_subject(
    samples: Iterable[Sample],
    root_url: "str | DatasetRoot",
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
    """
    sample_key(subject_id, 0)  # validates the id (no dots or slashes)
    root = DatasetRoot.open(root_url, storage_options)
    old_records = _prefix_indices([e["name"].rsplit("/", 1)[-1] for e in root.list_dir(RECORDS_DIR)], subject_id, "json")
    for name in old_records.values():
        root.fs.rm_file(root.join(RECORDS_DIR, name))

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
    shard_names = [e["name"].rsplit("/", 1)[-1] for e in root.list_dir(SHARDS_DIR)]
    for idx, name in sorted(_prefix_indices(shard_names, subject_id, "tar").items()):
        if idx >= len(records):
            with contextlib.suppress(FileNotFoundError):
                root.fs.rm_file(root.record_path(name))
            root.fs.rm_file(root.shard_path(name))
    return records


# ----------------------------------------------------------------------------------------------
# Listing, orphans, manifest
# ----------------------------------------------------------------------------------------------


@dataclass
class OrphanReport:
    """Leftovers under a dataset root (relative paths).

    - ``shards``: shards without a valid record (crash between shard and record, rerun in progress).
    - ``temp_files``: hidden temporary files of interrupted local writes.
    - ``invalid_records``: (record, reason): unreadable, shard missing, size/sha256 mismatch.
    """

    shards: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    invalid_records: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.shards or self.temp_files or self.invalid_records)


def _mtime(info: dict[str, Any]) -> float | None:
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        with contextlib.suppress(TypeError, ValueError):
            return float(v)
    return None


def sha256_of(fs: fsspec.AbstractFileSystem, path: str, block: int = 8 * 1024**2) -> str:
    """sha256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _scan(root: DatasetRoot, verify: Verify) -> tuple[list[ShardRecord], OrphanReport, dict[str, dict]]:
    """Classify everything under shards/ and records/: valid records, leftovers, shard infos."""
    if verify not in ("none", "size", "sha256"):
        raise ValueError(f"verify must be 'none', 'size' or 'sha256', got {verify!r}")
    report = OrphanReport()
    shards: dict[str, dict] = {}
    for e in root.list_dir(SHARDS_DIR):
        name = e["name"].rsplit("/", 1)[-1]
        if name.startswith(".") and TMP_MARKER in name:
            report.temp_files.append(f"{SHARDS_DIR}/{name}")
        elif name.endswith(".tar"):
            shards[name] = e
    valid: list[ShardRecord] = []
    record_paths = []
    for e in root.list_dir(RECORDS_DIR):
        name = e["name"].rsplit("/", 1)[-1]
        if name.startswith(".") and TMP_MARKER in name:
            report.temp_files.append(f"{RECORDS_DIR}/{name}")
        elif name.endswith(".json"):
            record_paths.append(e["name"])
    # one batched read (concurrent on async filesystems such as s3fs); errors come back as values
    contents = root.fs.cat(record_paths, on_error="return") if record_paths else {}
    for path in record_paths:
        name = path.rsplit("/", 1)[-1]
        rel = f"{RECORDS_DIR}/{name}"
        data = contents.get(path, contents.get(root.fs._strip_protocol(path), FileNotFoundError(path)))
        if isinstance(data, FileNotFoundError):
            continue  # deleted while we listed (a rerun of that subject)
        try:
            if isinstance(data, BaseException):
                raise data
            rec = ShardRecord.from_dict(json.loads(data))
        except (ValueError, TypeError, OSError) as err:
            report.invalid_records.append((rel, f"unreadable record: {err}"))
            continue
        info = shards.get(rec.name)
        if rec.shard != f"{SHARDS_DIR}/{rec.name}" or _record_name(rec.name) != name:
            reason = f"record names shard '{rec.shard}', expected '{SHARDS_DIR}/{name[:-5]}.tar'"
        elif info is None:
            reason = "shard is missing"
        elif verify != "none" and int(info.get("size", -1)) != rec.num_bytes:
            reason = f"shard has {info.get('size')} bytes, record says {rec.num_bytes}"
        elif verify == "sha256" and sha256_of(root.fs, info["name"]) != rec.sha256:
            reason = "shard sha256 differs from the record"
        else:
            valid.append(rec)
            continue
        report.invalid_records.append((rel, reason))
    committed = {r.name for r in valid}
    report.shards = [f"{SHARDS_DIR}/{n}" for n in sorted(shards) if n not in committed]
    report.temp_files.sort()
    report.invalid_records.sort()
    return sorted(valid, key=lambda r: r.shard), report, shards


def list_committed(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None,
                   verify: Verify = "size") -> list[ShardRecord]:
    """Records whose shard exists and matches (``verify``: "none", "size" or "sha256"), by shard path."""
    return _scan(DatasetRoot.open(root_url, storage_options), verify)[0]


def subject_records(root_url: "str | DatasetRoot", subject_id: str, storage_options: dict[str, Any] | None = None,
                    verify: Verify = "size") -> list[ShardRecord]:
    """Committed records of the shards with prefix ``subject_id``, in index order."""
    pat = re.compile(_SHARD_RE.format(prefix=re.escape(subject_id), ext="tar"))
    recs = [r for r in list_committed(root_url, storage_options, verify) if pat.match(r.name)]
    return sorted(recs, key=lambda r: r.shard_index)


def _old_enough(info: dict[str, Any] | None, min_age_s: float, now: float) -> bool:
    if min_age_s <= 0:
        return True
    t = _mtime(info or {})
    return t is not None and now - t >= min_age_s


def find_orphans(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None,
                 verify: Verify = "size", min_age_s: float = 0.0) -> OrphanReport:
    """Shards without a valid record, temporary files and invalid records under the root.

    ``min_age_s`` > 0 leaves out files modified more recently than that (writes may be in
    progress); with 0, only call this when no writer is running.
    """
    root = DatasetRoot.open(root_url, storage_options)
    _, report, shard_infos = _scan(root, verify)
    if min_age_s > 0:
        now = time.time()
        infos = {root.relative(e["name"]): e for sub in (SHARDS_DIR, RECORDS_DIR) for e in root.list_dir(sub)}
        report.shards = [p for p in report.shards if _old_enough(infos.get(p), min_age_s, now)]
        report.temp_files = [p for p in report.temp_files if _old_enough(infos.get(p), min_age_s, now)]
        report.invalid_records = [(p, r) for p, r in report.invalid_records
                                  if _old_enough(infos.get(p), min_age_s, now)]
    return report


def cleanup_orphans(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None,
                    verify: Verify = "size", min_age_s: float = 0.0) -> OrphanReport:
    """Delete what :func:`find_orphans` reports (invalid records first, then shards and temp files)."""
    root = DatasetRoot.open(root_url, storage_options)
    report = find_orphans(root, verify=verify, min_age_s=min_age_s)
    for rel in [p for p, _ in report.invalid_records] + report.shards + report.temp_files:
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(rel))
    return report


def merge_manifest(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None,
                   verify: Verify = "size") -> pa.Table:
    """Merge all committed records into ``root/manifest.parquet`` (written whole) and return the table."""
    root = DatasetRoot.open(root_url, storage_options)
    table = shard_record_table([r.as_dict() for r in list_committed(root, verify=verify)])
    buf = io.BytesIO()
    # list children keep Arrow's name "item", so the file's schema equals SHARD_MANIFEST_SCHEMA exactly
    pq.write_table(table, buf, use_compliant_nested_type=False)
    put_bytes_atomic(root.fs, root.join(MANIFEST_NAME), buf.getvalue())
    return table


def read_manifest(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read ``root/manifest.parquet``; raises :class:`InputError` if absent or of another schema."""
    root = DatasetRoot.open(root_url, storage_options)
    path = root.join(MANIFEST_NAME)
    try:
        data = root.fs.cat_file(path)
    except FileNotFoundError:
        raise InputError("dataset has no manifest (run merge_manifest after writing shards)", path=path) from None
    table = pq.read_table(io.BytesIO(data))
    if table.schema != SHARD_MANIFEST_SCHEMA and table.schema.equals(SHARD_MANIFEST_SCHEMA):
        table = table.cast(SHARD_MANIFEST_SCHEMA)  # e.g. written elsewhere with list children named "element"
    if not table.schema.equals(SHARD_MANIFEST_SCHEMA, check_metadata=True):
        raise InputError(f"manifest schema differs from SHARD_MANIFEST_SCHEMA: {table.schema}", path=path)
    return table


__all__ = [
    "DEFAULT_MAXCOUNT", "DEFAULT_MAXSIZE", "MANIFEST_NAME", "RECORDS_DIR", "SHARDS_DIR", "DatasetRoot",
    "EncodedSample", "OrphanReport", "Sample", "ShardRecord", "canonical_json", "cleanup_orphans",
    "commit_subject", "encode_sample", "encode_samples", "find_orphans", "list_committed", "member_order",
    "merge_manifest", "open_atomic", "put_bytes_atomic", "read_manifest", "sha256_of", "subject_records",
    "to_builtin", "validate_sample", "write_record", "write_shards", "write_tar",
]
