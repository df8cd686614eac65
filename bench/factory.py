"""Factory overheads, side by side in one run (ratios; absolute times are noisy on shared machines).

1. **Shard writing**: ``facegs.shards.writer.write_shards`` (USTAR tar, fixed metadata, atomic publish with
   fsync, per-shard record JSON, then the merged Parquet manifest) against plain ``tarfile``
   writing the *same member bytes* to the same number of files. Encoding (JPEG/PNG) is done once
   beforehand and excluded from both; it is reported on its own.
2. **Shard reading** of the same shards: ``facegs.shards.stream.ShardDataset`` (safe tar checks, decode of
   RGB, labels, confidence, ignore and JSON) against plain ``tarfile`` (raw bytes grouped by key;
   and raw bytes + the same decoders) and ``ray.data.read_webdataset`` (its default decoding).
3. **Scheduling overhead** of ``ray_jobs/build_dataset.py``: N tiny subjects on M actors against
   N/M times the wall time of one subject on one actor (same settings, same local Ray).

    .venv/bin/python bench/factory.py                      # 256 samples of 256 px; 4 subjects on 2 actors
    .venv/bin/python bench/factory.py --samples 512 --subjects 8 --actors 2

Prints a table and writes bench/out/factory.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shard_io import synthetic_samples  # noqa: E402

from facegs.shards.encode import encode_samples  # noqa: E402
from facegs.shards.manifest import merge_manifest, read_manifest  # noqa: E402
from facegs.shards.stages import decode_sample, group_by_key  # noqa: E402
from facegs.shards.stream import ShardDataset  # noqa: E402
from facegs.shards.writer import write_shards  # noqa: E402


def bench_write(samples, fmt: str, maxcount: int, tmp: Path, repeats: int) -> dict:
    t0 = time.perf_counter()
    encoded = list(encode_samples(samples, fmt))
    t_encode = time.perf_counter() - t0
    nbytes = sum(e.nbytes for e in encoded)
    chunks = [encoded[i:i + maxcount] for i in range(0, len(encoded), maxcount)]
    t_facegs, t_tar = [], []
    for r in range(repeats):  # interleaved, best of `repeats` each
        root = tmp / f"facegs_{r}"
        t0 = time.perf_counter()
        write_shards(encoded, str(root), "bench", maxcount=maxcount)
        merge_manifest(str(root))
        t_facegs.append(time.perf_counter() - t0)
        plain = tmp / f"plain_{r}"
        plain.mkdir()
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            with tarfile.open(plain / f"bench-{i:06d}.tar", "w") as tf:
                for e in chunk:
                    for fld, data in e.members:
                        ti = tarfile.TarInfo(f"{e.key}.{fld}")
                        ti.size = len(data)
                        tf.addfile(ti, io.BytesIO(data))
        t_tar.append(time.perf_counter() - t0)
    tf_, tt = min(t_facegs), min(t_tar)
    return {"samples": len(encoded), "shards": len(chunks), "mbytes": nbytes / 1e6, "encode_s": t_encode,
            "encode_ms_per_sample": 1e3 * t_encode / len(encoded), "facegs_write_s": tf_, "tarfile_write_s": tt,
            "facegs_samples_per_s": len(encoded) / tf_, "tarfile_samples_per_s": len(encoded) / tt,
            "facegs_mb_per_s": nbytes / 1e6 / tf_, "tarfile_mb_per_s": nbytes / 1e6 / tt,
            "throughput_ratio_facegs_over_tarfile": tt / tf_, "root": str(tmp / "facegs_0")}


def _tar_members(path: str):
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if m.isfile():
                yield m.name, tf.extractfile(m).read()


def bench_read(root: str, repeats: int) -> dict:
    import ray

    paths = [f"{root}/{s}" for s in read_manifest(root).column("shard").to_pylist()]
    n_expected = int(sum(read_manifest(root).column("num_samples").to_pylist()))
    times: dict[str, list[float]] = {k: [] for k in ("facegs_stream", "tarfile_raw", "tarfile_decode", "ray_data")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = sum(1 for _ in ShardDataset(root))
            times["facegs_stream"].append(time.perf_counter() - t0)
            assert n == n_expected
            t0 = time.perf_counter()
            n = sum(1 for p in paths for _ in group_by_key(_tar_members(p), p))
            times["tarfile_raw"].append(time.perf_counter() - t0)
            assert n == n_expected
            t0 = time.perf_counter()
            n = sum(1 for p in paths for r in group_by_key(_tar_members(p), p) if decode_sample(r))
            times["tarfile_decode"].append(time.perf_counter() - t0)
            assert n == n_expected
            t0 = time.perf_counter()
            n = sum(1 for _ in ray.data.read_webdataset(paths).iter_rows())
            times["ray_data"].append(time.perf_counter() - t0)
            assert n == n_expected
    finally:
        ray.shutdown()
    best = {k: min(v) for k, v in times.items()}
    out = {f"{k}_samples_per_s": n_expected / v for k, v in best.items()}
    out.update({f"{k}_s": v for k, v in best.items()})
    out["ratio_facegs_over_tarfile_raw"] = best["tarfile_raw"] / best["facegs_stream"]
    out["ratio_facegs_over_tarfile_decode"] = best["tarfile_decode"] / best["facegs_stream"]
    out["ratio_facegs_over_ray_data"] = best["ray_data"] / best["facegs_stream"]
    return out


def bench_scheduling(n_subjects: int, n_actors: int, tmp: Path, steps: int, renders: int) -> dict:
    import ray

    from facegs.synth.generate import generate_subject
    from ray_jobs import build_dataset

    subj = tmp / "subjects"
    for i in range(n_subjects):
        generate_subject(subj, f"s{i}", 7, rig="nersemble", res=64, background="plain")  # equal content
    one = tmp / "one.txt"
    one.write_text(f"{subj / 's0'}\n")
    common = ["--labels", "noise:pixel:0.3", "--preset", "test", "--steps", str(steps), "--renders", str(renders),
              "--no-progress", "--cpus-per-actor", "1"]
    ray.init(num_cpus=n_actors, include_dashboard=False, log_to_driver=False)
    try:
        build_dataset.main(["--subjects", str(one), "--out", str(tmp / "warmup"), "--actors", "1", *common])
        t0 = time.perf_counter()
        assert build_dataset.main(["--subjects", str(one), "--out", str(tmp / "ds1"), "--actors", "1", *common]) == 0
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert build_dataset.main(["--subjects", str(subj), "--out", str(tmp / "dsN"), "--actors", str(n_actors),
                                   *common]) == 0
        tn = time.perf_counter() - t0
    finally:
        ray.shutdown()
    per1 = pq.read_table(tmp / "ds1" / "results.parquet").column("seconds_total").to_pylist()
    pern = pq.read_table(tmp / "dsN" / "results.parquet").column("seconds_total").to_pylist()
    ideal = n_subjects / n_actors * t1
    return {"subjects": n_subjects, "actors": n_actors, "one_subject_wall_s": t1, "n_subjects_wall_s": tn,
            "ideal_wall_s": ideal, "ratio_wall_over_ideal": tn / ideal,
            "subject_compute_s_alone": float(np.mean(per1)), "subject_compute_s_in_parallel": float(np.mean(pern)),
            "subjects_per_hour": 3600 * n_subjects / tn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--maxcount", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--steps", type=int, default=80, help="fit steps of the scheduling subjects")
    ap.add_argument("--renders", type=int, default=8)
    ap.add_argument("--skip-scheduling", action="store_true")
    ap.add_argument("--skip-io", action="store_true", help="only the scheduling measurement")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "factory.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        w = r = None
        if not a.skip_io:
            w = bench_write(synthetic_samples("bench", a.samples, a.size), a.format, a.maxcount, Path(tmp), a.repeats)
            r = bench_read(w["root"], a.repeats)
        s = None if a.skip_scheduling else bench_scheduling(a.subjects, a.actors, Path(tmp) / "sched", a.steps,
                                                            a.renders)
    if w is not None:
        print_io(a, w, r)
    if s:
        print(f"\nscheduling: {s['subjects']} subjects on {s['actors']} actors {s['n_subjects_wall_s']:.1f} s vs "
              f"{s['subjects']}/{s['actors']} x one subject on one actor ({s['one_subject_wall_s']:.1f} s) = "
              f"{s['ideal_wall_s']:.1f} s -> ratio {s['ratio_wall_over_ideal']:.2f}; per-subject compute "
              f"{s['subject_compute_s_alone']:.1f} s alone, {s['subject_compute_s_in_parallel']:.1f} s in parallel")
    env = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
           "load_avg_1min_start": load0, "load_avg_1min_end": os.getloadavg()[0]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "args": vars(a), "write": w, "read": r, "scheduling": s},
                                      indent=2))
    print(f"\nwrote {a.out}")


def print_io(a: argparse.Namespace, w: dict, r: dict) -> None:
    print(f"\n{a.samples} samples {a.size}x{a.size} {a.format}, {w['shards']} shards, {w['mbytes']:.1f} MB; "
          f"encode {w['encode_ms_per_sample']:.1f} ms/sample (excluded below)")
    print(f"{'what':44s} {'samples/s':>10s} {'ratio':>7s}")
    rows = [("write: facegs.shards.writer (atomic+records+manifest)", w["facegs_samples_per_s"], 1.0),
            ("write: plain tarfile, same bytes", w["tarfile_samples_per_s"],
             w["tarfile_samples_per_s"] / w["facegs_samples_per_s"]),
            ("read: facegs.shards.stream.ShardDataset (decoded)", r["facegs_stream_samples_per_s"], 1.0),
            ("read: plain tarfile, raw bytes", r["tarfile_raw_samples_per_s"],
             r["tarfile_raw_samples_per_s"] / r["facegs_stream_samples_per_s"]),
            ("read: plain tarfile + same decoders", r["tarfile_decode_samples_per_s"],
             r["tarfile_decode_samples_per_s"] / r["facegs_stream_samples_per_s"]),
            ("read: ray.data.read_webdataset (decoded)", r["ray_data_samples_per_s"],
             r["ray_data_samples_per_s"] / r["facegs_stream_samples_per_s"])]
    for name, v, ratio in rows:
        print(f"{name:44s} {v:10.1f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
