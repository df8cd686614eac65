"""What the edge checks cost and what they save: reader verification and the decoded-pixel cap.

1. Reading a dataset with ``facegs.shards.stream.ShardDataset``, ``verify=True`` (each shard hashed
   and counted against its manifest row as it streams) against ``verify=False``, side by side in one
   run (passes alternate; the best of ``--repeats`` each): samples/s and CPU seconds per pass. The
   per-sample checks (metadata vs key, label range, finite pose, image headers) run in both.
2. A pixel bomb (a ~250 KB PNG declaring 16000 x 16000 pixels): the peak-memory growth of a fresh
   process that decodes it with OpenCV (what the readers did before the cap) and of one that reads
   it with ``facegs.core.imageio.read_rgb`` (refused from the header).

Usage:
    .venv/bin/python bench/edges.py                  # 4 shards of 64 samples of 256 x 256, jpg
    .venv/bin/python bench/edges.py --samples 32 --size 128 --repeats 2

Prints a table and writes bench/out/edges.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shard_io import synthetic_samples  # noqa: E402
from facegs.shards.manifest import merge_manifest  # noqa: E402
from facegs.shards.stream import ShardDataset  # noqa: E402
from facegs.shards.writer import commit_subject  # noqa: E402

RSS = """
import resource, sys
mode, path = sys.argv[1], sys.argv[2]
import cv2, numpy as np
from facegs.core.errors import InputError
from facegs.core.imageio import read_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = open(path, "rb").read()
try:
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if mode == "opencv" else read_rgb(path)
    result = "decoded" if out is not None else "failed"
except InputError:
    result = "refused"
print(result, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0)
"""


def read_pass(root: str, verify: bool) -> tuple[int, float, float]:
    t, c = time.perf_counter(), time.process_time()
    n = sum(1 for _ in ShardDataset(root, verify=verify))
    return n, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64, help="samples per shard")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "edges.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    res: dict = {"config": vars(a), "host": platform.node(), "load_avg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="facegs-bench-edges-") as tmp:
        root = f"{tmp}/ds"
        for i in range(a.shards):
            commit_subject(synthetic_samples(f"s{i}", a.samples, a.size, seed=i), root, f"s{i}", maxcount=a.samples)
        merge_manifest(root)
        best: dict[bool, tuple[int, float, float]] = {}
        for _ in range(a.repeats):
            for verify in (True, False):
                n, wall, cpu = read_pass(root, verify)
                if verify not in best or wall < best[verify][1]:
                    best[verify] = (n, wall, cpu)
        for verify, (n, wall, cpu) in best.items():
            res[f"read_verify_{verify}"] = {"samples": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                                           "samples_per_s": round(n / wall, 1)}
        res["verify_cpu_ratio"] = round(best[True][2] / best[False][2], 3)
        bomb = Path(tmp) / "bomb.png"
        buf = io.BytesIO()
        Image.new("L", (16000, 16000)).save(buf, format="PNG")
        bomb.write_bytes(buf.getvalue())
        res["bomb_bytes"] = bomb.stat().st_size
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for mode in ("opencv", "facegs"):
            out = subprocess.run([sys.executable, "-c", RSS, mode, str(bomb)], capture_output=True, text=True, env=env,
                                 timeout=300).stdout.split()
            res[f"bomb_{mode}"] = {"result": out[0], "peak_rss_growth_mb": round(float(out[1]), 1)}
    res["load_avg_after"] = os.getloadavg()
    print(f"load average {res['load_avg'][0]:.2f} (after {res['load_avg_after'][0]:.2f}); "
          f"{a.shards} shards x {a.samples} samples of {a.size} px, best of {a.repeats}")
    print(f"{'read':32s} {'samples/s':>10s} {'wall s':>8s} {'CPU s':>8s}")
    for verify in (True, False):
        r = res[f"read_verify_{verify}"]
        print(f"{'ShardDataset verify=' + str(verify):32s} {r['samples_per_s']:10.1f} {r['wall_s']:8.3f} {r['cpu_s']:8.3f}")
    print(f"CPU ratio verify on / off: {res['verify_cpu_ratio']:.3f}")
    print(f"pixel bomb ({res['bomb_bytes'] / 1024:.0f} KB, 16000 x 16000):")
    for mode in ("opencv", "facegs"):
        r = res[f"bomb_{mode}"]
        print(f"  {mode:8s} {r['result']:8s} peak RSS +{r['peak_rss_growth_mb']:.0f} MB")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
