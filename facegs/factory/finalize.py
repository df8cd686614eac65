"""Finalizing a dataset root after a run: leftovers removed, manifest and subject index merged.

:func:`finalize` makes one pass over the root, whatever its size:

1. ``shards/`` listed once (streamed): every shard's size; temporary files of killed writes;
2. ``subjects/`` listed once and each done marker read once (concurrent batches, in name order):
   a complete subject's manifest rows -- carried by its marker -- go straight into
   ``manifest.parquet`` and its summary row into ``subjects.parquet`` (both written streaming, in
   row groups, published whole); an incomplete subject's marker is deleted;
3. ``records/`` listed once (no record is read: the markers carry the rows): a record whose shard
   is not kept is deleted;
4. shards not kept (an incomplete or failed subject's, or orphans without a record) are deleted.

Memory: the names and sizes of the shards (step 1) and the kept shard names, not the markers nor
the rows. Requests on S3 per subject: one GET (its marker), plus LIST pages of 1000 keys.

``part=(K, N)``: only subjects of that part (:func:`facegs.core.ids.part_of`) have their leftovers
deleted, so a part's driver never touches another part's writes in progress; the manifest merges
every complete subject seen. After all parts of a split job have finished, run
``facegs dataset finalize ROOT`` once for the authoritative manifest.
"""

from __future__ import annotations

import contextlib
from typing import Any

from facegs.core.ids import in_part
from facegs.core.storage import TMP_MARKER
from facegs.core.tables import parquet_stream
from facegs.factory.markers import (
    FAILURES_DIR,
    SUBJECT_INDEX,
    SUBJECT_INDEX_SCHEMA,
    SUBJECTS_DIR,
    check_marker,
    index_row,
    iter_json_dir,
    list_names,
    marker_path,
    marker_records,
    shard_sizes,
)
from facegs.shards.listing import base_name, iter_files
from facegs.shards.root import DATASET_MANIFEST, RECORDS_DIR, SHARDS_DIR, DatasetRoot
from facegs.shards.schema import SHARD_MANIFEST_SCHEMA

SHARD_SUFFIX_LEN = len("-000000.tar")


def _subject_of(shard: str) -> str:
    """``{subject_id}-{index:06d}.tar`` -> the subject id (the shard's prefix)."""
    return shard[:-SHARD_SUFFIX_LEN]


def finalize(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
             part: tuple[int, int] | None = None) -> dict[str, Any]:
    """After a run (no writer of ``part`` active): delete leftovers, merge the manifest and the
    subject index of complete subjects (see the module docstring). Returns counts."""
    root = DatasetRoot.open(root_url, storage_options)
    fs = root.fs
    sizes, temps = shard_sizes(root)
    kept: set[str] = set()
    n_complete = n_incomplete = n_samples = 0
    with parquet_stream(fs, root.join(DATASET_MANIFEST), SHARD_MANIFEST_SCHEMA) as manifest, \
            parquet_stream(fs, root.join(SUBJECT_INDEX), SUBJECT_INDEX_SCHEMA) as index:
        for sid, marker in iter_json_dir(root, SUBJECTS_DIR, sort=True):
            recs = marker_records(root, marker) if marker is not None else None
            if check_marker(sid, marker, recs, sizes) is not None:
                if in_part(sid, part):
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm_file(marker_path(root, sid))
                    n_incomplete += 1
                continue
            assert marker is not None and recs is not None
            for r in sorted(recs, key=lambda r: r["shard_index"]):
                manifest.add(r)
                kept.add(base_name(r["shard"]))
                n_samples += int(r["num_samples"])
            index.add(index_row(sid, marker))
            n_complete += 1
        n_manifest_shards = manifest.num_rows
    recorded: set[str] = set()
    invalid_records = temp_records = 0
    for e in iter_files(fs, root.join(RECORDS_DIR)):
        name = base_name(e["name"])
        if name.startswith(".") and TMP_MARKER in name:  # a killed write's temporary file
            if in_part(_subject_of(name.lstrip(".").split(".", 1)[0] + ".tar"), part):
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(e["name"])
                temp_records += 1
            continue
        if name.startswith(".") or not name.endswith(".json"):
            continue  # not ours
        shard = name[:-5] + ".tar"
        if shard in kept or not in_part(_subject_of(shard), part):
            continue
        if shard in sizes:
            recorded.add(shard)
        else:
            invalid_records += 1
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(e["name"])
    orphans = removed = 0
    for name in sizes:
        if name in kept or not in_part(_subject_of(name), part):
            continue
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(root.shard_path(name))
        if name in recorded:
            removed += 1
        else:
            orphans += 1
    n_temp = temp_records
    for name in temps:
        if in_part(_subject_of(name.lstrip(".").split(".", 1)[0] + ".tar"), part):
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(root.join(SHARDS_DIR, name))
            n_temp += 1
    return {"orphan_shards_removed": orphans, "temp_files_removed": n_temp,
            "invalid_records_removed": invalid_records, "incomplete_subject_shards_removed": removed,
            "incomplete_markers_removed": n_incomplete, "complete_subjects": n_complete,
            "manifest_shards": n_manifest_shards, "manifest_samples": n_samples,
            "failed_subjects": len(list_names(root, FAILURES_DIR))}
