"""Classifying what lies under a dataset root: committed shards, orphans, temporary files, invalid records.

A shard without a valid record is an orphan (a crash between the two writes, or a rerun in
progress); a record whose shard is missing or whose size (or sha256) does not match is invalid.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from facegs.core.hashing import sha256_of
from facegs.core.storage import TMP_MARKER
from facegs.shards.root import RECORDS_DIR, SHARDS_DIR, DatasetRoot, ShardRecord, Verify, record_name
from facegs.shards.writer import SHARD_NAME_RE


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
    return sorted(valid, key=lambda r: r.shard), report, shards


def list_committed(root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None,
                   verify: Verify = "size") -> list[ShardRecord]:
    """Records whose shard exists and matches (``verify``: "none", "size" or "sha256"), by shard path."""
    return _scan(DatasetRoot.open(root_url, storage_options), verify)[0]


def subject_records(root_url: str | DatasetRoot, subject_id: str, storage_options: dict[str, Any] | None = None,
                    verify: Verify = "size") -> list[ShardRecord]:
    """Committed records of the shards with prefix ``subject_id``, in index order."""
    pat = re.compile(SHARD_NAME_RE.format(prefix=re.escape(subject_id), ext="tar"))
    recs = [r for r in list_committed(root_url, storage_options, verify) if pat.match(r.name)]
    return sorted(recs, key=lambda r: r.shard_index)


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
        infos = {root.relative(e["name"]): e for sub in (SHARDS_DIR, RECORDS_DIR) for e in root.list_dir(sub)}
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
