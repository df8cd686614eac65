"""The head frame of a fitted scene: its semantic Gaussians, or the capture rig as a fallback.

In: fitted Gaussian params (means, opacities, class logits; :mod:`facegs.splat.scene`) and the
capture's world-to-camera matrices [V, 4, 4]. Out: a :class:`facegs.headframe.frame.HeadFrame` and
its source (``"scene"`` or ``"cameras"``), or :class:`facegs.core.errors.FitError` saying why no
frame could be placed.
"""

from __future__ import annotations

import numpy as np
import torch

from facegs.core.errors import FitError
from facegs.core.labels import CANONICAL
from facegs.headframe.estimate import estimate_head_frame
from facegs.headframe.frame import HeadFrame, HeadFrameError
from facegs.headframe.priors import head_frame_from_cameras
from facegs.splat.scene import activated


def head_frame_from_scene(params: dict[str, torch.Tensor], max_points: int = 40_000) -> HeadFrame:
    """Estimate the head frame from the fitted Gaussians: means [N,3], softmax(logits) [N,C],
    weighted by opacity. The ``max_points`` most opaque Gaussians are used."""
    means, _, _, opac = activated(params)
    order = torch.argsort(opac, descending=True)[:max_points]
    pts = means[order].detach().cpu().numpy().astype(np.float64)
    probs = torch.softmax(params["logits"][order].detach().float(), dim=-1).cpu().numpy()
    w = opac[order].detach().cpu().numpy().astype(np.float64)
    return estimate_head_frame(pts, probs, weights=w, label_set=CANONICAL)


def place_head_frame(params: dict[str, torch.Tensor], world_to_cameras: np.ndarray, *, max_points: int = 40_000,
                     camera_fallback: bool = True, subject: str | None = None) -> tuple[HeadFrame, str]:
    """The subject's head frame and its source: the fitted scene's face parts (``"scene"``), else,
    with ``camera_fallback``, the capture rig's prior (``"cameras"``: poses become rig-relative).
    Raises :class:`FitError` (deterministic, not worth a retry) when neither works."""
    try:
        return head_frame_from_scene(params, max_points), "scene"
    except HeadFrameError as e:
        if not camera_fallback:
            raise FitError(f"cannot place the head frame after fitting: {e}. The fitted scene shows too few face "
                           "parts; check the initial labels (facegs contact-sheet --labels labels) or fit more "
                           "steps", subject=subject) from None
        try:
            return head_frame_from_cameras(np.asarray(world_to_cameras)), "cameras"
        except HeadFrameError as e2:
            raise FitError(f"cannot place the head frame: {e}; camera fallback: {e2}", subject=subject) from None
