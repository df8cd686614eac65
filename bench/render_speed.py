"""Rasterizer speed: forward and forward+backward of facegs.splat.rasterize backends.

Scene: N Gaussians on and inside a head-sized ellipsoid (the shape of a fitted face scene), seen by
one 128 x 128 camera, D = 22 channels (RGB + 19 class logits), float32. Times the torch backend on
the CPU, and gsplat's CUDA backend (and the torch backend on the GPU) when CUDA is available.

Usage:
    .venv/bin/python bench/render_speed.py                      # default grid
    .venv/bin/python bench/render_speed.py --gaussians 5000 20000 --tile-sizes 8 16 --repeats 5

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


def time_backend(scene: dict, size: int, backend: str, tile_size: int, repeats: int) -> dict:
    """Median seconds of a forward pass and of forward + backward."""
    params = {k: v.clone().requires_grad_(k not in ("viewmats", "Ks")) for k, v in scene.items()}
    sync = torch.cuda.synchronize if scene["means"].is_cuda else (lambda: None)

    def forward():
        return rasterize(**params, width=size, height=size, backend=backend, tile_size=tile_size)

    def fwd_bwd():
        colors, alphas, meta = forward()
        meta["means2d"].retain_grad()
        (colors.sum() + alphas.sum()).backward()
        return meta

    def timed(fn) -> tuple[list[float], list[float]]:
        fn()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return wall, cpu

    with torch.no_grad():
        fwd, _ = timed(forward)
    both, both_cpu = timed(fwd_bwd)
    meta = fwd_bwd()
    visible = (meta["radii"] > 0).all(dim=-1)
    return {
        "fwd_s": statistics.median(fwd),
        "fwd_bwd_s": statistics.median(both),
        # CPU seconds of this process (all threads): less sensitive to other jobs on shared cores
        "fwd_bwd_cpu_s": statistics.median(both_cpu),
        "intersections": int(meta["flatten_ids"].numel()) if meta.get("flatten_ids") is not None else None,
        "visible": int(visible.sum()),
        "mean_radius_px": float(meta["radii"][visible].float().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=22)
    ap.add_argument("--tile-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="Gaussian size multiplier")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "render_speed.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = [("torch", "cpu")]
    if torch.cuda.is_available():
        configs += [("gsplat", "cuda"), ("torch", "cuda")]
    rows = []
    for n in args.gaussians:
        for backend, device in configs:
            scene = head_scene(n, args.size, args.channels, device, scale=args.scale)
            tiles = args.tile_sizes if backend == "torch" else [16]
            for tile in tiles:
                r = time_backend(scene, args.size, backend, tile, args.repeats)
                rows.append(dict(backend=backend, device=device, gaussians=n, size=args.size,
                                 channels=args.channels, tile_size=tile, scale=args.scale, **r))  # fmt: skip
                print(
                    f"{backend:7s} {device:5s} N={n:6d} {args.size}x{args.size} D={args.channels} "
                    f"tile={tile:2d}  fwd {r['fwd_s'] * 1e3:8.1f} ms  "
                    f"fwd+bwd {r['fwd_bwd_s'] * 1e3:8.1f} ms (cpu {r['fwd_bwd_cpu_s'] * 1e3:6.0f} ms)  "
                    f"isects={r['intersections']} "
                    f"visible={r['visible']} mean_radius={r['mean_radius_px']:.1f}px",
                    flush=True,
                )  # fmt: skip
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
