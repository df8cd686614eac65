"""``facegs refine SUBJECT --out OUT``: one subject's refined novel views as a subject directory.

Options are the fields of :class:`facegs.factory.subject.RefineConfig` (novel views, clean-up) and
of :class:`facegs.fit.config.FitConfig` (a preset plus the listed fields), derived from their
``opt`` metadata (:mod:`facegs.core.options`).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from facegs.core.options import add_options, from_namespace
from facegs.factory.subject import RefineConfig, refine_subject
from facegs.fit.config import PRESETS, FitConfig, fit_config
from facegs.fit.support import SupportConfig
from facegs.headframe.place import PlacementConfig
from facegs.render.cleanup import CleanupConfig
from facegs.render.views import NovelViewConfig
from facegs.splat.rasterize import BACKENDS

FIT_FIELDS = ("steps", "downscale", "label_mode", "confidence_weighting", "label_grad_to_geometry",
              "label_class_balance", "matte_over_background", "label_inpaint_px", "lr_swap_check", "consensus_outliers")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refine",
        help="fit one subject's Gaussian scene to RGB + noisy labels and render refined novel views",
        description=(
            "Fit one 3D Gaussian splatting scene with shared geometry to the subject's images and its "
            "initial labels ('labels' in subject.json, e.g. from 'facegs label'), estimate the head frame "
            "from the semantic Gaussians (or, when the scene shows too few face parts, from the capture rig), "
            "render --renders views at sampled yaw/pitch in that frame, clean the labels automatically and write "
            "them as a subject directory (see facegs.factory.subject)."
        ),
    )
    p.add_argument("subject", help="subject directory (with subject.json)")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    g = p.add_argument_group("fit")
    g.add_argument("--preset", default="cpu_demo", choices=sorted(PRESETS),
                   help="fit preset (the factory's default too); the options below override it (default: cpu_demo)")
    add_options(g, FitConfig, fields=FIT_FIELDS, prefix="fit.", suppress_defaults=True)
    g = p.add_argument_group("novel views and clean-up")
    add_options(g, NovelViewConfig, prefix="views.")
    add_options(g, RefineConfig, fields=("cleanup", "seed"), prefix="refine.")
    add_options(g, PlacementConfig, fields=("policy",), prefix="head_frame.")
    add_options(g, SupportConfig, fields=("enabled", "drop_isolated"), prefix="support.")
    add_options(g, CleanupConfig, fields=("ignore_unobserved",), prefix="cleanup.")
    r = p.add_argument_group("run")
    r.add_argument("--backend", default="auto", choices=list(BACKENDS), help="rasterizer")
    r.add_argument("--device", default="auto", help="torch device (default: cuda when available, else cpu)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def config_from_args(a: argparse.Namespace) -> RefineConfig:
    """The :class:`RefineConfig` the parsed options describe (``--seed`` seeds the fit and the poses)."""
    ref = from_namespace(RefineConfig, a, prefix="refine.", build=False)
    fit = fit_config(a.preset, **{**from_namespace(FitConfig, a, prefix="fit.", build=False), "seed": ref["seed"]})
    views = from_namespace(NovelViewConfig, a, prefix="views.")
    return RefineConfig(**dataclasses.asdict(views), fit=fit, **ref,
                        head_frame=from_namespace(PlacementConfig, a, prefix="head_frame."),
                        support=from_namespace(SupportConfig, a, prefix="support."),
                        cleanup_cfg=from_namespace(CleanupConfig, a, prefix="cleanup."))


def run(a: argparse.Namespace) -> int:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    s = refine_subject(a.subject, a.out, config_from_args(a), device=device, backend=a.backend,
                       overwrite=a.overwrite)
    ev = s["fit"].get("eval", {})
    print(f"refined {s['subject_id']}: {s['n_renders']} views in {a.out} (head frame from the "
          f"{s['head_frame']['source']}; fit {s['seconds_fit']:.1f} s, total {s['seconds_total']:.1f} s; "
          f"fit eval {ev})")
    return 0
