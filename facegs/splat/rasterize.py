"""Gaussian-splatting rasterizers behind one interface (``gsplat.rasterization`` semantics).

``rasterize(...)`` renders N 3D Gaussians into C cameras with gsplat 1.5.3's conventions
(unpacked path, ``rasterize_mode="classic"``), on one of two backends:

- ``"cpu"``: the torch backend with its tile loop replaced by the fused C++ compositing kernel
  (:mod:`facegs.splat.cpu_kernel`; float32 CPU tensors; several times faster, same results to
  float rounding). If the kernel cannot be built, facegs warns once and runs ``"torch"``;
- ``"torch"``: pure PyTorch, CPU or GPU, differentiable (:mod:`facegs.splat.torch_backend`): the
  reference the other two are tested against;
- ``"gsplat"``: gsplat's CUDA kernels (:mod:`facegs.splat.gsplat_backend`, imported lazily);
- ``"auto"``: gsplat when CUDA is available and the tensors are on a CUDA device, else ``"cpu"``
  for float32 CPU tensors, else torch. ``meta["backend"]`` says which one ran.

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

from facegs.splat import cpu_kernel
from facegs.splat.gsplat_backend import rasterize_gsplat
from facegs.splat.torch_backend import rasterize_torch

BACKENDS = ("auto", "cpu", "torch", "gsplat")

DEFAULT_TILE_SIZE = {"gsplat": 16, "torch": 8, "cpu": 8}
"""Tile edge used when ``tile_size=None``: gsplat's kernels are tuned for 16; the torch backend's
dense per-tile matrices waste less on empty pixel-Gaussian pairs with 8 (about 2x faster), and so
does the fused kernel's per-tile alpha evaluation (docs/benchmarks.md)."""


def resolve_backend(backend: str, means: Tensor) -> str:
    """"cpu", "torch" or "gsplat": the backend that runs for a requested one and ``means``.

    "cpu" needs float32 CPU tensors (ValueError otherwise) and the kernel; when the kernel cannot
    be built it becomes "torch" (with one warning per process, :func:`facegs.splat.cpu_kernel.available`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if torch.cuda.is_available() and means.is_cuda:
            return "gsplat"
        backend = "cpu" if means.device.type == "cpu" and means.dtype == torch.float32 else "torch"
    if backend == "cpu":
        if means.device.type != "cpu" or means.dtype != torch.float32:
            raise ValueError(f"backend 'cpu' needs float32 CPU tensors, got {means.dtype} on {means.device}")
        if not cpu_kernel.available():
            return "torch"
    return backend


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
    geometry_grad_channels: int | None = None,
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
        backend: "auto", "cpu", "torch" or "gsplat" (module docstring).
        tile_size: tile edge in pixels; None picks the backend's fastest (gsplat 16, cpu and torch 8).
            Results do not depend on it beyond float rounding.
        radius_clip: Gaussians whose radii are both <= this (pixels) are skipped.
        sh_degree: None for precomputed colours, else the SH degree to evaluate.
        geometry_grad_channels: n: only colour channels [0, n) (and the alphas) send gradient to the
            geometry (means, quats, scales, opacities); channels [n, D) reach their colours only
            (Panoptic Lifting's stop-gradient, exactly, in one call). None: all channels. Needs
            ``render_mode="RGB"`` and precomputed colours. The "cpu" kernel does it natively; on the
            other backends the channels [n, D) are rendered twice, as ``c.detach()`` (the values,
            output detached) and ``c - c.detach()`` (identically 0: no geometry gradient; carries
            the colour gradient), and the output is their sum.

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
    n_geo = geometry_grad_channels
    if n_geo is not None:
        if render_mode != "RGB" or sh_degree is not None:
            raise ValueError("geometry_grad_channels needs render_mode='RGB' and precomputed colours")
        if not 0 <= n_geo <= colors.shape[-1]:
            raise ValueError(f"geometry_grad_channels must be in [0, {colors.shape[-1]}], got {n_geo}")
    if chosen == "cpu":
        return rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                               fused=True, geo_channels=n_geo, **kwargs)  # fmt: skip
    fn = rasterize_gsplat if chosen == "gsplat" else rasterize_torch
    if n_geo is None or n_geo == colors.shape[-1]:
        return fn(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)
    cols, bgs = _values_and_carriers(colors, backgrounds, n_geo)
    out, alphas, meta = fn(means, quats, scales, opacities, cols, viewmats, Ks, width, height,
                           **{**kwargs, "backgrounds": bgs})  # fmt: skip
    k = colors.shape[-1] - n_geo
    return torch.cat([out[..., :n_geo], out[..., n_geo : n_geo + k].detach() + out[..., n_geo + k :]], -1), alphas, meta


def _values_and_carriers(colors: Tensor, backgrounds: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
    """Colours [..., n + 2k] ``[c_geo, c_rest.detach(), c_rest - c_rest.detach()]`` and backgrounds
    likewise, for ``geometry_grad_channels=n`` on backends without native support (the background
    gets its gradient ``T dL/dout`` through the identically-0 carrier, as on the "cpu" kernel)."""
    rest = colors[..., n:]
    cols = torch.cat([colors[..., :n], rest.detach(), rest - rest.detach()], dim=-1)
    if backgrounds is None:
        return cols, None
    bg_rest = backgrounds[:, n:]
    return cols, torch.cat([backgrounds[:, :n], bg_rest.detach(), bg_rest - bg_rest.detach()], dim=-1)


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
