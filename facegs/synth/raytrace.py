"""Render a synthetic head from any OpenCV camera: RGB, exact labels, depth and alpha.

Conventions (see :mod:`facegs.core.cameras`): ``K`` [3, 3] with pixel (row i, column j) centred at
``(j + 0.5, i + 0.5)``; ``w2c`` [4, 4] world-to-camera (+x right, +y down, +z forward);
``world_from_head`` [4, 4] maps the head frame (+x the subject's LEFT, +y up, +z out of the face)
to the world.

Method: one ray per pixel centre, transformed into the head frame and sphere-traced
(:func:`sphere_trace`) against the subject's signed distance function, all pixels (and several
views) at once in float32 PyTorch. A coarse pass first traces one cone per 4 x 4 block of pixels
(:func:`_coarse_starts`): blocks whose cone meets nothing are background without further work,
the others start their pixel rays where the cone first neared a surface. Rays march inside the
subject's bounding spheres until convergence (distance below a fraction of the pixel footprint),
exit, or ``max_steps``; finished rays are dropped from the active set as they go. A hit's label
is the class of the surface the ray reached FIRST, so occlusion is exact. Hit points are shaded
(Lambert + ambient with a cheap ambient-occlusion term + Blinn-Phong specular, lights fixed in the
world) with solid procedural textures; spectacle lenses are see-through (a second trace behind the
lens) but labelled ``eye_g``, the first surface. Rays that miss the subject hit a textured
environment sphere of radius 3 m around the world origin (``background="world"``: fixed in the
world, the same in every view), a per-view random one (``"random"``) or a flat colour
(``"plain"``). No antialiasing: every output is sampled at the pixel centre.

Outputs per view: ``rgb`` [H, W, 3] uint8, ``labels`` [H, W] uint8 (celebamask19, 0 background),
``depth`` [H, W] float32 (camera z in metres, 0 on background), ``alpha`` [H, W] float32 (1 on the
subject, 0 on background).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from facegs.synth.head import LENS_GROUP, MAT_LENS, SynthHead, build_head
from facegs.synth.params import HeadParams
from facegs.synth.shading import BACKGROUNDS, background_noise, environment, shade_hits

_CAMERA_RAYS = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TraceSettings:
    """Sphere-tracing knobs: ``relax`` step factor (< 1: the ellipsoid distances are approximate),
    ``eps_px`` convergence distance in pixel footprints, ``cone_tile`` tile size in pixels of the
    coarse cone pass (0: off), ``chunk_rays`` rays per batch (memory ~ 1 KB per ray)."""

    max_steps: int = 96
    relax: float = 0.95
    cone_tile: int = 4
    eps_px: float = 0.3
    chunk_rays: int = 1 << 19


def as_head(head: HeadParams | SynthHead) -> SynthHead:
    """Accept parameters or a built head."""
    return head if isinstance(head, SynthHead) else build_head(head)


def camera_rays(K: np.ndarray, w2c: np.ndarray, width: int, height: int,
                uv: tuple[torch.Tensor, torch.Tensor] | None = None) -> _CAMERA_RAYS:
    """World rays through pixel centres (row-major), or through explicit image points ``uv``.

    Returns origins [N, 3], unit directions [N, 3], ``zf`` [N] (camera-z of a unit step along the
    ray, so depth = t * zf) and the angular pixel size [N] (radians), all float32; N = H * W or
    the length of ``uv`` (continuous image coordinates, pixel centres at +0.5).
    """
    K = np.asarray(K, dtype=np.float64)
    w2c = np.asarray(w2c, dtype=np.float64)
    Ki = np.linalg.inv(K)
    R, t = w2c[:3, :3], w2c[:3, 3]
    f64 = torch.float64
    if uv is None:
        u = (torch.arange(width, dtype=f64) + 0.5)[None, :].expand(height, width).reshape(-1)
        v = (torch.arange(height, dtype=f64) + 0.5)[:, None].expand(height, width).reshape(-1)
    else:
        u, v = uv[0].to(f64), uv[1].to(f64)
    dc = [Ki[r, 0] * u + Ki[r, 1] * v + Ki[r, 2] for r in range(3)]  # camera-frame directions
    inv_n = torch.rsqrt(dc[0] * dc[0] + dc[1] * dc[1] + dc[2] * dc[2])
    dc = [c * inv_n for c in dc]
    d_world = torch.stack([R[0, i] * dc[0] + R[1, i] * dc[1] + R[2, i] * dc[2] for i in range(3)], dim=1)  # R^T d
    origin = torch.as_tensor(-R.T @ t, dtype=torch.float32)
    n = u.shape[0]
    pix_angle = torch.full((n,), 1.0 / max(K[0, 0], K[1, 1]), dtype=torch.float32)
    return origin.expand(n, 3), d_world.float(), dc[2].float(), pix_angle


def _to_head(world_from_head: np.ndarray, o_w: torch.Tensor, d_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    T = np.asarray(world_from_head, dtype=np.float64)
    R = torch.as_tensor(T[:3, :3], dtype=torch.float32)
    t = torch.as_tensor(T[:3, 3], dtype=torch.float32)
    return (o_w - t) @ R, d_w @ R  # R^T x for row vectors


def _sphere_interval(o: torch.Tensor, d: torch.Tensor, c: np.ndarray, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit distances [N] of rays with a sphere (entry > exit where the ray misses)."""
    oc = o - torch.as_tensor(c, dtype=torch.float32)
    b = (oc * d).sum(1)
    disc = b * b - ((oc * oc).sum(1) - r * r)
    s = torch.sqrt(disc.clamp_min(0.0))
    t0, t1 = (-b - s).clamp_min(0.0), -b + s
    miss = disc <= 0
    return torch.where(miss, torch.full_like(t0, 1e9), t0), torch.where(miss, torch.full_like(t1, -1e9), t1)


class TraceResult(NamedTuple):
    """Per ray: ``hit`` [N] bool, ``t`` [N] float32 (where marching stopped), ``escaped`` [N] bool
    (left the bounds without meeting a surface, or never entered them)."""

    hit: torch.Tensor
    t: torch.Tensor
    escaped: torch.Tensor


def sphere_trace(dist_xyz, o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, eps: torch.Tensor,
                 settings: TraceSettings = TraceSettings(), cone: torch.Tensor | None = None) -> TraceResult:
    """March rays ``o + t d`` ([N, 3] each) from ``t0`` to ``t1`` ([N]) against ``dist_xyz(x, y, z)``.

    Each step advances ``relax * distance``. A ray has hit when the distance is below ``eps * t``
    (``eps`` [N]: a fraction of the angular pixel size). With ``cone`` [N] (radians) the rays are
    cones of radius ``cone * t``: the distance to the cone's surface is marched instead, so a cone
    stops before ANY ray inside it can meet a surface (used for the coarse pass).
    Finished rays freeze and are dropped from the active set whenever more than a third of it has
    finished. Rays still marching after ``max_steps`` count as hits if within ``4 eps t``.
    """
    n = o.shape[0]
    hit = torch.zeros(n, dtype=torch.bool)
    escaped = torch.ones(n, dtype=torch.bool)
    t_out = t0.clone()
    act = (t0 < t1).nonzero().squeeze(1)
    sel = lambda v: torch.index_select(v, 0, act)  # noqa: E731
    ox, oy, oz = (sel(o[:, i].contiguous()) for i in range(3))
    dx, dy, dz = (sel(d[:, i].contiguous()) for i in range(3))
    ta, fa, ea = sel(t0), sel(t1), sel(eps)
    ca = sel(cone) if cone is not None else None
    relax = float(settings.relax)

    def finish(mask: torch.Tensor, conv: torch.Tensor) -> None:
        idx = mask.nonzero().squeeze(1)
        ids = torch.index_select(act, 0, idx)
        c = torch.index_select(conv, 0, idx)
        hit[ids] = c
        escaped[ids] = torch.index_select(ta > fa, 0, idx) & ~c
        t_out[ids] = torch.index_select(ta, 0, idx)

    def distance() -> torch.Tensor:
        r = dist_xyz(torch.addcmul(ox, ta, dx), torch.addcmul(oy, ta, dy), torch.addcmul(oz, ta, dz))
        return r if ca is None else r - ca * ta

    for _ in range(settings.max_steps):
        if act.numel() == 0:
            break
        r = distance()
        conv = r < ea * ta
        done = conv | (ta > fa)
        ta = torch.where(done, ta, ta + relax * r)
        n_done = int(done.sum())
        if n_done == act.numel():
            finish(done, conv)
            act = act[:0]
            break
        if n_done * 3 > act.numel():
            finish(done, conv)
            keep = (~done).nonzero().squeeze(1)
            act, ox, oy, oz, dx, dy, dz, ta, fa, ea = (
                torch.index_select(v, 0, keep) for v in (act, ox, oy, oz, dx, dy, dz, ta, fa, ea))
            if ca is not None:
                ca = torch.index_select(ca, 0, keep)
    if act.numel():  # out of steps: hits if very close, else neither hit nor escaped
        r = distance()
        finish(torch.ones_like(r, dtype=torch.bool), (r < 4.0 * ea * ta) & (ta <= fa))
    return TraceResult(hit, t_out, escaped)


def _bounds_interval(head: SynthHead, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit [N] of head-frame rays with the union of the subject's bounding spheres."""
    n = o.shape[0]
    t0, t1 = torch.full((n,), 1e9), torch.full((n,), -1e9)
    for c, r in head.bounds():
        a, b = _sphere_interval(o, d, c, r)
        t0, t1 = torch.minimum(t0, a), torch.maximum(t1, b)
    return t0, t1


def _coarse_starts(head: SynthHead, cams: list, T: np.ndarray, settings: TraceSettings) -> torch.Tensor:
    """Cone pre-pass: a safe start distance [sum H*W] for every pixel of ``cams`` (inf: nothing to hit).

    One cone per ``tile`` x ``tile`` block of pixels, through the block's centre, wide enough to
    contain every pixel ray of the block. Where the cone escapes, the whole block is background;
    elsewhere its pixel rays start where the cone first came within its radius of a surface.
    """
    tile = settings.cone_tile
    o_l, d_l, c_l, idx_l = [], [], [], []
    for K, w2c, w, h in cams:
        w, h = int(w), int(h)
        tw, th = -(-w // tile), -(-h // tile)
        j0 = torch.arange(tw, dtype=torch.float64) * tile
        i0 = torch.arange(th, dtype=torch.float64) * tile
        bw = torch.clamp(w - j0, max=tile)  # block sizes (edge blocks may be smaller)
        bh = torch.clamp(h - i0, max=tile)
        u = (j0 + bw / 2)[None, :].expand(th, tw).reshape(-1)
        v = (i0 + bh / 2)[:, None].expand(th, tw).reshape(-1)
        o_w, d_w, _, pix = camera_rays(K, w2c, w, h, (u, v))
        half_diag = 0.5 * tile * math.sqrt(2.0)
        o_l.append(o_w)
        d_l.append(d_w)
        c_l.append(pix * (half_diag * 1.05))
        ii = torch.arange(h) // tile
        jj = torch.arange(w) // tile
        idx_l.append((ii[:, None] * tw + jj[None, :]).reshape(-1))
    o, d = _to_head(T, torch.cat(o_l), torch.cat(d_l))
    cone = torch.cat(c_l)
    t0, t1 = _bounds_interval(head, o, d)
    res = sphere_trace(head.distance_xyz, o, d, t0, t1, cone * 0.05, settings, cone=cone)
    start = torch.where(res.escaped, torch.full_like(res.t, float("inf")), res.t)
    out, offset = [], 0
    for idx, oo in zip(idx_l, o_l, strict=True):
        out.append(start[offset + idx])
        offset += oo.shape[0]
    return torch.cat(out)


EnvFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ray index [M], o_w, d_w) -> rgb [M, 3]


def _render_rays(head: SynthHead, o_w: torch.Tensor, d_w: torch.Tensor, zf: torch.Tensor, pix: torch.Tensor,
                 start: torch.Tensor | None, T: np.ndarray, env: EnvFn, settings: TraceSettings) -> dict[str, torch.Tensor]:
    """Render one batch of world rays; returns flat rgb [N, 3] float, labels [N] uint8, depth [N], alpha [N].

    ``env(idx, o_w[idx], d_w[idx])`` colours rays (by index into this batch) that reach the environment.
    """
    n = o_w.shape[0]
    o, d = _to_head(T, o_w, d_w)
    R_wh = torch.as_tensor(np.asarray(T)[:3, :3], dtype=torch.float32)
    t0, t1 = _bounds_interval(head, o, d)
    if start is not None:
        t0 = torch.maximum(t0, start)
    eps = pix * settings.eps_px
    hit, t, _ = sphere_trace(head.distance_xyz, o, d, t0, t1, eps, settings)

    rgb = env(torch.arange(n), o_w, d_w)
    labels = torch.zeros(n, dtype=torch.uint8)
    depth = torch.zeros(n)
    hi = hit.nonzero().squeeze(1)
    if hi.numel():
        p = o[hi] + t[hi, None] * d[hi]
        sh = shade_hits(head, p, d[hi], R_wh)
        col = sh["diffuse"] + sh["specular"]
        lens = (sh["material"] == MAT_LENS).nonzero().squeeze(1)
        if lens.numel() and head.params.glasses is not None:
            li = hi[lens]
            col[lens] = _through_lens(head, li, o_w[li], d_w[li], o[li], d[li], t[li], t1[li], eps[li],
                                      sh["diffuse"][lens], sh["specular"][lens], R_wh, env, settings)
        rgb[hi] = col
        labels[hi] = sh["cls"]
        depth[hi] = t[hi] * zf[hi]
    return {"rgb": rgb.clamp(0.0, 1.0), "labels": labels, "depth": depth, "alpha": hit.float()}


def _through_lens(head: SynthHead, idx: torch.Tensor, o_w: torch.Tensor, d_w: torch.Tensor, o: torch.Tensor,
                  d: torch.Tensor, t_lens: torch.Tensor, t_far: torch.Tensor, eps: torch.Tensor, lens_diffuse: torch.Tensor,
                  lens_spec: torch.Tensor, R_wh: torch.Tensor, env: EnvFn, settings: TraceSettings) -> torch.Tensor:
    """Colour [M, 3] of lens pixels: the tinted lens over what a second trace finds behind it."""
    assert head.params.glasses is not None
    skip = frozenset({LENS_GROUP})
    start = t_lens + 0.002 * head.scale
    hit2, t2, _ = sphere_trace(lambda x, y, z: head.distance_xyz(x, y, z, skip), o, d, start, t_far, eps, settings)
    behind = env(idx, o_w, d_w)
    hi = hit2.nonzero().squeeze(1)
    if hi.numel():
        p2 = o[hi] + t2[hi, None] * d[hi]
        sh2 = shade_hits(head, p2, d[hi], R_wh, skip)
        behind[hi] = sh2["diffuse"] + sh2["specular"]
    g = head.params.glasses
    tint = torch.tensor(g.lens_rgb) ** 0.3
    return (1.0 - g.transmittance) * lens_diffuse + g.transmittance * behind * tint + lens_spec


def _render_batch(head: SynthHead, cams: list, T: np.ndarray, bgs: list, settings: TraceSettings) -> list[dict[str, np.ndarray]]:
    """Render cameras together; ``bgs``: one background (noise, palette) per camera, or one shared."""
    rays = [camera_rays(K, w2c, int(w), int(h)) for K, w2c, w, h in cams]
    o_w, d_w, zf, pix = (torch.cat([r[i] for r in rays]) for i in range(4))
    cam_of_ray = torch.cat([torch.full((r[0].shape[0],), i, dtype=torch.int64) for i, r in enumerate(rays)])
    start = _coarse_starts(head, cams, T, settings) if settings.cone_tile > 1 else None
    mirrored = head.params.symmetric
    n = o_w.shape[0]
    outs = []
    for s in range(0, n, settings.chunk_rays):
        e = min(n, s + settings.chunk_rays)

        def env(idx: torch.Tensor, o: torch.Tensor, d: torch.Tensor, s: int = s) -> torch.Tensor:
            if len(bgs) == 1:
                return environment(o, d, bgs[0][0], bgs[0][1], mirrored)
            cam = cam_of_ray[s + idx]
            out = torch.zeros(idx.shape[0], 3)
            for c in torch.unique(cam).tolist():
                m = (cam == c).nonzero().squeeze(1)
                out[m] = environment(o[m], d[m], bgs[c][0], bgs[c][1], mirrored)
            return out

        outs.append(_render_rays(head, o_w[s:e], d_w[s:e], zf[s:e], pix[s:e], None if start is None else start[s:e],
                                 T, env, settings))
    flat = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    results = []
    offset = 0
    for _, _, w, h in cams:
        w, h = int(w), int(h)
        sl = slice(offset, offset + w * h)
        offset += w * h
        rgb = (flat["rgb"][sl].reshape(h, w, 3) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
        results.append({
            "rgb": rgb.numpy(),
            "labels": flat["labels"][sl].reshape(h, w).numpy(),
            "depth": flat["depth"][sl].reshape(h, w).numpy().astype(np.float32),
            "alpha": flat["alpha"][sl].reshape(h, w).numpy().astype(np.float32),
        })
    return results


def render_views(head: HeadParams | SynthHead, cameras: Sequence[tuple[np.ndarray, np.ndarray, int, int]],
                 world_from_head: np.ndarray | None = None, background: str = "world",
                 background_seeds: Sequence[int] | None = None,
                 settings: TraceSettings = TraceSettings()) -> list[dict[str, np.ndarray]]:
    """Render several cameras ``(K, w2c, width, height)``; one result dict per camera (see :func:`render_view`).

    Cameras are batched up to ``settings.chunk_rays`` rays. ``background_seeds``: one seed per
    camera for ``background="random"`` (default: derived from the subject's background seed and
    the camera's index).
    """
    head = as_head(head)
    T = head.world_from_head if world_from_head is None else np.asarray(world_from_head, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"world_from_head must be 4x4, got {list(T.shape)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got '{background}'")
    for _, _, w, h in cameras:
        if not (1 <= int(w) <= 8192 and 1 <= int(h) <= 8192):
            raise ValueError(f"image size must be within 1..8192, got {w}x{h}")
    if background == "random":  # each view its own environment
        seeds = list(background_seeds) if background_seeds is not None else [
            head.params.background_seed * 1000 + i for i in range(len(cameras))]
        if len(seeds) != len(cameras):
            raise ValueError(f"background_seeds has {len(seeds)} seeds for {len(cameras)} cameras")
        bgs = [background_noise(head, background, s) for s in seeds]
    else:
        bgs = [background_noise(head, background, None)] * len(cameras)
    results: list[dict[str, np.ndarray]] = []
    first, n_batch = 0, 0
    for i, cam in enumerate(cameras):
        n_batch += int(cam[2]) * int(cam[3])
        if n_batch >= settings.chunk_rays or i == len(cameras) - 1:
            b = bgs[first : i + 1]
            results.extend(_render_batch(head, list(cameras[first : i + 1]), T, b if background == "random" else b[:1], settings))
            first, n_batch = i + 1, 0
    return results


def render_view(head: HeadParams | SynthHead, K: np.ndarray, w2c: np.ndarray, width: int, height: int,
                world_from_head: np.ndarray | None = None, background: str = "world", background_seed: int | None = None,
                settings: TraceSettings = TraceSettings()) -> dict[str, np.ndarray]:
    """Render one view of a subject.

    ``head``: :class:`HeadParams` or a built :class:`SynthHead` (build it once with
    :func:`facegs.synth.head.build_head` when rendering many views). ``K`` [3, 3], ``w2c`` [4, 4]
    world-to-camera (OpenCV). ``world_from_head`` [4, 4] defaults to the subject's own ground-truth
    pose ``head.params.world_from_head``. ``background``: ``"world"`` (textured environment fixed in
    the world), ``"random"`` (new texture, seeded by ``background_seed``) or ``"plain"``.

    Returns ``rgb`` [H, W, 3] uint8, ``labels`` [H, W] uint8 (celebamask19; 0 = background),
    ``depth`` [H, W] float32 (camera z, metres; 0 = background), ``alpha`` [H, W] float32 (0/1).
    """
    seeds = None if background_seed is None else [background_seed]
    return render_views(head, [(K, w2c, width, height)], world_from_head, background, seeds, settings)[0]
