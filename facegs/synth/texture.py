"""Procedural solid textures: periodic 3D noise, per-material albedo, and the environment background.

Textures are SOLID (functions of the 3D point), so they stay fixed on the subject (head frame) and
on the environment (world frame) across views: structure-from-motion finds the same features from
every camera. Noise is a periodic band-limited random field (white noise low-passed with an FFT),
sampled with trilinear ``grid_sample``; each octave is rotated and offset differently so the sum
does not visibly repeat. Everything is seeded (``torch.Generator``): no global random state.

Shapes: points ``p`` [N, 3] float32 (metres), colours [N, 3] float32 in [0, 1].
For symmetric subjects the caller passes mirrored points ``(|x|, y, z)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from facegs.synth.head import (
    MAT_BROW,
    MAT_CLOTH,
    MAT_EARRING,
    MAT_EYE,
    MAT_FRAME,
    MAT_HAIR,
    MAT_HAT,
    MAT_LENS,
    MAT_LIP,
    MAT_MOUTH,
    MAT_NECKLACE,
    MAT_SKIN,
    MAT_TEETH,
    MAT_TONGUE,
    SynthHead,
)

# (specular strength, shininess) per material index (see facegs.synth.head.MATERIAL_NAMES)
SPECULAR = torch.tensor(
    [[0.07, 18], [0.25, 30], [0.6, 90], [0.3, 40], [0.05, 10], [0.3, 30], [0.12, 14], [0.04, 10], [0.05, 10],
     [0.03, 8], [0.9, 60], [0.35, 50], [0.9, 120], [0.9, 60]],
    dtype=torch.float32,
)


class NoiseField:
    """Periodic 3D noise with ``channels`` independent fields, unit variance, correlation ~2 voxels.

    ``sample(p, freq, octave)`` evaluates all channels at ``p * freq`` (voxel units) -> [N, C].
    """

    def __init__(self, seed: int, channels: int = 4, size: int = 64, n_octaves: int = 8) -> None:
        g = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
        white = torch.randn(channels, size, size, size, generator=g)
        f = torch.fft.fftfreq(size)
        k2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
        filt = torch.exp(-2.0 * math.pi**2 * 0.9**2 * k2)
        vol = torch.fft.ifftn(torch.fft.fftn(white, dim=(1, 2, 3)) * filt, dim=(1, 2, 3)).real
        vol = (vol - vol.mean(dim=(1, 2, 3), keepdim=True)) / vol.std(dim=(1, 2, 3), keepdim=True)
        vol = torch.cat([vol, vol[:, :1]], dim=1)
        vol = torch.cat([vol, vol[:, :, :1]], dim=2)
        vol = torch.cat([vol, vol[:, :, :, :1]], dim=3)
        self.vol = vol[None].contiguous()  # [1, C, S+1, S+1, S+1]
        self.size = size
        # a random rotation and offset per octave
        rots, offs = [], []
        for _ in range(n_octaves):
            q = torch.randn(4, generator=g)
            q = q / q.norm()
            w, x, y, z = q.tolist()
            rots.append(torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]))
            offs.append(torch.rand(3, generator=g) * size)
        self.rots, self.offs = rots, offs

    def sample(self, p: torch.Tensor, freq: float, octave: int = 0) -> torch.Tensor:
        """Noise [N, C] at points ``p`` [N, 3]; ``freq`` in voxels per metre."""
        if p.shape[0] == 0:
            return torch.zeros(0, self.vol.shape[1])
        o = octave % len(self.rots)
        x = (p @ self.rots[o].T) * freq + self.offs[o]
        x = torch.remainder(x, float(self.size)) * (2.0 / self.size) - 1.0
        grid = x.reshape(1, 1, 1, -1, 3)
        out = F.grid_sample(self.vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(self.vol.shape[1], -1).T


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def _rgb(v: tuple[float, float, float] | list[float]) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def subject_noise(head: SynthHead) -> NoiseField:
    """The subject's texture noise (cached on the head)."""
    if "noise" not in head.cache:
        head.cache["noise"] = NoiseField(head.params.texture_seed)
    return head.cache["noise"]


def _skin(p: torch.Tensor, head: SynthHead, nz: NoiseField) -> torch.Tensor:
    P = head.params
    tone = _rgb(P.skin_rgb)
    a = nz.sample(p, 60.0, 0)
    b = nz.sample(p, 220.0, 1)
    c = nz.sample(p, 650.0, 2)
    shade = 1.0 + 0.06 * a[:, 0] + 0.05 * b[:, 1] + 0.035 * c[:, 2]
    col = tone[None] * shade[:, None]
    red = _sig((a[:, 1] - 0.3) * 2.0) * 0.09
    col = col + red[:, None] * torch.tensor([0.6, -0.35, -0.3])
    # freckles and moles: dark blobs (rich features for structure-from-motion)
    thr = 2.1 - 0.9 * P.freckles
    spots = _sig((c[:, 0] - thr) / 0.12) * (0.3 + 0.7 * _sig(b[:, 3] * 2))
    moles = _sig((b[:, 2] - 2.5) / 0.06)
    dark = tone * torch.tensor([0.55, 0.4, 0.32])
    col = col * (1 - spots[:, None] * 0.8) + dark[None] * (spots[:, None] * 0.8)
    col = col * (1 - moles[:, None]) + torch.tensor([0.22, 0.13, 0.09])[None] * moles[:, None]
    # light flecks (sheen, scars): visible on dark skin where dark freckles have little contrast
    lum = float(tone @ torch.tensor([0.3, 0.59, 0.11]))
    flecks = _sig((c[:, 3] - (2.3 - 1.2 * max(0.0, 0.5 - lum))) / 0.1)[:, None]
    col = col * (1 - 0.7 * flecks) + (tone * 1.45 + 0.08).clamp(max=1.0)[None] * (0.7 * flecks)
    return col


def _hair(p: torch.Tensor, head: SynthHead, nz: NoiseField, mirrored: bool) -> torch.Tensor:
    P = head.params
    cz = head.anchors.cranium_center[2]
    part = 0.0 if mirrored else head.anchors.hair_part
    az = torch.atan2(p[:, 0] - part, p[:, 2] - cz - 0.02)
    n1 = nz.sample(p, 90.0, 3)
    n2 = nz.sample(p, 500.0, 4)
    stripe = torch.sin(az * 150.0 + 2.5 * n1[:, 0] + 40.0 * p[:, 1])
    stripe2 = torch.sin(az * 410.0 + 4.0 * n1[:, 1])
    shade = 0.72 + 0.18 * stripe + 0.08 * stripe2 + 0.1 * n2[:, 0] + 0.08 * n1[:, 2]
    lum = _sig((n1[:, 3] - 1.2) * 3.0) * 0.25  # lighter locks
    base = _rgb(P.hair_rgb)
    col = base[None] * shade[:, None] + lum[:, None] * (0.25 + base[None])
    flecks = _sig((n2[:, 1] - 1.7) / 0.12)[:, None]  # stray light strands: blob features, not just stripes
    return col * (1 - 0.6 * flecks) + (base * 1.6 + 0.15)[None] * (0.6 * flecks)


def _albedo(mat: int, p: torch.Tensor, head: SynthHead, nz: NoiseField, mirrored: bool) -> torch.Tensor:
    """Albedo [N, 3] of material ``mat`` at unit-scale head-frame points ``p`` [N, 3]."""
    P = head.params
    n = p.shape[0]
    if mat == MAT_SKIN:
        return _skin(p, head, nz)
    if mat == MAT_BROW:
        s = nz.sample(p, 300.0, 5)
        strokes = torch.sin((p[:, 0].abs() * 0.5 + p[:, 1]) * 2600.0 + 3.0 * s[:, 0])
        k = (0.8 + 0.2 * strokes)[:, None]
        return _rgb(P.brow_rgb)[None] * (0.8 + 0.4 * (1 - k)) * k + _skin(p, head, nz) * (1 - k)
    if mat == MAT_LIP:
        s = nz.sample(p, 300.0, 6)
        lines = torch.sin(p[:, 0] * 2200.0 + 2.0 * s[:, 0])
        return _rgb(P.lip_rgb)[None] * (1.0 + 0.08 * lines + 0.06 * s[:, 1])[:, None]
    if mat == MAT_EYE:
        ec = head.anchors.eye_center  # left eye; the right one is its mirror image
        q = torch.stack([p[:, 0].abs() - ec[0], p[:, 1] - ec[1], p[:, 2] - ec[2]], 1)
        r = q.norm(dim=1).clamp_min(1e-9)
        cosang = q[:, 2] / r
        ang = torch.atan2(q[:, 1], q[:, 0])
        s = nz.sample(p, 900.0, 7)
        sclera = torch.tensor([0.93, 0.9, 0.87])[None] * (1 + 0.03 * s[:, :1]) + torch.tensor([0.0, -0.03, -0.03]) * _sig(s[:, 1:2] * 3)
        iris = _rgb(P.iris_rgb)[None] * (0.75 + 0.45 * (0.5 + 0.5 * torch.sin(ang * 18 + 2 * s[:, 2])))[:, None]
        limbal = (cosang < math.cos(math.radians(29)))[:, None]
        iris = torch.where(limbal, iris * 0.5, iris)
        col = torch.where((cosang > math.cos(math.radians(33)))[:, None], iris, sclera)
        return torch.where((cosang > math.cos(math.radians(13)))[:, None], torch.full_like(col, 0.03), col)
    if mat == MAT_TEETH:
        s = nz.sample(p, 400.0, 0)
        gap = (torch.remainder(p[:, 0] / 0.0047 + 0.5, 1.0) - 0.5).abs() < 0.07
        col = torch.tensor([0.93, 0.9, 0.8])[None] * (1 + 0.04 * s[:, :1])
        return torch.where(gap[:, None], col * 0.55, col)
    if mat == MAT_MOUTH:
        s = nz.sample(p, 300.0, 1)
        return torch.tensor([0.32, 0.07, 0.07])[None] * (1 + 0.15 * s[:, :1])
    if mat == MAT_TONGUE:
        s = nz.sample(p, 400.0, 2)
        return torch.tensor([0.72, 0.32, 0.34])[None] * (1 + 0.1 * s[:, :1])
    if mat == MAT_HAIR:
        return _hair(p, head, nz, mirrored)
    if mat == MAT_HAT:
        assert P.hat is not None
        s = nz.sample(p, 250.0, 3)
        base = _rgb(P.hat.rgb)[None].expand(n, 3)
        if P.hat.stripes:
            band = torch.sin(p[:, 1] * 260.0) > 0.2
            base = torch.where(band[:, None], _rgb(P.hat.rgb2)[None].expand(n, 3), base)
        knit = torch.sin(torch.atan2(p[:, 0], p[:, 2]) * 90.0) if P.hat.style == "beanie" else torch.zeros(n)
        return base * (1 + 0.08 * s[:, :1] + 0.06 * knit[:, None])
    if mat == MAT_CLOTH:
        c = P.cloth
        s = nz.sample(p, 700.0, 4)
        big = nz.sample(p, 40.0, 5)
        a, b = _rgb(c.rgb)[None].expand(n, 3), _rgb(c.rgb2)[None].expand(n, 3)
        u, v = p[:, 0] / c.scale, p[:, 1] / c.scale
        if c.pattern == "stripes":
            m = torch.remainder(v, 1.0) < 0.35
        elif c.pattern == "checks":
            m = (torch.remainder(u, 1.0) < 0.5) ^ (torch.remainder(v + 0.3 * p[:, 2] / c.scale, 1.0) < 0.5)
        elif c.pattern == "dots":
            du = torch.remainder(u, 1.0) - 0.5
            dv = torch.remainder(v + 0.5 * torch.floor(u), 1.0) - 0.5
            m = du * du + dv * dv < 0.06
        else:
            m = nz.sample(p / c.scale, 3.0, 6)[:, 0] > 1.3  # plain: a sparse irregular print
        col = torch.where(m[:, None], b, a)
        return col * (1 + 0.07 * s[:, :1] + 0.1 * big[:, :1])
    if mat in (MAT_NECKLACE, MAT_EARRING):
        jewel = P.necklace if mat == MAT_NECKLACE else P.earrings
        rgb = jewel.rgb if jewel is not None else (0.9, 0.8, 0.4)
        s = nz.sample(p, 800.0, 6)
        return _rgb(rgb)[None] * (0.85 + 0.1 * s[:, :1])
    if mat in (MAT_FRAME, MAT_LENS):
        assert P.glasses is not None
        if mat == MAT_LENS:
            return _rgb(P.glasses.lens_rgb)[None].expand(n, 3).clone()
        s = nz.sample(p, 350.0, 7)
        return _rgb(P.glasses.frame_rgb)[None] * (1 + 0.25 * s[:, :1])
    raise ValueError(f"unknown material {mat}")


def albedo(materials: torch.Tensor, p_unit: torch.Tensor, head: SynthHead) -> torch.Tensor:
    """Albedo [N, 3] for material indices [N] at unit-scale head-frame points ``p_unit`` [N, 3]."""
    mirrored = head.params.symmetric
    q = torch.cat([p_unit[:, :1].abs(), p_unit[:, 1:]], 1) if mirrored else p_unit
    nz = subject_noise(head)
    out = torch.zeros(p_unit.shape[0], 3)
    for m in torch.unique(materials).tolist():
        idx = (materials == m).nonzero().squeeze(1)
        out[idx] = _albedo(int(m), q[idx], head, nz, mirrored)
    return out.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------


def environment_colour(p_world: torch.Tensor, palette: np.ndarray | tuple, nz: NoiseField, mirrored: bool) -> torch.Tensor:
    """Colour [N, 3] of the environment sphere at world points ``p_world`` [N, 3] (radius ~3 m).

    A painterly wall: palette blobs at metre scale, sharp-edged shapes at decimetre scale and
    fine grain down to centimetres, so features exist at every scale a camera sees.
    """
    q = torch.cat([p_world[:, :1].abs(), p_world[:, 1:]], 1) if mirrored else p_world
    pal = torch.as_tensor(np.asarray(palette, dtype=np.float32))  # [4, 3]
    a = nz.sample(q, 2.0, 0)
    w1, w2, _w3 = _sig(a[:, 0] * 2.5)[:, None], _sig(a[:, 1] * 2.5 - 1.0)[:, None], _sig(a[:, 2] * 3.0 - 1.5)[:, None]
    col = pal[0] + (pal[1] - pal[0]) * w1  # palette blobs at metre scale
    col = col + (pal[2] - col) * w2
    b = nz.sample(q, 7.0, 1)
    shapes = _sig((b[:, 0] - 0.9) / 0.05)[:, None]  # sharp-edged shapes at decimetre scale
    col = col + (pal[3] * 0.9 - col) * shapes
    col = col + (pal[2] * 0.8 - col) * _sig((b[:, 2] - 1.1) / 0.05)[:, None]
    col = col * (0.55 + 0.45 * _sig((b[:, 1] + 1.3) / 0.04)[:, None])
    c = nz.sample(q, 22.0, 2)
    d = nz.sample(q, 60.0, 3)
    spots = _sig((c[:, 2] - 1.4) / 0.06)[:, None]
    col = col * (1 + 0.18 * c[:, :1] + 0.1 * d[:, :1])
    col = col + (1 - 2 * col) * spots * 0.8  # light and dark specks at centimetre scale
    return col.clamp(0.0, 1.0)
