"""Structure-from-motion on synthetic subjects: an outside check of their realism and of ingestion.

For each (seed, background): generate a subject with facegs.synth (its exact cameras are the
reference), strip the calibration, run ``facegs ingest --format images`` (pycolmap SIFT +
exhaustive matching + incremental mapping, CPU), align the SfM camera centres to the reference by a
similarity and report: registered / total views, median and max rotation error (degrees), median and
max camera-centre error relative to the rig radius, median focal-length error, SfM points, mean
reprojection error and run time. Pass criteria used by tests/test_sfm_realism.py: >= 90 % registered
and median rotation error <= 2 degrees.

Usage:
    .venv/bin/python bench/sfm_realism.py                      # seed 0, world background, profiles auto + colmap
    .venv/bin/python bench/sfm_realism.py --seeds 0 1 2 --backgrounds world random --threads 2

Prints a table and writes bench/out/sfm_realism.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pycolmap

from facegs.core.errors import InputError
from facegs.ingest.compare import sfm_cross_check
from facegs.synth.generate import generate_subject

COLUMNS = (
    ("seed", "seed", "{}"),
    ("background", "background", "{}"),
    ("sfm profile", "profile", "{}"),
    ("registered", "registered", "{}"),
    ("rot med (deg)", "rotation_median_deg", "{:.3f}"),
    ("rot max (deg)", "rotation_max_deg", "{:.3f}"),
    ("centre med (rel)", "center_median_rel", "{:.4f}"),
    ("centre max (rel)", "center_max_rel", "{:.4f}"),
    ("focal err med", "focal_rel_error_median", "{:.4f}"),
    ("points", "points", "{}"),
    ("reproj (px)", "reproj_px", "{:.3f}"),
    ("sfm s", "seconds", "{:.1f}"),
    ("render s", "generate_seconds", "{:.0f}"),
)


def run_subject(work: Path, seed: int, background: str, args: argparse.Namespace) -> list[dict]:
    """Generate one subject, then run the SfM check once per SfM profile."""
    t0 = time.perf_counter()
    m = generate_subject(work / f"synth_{background}", f"synth{seed}", seed, rig=args.rig, res=args.res, background=background)
    gen_s = time.perf_counter() - t0
    rows = []
    for profile in args.profiles:
        try:
            r = sfm_cross_check(m.root, work / f"sfm_{seed}_{background}_{profile}", num_threads=args.threads,
                                camera_model=args.camera_model, profile=profile)
        except InputError as e:  # SfM failed outright: a row that says so
            r = {"num_registered": 0, "registered_fraction": 0.0, "error": str(e), "sfm": {}}
            r.update({k: float("nan") for k in ("rotation_median_deg", "rotation_max_deg", "center_median_rel",
                                                  "center_max_rel", "focal_rel_error_median")})
        rows.append({
            "seed": seed,
            "background": background,
            "profile": profile,
            "rig": args.rig,
            "res": args.res,
            "registered": f"{r['num_registered']}/{len(m.views)}",
            "points": r["sfm"].get("num_points3d", 0),
            "reproj_px": r["sfm"].get("mean_reprojection_error_px", float("nan")),
            "seconds": r["sfm"].get("seconds", float("nan")),
            "generate_seconds": round(gen_s, 1),
            "pass": r["registered_fraction"] >= 0.9 and r["rotation_median_deg"] <= 2.0,
            **r,
        })
    return rows


def _finite(x):
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def table(rows: list[dict]) -> str:
    head = [c[0] for c in COLUMNS] + ["pass"]
    body = [[fmt.format(r[key]) for _, key, fmt in COLUMNS] + ["yes" if r["pass"] else "NO"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(x.ljust(w) for x, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--backgrounds", nargs="+", default=["world"])
    ap.add_argument("--rig", default="facescape")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for pycolmap (-1: all)")
    ap.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model SfM estimates")
    ap.add_argument("--profiles", nargs="+", default=["auto", "colmap"],
                    help="SfM threshold profiles to compare (facegs.ingest.sfm.SfmOptions.profile)")
    ap.add_argument("--work", type=Path, help="keep generated subjects and SfM outputs here (default: temporary)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "sfm_realism.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="facegs-sfm-bench-") as tmp:
        work = args.work or Path(tmp)
        rows = [row for s in args.seeds for bg in args.backgrounds for row in run_subject(work, s, bg, args)]
    print(table(rows))
    doc = {
        "benchmark": "sfm_realism",
        "command": "bench/sfm_realism.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("work", "out") and v is not None
        ),
        "pycolmap": pycolmap.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "criteria": {"registered_fraction_min": 0.9, "rotation_median_deg_max": 2.0},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(doc), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
