"""Initial Gaussians for a subject: from SfM points, from foreground carving, or uniform.

Sources, in order of preference (``source="auto"``):

1. ``points``: the manifest's ``points3d`` (``.npz`` with ``xyz`` [M, 3] and optionally ``rgb``
   [M, 3], uint8 or float in [0, 1]; read with ``allow_pickle=False``), subsampled to N points.
2. ``carve``: a visual hull. A voxel grid is laid over the cameras' common volume (see
   :func:`common_volume`); a voxel is kept when it projects inside the foreground of at least
   ``min_fg_fraction`` of the views in which it is visible (and is visible in at least
   ``min_visible_fraction`` of the views). Foreground per view is the mask, else ``labels`` not in
   {background, ignore}, else the image's alpha channel. Points are sampled on the hull's surface
   voxels (interior voxels are never seen) with a uniform jitter inside the voxel.
3. ``uniform``: points sampled uniformly in the common volume, kept when visible in at least
   ``min_visible_fraction`` of the views.

Colours are the mean of the image colours at the point's projections (foreground views only when
carving); occlusion is ignored (fine for an initialisation). Scales follow 3DGS: isotropic, the root
mean squared distance to the 3 nearest neighbours. Opacity 0.1, quaternion identity, class logits 0.
All randomness comes from ``numpy.random.default_rng(seed)``: same inputs -> same points.

Cameras: OpenCV, ``w2c`` [V, 4, 4] world-to-camera, ``Ks`` [V, 3, 3] with pixel centres at +0.5.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from facegs.core.cameras import optical_axes_focus
from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set
from facegs.core.manifest import SubjectManifest
from facegs.fit.config import FitConfig, InitConfig
from facegs.fit.data import ViewData
from facegs.splat.rgb_labels import BACKGROUND_CLASS
from facegs.splat.scene import Params, make_params


def project_points(xyz: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [P, 3] -> pixel coordinates ``uv`` [P, 2] (continuous, centres at +0.5)
    and camera depth ``z`` [P]."""
    cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = (cam[:, :2] / zs[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def _pixel_lookup(uv: np.ndarray, z: np.ndarray, width: int, height: int, near: float = 1e-3):
    """Integer pixel indices (row, col) and a [P] bool 'inside the image and in front' mask."""
    col = np.floor(uv[:, 0]).astype(np.int64)
    row = np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > near) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return np.clip(row, 0, height - 1), np.clip(col, 0, width - 1), inside


def common_volume(Ks: np.ndarray, w2cs: np.ndarray, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, float]:
    """An axis-aligned cube (``center`` [3], ``half`` size) around the region all cameras look at.

    The centre is the least-squares point closest to all optical axes (falling back to the point
    in front of the mean camera at the mean distance when the axes are nearly parallel). The half
    size is the radius of the largest sphere around the centre that fits in every camera's view
    cone (``distance * sin(half field of view)``, smallest over cameras).
    """
    p0, cond, centers, fwd = optical_axes_focus(w2cs)
    if cond >= 1e6:  # parallel axes: look one mean camera-spread ahead
        f = fwd.mean(0) / max(np.linalg.norm(fwd.mean(0)), 1e-9)
        p0 = centers.mean(0) + f * max(np.linalg.norm(centers - centers.mean(0), axis=1).max(), 1.0)
    radii = []
    for K, c, (w, h) in zip(Ks, centers, sizes):
        tan_half = min(w / 2.0 / K[0, 0], h / 2.0 / K[1, 1])
        radii.append(np.linalg.norm(p0 - c) * math.sin(math.atan(tan_half)))
    return p0, float(min(radii))


def knn_log_scales(xyz: np.ndarray, k: int = 3, mult: float = 1.0) -> np.ndarray:
    """[P] log of ``mult * sqrt(mean squared distance to the k nearest neighbours)`` (3DGS)."""
    n = xyz.shape[0]
    if n < 2:
        return np.full(n, math.log(1e-2 * mult))
    kk = min(k, n - 1)
    d, _ = cKDTree(xyz).query(xyz, k=kk + 1)
    d2 = np.square(d[:, 1:]).mean(axis=1)
    return np.log(np.sqrt(np.maximum(d2, 1e-14)) * mult)


def mean_colors(xyz: np.ndarray, images: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray,
                fg: np.ndarray | None = None) -> np.ndarray:
    """[P, 3] mean of ``images`` [V, H, W, 3] (float in [0, 1]) at the points' projections.

    When ``fg`` [V, H, W] bool is given only foreground projections count. Points seen by no view
    get grey (0.5).
    """
    acc = np.zeros((xyz.shape[0], 3))
    cnt = np.zeros(xyz.shape[0])
    V, H, W = images.shape[:3]
    for v in range(V):
        uv, z = project_points(xyz, Ks[v], w2cs[v])
        r, c, ok = _pixel_lookup(uv, z, W, H)
        if fg is not None:
            ok &= fg[v][r, c]
        acc[ok] += images[v][r[ok], c[ok]]
        cnt[ok] += 1
    out = np.full((xyz.shape[0], 3), 0.5)
    seen = cnt > 0
    out[seen] = acc[seen] / cnt[seen, None]
    return np.clip(out, 0.0, 1.0)


def _grid(center: np.ndarray, half: float, res: int) -> tuple[np.ndarray, float]:
    """Voxel centres [res^3, 3] of the cube and the voxel size."""
    size = 2.0 * half / res
    ax = center[None, :] - half + size * (np.arange(res)[:, None] + 0.5)  # [res, 3]
    gx, gy, gz = np.meshgrid(ax[:, 0], ax[:, 1], ax[:, 2], indexing="ij")
    return np.stack([gx, gy, gz], axis=-1).reshape(-1, 3), size


def visual_hull(fg: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray, cfg: InitConfig,
                volume: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, float]:
    """Carve a voxel grid with foreground maps ``fg`` [V, H, W] bool.

    Returns the centres [M, 3] of the hull's surface voxels (all hull voxels if the hull is too
    thin to have an interior) and the voxel size. Raises ``ValueError`` when nothing survives.
    """
    V, H, W = fg.shape
    center, half = volume if volume is not None else common_volume(Ks, w2cs, [(W, H)] * V)
    pts, vox = _grid(center, half * 1.25, cfg.grid_res)  # a margin: the sphere bound is tight
    seen = np.zeros(len(pts), dtype=np.int32)
    inside = np.zeros(len(pts), dtype=np.int32)
    for v in range(V):
        uv, z = project_points(pts, Ks[v], w2cs[v])
        r, c, ok = _pixel_lookup(uv, z, W, H)
        seen += ok
        inside += ok & fg[v][r, c]
    keep = (seen >= max(1, math.ceil(cfg.min_visible_fraction * V))) & (
        inside >= np.ceil(cfg.min_fg_fraction * seen - 1e-9)) & (inside > 0)
    occ = keep.reshape((cfg.grid_res,) * 3)
    if not occ.any():
        raise ValueError("visual hull is empty: foreground maps and cameras do not agree")
    surface = occ & ~ndimage.binary_erosion(occ)
    chosen = surface if surface.sum() >= 16 else occ
    return pts[chosen.reshape(-1)], vox


def sample_in_voxels(centers: np.ndarray, vox: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points [n, 3]: voxel centres chosen at random (without replacement while possible),
    each jittered uniformly inside its voxel."""
    idx = rng.choice(len(centers), size=n, replace=n > len(centers))
    return centers[idx] + (rng.random((n, 3)) - 0.5) * vox


def uniform_points(Ks: np.ndarray, w2cs: np.ndarray, size: tuple[int, int], n: int, cfg: InitConfig,
                   rng: np.random.Generator) -> np.ndarray:
    """``n`` points [n, 3] uniform in the common volume, visible in enough views."""
    V = len(Ks)
    center, half = common_volume(Ks, w2cs, [size] * V)
    out: list[np.ndarray] = []
    got = 0
    for _ in range(100):
        cand = center + (rng.random((4 * n, 3)) * 2 - 1) * half
        seen = np.zeros(len(cand), dtype=np.int32)
        for v in range(V):
            uv, z = project_points(cand, Ks[v], w2cs[v])
            seen += _pixel_lookup(uv, z, size[0], size[1])[2]
        cand = cand[seen >= max(1, math.ceil(cfg.min_visible_fraction * V))]
        out.append(cand)
        got += len(cand)
        if got >= n:
            break
    pts = np.concatenate(out)[:n]
    if len(pts) < n:
        raise ValueError("cameras share no common view volume")
    return pts


def load_points3d(manifest: SubjectManifest) -> tuple[np.ndarray, np.ndarray | None]:
    """``xyz`` [M, 3] float64 and ``rgb`` [M, 3] float in [0, 1] (or None) of ``points3d``."""
    path = manifest.path(manifest.points3d)
    try:
        with np.load(path, allow_pickle=False) as z:
            xyz = np.asarray(z["xyz"], dtype=np.float64)
            rgb = np.asarray(z["rgb"]) if "rgb" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read points3d ({type(e).__name__}: {e})", subject=manifest.subject_id,
                         field="points3d", path=str(path)) from None
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.all(np.isfinite(xyz)):
        raise InputError("points3d xyz must be a finite [M, 3] array", subject=manifest.subject_id,
                         field="points3d", path=str(path))
    if rgb is not None:
        rgb = rgb.astype(np.float64) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    return xyz, rgb


def initial_points(
    images: np.ndarray,
    Ks: np.ndarray,
    w2cs: np.ndarray,
    cfg: InitConfig,
    fg: np.ndarray | None = None,
    points: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Pick the initial point cloud.

    ``images`` [V, H, W, 3] float in [0, 1]; ``Ks`` [V, 3, 3] and ``w2cs`` [V, 4, 4] matching the
    images' resolution; ``fg`` [V, H, W] bool foreground (or None); ``points`` = (xyz, rgb) from
    SfM (or None). Returns ``xyz`` [N, 3], ``rgb`` [N, 3] and the source used.
    """
    rng = np.random.default_rng(cfg.seed)
    src = cfg.source
    if src == "auto":
        src = "points" if points is not None else ("carve" if fg is not None else "uniform")
    V, H, W = images.shape[:3]
    if src == "points":
        if points is None:
            raise ValueError("init source 'points' needs points3d")
        xyz, rgb = points
        if len(xyz) > cfg.num_points:
            sel = np.sort(rng.choice(len(xyz), cfg.num_points, replace=False))
            xyz, rgb = xyz[sel], None if rgb is None else rgb[sel]
        if rgb is None:
            rgb = mean_colors(xyz, images, Ks, w2cs)
    elif src == "carve":
        if fg is None:
            raise ValueError("init source 'carve' needs foreground maps")
        centers, vox = visual_hull(fg, Ks, w2cs, cfg)
        xyz = sample_in_voxels(centers, vox, cfg.num_points, rng)
        rgb = mean_colors(xyz, images, Ks, w2cs, fg)
    elif src == "uniform":
        xyz = uniform_points(Ks, w2cs, (W, H), cfg.num_points, cfg, rng)
        rgb = mean_colors(xyz, images, Ks, w2cs)
    else:
        raise ValueError(f"unknown init source '{src}' (auto | points | carve | uniform)")
    return xyz.astype(np.float32), np.asarray(rgb, dtype=np.float32), src


def params_from_points(xyz: np.ndarray, rgb: np.ndarray, cfg: InitConfig, *, num_classes: int = 19,
                       sh_degree: int = 3, device: str | torch.device = "cpu") -> Params:
    """Scene dict (see :mod:`facegs.splat.scene`) with k-NN scales, opacity ``cfg.opacity``, logits 0."""
    log_s = knn_log_scales(xyz.astype(np.float64), cfg.knn, cfg.scale_mult).astype(np.float32)
    return make_params(
        torch.from_numpy(xyz).to(device), torch.from_numpy(rgb).to(device), torch.from_numpy(log_s).to(device),
        num_classes=num_classes, sh_degree=sh_degree, opacity=cfg.opacity,
    )


def init_scene(manifest: SubjectManifest | None, data: ViewData, cfg: FitConfig,
               device: str | torch.device = "cpu") -> tuple[Params, str]:
    """Initial Gaussians from ``points3d``, a visual hull of the masks / labels, or uniformly."""
    fg = None
    if data.masks is not None:
        fg = data.masks.cpu().numpy() >= 0.5
    elif data.labels is not None:
        lab = data.labels.cpu().numpy()
        fg = (lab != BACKGROUND_CLASS) & (lab != IGNORE_INDEX)
    pts = load_points3d(manifest) if manifest is not None and manifest.points3d else None
    xyz, rgb, src = initial_points(
        data.images.cpu().numpy(), data.Ks.cpu().double().numpy(), data.viewmats.cpu().double().numpy(),
        dataclasses.replace(cfg.init, seed=cfg.seed), fg=fg, points=pts,
    )
    n_cls = get_label_set(CANONICAL).num_classes
    return params_from_points(xyz, rgb, cfg.init, num_classes=n_cls, sh_degree=cfg.sh_degree, device=device), src
