"""Labels for the Gaussians the cameras barely saw, taken from the well-seen Gaussians next to them.

After the joint fit every Gaussian's class distribution is whatever its pixels asked for. A
Gaussian that covers a fraction of a pixel in a single view (at the back of the head on a frontal
rig, a floater beside the hair) is fitted to that pixel's label alone: with clean labels that is
harmless, with noisy labels it is a random class held with high confidence, and novel views that
look at those regions show ears, hats and mouths where there are none (measured on the 8-view
frontal arc at pixel noise 0.5: six classes absent from the truth, each with hundreds of pixels).

So the labels are re-estimated where the evidence is thin, as a Bayesian shrinkage towards the
neighbourhood:

1. **support** ``s_i``: the sum over the capture views of Gaussian ``i``'s blending weight at the
   labelled pixels (how many pixels' worth of labels it was fitted to), read as the gradient of the
   rendered coverage with respect to a per-Gaussian constant (one forward and backward pass per
   view at the fit's resolution);
2. **disagreement** ``rho``: the fraction of labelled pixels whose rendered label differs from the
   input label, from the same pass. It measures how noisy the labels are, without ground truth;
3. a Gaussian's own labels are worth ``s_i`` pixels of evidence and each pixel is right with odds
   ``(1 - rho) / rho``; the neighbourhood prior is worth ``s_half = label_inpaint_px * rho / (1 - rho)``
   pixels. The new distribution is ``t_i p_i + (1 - t_i) q_i`` with ``t_i = s_i / (s_i + s_half)``;
   ``q_i`` is the mean of the ``k`` nearest Gaussians with ``s_j >= s_half`` (a kd-tree over their
   means), weighted by ``s_j * opacity_j * exp(-(d / d_med)^2)``.

Clean labels give ``rho`` ~ 0.01, ``s_half`` < 0.1 px: practically nothing changes (eyes and brows
keep their labels); at pixel noise 0.5 ``s_half`` is ~ 8 px and the thinly seen Gaussians take their
well-seen neighbours' classes. Geometry and colours are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from facegs.core.labels import IGNORE_INDEX
from facegs.fit.data import ViewData
from facegs.splat.rasterize import rasterize
from facegs.splat.rgb_labels import BACKGROUND_CLASS
from facegs.splat.scene import Params, activated

MAX_RHO = 0.9  # disagreement beyond this says nothing more (s_half is capped there)


@dataclass
class LabelSupport:
    """``support`` [N] float64 (pixels of labels per Gaussian), ``disagreement`` in [0, 1]."""

    support: np.ndarray
    disagreement: float


def label_support(params: Params, data: ViewData, backend: str = "auto") -> LabelSupport:
    """Per-Gaussian label support and the rendered-vs-input label disagreement over ``data``'s views
    (see the module docstring). ``data.labels`` [V, H, W] must exist."""
    if data.labels is None:
        raise ValueError("label support needs the views' labels")
    with torch.no_grad():
        means, quats, scales, opac = (t.detach() for t in activated(params))
        probs_g = torch.softmax(params["logits"].detach().float(), dim=-1)
    n = means.shape[0]
    support = torch.zeros(n, dtype=torch.float64, device=means.device)
    wrong = total = 0
    for v in range(len(data)):
        lab = data.labels[v]
        valid = lab != IGNORE_INDEX
        if not bool(valid.any()):
            continue
        ones = torch.ones(n, 1, device=means.device, requires_grad=True)
        out, alpha, _ = rasterize(means, quats, scales, opac, torch.cat([probs_g, ones], dim=1),
                                  data.viewmats[v:v + 1], data.Ks[v:v + 1], data.width, data.height, backend=backend)
        (out[0, ..., -1] * valid).sum().backward()
        support += ones.grad[:, 0].double()
        with torch.no_grad():
            a = alpha[0, ..., 0]
            pred = torch.where(a >= 0.5, out[0, ..., :-1].argmax(-1), torch.full_like(lab, BACKGROUND_CLASS))
            wrong += int(((pred != lab) & valid).sum())
            total += int(valid.sum())
    return LabelSupport(support.cpu().numpy(), wrong / total if total else 0.0)


def support_half(disagreement: float, px: float) -> float:
    """``s_half`` (pixels): the neighbourhood prior's weight for a label disagreement ``rho``."""
    rho = min(max(disagreement, 0.0), MAX_RHO)
    return px * rho / (1.0 - rho)


@torch.no_grad()
def inpaint_labels(params: Params, support: np.ndarray, s_half: float, k: int = 8) -> tuple[Params, int]:
    """``params`` with the class logits of thinly supported Gaussians shrunk towards their
    well-supported neighbours (module docstring); returns the new dict (other tensors shared) and
    how many Gaussians changed their most probable class. ``s_half`` <= 0 changes nothing."""
    logits = params["logits"].detach()
    if s_half <= 0 or logits.shape[0] == 0:
        return params, 0
    s = np.asarray(support, dtype=np.float64)
    well = np.flatnonzero(s >= s_half)
    if well.size < k:
        return params, 0
    X = params["means"].detach().cpu().double().numpy()
    probs = torch.softmax(logits.float().cpu(), dim=-1).double().numpy()
    opac = torch.sigmoid(params["opacities"].detach().float().cpu()).double().numpy()
    d, j = cKDTree(X[well]).query(X, k=k)
    nb = well[j]  # [N, k]
    scale = np.maximum(np.median(d, axis=1, keepdims=True), 1e-9)
    w = np.exp(-((d / scale) ** 2)) * s[nb] * opac[nb]
    q = np.einsum("nk,nkc->nc", w, probs[nb]) / np.maximum(w.sum(1, keepdims=True), 1e-12)
    t = (s / (s + s_half))[:, None]
    new = np.where(w.sum(1, keepdims=True) > 0, t * probs + (1.0 - t) * q, probs)
    changed = int((new.argmax(1) != probs.argmax(1)).sum())
    out: Tensor = torch.log(torch.as_tensor(new, dtype=torch.float32).clamp_min(1e-8)).to(logits.device)
    return {**params, "logits": torch.nn.Parameter(out.contiguous(), requires_grad=logits.requires_grad)}, changed
