"""Tile intersection of projected Gaussians (gsplat's ``isect_tiles`` / ``isect_offset_encode``, unpacked)
and the grouping of tiles into blocks of similar length for the torch backend.

``isect_ids = image << (tile_bits + 32) | tile << 32 | float32 bits of depth``, sorted, as gsplat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """(tile_width, tile_height): number of tiles along x and y."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)


@torch.no_grad()
def isect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int, tile_height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian-tile intersections sorted by (image, tile, depth), like ``gsplat.isect_tiles``.

    Args:
        means2d: [I, N, 2] pixel positions; radii: [I, N, 2] int (0 = culled); depths: [I, N].

    Returns:
        tiles_per_gauss [I, N] int32, isect_ids [M] int64 (``image << (tile_bits + 32) |
        tile << 32 | depth_bits``), flatten_ids [M] int32 (index into the flattened [I * N]).
        Ties in depth keep the Gaussian order (stable sort), as gsplat's radix sort does.
    """
    I, N = depths.shape
    device = means2d.device
    m = means2d.detach().float() / tile_size
    r = radii.float() / tile_size
    lo, hi = torch.floor(m - r), torch.ceil(m + r)
    limits = torch.tensor([tile_width, tile_height], device=device, dtype=torch.float32)
    lo = torch.minimum(lo.clamp_min(0), limits).long()
    hi = torch.minimum(hi.clamp_min(0), limits).long()
    span = hi - lo  # [I, N, 2]
    visible = (radii > 0).all(dim=-1)
    tiles_per_gauss = span.prod(dim=-1) * visible  # [I, N]

    counts = tiles_per_gauss.reshape(-1)
    flat_ids = torch.repeat_interleave(torch.arange(I * N, device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    j = torch.arange(flat_ids.numel(), device=device) - first[flat_ids]  # index within its box
    span_x = span.reshape(-1, 2)[flat_ids, 0]
    lo_f = lo.reshape(-1, 2)[flat_ids]
    tx = lo_f[:, 0] + j % span_x
    ty = lo_f[:, 1] + torch.div(j, span_x, rounding_mode="floor")
    tile_bits = (tile_width * tile_height).bit_length()
    image = torch.div(flat_ids, N, rounding_mode="floor")
    depth_bits = depths.detach().float().reshape(-1)[flat_ids].view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (((image << tile_bits) | (ty * tile_width + tx)) << 32) | depth_bits
    isect_ids, order = torch.sort(isect_ids, stable=True)
    return tiles_per_gauss.to(torch.int32), isect_ids, flat_ids[order].to(torch.int32)


@torch.no_grad()
def isect_offset_encode(isect_ids: Tensor, n_images: int, tile_width: int, tile_height: int) -> Tensor:
    """Start offset [I, tile_height, tile_width] int32 of each tile's run in the sorted isect_ids."""
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    image = isect_ids >> (32 + tile_bits)
    tile = (isect_ids >> 32) & ((1 << tile_bits) - 1)
    counts = torch.bincount(image * n_tiles + tile, minlength=n_images * n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets.reshape(n_images, tile_height, tile_width).to(torch.int32)


@dataclass(frozen=True)
class TileBlock:
    """A block of tiles composited together.

    Attributes:
        tiles: [T] indices into the flattened [I * tile_height * tile_width] tiles.
        slots: [T, K] intersection indices in depth order; padding slots hold M (a dummy row).
    """

    tiles: Tensor
    slots: Tensor


@torch.no_grad()
def plan_tile_blocks(counts: Tensor, offsets: Tensor, n_pixels: int, max_elems: int) -> list[TileBlock]:
    """Group the non-empty tiles into blocks of similar length.

    Tiles are sorted by their number of Gaussians (descending) and cut into consecutive blocks of
    at most ``max_elems`` pixel x slot elements (a single long tile forms its own block), so
    padding to the longest tile of a block wastes little.

    Args:
        counts: [n_tiles] Gaussians per tile; offsets: [n_tiles] start of each tile's run.
    """
    M = int(counts.sum())
    nonempty = torch.nonzero(counts).squeeze(1)
    order = torch.argsort(counts[nonempty], descending=True, stable=True)
    tiles = nonempty[order]
    tile_counts = counts[tiles].tolist()
    blocks, start = [], 0
    while start < len(tile_counts):
        k = tile_counts[start]
        end = min(len(tile_counts), start + max(1, max_elems // (k * n_pixels)))
        t = tiles[start:end]
        ar = torch.arange(k, device=counts.device)
        slots = offsets[t, None] + ar
        slots = torch.where(ar < counts[t, None], slots, torch.full_like(slots, M))
        blocks.append(TileBlock(tiles=t, slots=slots))
        start = end
    return blocks
