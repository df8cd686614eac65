"""Slow, brute-force reference rasterizer (tests only).

Deliberately naive and independent of the fast path: it re-derives the projection per camera
with plain matrix algebra (no tiles, no shared helpers), then, for every pixel, walks ALL visible
Gaussians front to back in one sequential loop, in float64, applying gsplat 1.5.3's rules
literally:

- projection: ``z < near`` or ``z > far`` culls; ``cov2d = J W cov W^T J^T + eps2d I`` with the
  perspective Jacobian at the field-of-view-clamped mean; ``det <= 0`` culls; ``opacity < 1/255``
  culls; radii ``ceil(min(3.33, sqrt(2 ln(255 opacity))) * sqrt(cov2d_ii))``; culled when both
  radii ``<= radius_clip`` or the box lies off-screen;
- pixel centres at ``(j + 0.5, i + 0.5)``; ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``;
  ``alpha = min(0.999, opacity exp(-sigma))``; skip when ``sigma < 0`` or ``alpha < 1/255``;
  stop before the Gaussian that takes T to ``<= 1e-4``; output ``sum w c + T bg`` and ``1 - T``.

The per-pixel loop is vectorised over pixels (each pixel keeps its own ``T`` and ``done`` flag),
which is the same sequential algorithm, only fast enough for tests. It is differentiable with
autograd, so tests compare gradients too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _rotmat(q: Tensor) -> Tensor:
    q = q / q.norm()
    w, x, y, z = q
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])  # fmt: skip


def _project_one(mean, quat, scale, opacity, viewmat, K, width, height, near, far, eps2d, radius_clip):
    """Project one Gaussian into one camera: (visible, mean2d [2], conic [3], depth) or None."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = R @ mean + t
    x, y, z = p[0], p[1], p[2]
    if float(z.detach()) < near or float(z.detach()) > far:
        return None
    Rg = _rotmat(quat)
    cov = Rg @ torch.diag(scale * scale) @ Rg.T
    cov_c = R @ cov @ R.T
    fx, fy, cx, cy = (float(K[i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.clamp(x / z, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    v = torch.clamp(y / z, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros((), dtype=p.dtype)
    J = torch.stack([
        torch.stack([fx / z, zero, -fx * u / z]),
        torch.stack([zero, fy / z, -fy * v / z]),
    ])  # fmt: skip
    cov2d = J @ cov_c @ J.T + eps2d * torch.eye(2, dtype=p.dtype)
    det = cov2d[0, 0] * cov2d[1, 1] - cov2d[0, 1] * cov2d[1, 0]
    op = float(opacity.detach())
    if float(det.detach()) <= 0 or op < 1.0 / 255.0:
        return None
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy])
    extend = min(3.33, math.sqrt(2.0 * math.log(op * 255.0)))
    var = cov2d.detach()
    rx = math.ceil(extend * math.sqrt(float(var[0, 0])))
    ry = math.ceil(extend * math.sqrt(float(var[1, 1])))
    if rx <= radius_clip and ry <= radius_clip:
        return None
    mx, my = float(mean2d[0].detach()), float(mean2d[1].detach())
    if mx + rx <= 0 or mx - rx >= width or my + ry <= 0 or my - ry >= height:
        return None
    conic = torch.stack([cov2d[1, 1], -cov2d[0, 1], cov2d[0, 0]]) / det
    return mean2d, conic, z


def reference_rasterize(
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
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Brute-force render: colors [C, H, W, D(+1)] and alphas [C, H, W, 1] (same contract as
    :func:`facegs.splat.rasterize.rasterize`; colours [N, D] or [C, N, D]; computed in the inputs' dtype,
    pass float64 tensors for a float64 reference)."""
    C = viewmats.shape[0]
    out_colors, out_alphas = [], []
    for cam in range(C):
        cols = colors if colors.dim() == 2 else colors[cam]
        bg = None if backgrounds is None else backgrounds[cam]
        img, alpha = _render_camera(
            means, quats, scales, opacities, cols, viewmats[cam], Ks[cam], width, height,
            near_plane, far_plane, eps2d, bg, render_mode, radius_clip,
        )  # fmt: skip
        out_colors.append(img)
        out_alphas.append(alpha)
    return torch.stack(out_colors), torch.stack(out_alphas)


def _render_camera(means, quats, scales, opacities, colors, viewmat, K, width, height,
                   near, far, eps2d, bg, render_mode, radius_clip):  # fmt: skip
    dtype = means.dtype
    visible = []
    for n in range(means.shape[0]):
        res = _project_one(means[n], quats[n], scales[n], opacities[n], viewmat, K, width, height,
                           near, far, eps2d, radius_clip)  # fmt: skip
        if res is not None:
            mean2d, conic, z = res
            feat = _features(render_mode, colors[n], z)
            visible.append((float(z.detach()), n, mean2d, conic, opacities[n], feat))
    visible.sort(key=lambda item: (item[0], item[1]))  # front to back, ties by index

    D = _features(render_mode, colors[0], means.new_zeros(())).shape[0]
    cols, rows = torch.arange(width, dtype=dtype), torch.arange(height, dtype=dtype)
    jj, ii = torch.meshgrid(cols, rows, indexing="xy")
    px, py = jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5  # pixel centres, row-major
    T = torch.ones(px.shape[0], dtype=dtype)
    acc = torch.zeros(px.shape[0], D, dtype=dtype)
    done = torch.zeros(px.shape[0], dtype=torch.bool)
    for _, _, mean2d, conic, opacity, feat in visible:
        dx, dy = mean2d[0] - px, mean2d[1] - py
        sigma = 0.5 * (conic[0] * dx * dx + conic[2] * dy * dy) + conic[1] * dx * dy
        alpha = torch.clamp(opacity * torch.exp(-sigma), max=0.999)
        use = ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
        next_T = T * (1 - alpha)
        stop = use & (next_T <= 1e-4)
        done = done | stop
        use = use & ~stop
        acc = acc + torch.where(use[:, None], (alpha * T)[:, None] * feat[None, :], torch.zeros_like(acc))
        T = torch.where(use, next_T, T)
    if bg is not None:
        acc = acc + T[:, None] * _background(render_mode, bg)[None, :]
    alphas = (1 - T).reshape(height, width, 1)
    img = acc.reshape(height, width, D)
    if render_mode in ("ED", "RGB+ED"):
        img = torch.cat([img[..., :-1], img[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    return img, alphas


def _features(render_mode: str, color: Tensor, z: Tensor) -> Tensor:
    if render_mode == "RGB":
        return color
    if render_mode in ("D", "ED"):
        return z.reshape(1)
    return torch.cat([color, z.reshape(1)])


def _background(render_mode: str, bg: Tensor) -> Tensor:
    if render_mode == "RGB":
        return bg
    if render_mode in ("D", "ED"):
        return bg.new_zeros(1)
    return torch.cat([bg, bg.new_zeros(1)])
