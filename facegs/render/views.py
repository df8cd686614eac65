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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from facegs.core.cameras import w2c_to_head_pose
from facegs.core.manifest import SubjectManifest
from facegs.fit.config import FitConfig
from facegs.headframe.frame import HeadFrame
from facegs.render.cleanup import CleanupConfig, clean_labels
from facegs.render.poses import cameras_for_poses, match_capture_intrinsics, sample_poses
from facegs.splat.render import BACKGROUND_CLASS, label_probs, render_rgb_labels


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


@torch.no_grad()
def render_novel_views(params: dict[str, torch.Tensor], cams: list[tuple[np.ndarray, np.ndarray]], width: int,
                 height: int, world_from_head: np.ndarray, cfg: RefineConfig, backend: str = "auto",
                 progress: bool = True) -> Iterator[RenderedView]:
    """Render RGB + class probabilities at each (w2c [4,4], K [3,3]) and clean the labels."""
    fcfg = cfg.fit.resolved()
    dev = params["means"].device
    bg = torch.zeros(1, 3, device=dev)
    for i, (w2c, K) in enumerate(tqdm(cams, desc="render", disable=not progress, leave=False)):
        vm = torch.as_tensor(w2c, dtype=torch.float32, device=dev)[None]
        Ks = torch.as_tensor(K, dtype=torch.float32, device=dev)[None]
        rgb, lab, alpha, _ = render_rgb_labels(params, vm, Ks, width, height, bg, sh_degree=fcfg.sh_degree,
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
