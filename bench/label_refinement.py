"""Label refinement benchmark: refined renders vs the base parser at novel views, against exact GT.

For held-out synthetic subjects (disjoint from the base parser's training subjects), each arm:
1. labels every capture view (the base parser with flip TTA, or a seeded noise model on GT);
2. fits the joint RGB + label Gaussian scene (``facegs.fit.loop``, CPU demo settings);
3. estimates the head frame from the semantic Gaussians and renders a fixed yaw/pitch grid;
4. scores the refined labels against the generator's exact labels rendered at the same cameras.
Reference (a): the base parser run on the generator's ground-truth images of those same views.
Ablations (base-parser labels): no confidence weighting, label gradients to the geometry switched (on/off against the default),
blended probabilities instead of logits, and no post-processing (same fit, argmax only).

    .venv/bin/python bench/label_refinement.py --rig facescape      # one rig per process
    .venv/bin/python bench/label_refinement.py --report             # merge JSONs -> table + plot

Writes bench/out/label_refinement/{RIG}.json, and with --report summary.md, summary.json and
f1_vs_yaw_{RIG}.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.core.cameras import rotation_angle_deg, w2c_to_head_pose  # noqa: E402
from facegs.core.manifest import load_manifest  # noqa: E402
from facegs.evaluate.metrics import PoseBinnedEvaluator  # noqa: E402
from facegs.evaluate.plots import plot_f1_vs_yaw  # noqa: E402
from facegs.fit.config import FitConfig  # noqa: E402
from facegs.fit.loop import fit_subject  # noqa: E402
from facegs.headframe.scene import head_frame_from_scene  # noqa: E402
from facegs.label.views import label_subject_with_noise, label_subject_with_parser
from facegs.parser.checkpoint import load_parser  # noqa: E402
from facegs.parser.predict import predict_probs
from facegs.render.cleanup import CleanupConfig  # noqa: E402
from facegs.render.poses import cameras_for_poses, match_capture_intrinsics  # noqa: E402
from facegs.render.views import render_novel_views  # noqa: E402
from facegs.synth.generate import generate_dataset  # noqa: E402
from facegs.synth.params import HeadParams  # noqa: E402
from facegs.synth.raytrace import render_views as synth_render  # noqa: E402

OUT = Path("bench/out/label_refinement")
YAWS = np.arange(-90.0, 90.1, 15.0)
PITCHES = np.array([-20.0, 0.0, 20.0])


def grid_poses() -> np.ndarray:
    return np.array([(y, p, 0.0) for p in PITCHES for y in YAWS])


def arms(base_ckpt: str) -> list[tuple[str, str, dict]]:
    """(arm name, labeller, FitConfig overrides)."""
    return [
        ("refined (base parser labels)", "parser", {}),
        ("refined (50% pixel noise)", "pixel:0.5", {}),
        ("refined (clean GT labels)", "pixel:0.0", {}),
        ("refined (30% left/right swaps)", "lr_swap:0.3", {}),
        ("refined (boundary noise 3 px)", "boundary:3", {}),
        ("refined (pose-dependent noise)", "pose:1", {}),
        ("ablation: no confidence weighting", "parser", {"confidence_weighting": False}),
        ("ablation: label grads to geometry " + ("off" if FitConfig().label_grad_to_geometry else "on"), "parser",
         {"label_grad_to_geometry": not FitConfig().label_grad_to_geometry}),
        ("ablation: other label mode", "parser",
         {"label_mode": "logits" if FitConfig().label_mode == "probs" else "probs"}),
    ]


def gt_views(manifest, cams, width, height) -> list[dict]:
    params = HeadParams.from_dict(manifest.source["params"])
    bg = manifest.source.get("background", "world")
    return synth_render(params, [(K, w2c, width, height) for w2c, K in cams], manifest.world_from_head, bg)


def run(rig: str, a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    out = OUT / rig
    subjects = generate_dataset(out / "subjects", a.subjects, master_seed=a.seed, skip_existing=True, rig=rig,
                                res=a.res)
    parser = load_parser(a.parser)
    evs: dict[str, PoseBinnedEvaluator] = {}
    timings: dict[str, list[float]] = {}
    fit_stats: dict[str, list[dict]] = {}

    def ev(name: str) -> PoseBinnedEvaluator:
        return evs.setdefault(name, PoseBinnedEvaluator("celebamask19"))

    headframe_err: dict[str, list[float]] = {}
    for sdir in subjects:
        base = load_manifest(sdir)
        # Evaluation views: a fixed yaw/pitch grid in the TRUE head frame, identical for every arm.
        T = base.world_from_head
        dist, focal, W, H = match_capture_intrinsics(base, a.res, a.res, world_from_head=T)
        gt_cams = cameras_for_poses(grid_poses(), T, dist, (W, H, focal))
        gt_cache = gt_views(base, gt_cams, W, H)
        for k, g in enumerate(gt_cache):  # (a) the base parser on the GT images of those views
            yaw, pitch, _ = w2c_to_head_pose(gt_cams[k][0], T)
            pred = predict_probs(parser, g["rgb"][None], flip_tta=True).argmax(1)[0].numpy().astype(np.uint8)
            ev("base parser on GT images").update(pred, g["labels"], yaw=yaw, pitch=pitch)
        for arm, labeller, overrides in arms(a.parser):
            if labeller == "parser":
                m = label_subject_with_parser(sdir, parser, flip_tta=True, progress=False)
            else:
                m = label_subject_with_noise(sdir, labeller, seed=a.seed, progress=False)
            fcfg = replace(FitConfig(), steps=a.steps, seed=a.seed, **overrides)
            t0 = time.perf_counter()
            fit = fit_subject(m, fcfg, progress=False)
            timings.setdefault(arm, []).append(time.perf_counter() - t0)
            fit_stats.setdefault(arm, []).append({k: fit.summary.get(k) for k in ("n_gaussians", "fit_s")}
                                                 | {"eval": fit.summary.get("eval")})
            try:  # the arm's own head frame: used by its label clean-up (left/right check), error reported
                frame = head_frame_from_scene(fit.params).world_from_head
                err = rotation_angle_deg(frame[:3, :3], T[:3, :3])
            except ValueError:
                frame, err = T, float("nan")
            headframe_err.setdefault(arm, []).append(err)
            # every arm renders the same evaluation cameras, so all arms are scored on identical views
            for k, rv in enumerate(render_novel_views(fit.params, gt_cams, W, H, frame, fcfg, CleanupConfig(), progress=False)):
                yaw, pitch, _ = w2c_to_head_pose(gt_cams[k][0], T)
                ev(arm).update(rv.labels, gt_cache[k]["labels"], yaw=yaw, pitch=pitch)
                if labeller == "parser" and not overrides:
                    ev("ablation: no post-processing").update(rv.probs.argmax(0).astype(np.uint8),
                                                              gt_cache[k]["labels"], yaw=yaw, pitch=pitch)
            print(f"[{rig}] {sdir.name} {arm}: fit {timings[arm][-1]:.1f}s, "
                  f"miou so far {ev(arm).summary()['overall']['miou']:.3f}", flush=True)
    res = {"rig": rig, "subjects": [s.name for s in subjects], "steps": a.steps, "res": a.res,
           "parser": a.parser, "timings_s": timings, "fit": fit_stats, "headframe_rot_err_deg": headframe_err,
           "summaries": {k: v.summary() for k, v in evs.items()}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{rig}.json").write_text(json.dumps(res, indent=1))
    return res


def _bin(summary: dict, lo: float) -> dict:
    return next(b for b in summary["yaw"] if b["lo"] == lo)


def report() -> str:
    lines = []
    for path in sorted(OUT.glob("*.json")):
        if path.name == "summary.json":
            continue
        r = json.loads(path.read_text())
        S = r["summaries"]
        lines += [f"### {r['rig']} rig ({len(r['subjects'])} held-out subjects, {r['res']} px, {r['steps']} fit steps)",
                  "", "| arm | mIoU all | mIoU 0-30 | mIoU 30-60 | mIoU 60-75 | mIoU 75-90 | mean F1 >=60 | pixel acc |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in S.items():
            b = {lo: _bin(s, lo) for lo in (0, 30, 60, 75)}
            f1_hi = np.nanmean([x for x in (b[60]["mean_f1"], b[75]["mean_f1"]) if x is not None])
            pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
            lines.append(f"| {name} | {pct(s['overall']['miou'])} | " + " | ".join(pct(b[lo]["miou"]) for lo in b)
                         + f" | {pct(f1_hi)} | {pct(s['overall']['pixel_acc'])} |")
        lines.append("")
        plot_f1_vs_yaw({k: v for k, v in S.items() if not k.startswith("ablation")}, OUT / f"f1_vs_yaw_{r['rig']}.png",
                       title=f"{r['rig']} rig: mean F1 by |yaw|")
    text = "\n".join(lines)
    (OUT / "summary.md").write_text(text)
    return text


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rig", choices=["facescape", "nersemble"])
    p.add_argument("--report", action="store_true")
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--seed", type=int, default=2000, help="master seed of the held-out subjects")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parser", default="bench/out/base_parser_2400/base.pt")
    p.add_argument("--out", default="bench/out/label_refinement")
    a = p.parse_args()
    OUT = Path(a.out)
    if a.rig:
        run(a.rig, a)
    if a.report:
        print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
