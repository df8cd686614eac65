"""Label support: how much of the capture views' label evidence backs each Gaussian's class.

The fit matches the *blended* label renders to the input labels at the capture views, so nothing
forces every single Gaussian to hold a class that the views give it: one fitted to a few noisy
pixels of one view, or one that blends in under its neighbours, keeps whatever class it drifted
to, and a novel view that sees it shows a few pixels of an ear or a mouth where the truth has none.
A class absent from the truth costs a whole class in a view's mIoU however few its pixels (on the
label-refinement benchmark: 330 such pixels over the 60-90 deg renders of three subjects, most of
the frontal8 rig's pose-noise gap; docs/benchmarks.md).

:func:`label_votes` lifts the input labels onto the Gaussians. For each capture view, with per-
Gaussian features ``F = 0`` [N, C] rendered like colours, the gradient of
``sum_p conf(p) * onehot(label(p)) . render(F)(p)`` with respect to ``F`` is each Gaussian's blending
weight ``w_i(p) = T_i(p) alpha_i(p)`` summed over the pixels of each class:
``votes[i, c] = sum_views s_v sum_p w_i(p) conf(p) m(p) [label(p) = c]``, with the view weights ``s_v``
of the fit and, as in the fit's label loss (``matte_over_background``), ``m(p) = 1 - mask(p)`` for a
'background' label in a view with a mask, else 1; ignored pixels vote for nothing. Per pixel the
weights sum to the rendered alpha, so the votes of a view sum to ``s_v sum_p conf(p) m(p) alpha(p)``.

:func:`relabel_unsupported` then swaps a Gaussian's two logits (its class and the class its votes
favour, the rest of the distribution untouched, as :mod:`facegs.headframe.sides` does) when

- it was seen: its total vote ``W_i = sum_c votes[i, c]`` exceeds ``min_weight`` (pixels), and
- its own class holds less than ``max(min_share, floor_factor x floor)`` of its votes, and another
  class holds more,

where ``floor`` is the subject's noise floor: the median, over the seen Gaussians, of the mean
share of the classes that are neither a Gaussian's own nor its votes' favourite. Uniform pixel
noise gives every class a share of about ``ratio / C`` of every Gaussian's votes, so the floor rises
with it and a genuine thin part (eyes at 0.04-0.06 of their votes under 50% noise, 0.3-0.6 with clean
labels) is not taken for an unsupported one (0.01-0.02). Gaussians no view sees keep their class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set
from facegs.core.options import opt
from facegs.fit.data import ViewData
from facegs.splat.rasterize import rasterize
from facegs.splat.scene import activated


@dataclass(frozen=True)
class SupportConfig:
    """Options of :func:`relabel_unsupported` (see the module docstring)."""

    enabled: bool = field(default=True, metadata=opt(
        "swap the class of Gaussians that the capture views' labels do not back for the class they do "
        "(off: an ablation)", flag="--no-relabel-unsupported"))
    max_side: int = 256  # the capture views are scaled to at most this many pixels for the votes
    min_weight: float = 0.05  # a Gaussian with less total vote (pixels) is unseen and keeps its class
    min_share: float = 0.03  # a class below this share of its Gaussian's votes is unsupported ...
    floor_factor: float = 2.0  # ... or below this multiple of the subject's noise floor


def label_votes(params: dict[str, torch.Tensor], data: ViewData, backend: str = "auto",
                matte_over_background: bool = True) -> torch.Tensor:
    """[N, C] float64 label votes of every Gaussian (see the module docstring) from ``data``'s views:
    ``labels`` [V, H, W] canonical indices (255 = ignore), ``confidence`` [V, H, W] (None: 1),
    ``masks`` [V, H, W] (None: no matte), view ``weights`` [V], ``Ks`` [V, 3, 3] and world-to-camera
    ``viewmats`` [V, 4, 4] (OpenCV camera) at the same size. Zero when ``data`` has no labels."""
    means, quats, scales, opac = (t.detach() for t in activated(params))
    n, c = int(means.shape[0]), int(params["logits"].shape[1])
    dev = means.device
    votes = torch.zeros(n, c, dtype=torch.float64, device=dev)
    if data.labels is None:
        return votes
    V, H, W = data.labels.shape
    bg = get_label_set(CANONICAL).index("background")
    for v in range(V):
        lab = data.labels[v].to(dev).long()
        valid = (lab != IGNORE_INDEX) & (lab < c)
        if not bool(valid.any()):
            continue
        target = torch.zeros(H, W, c, device=dev)
        target[valid] = torch.nn.functional.one_hot(lab[valid], c).float()
        pix = torch.ones(H, W, device=dev) * float(data.weights[v])
        if data.confidence is not None:
            pix = pix * data.confidence[v].to(dev)
        if matte_over_background and data.masks is not None and (data.has_mask is None or bool(data.has_mask[v])):
            pix = torch.where(lab == bg, pix * (1.0 - data.masks[v].to(dev)), pix)
        target *= pix[..., None]
        feats = torch.zeros(n, c, device=dev, requires_grad=True)
        out, _, _ = rasterize(means, quats, scales, opac, feats, data.viewmats[v:v + 1].to(dev),
                              data.Ks[v:v + 1].to(dev), W, H, render_mode="RGB", backend=backend)
        (grad,) = torch.autograd.grad((out[0] * target).sum(), feats)
        votes += grad.double()
    return votes


def relabel_unsupported(params: dict[str, torch.Tensor], votes: torch.Tensor,
                        cfg: SupportConfig | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``params`` with the logits of unsupported Gaussians swapped (a new dict; the other tensors
    are shared) and the statistics ``{"relabelled", "relabelled_fraction", "seen_fraction",
    "noise_floor", "threshold", "by_class": {class name: count}}``. ``votes`` [N, C] (canonical
    classes) from :func:`label_votes`."""
    cfg = cfg or SupportConfig()
    names = get_label_set(CANONICAL).classes
    logits = params["logits"]
    n, c = logits.shape
    vt = votes.to(torch.float64).cpu().numpy()
    total = vt.sum(axis=1)
    seen = total > cfg.min_weight
    own = logits.detach().argmax(dim=1).cpu().numpy()
    fav = vt.argmax(axis=1)
    share = vt / np.maximum(total[:, None], 1e-12)
    rows = np.arange(n)
    other = share.copy()
    other[rows, own] = 0.0
    other[rows, fav] = 0.0
    floor = float(np.median(other[seen].sum(axis=1) / max(c - 2, 1))) if seen.any() else 0.0
    thr = max(cfg.min_share, cfg.floor_factor * floor)
    swap = seen & (share[rows, own] < thr) & (fav != own) & (share[rows, fav] > share[rows, own])
    idx = np.nonzero(swap)[0]
    stats: dict[str, Any] = {"relabelled": int(idx.size), "relabelled_fraction": round(idx.size / max(n, 1), 6),
                             "seen_fraction": round(float(seen.mean()) if n else 0.0, 6),
                             "noise_floor": round(floor, 6), "threshold": round(thr, 6),
                             "by_class": {names[k]: int(m) for k, m in zip(*np.unique(own[idx], return_counts=True))}}
    if idx.size == 0:
        return dict(params), stats
    new = logits.detach().clone()
    i = torch.as_tensor(idx, device=new.device)
    a = torch.as_tensor(own[idx], device=new.device)
    b = torch.as_tensor(fav[idx], device=new.device)
    la, lb = new[i, a].clone(), new[i, b].clone()
    new[i, a], new[i, b] = lb, la
    return {**params, "logits": new}, stats
