"""Labelled points of a fitted scene's visible surface, as the capture cameras see it.

A head frame must come from the face a camera can see, not from Gaussians hidden inside the head:
with noisy labels and label gradients kept off the geometry, a Gaussian that no view sees clearly
keeps whatever class its few noisy pixels gave it, and such Gaussians (behind the face, inside the
skull) pulled the old Gaussian-based estimate tens of degrees off. Here every capture view is
rendered (at most ``max_side`` px on its longer side, ``K`` scaled exactly: pixel centres at +0.5)
with the blended per-Gaussian class probabilities and the expected depth (``RGB+ED``); pixels that
the scene covers opaquely (``alpha >= alpha_min``) are back-projected into world points. So every
point lies on a surface some camera saw, and its class distribution is the multi-view consensus
there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from facegs.splat.rasterize import rasterize
from facegs.splat.scene import activated

CameraView = tuple[np.ndarray, np.ndarray, int, int]  # (K [3, 3], world-to-camera [4, 4], width, height)


@dataclass
class SurfacePoints:
    """``points`` [M, 3] float64 world coordinates, ``probs`` [M, C] float32 class probabilities,
    ``view`` [M] int: the capture view each point was seen in."""

    points: np.ndarray
    probs: np.ndarray
    view: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    @property
    def confidence(self) -> np.ndarray:
        """[M] the probability of each point's most probable class."""
        return self.probs.max(axis=1)

    @property
    def labels(self) -> np.ndarray:
        """[M] each point's most probable class."""
        return self.probs.argmax(axis=1)


def scaled_view(K: np.ndarray, width: int, height: int, max_side: int) -> tuple[np.ndarray, int, int]:
    """(K, width, height) of a view resized so that its longer side is at most ``max_side`` px."""
    s = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * s)), max(1, round(height * s))
    K2 = np.asarray(K, dtype=np.float64).copy()
    K2[0] *= w / width
    K2[1] *= h / height
    return K2, w, h


@dataclass
class ViewRender:
    """One capture view rendered at reduced size: ``K`` [3, 3] scaled to ``width`` x ``height``,
    ``probs`` [h, w, C] float16 blended class probabilities (normalised by alpha), ``alpha`` [h, w]
    and ``depth`` [h, w] (expected camera z) float32."""

    K: np.ndarray
    w2c: np.ndarray
    width: int
    height: int
    probs: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """[h, w] uint8 most probable class (0 = background where alpha < 0.5)."""
        return np.where(self.alpha >= 0.5, self.probs.argmax(axis=-1), 0).astype(np.uint8)


@torch.no_grad()
def render_capture_views(params: dict[str, torch.Tensor], views: Sequence[CameraView], *, max_side: int = 128,
                         backend: str = "auto") -> list[ViewRender]:
    """Render every view (longer side at most ``max_side``) with class probabilities and depth."""
    means, quats, scales, opac = activated(params)
    probs_g = torch.softmax(params["logits"].float(), dim=-1)
    dev = means.device
    out_views = []
    for K, w2c, width, height in views:
        Ks, w, h = scaled_view(K, width, height, max_side)
        vm = torch.as_tensor(np.asarray(w2c), dtype=torch.float32, device=dev)[None]
        out, alpha, _ = rasterize(means, quats, scales, opac, probs_g,
                                  vm, torch.as_tensor(Ks, dtype=torch.float32, device=dev)[None], w, h,
                                  render_mode="RGB+ED", backend=backend)
        a = alpha[0, ..., 0]
        probs = (out[0, ..., :-1] / a[..., None].clamp_min(1e-6)).clamp(0.0, 1.0)
        out_views.append(ViewRender(Ks, np.asarray(w2c, np.float64), w, h, probs.half().cpu().numpy(),
                                    a.float().cpu().numpy(), out[0, ..., -1].float().cpu().numpy()))
    return out_views


def visible_surface_points(renders: Sequence[ViewRender], *, alpha_min: float = 0.9, max_points: int = 80_000,
                           seed: int = 0) -> SurfacePoints:
    """Back-project the opaque pixels of every rendered view (see the module docstring); a seeded
    subsample keeps at most ``max_points`` points."""
    pts, prb, vid = [], [], []
    for i, r in enumerate(renders):
        ii, jj = np.nonzero(r.alpha >= alpha_min)
        if ii.size == 0:
            continue
        z = r.depth[ii, jj].astype(np.float64)
        uv1 = np.stack([jj + 0.5, ii + 0.5, np.ones_like(z)], axis=1)
        x_cam = (uv1 @ np.linalg.inv(r.K).T) * z[:, None]
        R, t = r.w2c[:3, :3], r.w2c[:3, 3]
        pts.append((x_cam - t) @ R)
        prb.append(r.probs[ii, jj].astype(np.float32))
        vid.append(np.full(len(z), i, dtype=np.int64))
    if not pts:
        C = renders[0].probs.shape[-1] if renders else 19
        return SurfacePoints(np.zeros((0, 3)), np.zeros((0, C), np.float32), np.zeros(0, np.int64))
    P, Q, V = np.concatenate(pts), np.concatenate(prb), np.concatenate(vid)
    if len(P) > max_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(P), max_points, replace=False))
        P, Q, V = P[sel], Q[sel], V[sel]
    return SurfacePoints(P, Q, V)
