"""Real spherical harmonics (degrees 0-3) in gsplat's basis and sign convention."""

from __future__ import annotations

import torch
from torch import Tensor


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis [..., (degree + 1)^2] at unit directions [..., 3] (gsplat/3DGS convention)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3 for the torch backend, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.2820947917738781)]
    if degree >= 1:
        out += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
        out += [
            0.5462742152960395 * s1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * c1,
        ]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        t = -2.285228997322329 * z2 + 0.4570457994644658
        out += [
            -0.5900435899266435 * s2,
            1.445305721320277 * z * s1,
            t * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            t * x,
            1.445305721320277 * z * c1,
            -0.5900435899266435 * c2,
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colours [..., 3] from SH coefficients [..., K, 3] (K >= (degree+1)^2) along dirs [..., 3].

    ``dirs`` need not be normalised. Raw SH values, as ``gsplat.spherical_harmonics`` returns them
    (``rasterize`` then applies gsplat's ``clamp_min(x + 0.5, 0)``).
    """
    n_bases = (degree + 1) ** 2
    if coeffs.shape[-2] < n_bases:
        raise ValueError(f"sh_degree {degree} needs >= {n_bases} coefficients, got {coeffs.shape[-2]}")
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(degree, dirs)  # [..., n_bases]
    return (bases[..., None] * coeffs[..., :n_bases, :]).sum(dim=-2)
