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
The votes of *isolated* pixels (:func:`isolated_pixels`: labelled pixels none of whose 8
neighbours shares their class) are kept apart (:class:`LabelVotes`): a part, however thin, is a run
of pixels (a 1-px line is 8-connected), while impulse noise is mostly single pixels, and a few of
them inside one view's profile were enough to back a spurious ear or hat Gaussian (the pose-noise
arm of the label-refinement benchmark; docs/benchmarks.md).

:func:`relabel_unsupported` then swaps a Gaussian's two logits (its class and the class its votes
favour, the rest of the distribution untouched, as :mod:`facegs.headframe.sides` does) when

- it was seen: its total vote ``W_i = sum_c votes[i, c]`` (every labelled pixel) exceeds
  ``min_weight`` (pixels), and
- its own class holds less than ``max(min_share, floor_factor x floor)`` of its joined votes (those
  of the pixels that are not isolated; ``drop_isolated``, default on; off: of every pixel's), and
  another class holds more,

where ``floor`` is the subject's noise floor: the median, over the seen Gaussians, of the mean
share (over every labelled pixel) of the classes that are neither a Gaussian's own nor its votes'
favourite. Seen-ness and the floor count the isolated pixels because they measure the geometry and
the labels' noise, which the isolated pixels are part of; the shares leave them out because they
back no part. Uniform pixel noise gives every class a share of about ``ratio / C`` of every
Gaussian's votes, so the floor rises with it and a genuine thin part (eyes at 0.04-0.06 of every
pixel's votes under 50% noise, 0.3-0.6 with clean labels; higher in the joined votes, since a
part's pixels are joined and most noise pixels are not) is not taken for an unsupported one
(0.01-0.02 of every pixel's votes, 0.000 of the joined ones on the benchmark's pose-noise fits).
Gaussians no view sees keep their class.
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
    drop_isolated: bool = field(default=True, metadata=opt(
        "a labelled pixel none of whose 8 neighbours (at the votes' size) shares its class backs no class: "
        "impulse noise, not a part (it still counts in whether a Gaussian is seen and in the noise floor; "
        "off: an ablation)", flag="--keep-isolated-label-pixels"))


def isolated_pixels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[H, W] bool: the labelled pixels of ``labels`` [H, W] (indices; ``>= num_classes``, e.g. 255,
    are unlabelled) none of whose 8 neighbours holds the same class."""
    lab = labels.long()
    valid = lab < num_classes
    idx = torch.where(valid, lab, torch.zeros_like(lab))
    onehot = torch.nn.functional.one_hot(idx, num_classes).permute(2, 0, 1)[None].float() * valid
    kernel = torch.ones(num_classes, 1, 3, 3, device=lab.device)
    count = torch.nn.functional.conv2d(onehot, kernel, padding=1, groups=num_classes)[0]
    same = count.gather(0, idx[None])[0] - 1.0  # the pixel itself counts once
    return valid & (same < 0.5)


@dataclass(frozen=True)
class LabelVotes:
    """Per-Gaussian label votes from :func:`label_votes`, float64 [N, C] (canonical classes) each:
    ``joined`` from the labelled pixels with a neighbour of their class, ``isolated`` from those
    without one (:func:`isolated_pixels`). Their sum is every labelled pixel's vote."""

    joined: torch.Tensor
    isolated: torch.Tensor

    @property
    def all(self) -> torch.Tensor:
        """[N, C]: the votes of every labelled pixel."""
        return self.joined + self.isolated


def label_votes(params: dict[str, torch.Tensor], data: ViewData, backend: str = "auto",
                matte_over_background: bool = True) -> LabelVotes:
    """The label votes of every Gaussian (see the module docstring) from ``data``'s views:
    ``labels`` [V, H, W] canonical indices (255 = ignore), ``confidence`` [V, H, W] (None: 1),
    ``masks`` [V, H, W] (None: no matte), view ``weights`` [V], ``Ks`` [V, 3, 3] and world-to-camera
    ``viewmats`` [V, 4, 4] (OpenCV camera) at the same size; the isolated pixels' votes apart (one
    render of 2C channels per view). Zero when ``data`` has no labels."""
    means, quats, scales, opac = (t.detach() for t in activated(params))
    n, c = int(means.shape[0]), int(params["logits"].shape[1])
    dev = means.device
    votes = torch.zeros(n, 2 * c, dtype=torch.float64, device=dev)
    if data.labels is None:
        return LabelVotes(votes[:, :c], votes[:, c:])
    V, H, W = data.labels.shape
    bg = get_label_set(CANONICAL).index("background")
    for v in range(V):
        lab = data.labels[v].to(dev).long()
        valid = (lab != IGNORE_INDEX) & (lab < c)
        if not bool(valid.any()):
            continue
        iso = isolated_pixels(lab, c)
        # channels [0, C): joined pixels' one-hot labels, [C, 2C): isolated ones'
        target = torch.zeros(H, W, 2 * c, device=dev)
        target[valid] = torch.nn.functional.one_hot(lab[valid] + c * iso[valid].long(), 2 * c).float()
        pix = torch.ones(H, W, device=dev) * float(data.weights[v])
        if data.confidence is not None:
            pix = pix * data.confidence[v].to(dev)
        if matte_over_background and data.masks is not None and (data.has_mask is None or bool(data.has_mask[v])):
            pix = torch.where(lab == bg, pix * (1.0 - data.masks[v].to(dev)), pix)
        target *= pix[..., None]
        feats = torch.zeros(n, 2 * c, device=dev, requires_grad=True)
        out, _, _ = rasterize(means, quats, scales, opac, feats, data.viewmats[v:v + 1].to(dev),
                              data.Ks[v:v + 1].to(dev), W, H, render_mode="RGB", backend=backend)
        (grad,) = torch.autograd.grad((out[0] * target).sum(), feats)
        votes += grad.double()
    return LabelVotes(votes[:, :c].contiguous(), votes[:, c:].contiguous())


def relabel_unsupported(params: dict[str, torch.Tensor], votes: LabelVotes,
                        cfg: SupportConfig | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``params`` with the logits of unsupported Gaussians swapped (a new dict; the other tensors
    are shared) and the statistics ``{"relabelled", "relabelled_fraction", "seen_fraction",
    "noise_floor", "threshold", "isolated_vote_fraction", "by_class": {class name: count}}``.
    ``votes`` from :func:`label_votes`. Whether a Gaussian is seen and the noise floor count every
    labelled pixel; its classes' shares count the joined ones only (``cfg.drop_isolated``; off:
    every pixel)."""
    cfg = cfg or SupportConfig()
    names = get_label_set(CANONICAL).classes
    logits = params["logits"]
    n, c = logits.shape
    raw = votes.all.to(torch.float64).cpu().numpy()
    total = raw.sum(axis=1)
    seen = total > cfg.min_weight
    own = logits.detach().argmax(dim=1).cpu().numpy()
    rows = np.arange(n)
    # the noise floor from every pixel: what label noise gives a class that is neither the
    # Gaussian's own nor its votes' favourite
    other = raw / np.maximum(total[:, None], 1e-12)
    other[rows, own] = 0.0
    other[rows, raw.argmax(axis=1)] = 0.0
    floor = float(np.median(other[seen].sum(axis=1) / max(c - 2, 1))) if seen.any() else 0.0
    vt = votes.joined.to(torch.float64).cpu().numpy() if cfg.drop_isolated else raw
    fav = vt.argmax(axis=1)
    share = vt / np.maximum(vt.sum(axis=1)[:, None], 1e-12)
    thr = max(cfg.min_share, cfg.floor_factor * floor)
    swap = seen & (share[rows, own] < thr) & (fav != own) & (share[rows, fav] > share[rows, own])
    idx = np.nonzero(swap)[0]
    stats: dict[str, Any] = {"relabelled": int(idx.size), "relabelled_fraction": round(idx.size / max(n, 1), 6),
                             "seen_fraction": round(float(seen.mean()) if n else 0.0, 6),
                             "noise_floor": round(floor, 6), "threshold": round(thr, 6),
                             "isolated_vote_fraction": round(float(votes.isolated.sum()) / max(float(total.sum()), 1e-12), 6),
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
