"""Rasterizer speed: forward and forward+backward of facegs.splat.rasterize backends, side by side.

Scene: N Gaussians on and inside a head-sized ellipsoid (the shape of a fitted face scene), seen by
one 128 x 128 camera, D = 22 channels (RGB + 19 class logits), float32. Times, in one process and
interleaved round by round (so that a change in the machine's load hits every configuration alike),
the fused C++ kernel (``cpu``) and the pure-PyTorch reference (``torch``) on the CPU for each thread
count in ``--threads``, plus gsplat's CUDA backend (and the torch backend on the GPU) when CUDA is
available. Reports median and min wall time, median CPU time of the process (all threads), the
speed-up of each backend over torch at the same thread count, the speed-up of each thread count
over one thread, and the load average before and after.

Usage:
    .venv/bin/python bench/render_speed.py                       # 5k and 20k Gaussians, 1 thread
    .venv/bin/python bench/render_speed.py --gaussians 20000 --threads 1 2 --backends cpu   # thread scaling
    .venv/bin/python bench/render_speed.py --tile-sizes 8 16 --backends cpu

Prints a table and writes bench/out/render_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from facegs.splat.rasterize import rasterize


def head_scene(n: int, size: int, channels: int, device: str, seed: int = 0, scale: float = 1.0) -> dict:
    """A head-like scene: Gaussians on an ellipsoid shell (80 %) and inside it (20 %).

    Their size is ``scale`` x 0.6 x the mean neighbour spacing (log-normal spread), so at
    ``scale=1`` neighbouring splats overlap like in a fitted scene (mean radius ~4 px at 128 px
    and N = 20k); larger scales mimic an early, blurry optimisation state.
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radius = torch.where(torch.rand(n, generator=g) < 0.8, 1.0 + 0.02 * torch.randn(n, generator=g),
                         torch.rand(n, generator=g))  # fmt: skip
    means = dirs * radius[:, None] * torch.tensor([0.8, 1.0, 0.9])
    spacing = math.sqrt(4 * math.pi / n)  # mean distance between shell neighbours
    scales = scale * spacing * 0.6 * torch.exp(0.5 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.7 + 0.3
    colors = torch.rand(n, channels, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0  # camera 3 units in front of the head, looking along +z
    f = 0.5 * size / math.tan(math.radians(45) / 2)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmats=viewmat[None], Ks=K[None])  # fmt: skip
    return {k: v.to(device) for k, v in scene.items()}


def make_runner(scene: dict, size: int, backend: str, tile_size: int):
    """(forward, fwd_bwd) closures on fresh leaf copies of the scene; fwd_bwd returns meta."""
    params = {k: v.clone().requires_grad_(k not in ("viewmats", "Ks")) for k, v in scene.items()}

    def forward():
        return rasterize(**params, width=size, height=size, backend=backend, tile_size=tile_size)

    def fwd_bwd():
        for v in params.values():
            v.grad = None
        colors, alphas, meta = forward()
        meta["means2d"].retain_grad()
        (colors.sum() + alphas.sum()).backward()
        return meta

    return forward, fwd_bwd


def timed(fn, sync) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=22)
    ap.add_argument("--tile-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--backends", nargs="+", default=["cpu", "torch"], choices=["cpu", "torch"],
                    help="CPU backends (gsplat and torch-on-CUDA are added when CUDA is available)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch CPU thread counts to time (e.g. 1 2 for the scaling; on a loaded machine the "
                    "torch backend on 2 threads can take seconds per call: OpenMP threads spin)")
    ap.add_argument("--repeats", type=int, default=7, help="rounds; each times every configuration once")
    ap.add_argument("--scale", type=float, default=1.0, help="Gaussian size multiplier")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "render_speed.json")
    args = ap.parse_args(argv)

    configs = [(b, "cpu", t, th) for b in args.backends for t in args.tile_sizes for th in args.threads]
    if torch.cuda.is_available():
        configs += [("gsplat", "cuda", 16, None), ("torch", "cuda", 8, None)]
    load_before = _load()
    rows = []
    for n in args.gaussians:
        scenes = {dev: head_scene(n, args.size, args.channels, dev, scale=args.scale) for dev in {c[1] for c in configs}}
        runners, samples = {}, {}
        for cfg in configs:
            backend, device, tile, threads = cfg
            if threads:
                torch.set_num_threads(threads)
            runners[cfg] = make_runner(scenes[device], args.size, backend, tile)
            runners[cfg][1]()  # warm-up (and the kernel's one-time build/load)
            samples[cfg] = {"fwd": [], "both": [], "both_cpu": []}
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        for _ in range(args.repeats):  # round-robin: every configuration sees the same load
            for cfg in configs:
                if cfg[3]:
                    torch.set_num_threads(cfg[3])
                fwd, both = runners[cfg]
                with torch.no_grad():
                    samples[cfg]["fwd"].append(timed(fwd, sync)[0])
                w, c = timed(both, sync)
                samples[cfg]["both"].append(w)
                samples[cfg]["both_cpu"].append(c)
        for cfg in configs:
            backend, device, tile, threads = cfg
            meta = runners[cfg][1]()
            visible = (meta["radii"] > 0).all(dim=-1)
            sm = samples[cfg]
            rows.append(dict(
                backend=backend, ran=meta["backend"], device=device, threads=threads, gaussians=n, size=args.size,
                channels=args.channels, tile_size=tile, scale=args.scale, fwd_s=statistics.median(sm["fwd"]),
                fwd_min_s=min(sm["fwd"]), fwd_bwd_s=statistics.median(sm["both"]), fwd_bwd_min_s=min(sm["both"]),
                fwd_bwd_cpu_s=statistics.median(sm["both_cpu"]), intersections=int(meta["flatten_ids"].numel())
                if meta.get("flatten_ids") is not None else None, visible=int(visible.sum()),
                mean_radius_px=float(meta["radii"][visible].float().mean()),
            ))  # fmt: skip
    _ratios(rows)
    load_after = _load()
    print(f"{'backend':7s} {'ran':6s} {'dev':4s} {'thr':>3s} {'N':>6s} {'tile':>4s} {'fwd ms':>8s} {'f+b ms':>8s} "
          f"{'f+b min':>8s} {'f+b CPU':>8s} {'x torch':>8s} {'x 1 thr':>8s}  isects")  # fmt: skip
    for r in rows:
        print(f"{r['backend']:7s} {r['ran']:6s} {r['device']:4s} {r['threads'] or '-':>3} {r['gaussians']:6d} "
              f"{r['tile_size']:4d} {r['fwd_s'] * 1e3:8.1f} {r['fwd_bwd_s'] * 1e3:8.1f} {r['fwd_bwd_min_s'] * 1e3:8.1f} "
              f"{r['fwd_bwd_cpu_s'] * 1e3:8.1f} {_x(r.get('speedup_vs_torch'))} {_x(r.get('speedup_vs_1_thread'))}  "
              f"{r['intersections']}")  # fmt: skip
    print(f"load average (1 min): {load_before} before, {load_after} after; {os.cpu_count()} CPUs")
    env = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_1min_before": load_before,
        "load_avg_1min_after": load_after,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": rows}, indent=2))
    print(f"wrote {args.out}")


def _ratios(rows: list[dict]) -> None:
    """speedup_vs_torch (median fwd+bwd wall, same N, tile, threads, device) and speedup_vs_1_thread."""
    def key(r, **over):
        return tuple({**r, **over}[k] for k in ("backend", "device", "gaussians", "tile_size", "threads"))

    by_key = {key(r): r for r in rows}
    for r in rows:
        ref = by_key.get(key(r, backend="torch"))
        if ref is not None and ref is not r:
            r["speedup_vs_torch"] = ref["fwd_bwd_s"] / r["fwd_bwd_s"]
        one = by_key.get(key(r, threads=1))
        if one is not None and one is not r:
            r["speedup_vs_1_thread"] = one["fwd_bwd_s"] / r["fwd_bwd_s"]


def _x(v: float | None) -> str:
    return f"{v:7.2f}x" if v is not None else f"{'-':>8s}"


if __name__ == "__main__":
    main()
