"""GPU throughput of one subject (the timing part of bench/gpu_check.sh), without Ray.

1. One synthetic subject (facegs.synth; ``--views`` cameras on three rows of yaw -90..90 at
   ``--res`` px, random backgrounds) with simulated parser labels (facegs.label.noise, the spec of
   bench/fit_speed.py), cached under ``--out``.
2. Per preset in ``--presets`` (default ``gpu`` and the proposed ``gpu_fast``): the factory's unit
   of work without shards, :func:`facegs.factory.subject.refine` (fit, head frame, novel cameras)
   and ``--renders`` rendered + cleaned novel views, timed; subjects per GPU-hour = 3600 / those
   seconds (label inference and shard encoding are not included).
3. The fit step time (median over the fit's steps) against raw ``gsplat.rasterization``
   forward + backward of the same scene: the fitted Gaussians, one training view, the channels a
   fit step renders (RGB + 2 x 19 label channels on gsplat: values + gradient carriers), tile 16.

Prints a table and writes ``--out/gpu_bench.json``. ``--smoke`` runs every step on the CPU at toy
sizes (tests/test_gpu_check.py), without the gsplat comparison.

    python bench/gpu_bench.py --out bench/out/gpu_check              # on a GPU machine
    python bench/gpu_bench.py --smoke --out /tmp/smoke               # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fit_speed import NOISE, make_subject  # noqa: E402

from facegs.factory.subject import RefineConfig, refine  # noqa: E402
from facegs.fit.config import InitConfig, fit_config  # noqa: E402
from facegs.splat.rasterize import rasterize  # noqa: E402
from facegs.splat.scene import activated, sh_colors  # noqa: E402

LABELS = 19


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_subject(m, preset: str, args, device: str, backend: str) -> tuple[dict, object]:
    """(row, RefinedSubject) of one subject at ``preset``."""
    over = {}
    if args.smoke:
        over = dict(steps=args.steps or 20, max_gaussians=2_000, init=InitConfig(num_points=500, grid_res=24))
    elif args.steps:
        over = dict(steps=args.steps)
    cfg = RefineConfig(fit=fit_config(preset, seed=0, **over), n_renders=args.renders)
    sync(device)
    t0 = time.perf_counter()
    r = refine(m, cfg, device=device, backend=backend)
    sync(device)
    t_fit = time.perf_counter() - t0
    n = sum(1 for _ in r.views())
    sync(device)
    total = time.perf_counter() - t0
    steps = [x["time_s"] for x in r.fit.metrics]
    ev = r.fit.summary.get("eval", {})
    return {
        "preset": preset, "views": len(m.views), "res": args.res, "steps": cfg.fit.steps, "renders": n,
        "n_gaussians": r.fit.summary["n_gaussians"], "fit_and_headframe_s": t_fit, "renders_s": total - t_fit,
        "subject_s": total, "subjects_per_gpu_hour": 3600.0 / total, "median_step_s": statistics.median(steps),
        "mean_step_s": statistics.fmean(steps), "psnr": ev.get("psnr"), "miou_gt": ev.get("miou_gt"),
        "input_miou_gt": ev.get("input_miou_gt"), "backend": backend,
    }, r  # fmt: skip


def raw_gsplat_step(r, device: str, repeats: int = 20) -> float | None:
    """Median seconds of gsplat.rasterization forward + backward of the fitted scene, one training view."""
    if not device.startswith("cuda"):
        return None
    from gsplat import rasterization  # lazy: CUDA only

    params = {k: v.detach().clone().requires_grad_() for k, v in r.params.items()}
    vm = torch.as_tensor(r.manifest.views[0].world_to_camera, dtype=torch.float32, device=device)[None]
    v0 = r.manifest.views[0]
    K = torch.as_tensor(v0.K, dtype=torch.float32, device=device)[None]
    times = []
    for i in range(repeats + 3):
        sync(device)
        t0 = time.perf_counter()
        means, quats, scales, opac = activated(params)
        rgb = sh_colors(params, vm, r.cfg.fit.sh_degree)
        lab = torch.softmax(params["logits"], -1)[None]
        cols = torch.cat([rgb, lab.detach(), lab - lab.detach()], -1)
        out, alpha, _ = rasterization(means, quats, scales, opac, cols, vm, K, v0.width, v0.height, packed=False,
                                      tile_size=16, backgrounds=torch.zeros(1, cols.shape[-1], device=device))
        (out.sum() + alpha.sum()).backward()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def facegs_render_step(r, device: str, backend: str, repeats: int = 20) -> float:
    """Median seconds of facegs' rasterize forward + backward of the same render (for the CPU smoke run)."""
    params = {k: v.detach().clone().requires_grad_() for k, v in r.params.items()}
    v0 = r.manifest.views[0]
    vm = torch.as_tensor(v0.world_to_camera, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(v0.K, dtype=torch.float32, device=device)[None]
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        means, quats, scales, opac = activated(params)
        cols = torch.cat([sh_colors(params, vm, r.cfg.fit.sh_degree), torch.softmax(params["logits"], -1)[None]], -1)
        out, alpha, _ = rasterize(means, quats, scales, opac, cols, vm, K, v0.width, v0.height, backend=backend,
                                  geometry_grad_channels=3)
        (out.sum() + alpha.sum()).backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["gpu", "gpu_fast"])
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--renders", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="override the presets' steps (a shorter check)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the code path, not the speed")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check")
    args = ap.parse_args(argv)
    if args.smoke:
        args.views, args.res, args.renders = 9, 48, 3
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    plan = {k: getattr(args, k) for k in ("presets", "views", "res", "renders", "steps", "backend", "smoke")}
    print(f"gpu_bench plan: {plan}, device {device}", flush=True)
    if args.dry_run:
        for p in args.presets:
            fit_config(p)  # unknown preset -> error now
        return 0
    if device == "cpu" and not args.smoke:
        print("gpu_bench: no CUDA device (use --smoke to exercise the code on the CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    m = make_subject(args.out, args.res, args.views, 0, NOISE)
    print(f"subject {m.subject_id}: {len(m.views)} views at {args.res} px ready in {time.perf_counter() - t:.1f} s")
    rows = []
    for preset in args.presets:
        row, r = time_subject(m, preset, args, device, args.backend)
        row["raw_gsplat_fwd_bwd_s"] = raw_gsplat_step(r, device)
        row["facegs_render_fwd_bwd_s"] = facegs_render_step(r, device, args.backend, repeats=3 if args.smoke else 20)
        if row["raw_gsplat_fwd_bwd_s"]:
            row["step_over_raw_gsplat"] = row["median_step_s"] / row["raw_gsplat_fwd_bwd_s"]
        rows.append(row)
        raw = row["raw_gsplat_fwd_bwd_s"]
        vs = "n/a (no CUDA)" if raw is None else f"{raw * 1e3:.2f} ms ({row['step_over_raw_gsplat']:.2f}x)"
        print(f"{preset:9s} {row['views']} views {row['res']} px, {row['steps']} steps, N={row['n_gaussians']}: "
              f"subject {row['subject_s']:.1f} s (fit+head frame {row['fit_and_headframe_s']:.1f}, "
              f"{row['renders']} renders {row['renders_s']:.1f}) -> {row['subjects_per_gpu_hour']:.0f} subjects/GPU-hour; "
              f"fit step {row['median_step_s'] * 1e3:.2f} ms vs raw gsplat fwd+bwd {vs}; "
              f"mIoU vs GT {row['miou_gt']} (input {row['input_miou_gt']}), PSNR {row['psnr']}", flush=True)  # fmt: skip
    env = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if device == "cuda" else None,
           "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}  # fmt: skip
    (args.out / "gpu_bench.json").write_text(json.dumps({"env": env, "results": rows}, indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'gpu_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
