"""A dataset root's per-subject bookkeeping: done markers, failure records, finalize.

Layout (besides ``shards/``, ``records/`` and ``manifest.parquet``, :mod:`facegs.shards.root`)::

    root/subjects/{subject_id}.json   # the subject's done marker (written last)
    root/failures/{subject_id}.json   # why a subject failed for good (deleted on success)
    root/summary.json                 # the last factory run's summary

A subject is complete when its marker exists and every shard it lists has a valid record with the
same sha256 (:func:`complete_subjects`); :func:`finalize` removes the leftovers of incomplete
subjects and merges the manifest from complete subjects only.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from facegs.core.hashing import canonical_json
from facegs.core.ids import safe_id
from facegs.core.storage import put_bytes_atomic
from facegs.shards.manifest import merge_manifest
from facegs.shards.root import DatasetRoot
from facegs.shards.scan import cleanup_orphans, list_committed

SUBJECTS_DIR = "subjects"


FAILURES_DIR = "failures"


SUMMARY_NAME = "summary.json"


def read_json_dir(root: DatasetRoot, sub: str) -> dict[str, dict[str, Any]]:
    """``{stem: parsed JSON}`` of the ``*.json`` files in ``root/sub`` (unreadable files skipped)."""
    paths = [e["name"] for e in root.list_dir(sub) if e["name"].endswith(".json")
             and not e["name"].rsplit("/", 1)[-1].startswith(".")]
    out = {}
    for p, data in (root.fs.cat(paths, on_error="return") if paths else {}).items():
        if isinstance(data, BaseException):
            continue
        with contextlib.suppress(ValueError):
            out[p.rsplit("/", 1)[-1][:-5]] = json.loads(data)
    return out


def complete_subjects(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                      config_hash: str | None = None) -> dict[str, dict[str, Any]]:
    """Done markers of complete subjects (every listed shard has a valid record with the same
    sha256), optionally only those written with ``config_hash``."""
    root = DatasetRoot.open(root_url, storage_options)
    valid = {r.shard: r.sha256 for r in list_committed(root)}
    out = {}
    for sid, marker in read_json_dir(root, SUBJECTS_DIR).items():
        shards = marker.get("shards") or []
        if marker.get("subject_id") != sid or not shards:
            continue
        if all(valid.get(s.get("shard")) == s.get("sha256") for s in shards):
            if config_hash is None or marker.get("config_hash") == config_hash:
                out[sid] = marker
    return out


def record_failure(root_url: str | DatasetRoot, failure: dict[str, Any],
                   storage_options: dict[str, Any] | None = None) -> None:
    """Write ``failures/{subject_id}.json`` (error type, message, attempts, ...)."""
    root = DatasetRoot.open(root_url, storage_options)
    name = safe_id(str(failure["subject_id"]))  # never a path outside failures/ (facegs.core.ids)
    put_bytes_atomic(root.fs, root.join(FAILURES_DIR, f"{name}.json"), canonical_json(failure))


def finalize(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """After a run (no writer active): delete leftovers, merge the manifest of complete subjects.

    Leftovers are shards without a valid record, temporary files, invalid records, and the shards,
    records and markers of incomplete subjects (a crash or failure mid-commit). Returns counts.
    """
    root = DatasetRoot.open(root_url, storage_options)
    orphans = cleanup_orphans(root)
    complete = complete_subjects(root)
    keep = {s["shard"] for m in complete.values() for s in m["shards"]}
    removed = []
    for r in list_committed(root, verify="none"):
        if r.shard not in keep:
            for path in (root.record_path(r.name), root.shard_path(r.name)):
                with contextlib.suppress(FileNotFoundError):
                    root.fs.rm_file(path)
            removed.append(r.shard)
    for sid in set(read_json_dir(root, SUBJECTS_DIR)) - set(complete):
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(SUBJECTS_DIR, f"{sid}.json"))
    table = merge_manifest(root)
    return {"orphan_shards_removed": len(orphans.shards), "temp_files_removed": len(orphans.temp_files),
            "invalid_records_removed": len(orphans.invalid_records),
            "incomplete_subject_shards_removed": len(removed), "complete_subjects": len(complete),
            "manifest_shards": table.num_rows, "manifest_samples": int(sum(table.column("num_samples").to_pylist()))}
