"""Gaussian-splatting rasterizers behind one interface (``gsplat.rasterization`` semantics).

``rasterize(...)`` renders N 3D Gaussians into C cameras with gsplat 1.5.3's conventions
(unpacked path, ``rasterize_mode="classic"``), on one of two backends:

- ``"torch"``: pure PyTorch, CPU or GPU, differentiable (:mod:`facegs.splat.torch_backend`);
- ``"gsplat"``: gsplat's CUDA kernels (:mod:`facegs.splat.gsplat_backend`, imported lazily);
- ``"auto"``: gsplat when CUDA is available and the tensors are on a CUDA device, else torch.

Conventions: OpenCV cameras (+x right, +y down, +z forward); ``viewmats`` world-to-camera 4x4
``[R t; 0 1]``; ``Ks`` 3x3 pinhole intrinsics; pixel (row i, column j) has its centre at
``(j + 0.5, i + 0.5)``; quaternions are wxyz (normalised inside); scales and opacities are
activated (not log / logit).

Densification: ``meta`` carries what ``gsplat.strategy.DefaultStrategy`` reads for unpacked
renders (``means2d`` [C, N, 2] in pixels inside the autograd graph, ``radii`` [C, N, 2] int32,
``width``, ``height``, ``n_cameras``, ``gaussian_ids=None``), so pass ``packed=False`` to
``step_post_backward``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facegs.splat.gsplat_backend import rasterize_gsplat
from facegs.splat.torch_backend import rasterize_torch

BACKENDS = ("auto", "torch", "gsplat")

DEFAULT_TILE_SIZE = {"gsplat": 16, "torch": 8}
"""Tile edge used when ``tile_size=None``: gsplat's kernels are tuned for 16; the torch backend's
dense per-tile matrices waste less on empty pixel-Gaussian pairs with 8 (about 2x faster)."""


def resolve_backend(backend: str, means: Tensor) -> str:
    """"torch" or "gsplat" for a requested backend and the device of ``means``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend

    return "gsplat" if torch.cuda.is_available() and means.is_cuda else "torch"


def rasterize(
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
    backend: str = "auto",
    tile_size: int | None = None,
    radius_clip: float = 0.0,
    sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C cameras (``gsplat.rasterization`` with ``packed=False``).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] wxyz rotations (normalised inside).
        scales: [N, 3] activated scales.
        opacities: [N] activated opacities.
        colors: [N, D] or [C, N, D] post-activation features, any D (e.g. RGB + 19 class logits);
            with ``sh_degree`` set: SH coefficients [N, K, 3] or [C, N, K, 3] (gsplat's convention,
            colour = max(SH(dir) + 0.5, 0)).
        viewmats: [C, 4, 4] world-to-camera.
        Ks: [C, 3, 3] intrinsics (not differentiated).
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians whose camera z is outside [near, far] are culled.
        eps2d: added to the diagonal of every projected 2D covariance.
        backgrounds: optional [C, D] colours added with the final transmittance.
        render_mode: "RGB" (D channels), "D" / "ED" (1 channel: accumulated / expected depth,
            ED = D / alpha), "RGB+D" / "RGB+ED" (D + 1 channels, depth last).
        backend: "auto", "torch" or "gsplat".
        tile_size: tile edge in pixels; None picks the backend's fastest (gsplat 16, torch 8).
            Results do not depend on it beyond float rounding.
        radius_clip: Gaussians whose radii are both <= this (pixels) are skipped.
        sh_degree: None for precomputed colours, else the SH degree to evaluate.

    Returns:
        colors [C, H, W, D or D + 1 or 1], alphas [C, H, W, 1], meta (dict: radii [C, N, 2]
        int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3], opacities [C, N],
        gaussian_ids None, width, height, n_cameras, tile_size, tile_width, tile_height,
        tiles_per_gauss, isect_ids, flatten_ids, isect_offsets, backend).
    """
    _check_shapes(means, quats, scales, opacities, viewmats, Ks, backgrounds)
    chosen = resolve_backend(backend, means)
    if tile_size is None:
        tile_size = DEFAULT_TILE_SIZE[chosen]
    kwargs = dict(
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, backgrounds=backgrounds,
        render_mode=render_mode, tile_size=tile_size, radius_clip=radius_clip, sh_degree=sh_degree,
    )  # fmt: skip
    if chosen == "gsplat":
        fn = rasterize_gsplat
    else:
        fn = rasterize_torch
    return fn(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)


def _check_shapes(means, quats, scales, opacities, viewmats, Ks, backgrounds) -> None:
    N = means.shape[0]
    C = viewmats.shape[0] if viewmats.dim() == 3 else -1
    expected = {
        "means": (means, (N, 3)),
        "quats": (quats, (N, 4)),
        "scales": (scales, (N, 3)),
        "opacities": (opacities, (N,)),
        "viewmats": (viewmats, (C, 4, 4)),
        "Ks": (Ks, (C, 3, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (N={N}, C={C}), got {list(tensor.shape)}")
    if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != C):
        raise ValueError(f"backgrounds must be [C, D] with C={C}, got {list(backgrounds.shape)}")
