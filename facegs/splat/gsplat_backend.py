"""gsplat CUDA backend: a thin wrapper around ``gsplat.rasterization(..., packed=False)``.

gsplat is imported lazily, inside the call: importing it on a machine without CUDA prints a
warning and its kernels fail, so CPU users never touch it.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor


def gsplat_available() -> bool:
    """True when torch sees a CUDA device and the gsplat package is installed.

    Does not import gsplat (that may print warnings or JIT-compile its kernels).
    """

    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    tile_size: int = 16,
    radius_clip: float = 0.0,
    sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Same contract as :func:`facegs.splat.rasterize.rasterize`; all tensors must be on one CUDA device.

    Returns colors [C, H, W, D(+1)], alphas [C, H, W, 1] and gsplat's unpacked meta (plus
    ``meta["backend"] = "gsplat"``).
    """
    from gsplat import rasterization  # lazy: CUDA only, compiles its kernels on first import

    render, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=False, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=render_mode, rasterize_mode="classic",
    )  # fmt: skip
    meta["backend"] = "gsplat"
    return render, alphas, meta
