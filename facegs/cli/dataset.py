"""``facegs dataset``: inspect and tidy a shard dataset root (local path or fsspec URL).

- ``facegs dataset info ROOT``: shards, samples, subjects, the yaw/pitch histogram, failed subjects
  and leftovers (orphans) — read from the manifest, the done markers and a listing.
- ``facegs dataset sheet ROOT --out sheet.png``: contact sheet of samples spread over yaw.
- ``facegs dataset finalize ROOT``: delete leftovers of interrupted runs and re-merge the manifest
  (only when no factory run is writing to ROOT).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from facegs.factory.markers import FAILURES_DIR, complete_subjects, finalize, read_json_dir
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
    info = {"root": a.root, "shards": len(rows), "samples": int(sum(r["num_samples"] for r in rows)),
            "bytes": int(sum(r["num_bytes"] for r in rows)), "subjects": len(subjects),
            "complete_subjects": len(complete_subjects(root)), "label_sets": sorted({r["label_set"] for r in rows}),
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
    for k, v in info["failed_subjects"].items():
        print(f"failed: {k}: {v}")
    if orphans:
        print(f"leftovers: {len(orphans.shards)} orphan shards, {len(orphans.temp_files)} temp files, "
              f"{len(orphans.invalid_records)} invalid records (facegs dataset finalize removes them)")
    return 0


def cmd_sheet(a: argparse.Namespace) -> int:
    out = write_shard_contact_sheet(a.root, a.out, max_samples=a.max_samples, tile=a.tile, storage_options=_so(a))
    print(f"wrote {out}")
    return 0


def cmd_finalize(a: argparse.Namespace) -> int:
    print(json.dumps(finalize(a.root, _so(a)), indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect or tidy a shard dataset root (info, sheet, finalize)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="dataset_cmd", required=True)
    for name, fn, hlp in (("info", cmd_info, "manifest summary, pose histogram, failures, leftovers"),
                          ("sheet", cmd_sheet, "contact sheet of samples spread over yaw"),
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
