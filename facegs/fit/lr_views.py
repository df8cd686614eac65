"""Views whose left and right labels are swapped as a whole, found against the 3D consensus.

A parser's most common mistake at large yaw is not a noisy pixel but a whole view with left and
right exchanged (l_eye <-> r_eye, l_ear <-> r_ear, ...). The joint fit averages such views with the
others, so their sided Gaussians end up with split left/right beliefs and some of them flip.

Half-way through the fit, when the consensus is established but can still move, every view is
rendered once and its sided input pixels (the label set's left/right classes) are compared with
the rendered labels twice: as they are (``agree``) and with left and right exchanged (``agree_flipped``).
A view with at least ``min_sided`` sided pixels whose flipped labels agree ``margin`` times better
than its own is relabelled flipped for the rest of the fit. Its pixels of unsided classes (skin,
hair, nose) are unchanged. The input labels themselves (and the quality score's comparison with
them) are left as the user gave them; the fit summary lists the flipped views.
"""

from __future__ import annotations

import numpy as np
import torch

from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set
from facegs.fit.config import FitConfig
from facegs.fit.data import ViewData
from facegs.splat.rgb_labels import render_rgb_labels
from facegs.splat.scene import Params


def flip_table(label_set: str = CANONICAL) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lut [256] int64, sided [256] bool)``: each value's left/right counterpart (255 kept) and
    whether the value is a sided class."""
    ls = get_label_set(label_set)
    lut = np.arange(256, dtype=np.int64)
    lut[: ls.num_classes] = ls.flip_lut()[: ls.num_classes]
    sided = lut != np.arange(256)
    return torch.as_tensor(lut), torch.as_tensor(sided)


@torch.no_grad()
def find_swapped_views(params: Params, data: ViewData, cfg: FitConfig, backend: str = "auto", *,
                       min_sided: int = 50, margin: float = 1.5) -> list[dict[str, int | str]]:
    """Views whose sided labels agree much better with the consensus once flipped (module docstring).
    Returns ``{"view", "index", "agree", "agree_flipped"}`` per such view, in view order."""
    if data.labels is None:
        return []
    lut, sided_lut = (t.to(data.labels.device) for t in flip_table())
    out: list[dict[str, int | str]] = []
    bg = torch.zeros(1, 3, device=data.images.device)
    for v in range(len(data)):
        lab = data.labels[v]
        sided = sided_lut[lab] & (lab != IGNORE_INDEX)
        n = int(sided.sum())
        if n < min_sided:
            continue
        _, rendered, _, _ = render_rgb_labels(params, data.viewmats[v:v + 1], data.Ks[v:v + 1], data.width,
                                              data.height, bg, label_mode=cfg.label_mode,
                                              label_background=cfg.label_background,
                                              label_bg_logit=cfg.label_bg_logit, backend=backend,
                                              tile_size=cfg.tile_size)
        pred = rendered[0].argmax(-1)[sided]
        agree = int((pred == lab[sided]).sum())
        agree_flipped = int((pred == lut[lab[sided]]).sum())
        if agree_flipped > margin * max(agree, 1):
            out.append({"view": data.view_ids[v], "index": v, "agree": agree, "agree_flipped": agree_flipped})
    return out


def flip_views(data: ViewData, views: list[dict[str, int | str]]) -> None:
    """Exchange left and right in the label maps of ``views`` (from :func:`find_swapped_views`), in place."""
    if data.labels is None or not views:
        return
    lut, _ = (t.to(data.labels.device) for t in flip_table())
    for v in views:
        i = int(v["index"])
        data.labels[i] = lut[data.labels[i]]
