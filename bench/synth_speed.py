"""Benchmark facegs.synth: seconds to generate one 48-view subject (render + PNG writing).

Usage (from the repository root)::

    .venv/bin/python bench/synth_speed.py                      # res 128 and 256, 3 subjects, 1 thread
    .venv/bin/python bench/synth_speed.py --res 256 --subjects 5 --threads 2

Prints a table and writes ``bench/out/synth_speed.json``. Records the load average before and
after, because the numbers are only meaningful on a quiet machine (other processes on the same
cores slow every op down; with OpenMP spinning, two threads on a busy 2-core machine can be many
times slower than one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facegs.synth.generate import generate_subject, subject_seed  # noqa: E402
from facegs.synth.rigs import get_rig  # noqa: E402


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--subjects", type=int, default=3, help="subjects per resolution (seeds derived from --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rig", default="facescape")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "synth_speed.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    n_views = len(get_rig(args.rig, 64, 64))
    rows = []
    load_before = _load()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        generate_subject(tmp, "warmup", 1, rig=args.rig, res=64)  # imports, allocator warm-up
        for res in args.res:
            times, cpu = [], []
            for i in range(args.subjects):
                t0, c0 = time.perf_counter(), time.process_time()
                generate_subject(tmp, f"r{res}_{i}", subject_seed(args.seed, i), rig=args.rig, res=res)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            rows.append({
                "res": res,
                "views": n_views,
                "subjects": args.subjects,
                "wall_s_per_subject_median": round(statistics.median(times), 3),
                "wall_s_per_subject_min": round(min(times), 3),
                "cpu_s_per_subject_median": round(statistics.median(cpu), 3),
                "wall_s_per_view_median": round(statistics.median(times) / n_views, 4),
                "all_wall_s": [round(t, 3) for t in times],
            })
    result = {
        "benchmark": "facegs.synth generate_subject",
        "command": "bench/synth_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rig": args.rig,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": _load(),
        "total_s": round(time.perf_counter() - t_all, 2),
        "rows": rows,
    }
    print(f"facegs.synth, rig {args.rig} ({n_views} views), torch threads {torch.get_num_threads()}, "
          f"load before {load_before} after {result['loadavg_after']}")
    print(f"{'res':>5} {'subjects':>8} {'s/subject (median)':>19} {'s/subject (min)':>16} {'cpu s/subject':>14} {'s/view':>8}")
    for r in rows:
        print(f"{r['res']:>5} {r['subjects']:>8} {r['wall_s_per_subject_median']:>19.2f} {r['wall_s_per_subject_min']:>16.2f} "
              f"{r['cpu_s_per_subject_median']:>14.2f} {r['wall_s_per_view_median']:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
