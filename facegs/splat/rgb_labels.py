"""The one RGB + label render of a Gaussian scene, and how label channels are blended and read.

Label rendering modes (see :func:`label_probs`):

- ``"logits"`` (Semantic-NeRF style): per-Gaussian logits are alpha-blended, a background logit
  vector is composited with the remaining transmittance, then softmax.
- ``"probs"`` (Panoptic Lifting style): per-Gaussian softmax, probabilities alpha-blended (each
  pixel's sum is the alpha), then renormalised. With a background class the remaining
  transmittance is given to that class, so the sum is exactly 1 (``alpha + T``).

:func:`render_rgb_labels` renders RGB and label channels in one rasterize call; with
``label_grad_to_geometry=False`` the label channels reach only the logits
(``geometry_grad_channels=3`` of :func:`facegs.splat.rasterize.rasterize`: native in the fused CPU
kernel, 3 + 2K channels on the other backends; see :mod:`facegs.fit.loop`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from facegs.splat.rasterize import DEFAULT_TILE_SIZE, resolve_backend
from facegs.splat.rasterize import rasterize as _rasterize
from facegs.splat.scene import Params, activated, sh_colors

LABEL_MODES = ("logits", "probs")


def label_colors(logits: Tensor, mode: str) -> Tensor:
    """Per-Gaussian label channels to rasterize, from ``logits`` [..., K]: the logits themselves
    (``"logits"``) or their softmax (``"probs"``)."""
    if mode == "logits":
        return logits
    if mode == "probs":
        return torch.softmax(logits, dim=-1)
    raise ValueError(f"label_mode must be one of {LABEL_MODES}, got '{mode}'")


def background_label_vector(num_classes: int, mode: str, background_class: int | None, bg_logit: float = 10.0,
                     device: torch.device | str = "cpu") -> Tensor:
    """[K] background vector composited with the remaining transmittance ``T`` for label channels.

    ``"logits"``: ``bg_logit`` on the background class (empty space reads as background); ``"probs"``:
    one-hot of the background class (so blended probabilities sum to ``alpha + T = 1``). Zeros when
    ``background_class`` is None.
    """
    v = torch.zeros(num_classes, device=device)
    if background_class is not None:
        v[background_class] = bg_logit if mode == "logits" else 1.0
    return v


def label_probs(rendered: Tensor, alpha: Tensor, mode: str, background_class: int | None) -> Tensor:
    """Per-pixel class probabilities [B, H, W, K] from the rendered label channels [B, H, W, K].

    ``"logits"``: softmax of the blended logits. ``"probs"``: the blend renormalised to sum 1 (by
    its own sum when a background class was composited, else by the alpha [B, H, W, 1]).
    """
    if mode == "logits":
        return torch.softmax(rendered, dim=-1)
    denom = rendered.sum(-1, keepdim=True) if background_class is not None else alpha
    return rendered.clamp_min(0) / denom.clamp_min(1e-6)


BACKGROUND_CLASS = 0  # "background" in celebamask19


def render_rgb_labels(params: Params, viewmats: Tensor, Ks: Tensor, width: int, height: int, bg_rgb: Tensor, *,
           sh_degree: int | None = None, label_mode: str = "probs", label_background: bool = True,
           label_bg_logit: float = 10.0, label_grad_to_geometry: bool = True, with_labels: bool = True,
           backend: str = "auto", tile_size: int | None = None,
           with_depth: bool = False) -> tuple[Tensor, Tensor | None, Tensor, dict]:
    """Render RGB and label channels of B views in one differentiable rasterize call.

    Args: ``viewmats`` [B, 4, 4], ``Ks`` [B, 3, 3], ``bg_rgb`` [B, 3].
    Returns ``rgb`` [B, H, W, 3], ``labels`` [B, H, W, K] (blended logits or probabilities, see
    :func:`facegs.splat.rgb_labels.label_probs`; None without labels), ``alpha`` [B, H, W, 1] and the
    rasterizer's ``meta`` (for the densification strategy). With ``label_grad_to_geometry=False``
    the label channels carry gradient to the logits only, in the same call (module docstring).
    With ``with_depth`` the same call also renders the expected camera z (``RGB+ED``), returned as
    ``meta["depth"]`` [B, H, W, 1] (needs ``label_grad_to_geometry``: the split call renders RGB only).
    """
    means, quats, scales, opac = activated(params)
    B = viewmats.shape[0]
    backend = resolve_backend(backend, means)
    ts = tile_size or DEFAULT_TILE_SIZE[backend]
    rasterize = functools.partial(_rasterize, width=width, height=height, backend=backend, tile_size=ts)
    rgb_c = sh_colors(params, viewmats, sh_degree)  # [B, N, 3]
    if with_depth and with_labels and not label_grad_to_geometry:
        raise ValueError("with_depth needs label_grad_to_geometry=True (one RGB+ED call)")
    mode = "RGB+ED" if with_depth else "RGB"
    if not with_labels:
        out, alpha, meta = rasterize(means, quats, scales, opac, rgb_c, viewmats, Ks, backgrounds=bg_rgb, render_mode=mode)
        if with_depth:
            meta["depth"], out = out[..., -1:], out[..., :-1]
        return out, None, alpha, meta
    lab_c = label_colors(params["logits"], label_mode)  # [N, K]
    K = lab_c.shape[-1]
    bg_lab = background_label_vector(K, label_mode, BACKGROUND_CLASS if label_background else None,
                                label_bg_logit, device=bg_rgb.device).expand(B, K)
    cols = torch.cat([rgb_c, lab_c[None].expand(B, -1, -1)], dim=-1)
    out, alpha, meta = rasterize(means, quats, scales, opac, cols, viewmats, Ks, backgrounds=torch.cat([bg_rgb, bg_lab], -1),
                                 geometry_grad_channels=None if label_grad_to_geometry else 3, render_mode=mode)  # fmt: skip
    if with_depth:
        meta["depth"], out = out[..., -1:], out[..., :-1]
    return out[..., :3], out[..., 3:], alpha, meta
