"""TODO docstring."""

from __future__ import annotations

import torch

from facegs.factory.subject import refine_subject
from facegs.fit.config import FitConfig
from facegs.render.views import RefineConfig


def register(sub) -> None:
    """``facegs refine SUBJECT_DIR --out OUT``."""
    import argparse

    p = sub.add_parser(
        "refine",
        help="fit one subject's Gaussian scene to RGB + noisy labels and render refined novel views",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Fit one 3D Gaussian splatting scene with shared geometry to the subject's images and its "
            "initial labels ('labels' in subject.json, e.g. from 'facegs label'), estimate the head frame "
            "from the semantic Gaussians, render --renders views at sampled yaw/pitch in that frame, clean "
            "the labels automatically and write them as a subject directory (see facegs.refine)."
        ),
    )
    p.add_argument("subject", help="subject directory (with subject.json)")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--renders", type=int, default=32, help="number of novel views")
    p.add_argument("--res", type=int, default=None, help="render resolution (default: capture width)")
    p.add_argument("--downscale", type=float, default=1.0, help="fit at capture resolution / this")
    p.add_argument("--yaw", type=float, nargs=2, default=(-90.0, 90.0), metavar=("MIN", "MAX"))
    p.add_argument("--pitch", type=float, nargs=2, default=(-40.0, 40.0), metavar=("MIN", "MAX"))
    p.add_argument("--label-mode", choices=["logits", "probs"], default=FitConfig().label_mode,
                   help="softmax of blended logits, or blended per-Gaussian probabilities")
    p.add_argument("--no-confidence", action="store_true", help="ignore the parser's confidence maps")
    p.add_argument("--label-grad-geometry", action="store_true",
                   help="let the label loss move the geometry too (default: it updates class logits only)")
    p.add_argument("--consensus-outliers", action="store_true",
                   help="EM-style down-weighting of labels that disagree with the 3D consensus")
    p.add_argument("--no-cleanup", action="store_true", help="plain argmax labels (ablation)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_refine)


def _cmd_refine(a) -> int:
    from dataclasses import replace

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    fit = replace(FitConfig(), steps=a.steps, downscale=a.downscale, label_mode=a.label_mode,
                  confidence_weighting=not a.no_confidence, label_grad_to_geometry=a.label_grad_geometry,
                  consensus_outliers=a.consensus_outliers, seed=a.seed)
    cfg = RefineConfig(fit=fit, n_renders=a.renders, res=a.res, yaw_range=tuple(a.yaw), pitch_range=tuple(a.pitch),
                       cleanup=not a.no_cleanup, seed=a.seed)
    s = refine_subject(a.subject, a.out, cfg, device=device, backend=a.backend, overwrite=a.overwrite)
    ev = s["fit"].get("eval", {})
    print(f"refined {s['subject_id']}: {s['n_renders']} views in {a.out} "
          f"(fit {s['seconds_fit']:.1f} s, total {s['seconds_total']:.1f} s; fit eval {ev})")
    return 0
