"""Losses for fitting a Gaussian scene to images and noisy label maps.

Shapes: B images per step, H x W pixels, K classes. Images are channels-last ``[B, H, W, 3]`` in
[0, 1] as produced by the rasterizer. Label maps are ``[B, H, W]`` int64 class indices with
``IGNORE_INDEX`` (255) for "no label". Pixel weights ``[B, H, W]`` are >= 0.

Label rendering modes (see :func:`label_probs`):

- ``"logits"`` (Semantic-NeRF style): per-Gaussian logits are alpha-blended, a background logit
  vector is composited with the remaining transmittance, then softmax + cross-entropy.
- ``"probs"`` (Panoptic Lifting style): per-Gaussian softmax, probabilities alpha-blended (each
  pixel's sum is the alpha), then renormalised, NLL. With a background class the remaining
  transmittance is given to that class, so the sum is exactly 1 (``alpha + T``); without one the
  blend is divided by the alpha.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from facegs.core.labels import IGNORE_INDEX
from facegs.splat.rgb_labels import label_probs


@lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x`` [B, C, H, W] with zero padding (same size)."""
    C = x.shape[1]
    g = _gauss_1d(size, sigma).to(x.device, x.dtype)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(C, 1, 1, size), padding=(0, size // 2), groups=C)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(C, 1, size, 1), padding=(size // 2, 0), groups=C)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5, reduce: bool = True) -> Tensor:
    """Structural similarity of channels-last images ``a``, ``b`` [B, H, W, C] in [0, 1].

    Gaussian window 11 / sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding ("same" size) as in
    the 3DGS training code. Returns the mean (``reduce``) or the map [B, H, W, C].
    """
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _blur(x, window, sigma), _blur(y, window, sigma)
    sxx = _blur(x * x, window, sigma) - mx * mx
    syy = _blur(y * y, window, sigma) - my * my
    sxy = _blur(x * y, window, sigma) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.mean() if reduce else m.permute(0, 2, 3, 1)


def rgb_loss(pred: Tensor, target: Tensor, ssim_lambda: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """3DGS photometric loss ``(1 - lambda) L1 + lambda (1 - SSIM)`` on [B, H, W, 3] images."""
    l1 = (pred - target).abs().mean()
    if ssim_lambda > 0:
        s = ssim(pred, target)
        loss = (1 - ssim_lambda) * l1 + ssim_lambda * (1 - s)
        return loss, {"l1": float(l1.detach()), "ssim": float(s.detach())}
    return l1, {"l1": float(l1.detach())}


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB of images in [0, 1] (any matching shapes)."""
    mse = float(F.mse_loss(pred.detach().clamp(0, 1), target))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def label_nll(rendered: Tensor, alpha: Tensor, target: Tensor, mode: str,
              background_class: int | None) -> Tensor:
    """Per-pixel negative log-likelihood [B, H, W] of ``target`` (ignored pixels give 0)."""
    valid = target != IGNORE_INDEX
    tgt = torch.where(valid, target, torch.zeros_like(target))
    if mode == "logits":
        nll = F.cross_entropy(rendered.permute(0, 3, 1, 2), tgt, reduction="none")
    else:
        p = label_probs(rendered, alpha, mode, background_class)
        nll = -torch.log(p.gather(-1, tgt[..., None])[..., 0].clamp_min(1e-6))
    return nll * valid


def consensus_inlier_weight(probs: Tensor, target: Tensor, inlier_prior: Tensor | float = 0.9) -> Tensor:
    """EM E-step: posterior probability [B, H, W] that each input label is an inlier.

    Model: an input label ``y`` is drawn from the rendered 3D consensus ``P`` (``probs`` [B, H, W, K],
    detached) with probability ``pi`` (the inlier prior, scalar or per image [B]) or is an outlier
    drawn uniformly from the K classes. The weight is
    ``r = pi P_y / (pi P_y + (1 - pi) / K)``: about 1 where the label agrees with a confident
    consensus, near ``pi`` where the consensus is unsure (``P_y`` about 1 / K), and near 0 where a
    confident consensus says another class (``P_y`` << 1 / K). Ignored pixels get 0.
    """
    K = probs.shape[-1]
    valid = target != IGNORE_INDEX
    tgt = torch.where(valid, target, torch.zeros_like(target))
    p_y = probs.detach().gather(-1, tgt[..., None])[..., 0]
    pi = torch.as_tensor(inlier_prior, dtype=probs.dtype, device=probs.device)
    if pi.dim() == 1:
        pi = pi.view(-1, 1, 1)
    r = pi * p_y / (pi * p_y + (1 - pi) / K)
    return r * valid


def update_inlier_prior(prior: Tensor, r: Tensor, valid: Tensor, momentum: float = 0.9,
                        bounds: tuple[float, float] = (0.5, 0.99)) -> Tensor:
    """EM M-step per image: ``pi`` [B] <- EMA of the mean responsibility ``r`` [B, H, W] over the
    ``valid`` [B, H, W] pixels, clamped to ``bounds``."""
    n = valid.sum(dim=(1, 2)).clamp_min(1)
    mean_r = (r * valid).sum(dim=(1, 2)) / n
    return (momentum * prior + (1 - momentum) * mean_r).clamp(*bounds)


def weighted_mean(values: Tensor, weights: Tensor, valid: Tensor) -> Tensor:
    """``sum(values * weights) / count(valid)``: down-weighting lowers a pixel's share of the loss
    instead of being renormalised away."""
    return (values * weights).sum() / valid.sum().clamp_min(1)


def label_accuracy(rendered: Tensor, target: Tensor) -> float:
    """Fraction of non-ignored pixels whose argmax of ``rendered`` [B, H, W, K] equals ``target``."""
    valid = target != IGNORE_INDEX
    n = int(valid.sum())
    if n == 0:
        return float("nan")
    return float(((rendered.detach().argmax(-1) == target) & valid).sum()) / n


def class_balance_weights(labels: Tensor, num_classes: int, power: float, max_weight: float) -> Tensor:
    """[256] per-value weights (index a label map with it): ``(median / frequency_c) ** power``
    clipped to ``[1, max_weight]`` for the classes present in ``labels`` (any shape, int64, 255 =
    ignore), 1 for the others and for 255. ``power`` 0 gives all ones."""
    w = torch.ones(256, dtype=torch.float32, device=labels.device)
    if power <= 0:
        return w
    valid = labels[(labels >= 0) & (labels < num_classes)]
    freq = torch.bincount(valid.reshape(-1), minlength=num_classes).float()
    present = freq > 0
    if present.any():
        med = freq[present].median()
        w[:num_classes][present] = ((med / freq[present]) ** power).clamp(1.0, max_weight)
    return w
