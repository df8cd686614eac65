"""Shading of synthetic heads (normals, ambient occlusion, lights, materials) and their backgrounds.

``BACKGROUNDS``: ``world`` (a textured environment fixed in the world: structure-from-motion can
match it), ``random`` (a new one per view), ``plain`` (flat).
"""

from __future__ import annotations

import numpy as np
import torch

from facegs.synth.head import MAT_BROW, C, SynthHead, brow_mask
from facegs.synth.texture import SPECULAR, NoiseField, albedo, environment_colour

BACKGROUNDS = ("world", "random", "plain")
ENV_RADIUS = 3.0


_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


def surface_normals(head: SynthHead, p: torch.Tensor, skip: frozenset[str] = frozenset(), h: float = 4e-4) -> torch.Tensor:
    """Unit normals [N, 3] from the SDF gradient (tetrahedral finite differences)."""
    n = p.shape[0]
    if n == 0:
        return torch.zeros(0, 3)
    q = (p[None] + h * _TETRA[:, None, :]).reshape(-1, 3)
    dist = head.distance(q, skip).reshape(4, n)
    g = (dist[:, :, None] * _TETRA[:, None, :]).sum(0)
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _ambient_occlusion(head: SynthHead, p: torch.Tensor, nrm: torch.Tensor, skip: frozenset[str]) -> torch.Tensor:
    hs = (0.006, 0.02)
    q = torch.cat([p + h * head.scale * nrm for h in hs])
    dist = head.distance(q, skip).reshape(len(hs), -1)
    occ = sum(0.6**i * (h * head.scale - dist[i]).clamp_min(0.0) / (h * head.scale) for i, h in enumerate(hs))
    return (1.0 - 0.6 * occ).clamp(0.25, 1.0)


def _lights_head(head: SynthHead, R_wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dirs = torch.tensor([lp.direction for lp in head.params.lights], dtype=torch.float32)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    return dirs @ R_wh, torch.tensor([lp.intensity for lp in head.params.lights], dtype=torch.float32)


def shade_hits(head: SynthHead, p: torch.Tensor, d: torch.Tensor, R_wh: torch.Tensor,
               skip: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Classify and shade surface points ``p`` [N, 3] (head frame, metres) seen along ``d`` [N, 3].

    Returns ``cls`` [N] uint8, ``material`` [N] int64, ``diffuse`` [N, 3] and ``specular`` [N, 3].
    """
    part, cls = head.classify(p, skip)
    mat = head.scene.part_material[part].clone()
    p_unit = p / head.scale
    if p.shape[0]:
        is_skin = cls == C["skin"]
        if bool(is_skin.any()):
            si = is_skin.nonzero().squeeze(1)
            brow = brow_mask(p_unit[si], head.anchors)
            bi = si[brow]
            cls[bi] = torch.where(p[bi, 0] >= 0, C["l_brow"], C["r_brow"]).to(torch.uint8)
            mat[bi] = MAT_BROW
    nrm = surface_normals(head, p, skip)
    ao = _ambient_occlusion(head, p, nrm, skip)
    alb = albedo(mat, p_unit, head)
    ldir, lint = _lights_head(head, R_wh)
    ndl = (nrm @ ldir.T).clamp_min(0.0)  # [N, L]
    light = (head.params.ambient * ao + (ndl * lint).sum(1) * (0.6 + 0.4 * ao)) * head.params.exposure
    diffuse = alb * light[:, None]
    half = ldir[None] - d[:, None, :]
    half = half / half.norm(dim=2, keepdim=True).clamp_min(1e-9)
    ndh = (nrm[:, None, :] * half).sum(2).clamp_min(0.0)  # [N, L]
    ks, shin = SPECULAR[mat, 0], SPECULAR[mat, 1]
    spec = (ks[:, None] * ndh ** shin[:, None] * lint).sum(1) * ao * head.params.exposure
    return {"cls": cls, "material": mat, "diffuse": diffuse, "specular": spec[:, None].expand(-1, 3)}


def background_noise(head: SynthHead, background: str, seed: int | None) -> tuple[NoiseField | None, np.ndarray]:
    P = head.params
    if background == "plain":
        return None, np.asarray([P.plain_rgb], dtype=np.float32)
    if background == "world":
        if "env_noise" not in head.cache:
            head.cache["env_noise"] = NoiseField(P.background_seed)
        return head.cache["env_noise"], np.asarray(P.background_palette, dtype=np.float32)
    if background == "random":
        s = int(P.background_seed if seed is None else seed)
        rng = np.random.default_rng([s, 7])
        palette = rng.uniform(0.1, 0.95, size=(4, 3)).astype(np.float32)
        return NoiseField(s ^ 0x5BD1E995), palette
    raise ValueError(f"background must be one of {BACKGROUNDS}, got '{background}'")


def environment(o_w: torch.Tensor, d_w: torch.Tensor, noise: NoiseField | None, palette: np.ndarray,
                mirrored: bool) -> torch.Tensor:
    """Colour [N, 3] where world rays ``o_w + t d_w`` meet the environment sphere."""
    if noise is None:
        return torch.as_tensor(palette[0]).expand(o_w.shape[0], 3).clone()
    b = (o_w * d_w).sum(1)
    c = (o_w * o_w).sum(1) - ENV_RADIUS**2
    t = -b + torch.sqrt((b * b - c).clamp_min(0.0))
    return environment_colour(o_w + t[:, None] * d_w, palette, noise, mirrored)
