"""DDP scaling of parser fine-tuning on shards (Ray Train, CPU workers), and whether data loading keeps up.

Measures, on the same synthetic shards (``shard_io.synthetic_samples``: S x S views, PNG or JPEG):

1. Data-loader throughput alone: :class:`facegs.shards.stream.ShardDataset` (resampled) +
   :class:`facegs.train.shard_batches.ShardTrainTransform` (decode, augment, normalise) iterated
   in this process with one torch thread: what ONE DataLoader worker process can deliver.
2. The fine-tuning loop of :mod:`ray_jobs.finetune` with 1 and 2 Ray Train workers (gloo DDP, one
   torch thread each, ``--loader-workers`` DataLoader processes per rank): samples/s summed over
   ranks, measured inside the loop (from the first batch request to the last optimizer step of each
   epoch; the first epoch is treated as warm-up and left out), the same including Ray Train's
   per-epoch ``report`` + checkpoint (from rank 0's epoch start/end events), and the fraction of each
   epoch a rank spent waiting for its next batch.

The loader is not the bottleneck when (a) one loader process delivers several times a rank's
consumption rate ("headroom") and (b) ranks wait for data only a small fraction of the epoch.
On a small machine the loader processes share cores with the trainers: (b) is the direct evidence.

Usage:
    .venv/bin/python bench/ddp_scaling.py                      # 128 px, width 0.25, 2 CPUs
    .venv/bin/python bench/ddp_scaling.py --size 256 --width 0.5 --epochs 4 --epoch-length 128

Prints a table and writes bench/out/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_io import synthetic_samples  # noqa: E402

from facegs.parser.bisenet import BiSeNet  # noqa: E402
from facegs.parser.checkpoint import save_parser  # noqa: E402
from facegs.shards.manifest import merge_manifest  # noqa: E402
from facegs.shards.stream import ShardDataset  # noqa: E402
from facegs.shards.writer import commit_subject  # noqa: E402
from facegs.train.augment import AugmentConfig  # noqa: E402
from facegs.train.shard_batches import ShardTrainTransform  # noqa: E402


def make_shards(root: Path, subjects: int, per_subject: int, size: int, maxcount: int, fmt: str) -> None:
    for s in range(subjects):
        commit_subject(synthetic_samples(f"b{s}", per_subject, size, seed=s), str(root), f"b{s}", maxcount=maxcount,
                       rgb_format=fmt)
    merge_manifest(str(root))


def loader_rate(shards: str, size: int, n: int, use_confidence: bool, seed: int = 0) -> dict:
    """Samples/s of ShardDataset + ShardTrainTransform in this process (one thread)."""
    t = ShardTrainTransform(size, AugmentConfig(out_size=size), seed=seed, use_confidence=use_confidence)
    ds = ShardDataset(shards, resampled=True, epoch_length=n, seed=seed, shuffle_buffer=16, transform=t)
    for _ in ShardDataset(shards, resampled=True, epoch_length=min(8, n), seed=seed + 1, transform=t):
        pass  # warm-up (imports, file cache)
    t0 = time.perf_counter()
    k = sum(1 for _ in ds)
    dt = time.perf_counter() - t0
    return {"samples": k, "seconds": dt, "samples_per_s": k / dt, "ms_per_sample": 1e3 * dt / k}


def epoch_walls(events: Path, run: str) -> list[float]:
    """Seconds from each epoch_start to the next one of the same run (includes report + checkpoint);
    the last epoch has no successor and is left out."""
    ev = [json.loads(x) for x in events.read_text().splitlines()]
    starts = [e["t"] for e in ev if e["event"] == "epoch_start" and e["run"] == run]
    return [b - a for a, b in zip(starts, starts[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help="use this shard dataset root instead of synthetic shards")
    ap.add_argument("--subjects", type=int, default=4, help="synthetic subjects")
    ap.add_argument("--per-subject", type=int, default=32, help="synthetic views per subject")
    ap.add_argument("--maxcount", type=int, default=8, help="samples per synthetic shard")
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--size", type=int, default=128, help="image and training size (px)")
    ap.add_argument("--width", type=float, default=0.25, help="BiSeNet width (1.0 = the published model)")
    ap.add_argument("--batch-size", type=int, default=8, help="per rank")
    ap.add_argument("--epoch-length", type=int, default=64, help="samples per rank per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is warm-up)")
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader processes per rank")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts to run")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--loader-samples", type=int, default=128, help="samples for the loader-alone measurement")
    ap.add_argument("--poll-interval", type=float, default=0.5,
                    help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s throttles short epochs: report() "
                         "waits for the controller's poll)")
    ap.add_argument("--no-confidence", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "ddp_scaling.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="facegs-ddp-bench-"))
    try:
        shards = args.shards
        if shards is None:
            shards = str(tmp / "ds")
            make_shards(Path(shards), args.subjects, args.per_subject, args.size, args.maxcount, args.format)
        init = tmp / "init.pt"
        torch.manual_seed(0)
        save_parser(init, BiSeNet(19, args.width), input_size=(args.size, args.size))

        loader = loader_rate(shards, args.size, args.loader_samples, not args.no_confidence)
        print(f"[bench] loader alone: {loader['samples_per_s']:.1f} samples/s "
              f"({loader['ms_per_sample']:.1f} ms/sample)", flush=True)

        os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                          RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=str(args.poll_interval))
        import ray

        from ray_jobs.finetune import run_finetune

        ray.init(num_cpus=args.num_cpus, include_dashboard=False, object_store_memory=200 * 1024**2,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        runs: dict[str, dict] = {}
        try:
            for w in args.workers:
                events = tmp / f"events_w{w}.jsonl"
                t0 = time.perf_counter()
                r = run_finetune(dict(shards=shards, init=str(init), out=str(tmp / "out" / f"w{w}.pt"),
                                      storage_path=str(tmp / "runs"), name=f"w{w}", workers=w, epochs=args.epochs,
                                      epoch_length=args.epoch_length, batch_size=args.batch_size, size=args.size,
                                      loader_workers=args.loader_workers, use_confidence=not args.no_confidence,
                                      max_failures=0, events_log=str(events), report_keys=0))
                total = time.perf_counter() - t0
                hist = r["history"][1:] if len(r["history"]) > 1 else r["history"]
                walls = epoch_walls(events, r["run"])[1:]  # epochs 1 .. E-2
                sps = statistics.mean(h["samples_per_s"] for h in hist)
                runs[str(w)] = {
                    "workers": w,
                    "samples_per_s": sps,
                    "samples_per_s_per_rank": sps / w,
                    "samples_per_s_incl_report": (statistics.mean(h["samples"] / x for h, x in zip(hist, walls))
                                                  if walls else float("nan")),
                    "epoch_loop_s": statistics.mean(h["epoch_time_s"] for h in hist),
                    "epoch_wall_s": statistics.mean(walls) if walls else float("nan"),
                    "data_wait_frac": statistics.mean(h["data_wait_frac"] for h in hist),
                    "steady_data_wait_frac": statistics.mean(h["steady_data_wait_frac"] for h in hist),
                    "first_batch_wait_s": statistics.mean(rk["first_batch_wait_s"] for h in hist for rk in h["ranks"]),
                    "compute_s_per_step": statistics.mean(
                        rk["compute_s"] / max(1, rk["steps"]) for h in hist for rk in h["ranks"]),
                    "loss_first_last": [r["history"][0]["loss"], r["history"][-1]["loss"]],
                    "run_total_s": total,
                    "epochs_measured": [h["epoch"] for h in hist],
                }
                print(f"[bench] {w} worker(s): {sps:.1f} samples/s in the loop, data wait "
                      f"{100 * runs[str(w)]['data_wait_frac']:.1f}% of the epoch "
                      f"({100 * runs[str(w)]['steady_data_wait_frac']:.1f}% after the first batch)", flush=True)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    loader_capacity = loader["samples_per_s"] * max(1, args.loader_workers)
    for r in runs.values():
        r["loader_headroom"] = loader_capacity / r["samples_per_s_per_rank"]
    base = runs.get("1")
    scaling = {k: v["samples_per_s"] / base["samples_per_s"] for k, v in runs.items()} if base else {}

    data = (f"synthetic {args.subjects * args.per_subject} x {args.size}px {args.format}" if args.shards is None
            else args.shards)
    print(f"\nshards: {data}; "
          f"BiSeNet width {args.width}; batch {args.batch_size}/rank; {args.epoch_length} samples/rank/epoch; "
          f"{args.loader_workers} loader proc/rank; {args.num_cpus} CPUs; load avg {os.getloadavg()[0]:.2f}")
    print(f"loader alone (1 process): {loader['samples_per_s']:.1f} samples/s")
    hdr = (f"{'workers':>7s} {'samples/s':>10s} {'per rank':>9s} {'incl.report':>11s} {'speedup':>8s} "
           f"{'s/step':>7s} {'data wait':>9s} {'steady wait':>11s} {'1st batch s':>11s} {'loader headroom':>15s}")
    print(hdr)
    for k, r in runs.items():
        print(f"{r['workers']:7d} {r['samples_per_s']:10.1f} {r['samples_per_s_per_rank']:9.1f} "
              f"{r['samples_per_s_incl_report']:11.1f} {scaling.get(k, float('nan')):8.2f} "
              f"{r['compute_s_per_step']:7.3f} {100 * r['data_wait_frac']:8.1f}% "
              f"{100 * r['steady_data_wait_frac']:10.1f}% {r['first_batch_wait_s']:11.2f} "
              f"{r['loader_headroom']:14.1f}x")
    print("samples/s: summed over ranks, inside the loop (warm-up epoch left out); incl.report: epoch start to next "
          "epoch start; data wait: share of the epoch spent waiting for batches (steady: after the first batch, "
          "whose wait includes starting the loader process and filling the shuffle buffer); loader headroom: "
          "(one loader process alone x loader procs/rank) / per-rank consumption")
    env = {"torch": torch.__version__, "ray": __import__("ray").__version__, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "load_avg_1min": os.getloadavg()[0], "threads_per_worker": 1}
    out = {"env": env, "args": vars(args), "loader_alone": loader, "loader_capacity_per_rank": loader_capacity,
           "runs": runs, "speedup_vs_1_worker": scaling, "command": " ".join([Path(sys.executable).name] + sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
