"""Novel views of a fitted scene: head poses in the subject's head frame -> cameras -> RGB + clean labels.

In: the fitted Gaussians (:mod:`facegs.splat.scene` params), the subject's head frame
(``world_from_head`` [4, 4], :mod:`facegs.headframe`), the capture manifest (for the framing: median
camera distance and focal length) and a :class:`NovelViewConfig`. Out: :class:`RenderedView` per
pose: RGB [H, W, 3] uint8 premultiplied over black, cleaned labels, confidence and ignore maps
(:mod:`facegs.render.cleanup`), alpha, the raw class probabilities, and the camera (OpenCV ``K``
[3, 3], world-to-camera [4, 4], pixel centres at +0.5) with its pose in the head frame. Given the
capture views' renders, also how many of them saw each pixel's surface (:mod:`facegs.render.observed`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from facegs.core.cameras import w2c_to_head_pose
from facegs.core.manifest import SubjectManifest
from facegs.core.options import opt
from facegs.fit.config import FitConfig
from facegs.headframe.visible import ViewRender
from facegs.render.cleanup import CleanupConfig, clean_labels
from facegs.render.observed import observation_counts, unobserved_fraction
from facegs.render.poses import DISTRIBUTIONS, cameras_for_poses, match_capture_intrinsics, sample_poses
from facegs.splat.rgb_labels import BACKGROUND_CLASS, label_probs, render_rgb_labels

Cameras = list[tuple[np.ndarray, np.ndarray]]  # (world-to-camera [4, 4], K [3, 3]) per view


@dataclass
class NovelViewConfig:
    """Which novel views a subject gets (degrees in the head frame, see :mod:`facegs.render.poses`)."""

    n_renders: int = field(default=32, metadata=opt("novel views rendered per subject", flag="--renders"))
    yaw_range: tuple[float, float] = field(default=(-90.0, 90.0), metadata=opt(
        "yaw range of the sampled poses (degrees; +90 = camera on the subject's left)", flag="--yaw",
        metavar=("MIN", "MAX")))
    pitch_range: tuple[float, float] = field(default=(-40.0, 40.0), metadata=opt(
        "pitch range of the sampled poses (degrees; > 0 = camera above)", flag="--pitch", metavar=("MIN", "MAX")))
    roll_jitter_deg: float = field(default=5.0, metadata=opt("max |roll| in degrees", flag="--roll-jitter"))
    distribution: str = field(default="uniform", metadata=opt(
        "pose distribution: uniform in yaw and pitch, or weighted towards the range edges", choices=DISTRIBUTIONS))
    res: int | None = field(default=None, metadata=opt("render size in px, square (default: the capture's width)"))


@dataclass
class RenderedView:
    """One rendered novel view. Arrays [H, W(, 3)]; ``probs`` [C, H, W] float32 before clean-up;
    ``observed`` [H, W] uint8: how many capture views saw each pixel's surface (None: not measured)."""

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
    observed: np.ndarray | None = None

    @property
    def unobserved_fraction(self) -> float | None:
        """Share of the labelled foreground no capture view saw (None: not measured or no foreground)."""
        return None if self.observed is None else unobserved_fraction(self.observed, self.labels)


def novel_cameras(manifest: SubjectManifest, world_from_head: np.ndarray, views: NovelViewConfig, seed: int,
                  poses: np.ndarray | None = None) -> tuple[Cameras, int, int]:
    """Cameras at ``views.n_renders`` poses sampled with ``seed`` (or the given [P, 3] yaw/pitch/roll)
    around the head, at the capture's median distance and focal length; returns (cams, width, height)."""
    res = views.res or manifest.views[0].width
    distance, focal, width, height = match_capture_intrinsics(manifest, res, res, world_from_head=world_from_head)
    if poses is None:
        poses = sample_poses(views.n_renders, np.random.default_rng(seed), views.yaw_range, views.pitch_range,
                             views.roll_jitter_deg, views.distribution)
    return cameras_for_poses(poses, world_from_head, distance, (width, height, focal)), width, height


@torch.no_grad()
def render_novel_views(params: dict[str, torch.Tensor], cams: Cameras, width: int, height: int,
                       world_from_head: np.ndarray, fit: FitConfig, cleanup: CleanupConfig | None = None,
                       backend: str = "auto", progress: bool = True,
                       captures: Sequence[ViewRender] | None = None) -> Iterator[RenderedView]:
    """Render RGB + class probabilities at each (w2c [4, 4], K [3, 3]) and clean the labels with
    ``cleanup`` (None: plain argmax, max probability as confidence, nothing ignored). ``fit`` gives
    the label rendering mode and SH degree the scene was fitted with. With ``captures`` (the capture
    views' renders, :func:`facegs.headframe.visible.render_capture_views`) each view's ``observed``
    counts are measured (the expected depth comes from the same rasterize call) and, when
    ``cleanup.ignore_unobserved``, the pixels no capture view saw are ignored."""
    fcfg = fit.resolved()
    dev = params["means"].device
    bg = torch.zeros(1, 3, device=dev)
    bgc = BACKGROUND_CLASS if fcfg.label_background else None
    for i, (w2c, K) in enumerate(tqdm(cams, desc="render", disable=not progress, leave=False)):
        vm = torch.as_tensor(w2c, dtype=torch.float32, device=dev)[None]
        Ks = torch.as_tensor(K, dtype=torch.float32, device=dev)[None]
        rgb, lab, alpha, meta = render_rgb_labels(params, vm, Ks, width, height, bg, sh_degree=fcfg.sh_degree,
                                                  label_mode=fcfg.label_mode, label_background=fcfg.label_background,
                                                  label_bg_logit=fcfg.label_bg_logit, backend=backend,
                                                  tile_size=fcfg.tile_size, with_depth=captures is not None)
        probs_np = label_probs(lab, alpha, fcfg.label_mode, bgc)[0].permute(2, 0, 1).float().cpu().numpy()
        alpha_np = alpha[0, ..., 0].float().cpu().numpy()
        yaw, pitch, roll = w2c_to_head_pose(w2c, world_from_head)
        if cleanup is not None:
            res = clean_labels(probs_np, alpha_np, cleanup, world_from_head=world_from_head, w2c=w2c)
            labels, conf, ignore, report = res.labels, res.confidence, res.ignore, res.report
        else:
            labels = probs_np.argmax(0).astype(np.uint8)
            conf = probs_np.max(0).astype(np.float32)
            ignore = np.zeros_like(labels, dtype=bool)
            report = {}
        observed = None
        if captures is not None:
            tol = (cleanup or CleanupConfig()).observed_depth_tol
            observed = observation_counts(meta["depth"][0, ..., 0].float().cpu().numpy(), alpha_np, K, w2c, captures,
                                          depth_tol=tol)
            if cleanup is not None and cleanup.ignore_unobserved:
                unseen = (observed == 0) & (labels > 0)
                report = {**report, "unobserved_ignored_px": int((unseen & ~ignore).sum())}
                ignore = ignore | unseen
        rgb_u8 = (rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        yield RenderedView(f"render_{i:03d}", rgb_u8, labels, conf, ignore, alpha_np, probs_np,
                           np.asarray(K, np.float64), np.asarray(w2c, np.float64),
                           {"yaw": yaw, "pitch": pitch, "roll": roll}, report, observed)
