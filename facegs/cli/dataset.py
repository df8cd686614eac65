"""``facegs dataset``: inspect and tidy a shard dataset root (local path or fsspec URL).

- ``facegs dataset info ROOT``: shards, samples, subjects, the yaw/pitch histogram, the subjects'
  quality distribution (count, min, p10, median, p90, max; how many lie below the last run's
  ``--min-quality``), failed subjects and leftovers (orphans) — read from the manifest, the subject
  index ``subjects.parquet`` (the done markers of an older root), ``summary.json`` and a listing.
- ``facegs dataset sheet ROOT --out sheet.png``: contact sheet of samples spread over yaw.
- ``facegs dataset verify ROOT``: read every shard of the manifest and check it against its row
  (sha256, bytes, sample count); exit status 1 when any differs.
- ``facegs dataset finalize ROOT``: delete leftovers of interrupted runs and re-merge the manifest
  (only when no factory run is writing to ROOT).
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facegs.core.errors import InputError
from facegs.factory.finalize import finalize
from facegs.factory.markers import FAILURES_DIR, SUBJECT_INDEX, SUMMARY_NAME, complete_subjects, read_json_dir
from facegs.shards.integrity import ShardExpectation, iter_verified_samples
from facegs.shards.manifest import read_manifest
from facegs.shards.root import DatasetRoot
from facegs.shards.scan import find_orphans
from facegs.shards.schema import PITCH_EDGES, YAW_EDGES
from facegs.shards.sheet import write_shard_contact_sheet


def _so(a: argparse.Namespace) -> dict[str, Any] | None:
    return json.loads(a.storage_options) if a.storage_options else None


def _bars(counts: list[int], edges: np.ndarray, width: int = 40) -> list[str]:
    top = max(max(counts), 1)
    return [f"  {lo:+5.0f}..{hi:+4.0f}  {c:6d}  {'#' * round(width * c / top)}"
            for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def cmd_info(a: argparse.Namespace) -> int:
    so = _so(a)
    root = DatasetRoot.open(a.root, so)
    t = read_manifest(root)
    rows = t.to_pylist()
    yaw = np.sum([r["yaw_hist"] for r in rows], axis=0).astype(int).tolist() if rows else [0] * (len(YAW_EDGES) - 1)
    pitch = (np.sum([r["pitch_hist"] for r in rows], axis=0).astype(int).tolist() if rows
             else [0] * (len(PITCH_EDGES) - 1))
    subjects = sorted({s for r in rows for s in r["subjects"]})
    failures = read_json_dir(root, FAILURES_DIR)
    orphans = find_orphans(root)
    qualities, n_complete = _qualities(root)
    info = {"root": a.root, "shards": len(rows), "samples": int(sum(r["num_samples"] for r in rows)),
            "bytes": int(sum(r["num_bytes"] for r in rows)), "subjects": len(subjects),
            "complete_subjects": n_complete, "quality": quality_distribution(qualities, _min_quality(root)),
            "label_sets": sorted({r["label_set"] for r in rows}),
            "config_hashes": sorted({r["config_hash"] for r in rows}), "yaw_hist": yaw, "pitch_hist": pitch,
            "failed_subjects": {k: f"{v.get('error_type')}: {v.get('message')}" for k, v in failures.items()},
            "orphan_shards": orphans.shards, "temp_files": orphans.temp_files,
            "invalid_records": [f"{p}: {why}" for p, why in orphans.invalid_records]}
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{a.root}: {info['samples']} samples in {info['shards']} shards ({info['bytes'] / 1e6:.1f} MB), "
          f"{info['subjects']} subjects; label set {', '.join(info['label_sets']) or '-'}; "
          f"config {', '.join(info['config_hashes']) or '-'}")
    print("yaw (deg):", *_bars(yaw, YAW_EDGES), sep="\n")
    print("pitch (deg):", *_bars(pitch, PITCH_EDGES), sep="\n")
    q = info["quality"]
    if q["count"]:
        below = (f"; {q['below_min_quality']} below --min-quality {q['min_quality']:g}"
                 if q.get("min_quality") is not None else "")
        print(f"quality of {q['count']} subjects: min {q['min']:.3f}, p10 {q['p10']:.3f}, median {q['median']:.3f}, "
              f"p90 {q['p90']:.3f}, max {q['max']:.3f}{below}")
    for k, v in info["failed_subjects"].items():
        print(f"failed: {k}: {v}")
    if orphans:
        print(f"leftovers: {len(orphans.shards)} orphan shards, {len(orphans.temp_files)} temp files, "
              f"{len(orphans.invalid_records)} invalid records (facegs dataset finalize removes them)")
    return 0


def _qualities(root: DatasetRoot) -> tuple[list[float], int]:
    """The quality scores of the complete subjects and their count: from the subject index
    (``subjects.parquet``, written by finalize), else from the done markers (an older root)."""
    try:
        t = pq.read_table(io.BytesIO(root.fs.cat_file(root.join(SUBJECT_INDEX))), columns=["quality"])
    except (FileNotFoundError, pa.ArrowException, OSError):
        markers = complete_subjects(root)
        q = [m.get("quality", {}).get("quality") if isinstance(m.get("quality"), dict) else None
             for m in markers.values()]
        return [float(x) for x in q if isinstance(x, (int, float))], len(markers)
    return [float(x) for x in t.column("quality").to_pylist() if x is not None], t.num_rows


def _min_quality(root: DatasetRoot) -> float | None:
    """The last run's ``--min-quality`` (from ``summary.json``), None when unknown."""
    try:
        v = json.loads(root.fs.cat_file(root.join(SUMMARY_NAME)))["config"]["min_quality"]
    except (FileNotFoundError, ValueError, KeyError, TypeError, OSError):
        return None
    return float(v) if isinstance(v, (int, float)) else None


def quality_distribution(values: list[float], min_quality: float | None) -> dict[str, Any]:
    """count, min, p10, median, p90, max of the subjects' quality scores, and how many lie below
    ``min_quality`` (the run's ``--min-quality``, when known)."""
    out: dict[str, Any] = {"count": len(values), "min_quality": min_quality}
    if values:
        v = np.asarray(values, dtype=np.float64)
        out.update({"min": round(float(v.min()), 4), "p10": round(float(np.percentile(v, 10)), 4),
                    "median": round(float(np.median(v)), 4), "p90": round(float(np.percentile(v, 90)), 4),
                    "max": round(float(v.max()), 4)})
        if min_quality is not None:
            out["below_min_quality"] = int((v < min_quality).sum())
    return out


def cmd_sheet(a: argparse.Namespace) -> int:
    out = write_shard_contact_sheet(a.root, a.out, max_samples=a.max_samples, tile=a.tile, storage_options=_so(a))
    print(f"wrote {out}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    """Stream every shard of the manifest against its row (sha256, bytes, sample count); exit 1 if
    any differs or is missing (one line each)."""
    root = DatasetRoot.open(a.root, _so(a))
    rows = read_manifest(root).select(["shard", "num_samples", "num_bytes", "sha256"]).to_pylist()
    bad = 0
    for r in rows:
        expect = ShardExpectation(int(r["num_samples"]), int(r["num_bytes"]), str(r["sha256"]))
        try:
            for _ in iter_verified_samples(root.fs, root.join(r["shard"]), r["shard"], expect):
                pass
        except InputError as e:
            bad += 1
            print(f"bad: {e}")
    print(f"{len(rows) - bad} of {len(rows)} shards match the manifest")
    return 1 if bad else 0


def cmd_finalize(a: argparse.Namespace) -> int:
    print(json.dumps(finalize(a.root, _so(a)), indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect or tidy a shard dataset root (info, sheet, verify, finalize)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="dataset_cmd", required=True)
    for name, fn, hlp in (("info", cmd_info, "manifest summary, pose histogram, failures, leftovers"),
                          ("sheet", cmd_sheet, "contact sheet of samples spread over yaw"),
                          ("verify", cmd_verify, "check every shard against its manifest row (sha256, size, count)"),
                          ("finalize", cmd_finalize, "remove leftovers and re-merge the manifest")):
        q = dsub.add_parser(name, help=hlp, description=hlp)
        q.add_argument("root", metavar="ROOT", help="dataset root (path or fsspec URL)")
        q.add_argument("--storage-options", default=None, help="JSON dict of fsspec storage options")
        q.set_defaults(func=fn)
        if name == "info":
            q.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "sheet":
            q.add_argument("--out", required=True, help="output PNG/JPEG path")
            q.add_argument("--max-samples", type=int, default=24)
            q.add_argument("--tile", type=int, default=128)
