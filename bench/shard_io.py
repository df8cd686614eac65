"""Shard I/O speed: encoding, writing (file://, memory://, a local moto S3 server) and reading back.

Samples: synthetic S x S views (smooth RGB + noise, a 19-class label map, random confidence).
Measures, per filesystem: ``commit_subject`` (encode + tar + atomic publish + records) and a full
read with ``facegs.shards.stream.ShardDataset`` (fsspec stream, safe tar checks, decode); locally also
webdataset's reader with the same decoders, for reference.

Usage:
    .venv/bin/python bench/shard_io.py                       # 64 samples of 256 x 256, jpg
    .venv/bin/python bench/shard_io.py --samples 256 --size 512 --format png --no-s3

Prints a table and writes bench/out/shard_io.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from facegs.shards.encode import Sample, encode_sample
from facegs.shards.manifest import merge_manifest
from facegs.shards.schema import sample_key
from facegs.shards.stages import decode_sample
from facegs.shards.stream import ShardDataset
from facegs.shards.writer import commit_subject


def synthetic_samples(subject: str, n: int, size: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for v in range(n):
        rgb = np.stack([(xx + v) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.int32)
        rgb = np.clip(rgb + rng.integers(0, 12, rgb.shape), 0, 255).astype(np.uint8)
        seg = ((xx // max(size // 8, 1) + yy // max(size // 8, 1)) % 19).astype(np.uint8)
        f = size / 2.0
        meta = {"schema_version": 1, "key": sample_key(subject, v), "subject_id": subject, "view_index": v,
                "source": "render", "width": size, "height": size, "yaw": float(rng.uniform(-90, 90)),
                "pitch": float(rng.uniform(-45, 45)), "roll": 0.0, "K": [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]],
                "world_to_camera": np.eye(4).tolist(), "label_set": "celebamask19", "label_set_version": 1,
                "config_hash": "0123abcd", "facegs_version": "0.1.0"}
        out.append(Sample(rgb, seg, rng.random((size, size)).astype(np.float32), seg == 0, meta))
    return out


def bench_root(url: str, opts: dict, samples: list[Sample], fmt: str, maxcount: int) -> dict:
    t0 = time.perf_counter()
    recs = commit_subject(samples, url, "bench", maxcount=maxcount, rgb_format=fmt, storage_options=opts)
    merge_manifest(url, opts)
    t_write = time.perf_counter() - t0
    nbytes = sum(r.num_bytes for r in recs)
    t0 = time.perf_counter()
    n = sum(1 for _ in ShardDataset(url, storage_options=opts))
    t_read = time.perf_counter() - t0
    assert n == len(samples)
    return {"shards": len(recs), "mbytes": nbytes / 1e6, "write_s": t_write, "read_s": t_read,
            "write_samples_per_s": len(samples) / t_write, "read_samples_per_s": n / t_read,
            "write_mb_per_s": nbytes / 1e6 / t_write, "read_mb_per_s": nbytes / 1e6 / t_read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--maxcount", type=int, default=16)
    ap.add_argument("--no-s3", action="store_true", help="skip the local moto S3 server")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "shard_io.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    samples = synthetic_samples("bench", args.samples, args.size)
    t0 = time.perf_counter()
    for s in samples[:16]:
        encode_sample(s, args.format)
    encode_ms = (time.perf_counter() - t0) / min(16, len(samples)) * 1e3

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["file"] = bench_root(f"file://{tmp}/ds", {}, samples, args.format, args.maxcount)
        import webdataset as wds

        from facegs.shards.manifest import read_manifest
        paths = [f"{tmp}/ds/{s}" for s in read_manifest(f"{tmp}/ds").column("shard").to_pylist()]
        t0 = time.perf_counter()
        n = sum(1 for r in wds.WebDataset(paths, shardshuffle=False, empty_check=False)
                if decode_sample({**r, "__shard__": r["__url__"]}))
        results["file"]["wds_read_samples_per_s"] = n / (time.perf_counter() - t0)
    mem = f"memory://bench-{uuid.uuid4().hex[:8]}"
    results["memory"] = bench_root(mem, {}, samples, args.format, args.maxcount)
    if not args.no_s3:
        import boto3
        from moto.server import ThreadedMotoServer

        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(k, "testing")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket="facegs-bench")
            opts = {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
            results["s3-moto"] = bench_root("s3://facegs-bench/ds", opts, samples, args.format, args.maxcount)
        finally:
            server.stop()

    print(f"{args.samples} samples {args.size}x{args.size} {args.format}: encode {encode_ms:.1f} ms/sample")
    print(f"{'fs':10s} {'shards':>6s} {'MB':>7s} {'write/s':>9s} {'read/s':>9s} {'write MB/s':>10s} {'read MB/s':>10s}")
    for fs, r in results.items():
        print(f"{fs:10s} {r['shards']:6d} {r['mbytes']:7.2f} {r['write_samples_per_s']:9.1f} "
              f"{r['read_samples_per_s']:9.1f} {r['write_mb_per_s']:10.1f} {r['read_mb_per_s']:10.1f}")
    env = {"torch": torch.__version__, "threads": 1, "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "load_avg_1min": os.getloadavg()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "args": vars(args), "encode_ms_per_sample": encode_ms,
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
