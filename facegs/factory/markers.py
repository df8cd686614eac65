"""A dataset root's per-subject bookkeeping: done markers, failure records, the subject index.

Layout (besides ``shards/``, ``records/`` and ``manifest.parquet``, :mod:`facegs.shards.root`)::

    root/subjects/{subject_id}.json   # the subject's done marker (written last): its shards and their
                                      # manifest rows ("records"), config hash, quality, head frame
    root/failures/{subject_id}.json   # why a subject failed for good (deleted on success)
    root/subjects.parquet             # the index of complete subjects (one row each), by finalize
    root/summary.json                 # the last factory run's summary (bounded: counts, percentiles)
    root/results.parquet              # the last factory run's per-subject results (one row each)

A subject is complete when its marker is valid (its ``subject_id`` is its name, it lists shards)
and every shard it lists exists with the size its manifest row says (:func:`iter_complete`). The
marker carries the subject's manifest rows, so the run-level passes read one object per subject
(the marker) and list each directory once, streamed page by page: start-up
(:func:`iter_complete`) and :func:`facegs.factory.finalize.finalize`, which merges the manifest
from the markers of complete subjects. Markers written before the manifest rows were added (no
``"records"``) are still read: their shards' records are then read as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from facegs.core.hashing import canonical_json
from facegs.core.ids import in_part, is_valid_id, safe_id
from facegs.core.storage import TMP_MARKER, put_bytes_atomic
from facegs.shards.listing import base_name, iter_files, read_many
from facegs.shards.root import SHARDS_DIR, DatasetRoot, ShardRecord

SUBJECTS_DIR = "subjects"


FAILURES_DIR = "failures"


SUMMARY_NAME = "summary.json"


SUBJECT_INDEX = "subjects.parquet"


RESULTS_NAME = "results.parquet"


SUBJECT_INDEX_SCHEMA = pa.schema([
    ("subject_id", pa.string()), ("config_hash", pa.string()), ("num_shards", pa.int32()),
    ("num_samples", pa.int64()), ("quality", pa.float64()), ("head_frame_source", pa.string()),
    ("url", pa.string()), ("facegs_version", pa.string()),
])


def marker_path(root: DatasetRoot, subject_id: str) -> str:
    return root.join(SUBJECTS_DIR, f"{subject_id}.json")


def write_marker(root: DatasetRoot, marker: dict[str, Any], records: Iterable[ShardRecord]) -> dict[str, Any]:
    """Write ``subjects/{id}.json`` (the subject's done marker: last, atomically) with its shards and
    their manifest rows (``records``); returns the marker written."""
    recs = list(records)
    full = {**marker, "shards": [{"shard": r.shard, "sha256": r.sha256, "num_samples": r.num_samples,
                                  "num_bytes": r.num_bytes} for r in recs],
            "records": [r.as_dict() for r in recs], "num_samples": sum(r.num_samples for r in recs)}
    put_bytes_atomic(root.fs, marker_path(root, full["subject_id"]), canonical_json(full))
    return full


def _stems(root: DatasetRoot, sub: str, part: tuple[int, int] | None = None,
           only: set[str] | None = None) -> Iterator[tuple[str, str]]:
    """``(stem, path)`` of the ``*.json`` files in ``root/sub`` (temporary files skipped; only stems
    of ``part`` and in ``only`` when given), streamed."""
    for e in iter_files(root.fs, root.join(sub)):
        name = base_name(e["name"])
        if (name.endswith(".json") and not name.startswith(".") and in_part(name[:-5], part)
                and (only is None or name[:-5] in only)):
            yield name[:-5], e["name"]


def list_names(root: DatasetRoot, sub: str, part: tuple[int, int] | None = None) -> set[str]:
    """The stems of ``root/sub/*.json`` (names only, no object read): e.g. the subjects with a failure record."""
    return {stem for stem, _ in _stems(root, sub, part)}


def iter_json_dir(root: DatasetRoot, sub: str, part: tuple[int, int] | None = None, sort: bool = False,
                  only: set[str] | None = None) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """``(stem, parsed JSON or None if unreadable)`` of each ``*.json`` in ``root/sub``: one streamed
    listing, each file read once, in concurrent batches. ``sort``: in name order (the listing's
    names are held; otherwise nothing per file is)."""
    stems: Iterable[tuple[str, str]] = _stems(root, sub, part, only)
    if sort:
        stems = sorted(stems)
    paths: dict[str, str] = {}

    def gen() -> Iterator[str]:
        for stem, path in stems:
            paths[path] = stem
            yield path

    for path, data in read_many(root.fs, gen()):
        stem = paths.pop(path, None) or paths.pop(root.fs._strip_protocol(path), None) or base_name(path)[:-5]
        if isinstance(data, BaseException):
            yield stem, None
            continue
        try:
            d = json.loads(data)
        except ValueError:
            d = None
        yield stem, d if isinstance(d, dict) else None


def read_json_dir(root: DatasetRoot, sub: str) -> dict[str, dict[str, Any]]:
    """``{stem: parsed JSON}`` of the ``*.json`` files in ``root/sub`` (unreadable files skipped).
    Holds every file: for small directories (failures); :func:`iter_json_dir` streams."""
    return {k: v for k, v in iter_json_dir(root, sub) if v is not None}


def shard_sizes(root: DatasetRoot) -> tuple[dict[str, int], list[str]]:
    """``({shard name: size}, [temporary file names])`` of ``shards/``: one streamed listing."""
    sizes: dict[str, int] = {}
    temps: list[str] = []
    for e in iter_files(root.fs, root.join(SHARDS_DIR)):
        name = base_name(e["name"])
        if name.startswith(".") and TMP_MARKER in name:
            temps.append(name)
        elif name.endswith(".tar"):
            sizes[name] = int(e["size"])
    return sizes, temps


def marker_records(root: DatasetRoot, marker: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The manifest rows of a marker's shards: its own ``"records"``, or (an older marker) the
    shards' records read from ``records/`` (None if one is missing or differs from the marker)."""
    recs = marker.get("records")
    if isinstance(recs, list):
        return recs
    out = []
    shards = marker.get("shards") or []
    paths = [root.record_path(base_name(str(s.get("shard")))) for s in shards if isinstance(s, dict)]
    if len(paths) != len(shards):
        return None
    for (_, data), s in zip(read_many(root.fs, paths), shards):
        try:
            if isinstance(data, BaseException):
                raise data
            rec = ShardRecord.from_dict(json.loads(data)).as_dict()
        except (ValueError, TypeError, OSError):
            return None
        if rec["sha256"] != s.get("sha256") or rec["shard"] != s.get("shard"):
            return None
        out.append(rec)
    return out


def check_marker(sid: str, marker: dict[str, Any] | None, records: list[dict[str, Any]] | None,
                 sizes: dict[str, int]) -> str | None:
    """Why a subject with this marker is not complete (None when it is): see the module docstring."""
    if marker is None:
        return "unreadable marker"
    if marker.get("subject_id") != sid or not is_valid_id(sid):
        return f"marker names subject {marker.get('subject_id')!r}"
    shards = marker.get("shards") or []
    if not shards or records is None or len(records) != len(shards):
        return "marker lists no shards, or their records are missing"
    for s, r in zip(shards, records):
        name = base_name(str(r.get("shard")))
        if r.get("shard") != s.get("shard") or r.get("sha256") != s.get("sha256") or r.get("shard") != f"{SHARDS_DIR}/{name}":
            return f"marker's shard {s.get('shard')!r} differs from its record"
        if sizes.get(name) != r.get("num_bytes"):
            return f"shard {name} is missing or has another size than its record says"
    return None


def iter_complete(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                  config_hash: str | None = None, part: tuple[int, int] | None = None,
                  sizes: dict[str, int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(subject_id, marker)`` of complete subjects (optionally only those written with
    ``config_hash``, only those of ``part``), streamed: one listing of ``shards/`` (names and
    sizes) and of ``subjects/``, each marker read once."""
    root = DatasetRoot.open(root_url, storage_options)
    if sizes is None:
        sizes = shard_sizes(root)[0]
    for sid, marker in iter_json_dir(root, SUBJECTS_DIR, part):
        if marker is None or (config_hash is not None and marker.get("config_hash") != config_hash):
            continue
        if check_marker(sid, marker, marker_records(root, marker), sizes) is None:
            yield sid, marker


def complete_subjects(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                      config_hash: str | None = None) -> dict[str, dict[str, Any]]:
    """Done markers of complete subjects (:func:`iter_complete`), optionally only those written with
    ``config_hash``. Holds every marker: :func:`iter_complete` streams."""
    return dict(iter_complete(root_url, storage_options, config_hash))


def record_failure(root_url: str | DatasetRoot, failure: dict[str, Any],
                   storage_options: dict[str, Any] | None = None) -> None:
    """Write ``failures/{subject_id}.json`` (error type, message, attempts, ...)."""
    root = DatasetRoot.open(root_url, storage_options)
    name = safe_id(str(failure["subject_id"]))  # never a path outside failures/ (facegs.core.ids)
    put_bytes_atomic(root.fs, root.join(FAILURES_DIR, f"{name}.json"), canonical_json(failure))


def index_row(sid: str, marker: dict[str, Any]) -> dict[str, Any]:
    """The subject's row of ``subjects.parquet`` (:data:`SUBJECT_INDEX_SCHEMA`) from its marker."""
    q = marker.get("quality")
    qv = q.get("quality") if isinstance(q, dict) else None
    hf = marker.get("head_frame")
    return {"subject_id": sid, "config_hash": marker.get("config_hash"), "num_shards": len(marker.get("shards") or []),
            "num_samples": int(marker.get("num_samples") or 0),
            "quality": float(qv) if isinstance(qv, (int, float)) and not isinstance(qv, bool) else None,
            "head_frame_source": hf.get("source") if isinstance(hf, dict) else None,
            "url": marker.get("url"), "facegs_version": marker.get("facegs_version")}
