"""Left/right labels made consistent with the head frame: a left part lies on the subject's left.

A fitted scene can hold left/right parts on the wrong side of the face: views whose parser swapped
left and right as a whole, or only in part, that the fit's view check (:mod:`facegs.fit.lr_views`)
did not catch, pull some Gaussians of ``r_brow`` onto the left brow. The 2D check of the clean-up
(:func:`facegs.render.cleanup.fix_left_right`) swaps a whole class per rendered view; a partial mix
stays. In 3D the rule is exact once the head frame is known: a Gaussian whose head-frame ``x`` is
clearly positive (+x = the subject's LEFT) is not a right part, and vice versa.

:func:`enforce_sides` applies it to the class logits: for every pair (``l_eye``/``r_eye``,
``l_brow``/``r_brow``, ``l_ear``/``r_ear``) and every Gaussian farther than ``margin_frac`` x the
face's width from the mid-plane, the two logits are swapped when the wrong side's logit is the
larger. The rest of the distribution is untouched; nothing changes within the margin (near the
mid-plane the frame's own error could decide the side). It needs the frame's x axis and the
mid-plane's offset only, which every source but the rig alone (``"cameras"``) takes from the face's
symmetry plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facegs.core.labels import CANONICAL, get_label_set
from facegs.headframe.template import LR_LANDMARK_PAIRS

#: head-frame sources whose x axis and mid-plane come from the face (not the rig alone)
SIDED_SOURCES = ("labels+symmetry", "labels", "profile+symmetry", "cameras+symmetry")


@dataclass(frozen=True)
class SideConfig:
    """``margin_frac``: no change within this fraction of the face's width of the mid-plane
    (the inner brow ends are at ~0.07 of the width, the eyes' centres at ~0.2); ``alpha_min``:
    Gaussians below this opacity are ignored when the face's width is measured."""

    enabled: bool = True
    margin_frac: float = 0.03
    alpha_min: float = 0.5


def enforce_sides(params: dict[str, torch.Tensor], world_from_head: np.ndarray, cfg: SideConfig | None = None,
                  label_set: str = CANONICAL) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
    """A copy of ``params`` whose ``logits`` [N, K] put every left/right part on its own side.

    ``world_from_head`` [4, 4]: the head frame (columns x, y, z of the rotation in world, +x the
    subject's left; origin on the mid-plane). Returns (params, stats): stats ``sided`` (Gaussians
    whose argmax is a left/right class), ``swapped`` (Gaussians whose pair was swapped), and
    ``swapped_fraction`` = swapped / sided. Only ``logits`` is replaced (a new tensor); the other
    entries are the same tensors.
    """
    cfg = cfg or SideConfig()
    ls = get_label_set(label_set)
    logits = params["logits"]
    pairs = [(ls.index(a), ls.index(b)) for a, b in LR_LANDMARK_PAIRS if a in ls.classes and b in ls.classes]
    stats: dict[str, int | float] = {"sided": 0, "swapped": 0, "swapped_fraction": 0.0}
    if not cfg.enabled or not pairs or logits.shape[0] == 0:
        return params, stats
    with torch.no_grad():
        T = torch.as_tensor(np.asarray(world_from_head, np.float64), dtype=params["means"].dtype,
                            device=params["means"].device)  # fmt: skip
        x = (params["means"] - T[:3, 3]) @ T[:3, 0]  # [N] signed distance to the mid-plane, + = left
        opaque = torch.sigmoid(params["opacities"]) >= cfg.alpha_min
        xs = x[opaque] if bool(opaque.any()) else x
        width = float(torch.quantile(xs, 0.975) - torch.quantile(xs, 0.025)) if xs.numel() > 1 else 0.0
        margin = cfg.margin_frac * width
        left, right = x > margin, x < -margin
        out = logits.detach().clone()
        arg = logits.argmax(dim=1)
        swapped = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        sided = torch.zeros_like(swapped)
        for li, ri in pairs:
            sided |= (arg == li) | (arg == ri)
            wrong = (left & (logits[:, ri] > logits[:, li])) | (right & (logits[:, li] > logits[:, ri]))
            out[wrong, li], out[wrong, ri] = logits[wrong, ri], logits[wrong, li]
            swapped |= wrong & ((arg == li) | (arg == ri))
    n_sided, n_swapped = int(sided.sum()), int(swapped.sum())
    stats = {"sided": n_sided, "swapped": n_swapped, "swapped_fraction": round(n_swapped / max(n_sided, 1), 4)}
    return {**params, "logits": out}, stats
