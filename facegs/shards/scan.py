"""Classifying what lies under a dataset root: committed shards, orphans, temporary files, invalid records.

A shard without a valid record is an orphan (a crash between the two writes, or a rerun in
progress); a record whose shard is missing or whose size (or sha256) does not match is invalid.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from facegs.core.hashing import sha256_of
from facegs.core.ids import check_id
from facegs.core.storage import TMP_MARKER
from facegs.shards.listing import base_name, iter_files, read_many
from facegs.shards.root import RECORDS_DIR, SHARDS_DIR, DatasetRoot, ShardRecord, Verify, record_name
from facegs.shards.schema import shard_name


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


def _scan(root: DatasetRoot, verify: Verify) -> tuple[list[ShardRecord], OrphanReport, dict[str, dict]]:
    """Classify everything under shards/ and records/: valid records, leftovers, and the listing's
    file infos (by shard name and by relative path). One streamed listing per directory, each record
    read once."""
    if verify not in ("none", "size", "sha256"):
        raise ValueError(f"verify must be 'none', 'size' or 'sha256', got {verify!r}")
    report = OrphanReport()
    shards: dict[str, dict] = {}
    infos: dict[str, dict] = {}  # relative path -> listing info, for find_orphans' age filter
    for e in iter_files(root.fs, root.join(SHARDS_DIR)):  # streamed page by page
        name = base_name(e["name"])
        if name.startswith(".") and TMP_MARKER in name:
            report.temp_files.append(f"{SHARDS_DIR}/{name}")
            infos[f"{SHARDS_DIR}/{name}"] = e
        elif name.endswith(".tar"):
            shards[name] = e
    valid: list[ShardRecord] = []

    def record_paths() -> Iterator[str]:
        for e in iter_files(root.fs, root.join(RECORDS_DIR)):
            name = base_name(e["name"])
            if name.startswith(".") and TMP_MARKER in name:
                report.temp_files.append(f"{RECORDS_DIR}/{name}")
                infos[f"{RECORDS_DIR}/{name}"] = e
            elif name.endswith(".json"):
                infos[f"{RECORDS_DIR}/{name}"] = e
                yield e["name"]

    # each record read once, in concurrent batches (async filesystems such as s3fs); errors come back as values
    for path, data in read_many(root.fs, record_paths()):
        name = base_name(path)
        rel = f"{RECORDS_DIR}/{name}"
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
        if rec.shard != f"{SHARDS_DIR}/{rec.name}" or record_name(rec.name) != name:
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
    shards.update({f"{SHARDS_DIR}/{n}": e for n, e in list(shards.items())})
    shards.update(infos)
    return sorted(valid, key=lambda r: r.shard), report, shards


def list_committed(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                   verify: Verify = "size") -> list[ShardRecord]:
    """Records whose shard exists and matches (``verify``: "none", "size" or "sha256"), by shard path."""
    return _scan(DatasetRoot.open(root_url, storage_options), verify)[0]


def subject_records(root_url: str | DatasetRoot, subject_id: str, storage_options: dict[str, Any] | None = None,
                    verify: Verify = "size") -> list[ShardRecord]:
    """Committed records of the shards with prefix ``subject_id``, in index order.

    Found by key (``records/{subject_id}-000000.json``, ``-000001``, ... up to the first missing one:
    a subject's records are contiguous, :func:`facegs.shards.writer.commit_subject`), never by a
    listing; each record must name its shard, which must exist and match (``verify``)."""
    check_id(subject_id)
    root = DatasetRoot.open(root_url, storage_options)
    out: list[ShardRecord] = []
    for idx in itertools.count():
        name = shard_name(subject_id, idx)
        try:
            rec = ShardRecord.from_dict(json.loads(root.fs.cat_file(root.record_path(name))))
        except FileNotFoundError:
            return out
        except (ValueError, TypeError):
            continue
        if rec.shard != f"{SHARDS_DIR}/{name}":
            continue
        try:
            info = root.fs.info(root.shard_path(name)) if verify != "none" else {}
        except FileNotFoundError:
            continue
        if verify != "none" and int(info.get("size", -1)) != rec.num_bytes:
            continue
        if verify == "sha256" and sha256_of(root.fs, root.shard_path(name)) != rec.sha256:
            continue
        out.append(rec)
    return out


def _old_enough(info: dict[str, Any] | None, min_age_s: float, now: float) -> bool:
    if min_age_s <= 0:
        return True
    t = _mtime(info or {})
    return t is not None and now - t >= min_age_s


def find_orphans(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                 verify: Verify = "size", min_age_s: float = 0.0) -> OrphanReport:
    """Shards without a valid record, temporary files and invalid records under the root.

    ``min_age_s`` > 0 leaves out files modified more recently than that (writes may be in
    progress); with 0, only call this when no writer is running.
    """
    root = DatasetRoot.open(root_url, storage_options)
    _, report, shard_infos = _scan(root, verify)
    if min_age_s > 0:
        now = time.time()
        infos = shard_infos  # the scan's own listing: nothing is listed twice
        report.shards = [p for p in report.shards if _old_enough(infos.get(p), min_age_s, now)]
        report.temp_files = [p for p in report.temp_files if _old_enough(infos.get(p), min_age_s, now)]
        report.invalid_records = [(p, r) for p, r in report.invalid_records
                                  if _old_enough(infos.get(p), min_age_s, now)]
    return report


def cleanup_orphans(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                    verify: Verify = "size", min_age_s: float = 0.0) -> OrphanReport:
    """Delete what :func:`find_orphans` reports (invalid records first, then shards and temp files)."""
    root = DatasetRoot.open(root_url, storage_options)
    report = find_orphans(root, verify=verify, min_age_s=min_age_s)
    for rel in [p for p, _ in report.invalid_records] + report.shards + report.temp_files:
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(rel))
    return report
