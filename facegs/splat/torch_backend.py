"""Pure-PyTorch (CPU or GPU) Gaussian rasterizer with gsplat 1.5.3's semantics (unpacked path).

Pipeline (each stage a small function, stateless, tensors in and out):

1. :func:`facegs.splat.projection.project_gaussians`: EWA projection -> radii, means2d, depths,
   conics ([C, N, ...], differentiable with autograd).
2. :func:`isect_tiles` / :func:`isect_offset_encode`: which ``tile_size`` x ``tile_size`` tiles each
   projected Gaussian's bounding box touches, sorted by (camera, tile, depth); the same encoding as
   gsplat (``isect_ids = image << (tile_bits + 32) | tile << 32 | float32 bits of depth``).
3. :func:`rasterize_to_pixels`: per tile, a dense ``[pixels, gaussians_in_tile]`` alpha matrix,
   transmittance by a cumulative product, gsplat's early-stop rule as a mask, and
   ``weights @ colors``. Tiles are processed in blocks of similar length (padded, bounded number
   of elements), through a custom autograd function whose backward recomputes each block, so the
   memory held for the backward pass is O(intersections), not O(pixels x intersections).

The per-pixel rules are gsplat's: pixel centre ``(j + 0.5, i + 0.5)``; with the conic
``(a, b, c)`` and ``d = mean2d - pixel``, ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``;
``alpha = min(0.999, opacity exp(-sigma))``; a Gaussian is skipped when ``alpha < 1/255``; front to
back by depth, compositing stops before the Gaussian that would take the transmittance ``T`` to
``<= 1e-4``; the output alpha is ``1 - T`` and a background adds ``T * bg``.

Implementation note: inside a tile ``log(opacity) - sigma`` is a quadratic polynomial of the pixel
position, so it is evaluated as one matrix product of per-intersection coefficients [K, 6] with
pixel features ``[1, u, v, u^2, uv, v^2]`` (coordinates relative to the tile centre, which keeps
the terms small). gsplat's ``sigma < 0`` skip is vacuous for the positive-definite conics produced
by the projection (``cov2d`` includes ``eps2d * I``) and is not reproduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facegs.splat import cpu_project
from facegs.splat.cpu_kernel import rasterize_to_pixels_fused
from facegs.splat.projection import ALPHA_THRESHOLD, project_gaussians
from facegs.splat.sh import spherical_harmonics
from facegs.splat.tiles import TileBlock, isect_offset_encode, isect_tiles, plan_tile_blocks, tile_grid

TRANSMITTANCE_STOP = 1e-4
"""Compositing stops before the Gaussian that would take T to this value or below."""


MAX_ALPHA = 0.999
"""Per-Gaussian alpha is clamped to this value."""


DEFAULT_BLOCK_ELEMS = 1 << 17
"""Target size (pixels x Gaussian slots) of one block of tiles: small enough to stay in cache."""


RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def pixel_features(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[P, 6] features ``[1, u, v, u^2, u v, v^2]`` of the P = tile_size^2 pixel centres of a tile.

    (u, v) are relative to the tile centre; pixel p = row * tile_size + column.
    """
    c = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=-1)


def exponent_coefs(offsets2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """Coefficients [M, 6] of ``log(opacity) - sigma`` as a polynomial in [1, u, v, u^2, uv, v^2].

    Args:
        offsets2d: [M, 2] Gaussian centre minus tile centre (pixels).
        conics: [M, 3] (a, b, c); opacities: [M].
    """
    mu, mv = offsets2d.unbind(-1)
    a, b, c = conics.unbind(-1)
    log_op = torch.log(opacities.clamp_min(1e-30))
    const = log_op - (0.5 * a * mu * mu + 0.5 * c * mv * mv + b * mu * mv)
    return torch.stack([const, a * mu + b * mv, c * mv + b * mu, -0.5 * a, -b, -0.5 * c], dim=-1)


def _block_alphas(coefs: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """(raw, alpha) [T, P, K] of one block from coefs [T, K, 6] and pixel feats [P, 6].

    ``raw = opacity * exp(-sigma)``; ``alpha = min(0.999, raw)``, or 0 where gsplat skips the
    Gaussian (alpha < 1/255; ``threshold`` keeps raw > 1/255, which differs only at equality).
    Exponents below -30 are clamped first: exp() of very negative inputs takes a slow path on CPUs.
    Layout [T, P, K]: tiles, pixels, Gaussian slots in depth order (the scan axis is last).
    """
    raw = torch.matmul(feats, coefs.transpose(1, 2)).clamp_(min=-30.0).exp_()
    alpha = F.threshold(raw, ALPHA_THRESHOLD, 0.0).clamp_(max=MAX_ALPHA)
    return raw, alpha


def _block_transmittance(one_minus: Tensor, t_final: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Transmittance before each Gaussian, blending weights and final transmittance of a block.

    Args:
        one_minus: [T, P, K] ``1 - alpha``.
        t_final: [T, P] if already known (backward pass), else computed.

    Returns:
        t_excl [T, P, K] (T before each slot), weights [T, P, K] (``alpha * t_excl`` for the
        Gaussians composited, 0 from the early stop on), t_final [T, P].
    """
    t_incl = torch.cumprod(one_minus, dim=-1)  # T after each slot
    if t_final is None:
        # Early stop: T is non-increasing, so "T after > 1e-4" is a prefix and T_final its last value.
        t_final = t_incl.masked_fill(t_incl <= TRANSMITTANCE_STOP, 1.0).amin(dim=-1)
    t_incl = torch.maximum(t_incl, t_final[..., None], out=t_incl)  # constant after the stop
    t_excl = torch.cat([torch.ones_like(t_incl[..., :1]), t_incl[..., :-1]], dim=-1)
    weights = t_excl - t_incl
    return t_excl, weights, t_final


def _block_backward(
    coefs: Tensor, colors: Tensor, feats: Tensor, t_final: Tensor, g_acc: Tensor, g_trans: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients (v_coefs [T, K, 6], v_colors [T, K, D]) of one block (recomputes the forward).

    With ``G_k = colour_k . dL/dacc``, ``S_k = sum_{j>k} w_j G_j`` and T = T_final:
    ``dL/dalpha_k = t_excl_k G_k - (S_k + T dL/dT) / (1 - alpha_k)`` for composited Gaussians;
    ``d alpha / d exponent = alpha`` unless alpha was clamped at 0.999 (then 0), as in gsplat.
    """
    raw, alpha = _block_alphas(coefs, feats)
    one_minus = torch.sub(1.0, alpha)
    t_excl, weights, _ = _block_transmittance(one_minus, t_final)
    G = torch.bmm(g_acc, colors.transpose(1, 2))  # [T, P, K]
    wG = weights * G
    base = wG.sum(dim=-1, keepdim=True) + (g_trans * t_final)[..., None]  # S_k + T dL/dT = base - cumsum
    v_alpha = torch.cumsum(wG, dim=-1).sub_(base).div_(one_minus).add_(t_excl.mul_(G))
    live = (weights > 0) & (raw <= MAX_ALPHA)  # composited and not clamped
    v_exponent = v_alpha.mul_(alpha).mul_(live)
    v_coefs = torch.matmul(v_exponent.transpose(1, 2), feats)
    v_colors = torch.bmm(weights.transpose(1, 2), g_acc)
    return v_coefs, v_colors


class _CompositeTiles(torch.autograd.Function):
    """Front-to-back compositing of all tiles; backward recomputes each block.

    forward(coefs [M, 6], colors [M, D], feats [P, 6], blocks, n_tiles)
      -> acc [n_tiles, P, D] (sum of weights x colours), trans [n_tiles, P] (final transmittance).
    """

    @staticmethod
    def forward(ctx, coefs: Tensor, colors: Tensor, feats: Tensor, blocks: list[TileBlock], n_tiles: int):
        D, P = colors.shape[1], feats.shape[0]
        coefs_p, colors_p = _pad_rows(coefs, colors)
        acc = colors.new_zeros(n_tiles, P, D)
        trans = colors.new_ones(n_tiles, P)
        for blk in blocks:
            c, col = _gather_block(coefs_p, colors_p, blk)
            _, alpha = _block_alphas(c, feats)
            _, weights, t_final = _block_transmittance(torch.sub(1.0, alpha))
            acc.index_copy_(0, blk.tiles, torch.bmm(weights, col))
            trans.index_copy_(0, blk.tiles, t_final)
        ctx.blocks = blocks
        ctx.save_for_backward(coefs_p, colors_p, feats, trans)
        return acc, trans

    @staticmethod
    def backward(ctx, g_acc: Tensor | None, g_trans: Tensor | None):
        coefs_p, colors_p, feats, trans = ctx.saved_tensors
        if g_acc is None:
            g_acc = colors_p.new_zeros(trans.shape + colors_p.shape[-1:])
        if g_trans is None:
            g_trans = torch.zeros_like(trans)
        g_acc = g_acc.contiguous()
        v_coefs, v_colors = torch.zeros_like(coefs_p), torch.zeros_like(colors_p)
        for blk in ctx.blocks:
            c, col = _gather_block(coefs_p, colors_p, blk)
            vc, vcol = _block_backward(
                c, col, feats, trans[blk.tiles], g_acc[blk.tiles], g_trans[blk.tiles]
            )
            # Slots are unique except the padding row M, which is dropped below.
            idx = blk.slots.reshape(-1)
            v_coefs.index_copy_(0, idx, vc.reshape(idx.numel(), -1))
            v_colors.index_copy_(0, idx, vcol.reshape(idx.numel(), -1))
        return v_coefs[:-1], v_colors[:-1], None, None, None


def _gather_block(coefs_p: Tensor, colors_p: Tensor, blk: TileBlock) -> tuple[Tensor, Tensor]:
    """Per-slot coefs [T, K, 6] and colours [T, K, D] of a block."""
    idx = blk.slots.reshape(-1)
    shape = tuple(blk.slots.shape)
    return coefs_p.index_select(0, idx).view(shape + (6,)), colors_p.index_select(0, idx).view(shape + (-1,))


def _pad_rows(coefs: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """Append a dummy intersection (alpha = 0) used by padding slots."""
    pad = coefs.new_zeros(1, 6)
    pad[0, 0] = -1e4  # exp(-1e4) == 0
    return torch.cat([coefs, pad]), torch.cat([colors, colors.new_zeros(1, colors.shape[1])])


def _tiles_to_image(x: Tensor, n_images: int, tile_width: int, tile_height: int, tile_size: int,
                    width: int, height: int) -> Tensor:  # fmt: skip
    """[I * th * tw, P, D] per-tile pixels -> [I, height, width, D] images."""
    D = x.shape[-1]
    x = x.reshape(n_images, tile_height, tile_width, tile_size, tile_size, D)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(n_images, tile_height * tile_size, tile_width * tile_size, D)
    return x[:, :height, :width]


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
    max_block_elems: int = DEFAULT_BLOCK_ELEMS,
) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians into images (``gsplat.rasterize_to_pixels``, unpacked).

    Args:
        means2d: [I, N, 2] pixel positions; conics: [I, N, 3]; colors: [I, N, D] (any D);
        opacities: [I, N] activated.
        isect_offsets: [I, tile_height, tile_width] int, flatten_ids: [M] int (from
        :func:`isect_tiles` / :func:`isect_offset_encode`).
        backgrounds: optional [I, D].
        max_block_elems: memory/speed knob, the number of pixel x slot elements per block.

    Returns:
        colors [I, height, width, D] and alphas [I, height, width, 1]; differentiable with respect
        to means2d, conics, colors, opacities and backgrounds.
    """
    I, N, D = colors.shape
    tile_height, tile_width = isect_offsets.shape[-2:]
    n_tiles = I * tile_height * tile_width
    fid = flatten_ids.long()
    M = fid.numel()
    offsets = isect_offsets.reshape(-1).long()
    counts = torch.diff(offsets, append=offsets.new_tensor([M]))
    tile_of = torch.repeat_interleave(torch.arange(n_tiles, device=fid.device), counts)
    local = tile_of % (tile_height * tile_width)
    centre = torch.stack([local % tile_width, torch.div(local, tile_width, rounding_mode="floor")], -1)
    centre = centre.to(means2d.dtype) * tile_size + tile_size / 2.0
    coefs = exponent_coefs(
        means2d.reshape(-1, 2)[fid] - centre, conics.reshape(-1, 3)[fid], opacities.reshape(-1)[fid]
    )
    feats = pixel_features(tile_size, means2d.dtype, means2d.device)
    blocks = plan_tile_blocks(counts, offsets, tile_size * tile_size, max_block_elems)
    acc, trans = _CompositeTiles.apply(coefs, colors.reshape(-1, D)[fid], feats, blocks, n_tiles)
    grid = (I, tile_width, tile_height, tile_size, width, height)
    render = _tiles_to_image(acc, *grid)
    T = _tiles_to_image(trans[..., None], *grid)
    if backgrounds is not None:
        render = render + T * backgrounds[:, None, None, :]
    return render, 1.0 - T


def prepare_colors(
    colors: Tensor, means: Tensor, viewmats: Tensor, n_cameras: int, sh_degree: int | None
) -> Tensor:
    """Per-camera colours [C, N, D] from colours [N, D] / [C, N, D] or SH [N, K, 3] / [C, N, K, 3].

    SH colours follow gsplat: evaluated along ``means - camera_centre``, then ``max(x + 0.5, 0)``.
    """
    C, N = n_cameras, means.shape[0]
    if sh_degree is None:
        if colors.dim() == 2 and colors.shape[0] == N:
            return colors[None].expand(C, N, colors.shape[-1])
        if colors.dim() == 3 and colors.shape[:2] == (C, N):
            return colors
        raise ValueError(f"colors must be [N, D] or [C, N, D] with N={N}, C={C}; got {list(colors.shape)}")
    if colors.dim() == 3 and colors.shape[0] == N and colors.shape[-1] == 3:
        colors = colors[None].expand(C, *colors.shape)
    elif not (colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[-1] == 3):
        raise ValueError(f"SH colors must be [N, K, 3] or [C, N, K, 3]; got {list(colors.shape)}")
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, colors) + 0.5, 0.0)


def add_depth_channel(
    render_mode: str, colors: Tensor, depths: Tensor, backgrounds: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Colours/backgrounds to composite for a render mode (gsplat: depth is the last channel,
    with a zero background)."""
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(backgrounds.shape[0], 1)], -1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(backgrounds.shape[0], 1)
    return colors, backgrounds


def rasterize_torch(
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
    tile_size: int = 8,
    radius_clip: float = 0.0,
    sh_degree: int | None = None,
    max_block_elems: int = DEFAULT_BLOCK_ELEMS,
    fused: bool = False,
    geo_channels: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Rasterize N Gaussians into C cameras; see :func:`facegs.splat.rasterize.rasterize` for the contract.

    ``fused``: the "cpu" backend (float32 CPU tensors, kernel loaded by the caller): composite with
    the fused C++ kernel (:mod:`facegs.splat.cpu_kernel`) instead of the PyTorch tile loop, and
    project and intersect tiles with :mod:`facegs.splat.cpu_project` (the torch projection when
    ``viewmats`` needs a gradient); SH, render modes and backgrounds are shared.
    ``geo_channels`` (fused only): see :func:`facegs.splat.cpu_kernel.rasterize_to_pixels_fused`.
    Returns colors [C, H, W, D(+1)], alphas [C, H, W, 1] and gsplat's unpacked ``meta``.
    """
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    C = viewmats.shape[0]
    fused_proj = fused and cpu_project.eligible(means, quats, scales, opacities, viewmats=viewmats)
    project = cpu_project.project_gaussians_fused if fused_proj else project_gaussians
    proj = project(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
    )  # fmt: skip
    opac = opacities[None].expand(C, -1)
    cols = prepare_colors(colors, means, viewmats, C, sh_degree)
    cols, bgs = add_depth_channel(render_mode, cols, proj.depths, backgrounds)
    tile_width, tile_height = tile_grid(width, height, tile_size)
    if fused:
        tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = cpu_project.isect_tiles_fused(
            proj.means2d, proj.radii, proj.depths, tile_size, tile_width, tile_height
        )
    else:
        tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(
            proj.means2d, proj.radii, proj.depths, tile_size, tile_width, tile_height
        )
        isect_offsets = isect_offset_encode(isect_ids, C, tile_width, tile_height)
    if fused:
        render, alphas = rasterize_to_pixels_fused(
            proj.means2d, proj.conics, cols, opac, width, height, tile_size, isect_offsets, flatten_ids,
            backgrounds=bgs, geo_channels=geo_channels,
        )  # fmt: skip
    else:
        if geo_channels is not None:
            raise ValueError("geo_channels needs fused=True (rasterize() emulates it on other backends)")
        render, alphas = rasterize_to_pixels(
            proj.means2d, proj.conics, cols, opac, width, height, tile_size, isect_offsets, flatten_ids,
            backgrounds=bgs, max_block_elems=max_block_elems,
        )  # fmt: skip
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    meta = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opac,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
        "backend": "cpu" if fused else "torch",
    }
    return render, alphas, meta
