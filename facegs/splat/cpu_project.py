"""Projection and tile intersection of the "cpu" backend on the fused kernels (``csrc/project.cpp``).

The same rules as :func:`facegs.splat.projection.project_gaussians` (gsplat's EWA projection) and
:func:`facegs.splat.tiles.isect_tiles` / :func:`~facegs.splat.tiles.isect_offset_encode`, computed in one
pass per (camera, Gaussian) in C++ with a hand-written backward, instead of about a hundred small
tensor ops and their autograd nodes (about a third of a CPU render's time before). Tested against
those functions in tests/test_cpu_kernel.py. Built and loaded with the compositing kernel
(:mod:`facegs.splat.cpu_kernel`).

Float32 CPU tensors only; no gradient for ``viewmats`` (cameras are not optimised by the fit; use
``backend="torch"`` for camera gradients, :func:`eligible` says which path runs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from facegs.splat.cpu_kernel import OP_NAMESPACE
from facegs.splat.projection import Projected


def eligible(*tensors: Tensor, viewmats: Tensor) -> bool:
    """True when the fused projection can stand in for the torch one: float32 CPU tensors and no
    gradient wanted for the cameras."""
    return not viewmats.requires_grad and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


class _FusedProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, *args):
        ops = getattr(torch.ops, OP_NAMESPACE)
        radii, means2d, depths, conics = ops.project_forward(means, quats, scales, opacities, viewmats, Ks, *args)
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks)
        ctx.args = args
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics

    @staticmethod
    def backward(ctx, _g_radii, g_means2d, g_depths, g_conics):
        saved = ctx.saved_tensors
        C, N = saved[4].shape[0], saved[0].shape[0]
        zeros = saved[0].new_zeros
        g_means2d = zeros(C, N, 2) if g_means2d is None else g_means2d.contiguous()
        g_depths = zeros(C, N) if g_depths is None else g_depths.contiguous()
        g_conics = zeros(C, N, 3) if g_conics is None else g_conics.contiguous()
        ops = getattr(torch.ops, OP_NAMESPACE)
        v_means, v_quats, v_scales = ops.project_backward(*saved, *ctx.args, g_means2d, g_depths, g_conics)
        return (v_means, v_quats, v_scales) + (None,) * (3 + len(ctx.args))


def project_gaussians_fused(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor,
                            Ks: Tensor, width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10,
                            eps2d: float = 0.3, radius_clip: float = 0.0) -> Projected:
    """:func:`facegs.splat.projection.project_gaussians` on the fused kernel (same shapes and rules;
    gradients reach means, quats and scales)."""
    radii, means2d, depths, conics = _FusedProjection.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.detach().contiguous(),
        viewmats.detach().contiguous(), Ks.detach().contiguous(), int(width), int(height), float(near_plane),
        float(far_plane), float(eps2d), float(radius_clip),
    )  # fmt: skip
    return Projected(radii=radii, means2d=means2d, depths=depths, conics=conics)


@torch.no_grad()
def isect_tiles_fused(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int,
                      tile_height: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tiles_per_gauss [I, N] int32, isect_ids [M] int64, flatten_ids [M] int32, isect_offsets
    [I, tile_height, tile_width] int32): :func:`facegs.splat.tiles.isect_tiles` followed by
    :func:`facegs.splat.tiles.isect_offset_encode`, identical results."""
    ops = getattr(torch.ops, OP_NAMESPACE)
    return ops.isect_tiles(means2d.detach().float().contiguous(), radii.to(torch.int32).contiguous(),
                           depths.detach().float().contiguous(), int(tile_size), int(tile_width), int(tile_height))
