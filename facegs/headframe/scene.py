"""TODO docstring."""

from __future__ import annotations

import numpy as np
import torch

from facegs.core.labels import CANONICAL
from facegs.headframe.estimate import estimate_head_frame
from facegs.headframe.frame import HeadFrame
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
