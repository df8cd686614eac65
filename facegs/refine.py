"""Refine one subject: fit -> head frame -> sampled head poses -> render -> clean labels -> write.

Output directory (a subject directory in the manifest format, so every facegs tool reads it):
```
OUT/
  subject.json            # views = rendered novel views, pose in the ESTIMATED head frame
  images/render_000.png   # RGB rendered from the fitted scene
  labels/render_000.png   # cleaned labels (canonical classes; palette PNG)
  confidence/...png       # probability of the final label
  ignore/...png           # 255 where a trainer should not trust the label
  masks/...png            # rendered alpha >= 0.5 (for background compositing)
  scene.ply               # standard 3DGS fields + class_logit_* fields
  scene.pt                # compact tensors (torch.load(weights_only=True))
  refine.json             # fit summary, head frame and its diagnostics, timings, config
```
The directory is built under a temporary name and renamed into place: nothing half-written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from facegs.cameras import w2c_to_head_pose
from facegs.cleanup import CleanupConfig, clean_labels
from facegs.fit import BACKGROUND_CLASS, FitConfig, FitResult, fit_subject, render
from facegs.fsutil import atomic_directory
from facegs.errors import InputError
from facegs.headframe import HeadFrame, HeadFrameError, estimate_head_frame
from facegs.imageio import write_confidence, write_labels, write_mask, write_rgb
from facegs.labels import CANONICAL
from facegs.losses3d import label_probs
from facegs.manifest import SubjectManifest, View, save_manifest
from facegs.poses import cameras_for_poses, match_capture_intrinsics, sample_poses
from facegs.scene import activated, save_ply, save_tensors
from facegs.validate import load_subject


@dataclass(frozen=True)
class RefineConfig:
    """Fit + novel-view rendering settings. ``res`` None: the capture's width (square renders)."""

    fit: FitConfig = field(default_factory=FitConfig)
    n_renders: int = 32
    yaw_range: tuple[float, float] = (-90.0, 90.0)
    pitch_range: tuple[float, float] = (-40.0, 40.0)
    roll_jitter_deg: float = 5.0
    distribution: str = "uniform"
    res: int | None = None
    cleanup: bool = True
    cleanup_cfg: CleanupConfig = field(default_factory=CleanupConfig)
    seed: int = 0
    max_headframe_points: int = 40_000


@dataclass
class RenderedView:
    """One rendered novel view. Arrays [H, W(, 3)]; ``probs`` [C, H, W] float32 before clean-up."""

    view_id: str
    rgb: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    ignore: np.ndarray
    alpha: np.ndarray
    probs: np.ndarray
    K: np.ndarray
    w2c: np.ndarray
    pose: dict[str, float]
    cleanup_report: dict[str, Any]


def head_frame_from_scene(params: dict[str, torch.Tensor], max_points: int = 40_000) -> HeadFrame:
    """Estimate the head frame from the fitted Gaussians: means [N,3], softmax(logits) [N,C],
    weighted by opacity. The ``max_points`` most opaque Gaussians are used."""
    means, _, _, opac = activated(params)
    order = torch.argsort(opac, descending=True)[:max_points]
    pts = means[order].detach().cpu().numpy().astype(np.float64)
    probs = torch.softmax(params["logits"][order].detach().float(), dim=-1).cpu().numpy()
    w = opac[order].detach().cpu().numpy().astype(np.float64)
    return estimate_head_frame(pts, probs, weights=w, label_set=CANONICAL)


@torch.no_grad()
def render_views(params: dict[str, torch.Tensor], cams: list[tuple[np.ndarray, np.ndarray]], width: int,
                 height: int, world_from_head: np.ndarray, cfg: RefineConfig, backend: str = "auto",
                 progress: bool = True) -> Iterator[RenderedView]:
    """Render RGB + class probabilities at each (w2c [4,4], K [3,3]) and clean the labels."""
    fcfg = cfg.fit.resolved()
    dev = params["means"].device
    bg = torch.zeros(1, 3, device=dev)
    for i, (w2c, K) in enumerate(tqdm(cams, desc="render", disable=not progress, leave=False)):
        vm = torch.as_tensor(w2c, dtype=torch.float32, device=dev)[None]
        Ks = torch.as_tensor(K, dtype=torch.float32, device=dev)[None]
        rgb, lab, alpha, _ = render(params, vm, Ks, width, height, bg, sh_degree=fcfg.sh_degree,
                                    label_mode=fcfg.label_mode, label_background=fcfg.label_background,
                                    label_bg_logit=fcfg.label_bg_logit, backend=backend, tile_size=fcfg.tile_size)
        probs = label_probs(lab, alpha, fcfg.label_mode, BACKGROUND_CLASS if fcfg.label_background else None)
        probs_np = probs[0].permute(2, 0, 1).float().cpu().numpy()
        alpha_np = alpha[0, ..., 0].float().cpu().numpy()
        yaw, pitch, roll = w2c_to_head_pose(w2c, world_from_head)
        if cfg.cleanup:
            res = clean_labels(probs_np, alpha_np, cfg.cleanup_cfg, world_from_head=world_from_head, w2c=w2c)
            labels, conf, ignore, report = res.labels, res.confidence, res.ignore, res.report
        else:
            labels = probs_np.argmax(0).astype(np.uint8)
            conf = probs_np.max(0).astype(np.float32)
            ignore = np.zeros_like(labels, dtype=bool)
            report = {}
        rgb_u8 = (rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        yield RenderedView(f"render_{i:03d}", rgb_u8, labels, conf, ignore, alpha_np, probs_np,
                           np.asarray(K, np.float64), np.asarray(w2c, np.float64),
                           {"yaw": yaw, "pitch": pitch, "roll": roll}, report)


def novel_cameras(manifest: SubjectManifest, hf: HeadFrame, cfg: RefineConfig,
                  poses: np.ndarray | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
    """Cameras at sampled (or given [P, 3] yaw/pitch/roll) poses around the estimated head,
    at the capture's median distance and focal length; returns (cams, width, height)."""
    w0 = manifest.views[0].width
    res = cfg.res or w0
    distance, focal, width, height = match_capture_intrinsics(manifest, res, res, world_from_head=hf.world_from_head)
    if poses is None:
        poses = sample_poses(cfg.n_renders, np.random.default_rng(cfg.seed), cfg.yaw_range, cfg.pitch_range,
                             cfg.roll_jitter_deg, cfg.distribution)
    cams = cameras_for_poses(poses, hf.world_from_head, distance, (width, height, focal))
    return cams, width, height


def refine_subject(subject_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: RefineConfig | None = None,
                   *, device: str = "cpu", backend: str = "auto", progress: bool = True, overwrite: bool = False,
                   poses: np.ndarray | None = None, min_views: int = 4) -> dict[str, Any]:
    """Fit the subject's scene and write refined novel views to ``out_dir`` (see module docstring).

    Returns the summary written to ``refine.json``.
    """
    cfg = cfg or RefineConfig()
    t0 = time.perf_counter()
    m = load_subject(subject_dir, min_views=min_views)
    fit: FitResult = fit_subject(m, cfg.fit, device=device, backend=backend, progress=progress)
    t_fit = time.perf_counter() - t0
    params = {k: v.to(device) for k, v in fit.params.items()}
    try:
        hf = head_frame_from_scene(params, cfg.max_headframe_points)
    except HeadFrameError as e:
        raise InputError(f"cannot place the head frame after fitting: {e}. The fitted scene shows too few "
                         "face parts; check the initial labels (facegs contact-sheet --labels labels) or fit "
                         "more steps", subject=m.subject_id, field="labels") from None
    cams, width, height = novel_cameras(m, hf, cfg, poses)
    views: list[View] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for sub in ("images", "labels", "confidence", "ignore", "masks"):
            (tmp / sub).mkdir()
        for rv in render_views(params, cams, width, height, hf.world_from_head, cfg, backend, progress):
            vid = rv.view_id
            write_rgb(tmp / "images" / f"{vid}.png", rv.rgb)
            write_labels(tmp / "labels" / f"{vid}.png", rv.labels, CANONICAL)
            write_confidence(tmp / "confidence" / f"{vid}.png", rv.confidence)
            write_mask(tmp / "ignore" / f"{vid}.png", rv.ignore)
            write_mask(tmp / "masks" / f"{vid}.png", rv.alpha >= 0.5)
            views.append(View(view_id=vid, image=f"images/{vid}.png", width=width, height=height, K=rv.K,
                              world_to_camera=rv.w2c, labels=f"labels/{vid}.png",
                              confidence=f"confidence/{vid}.png", ignore=f"ignore/{vid}.png",
                              mask=f"masks/{vid}.png", pose=rv.pose))
        save_ply(tmp / "scene.ply", fit.params, label_set=CANONICAL)
        save_tensors(tmp / "scene.pt", fit.params, label_set=CANONICAL)
        summary = {
            "subject_id": m.subject_id,
            "source_dir": str(Path(subject_dir).resolve()),
            "fit": _jsonable(fit.summary),
            "head_frame": {"world_from_head": hf.world_from_head.tolist(), "diagnostics": _jsonable(hf.diagnostics)},
            "n_renders": len(views),
            "seconds_fit": round(t_fit, 2),
            "seconds_total": round(time.perf_counter() - t0, 2),
            "config": _jsonable(asdict(cfg)),
        }
        save_manifest(SubjectManifest(subject_id=m.subject_id, label_set=CANONICAL, views=tuple(views),
                                      world_from_head=hf.world_from_head,
                                      source={"format": "facegs.refine", "subject_dir": str(subject_dir)},
                                      root=Path(out_dir)), tmp)
        (tmp / "refine.json").write_text(json.dumps(summary, indent=1))
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


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
