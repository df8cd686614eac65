"""3D -> 2D EWA projection of Gaussians, following gsplat 1.5.3's CUDA kernel
(``projection_ewa_3dgs_fused_fwd``, pinhole camera, unpacked layout).

Conventions (see :mod:`facegs`): OpenCV cameras (+x right, +y down, +z forward), ``viewmats`` are
world-to-camera ``[R t; 0 1]``, ``Ks`` are 3x3 pinhole intrinsics, and projected means are in
pixels with pixel (row i, column j) centred at ``(j + 0.5, i + 0.5)``.

The per-Gaussian rules reproduced here (each one checked against the CUDA source):

- cull when the camera-space depth ``z < near_plane`` or ``z > far_plane``;
- 3D covariance ``R S S R^T`` with ``R`` from the normalised wxyz quaternion;
- EWA: ``cov2d = J cov_cam J^T`` with the perspective Jacobian
  ``J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]`` where ``tx/z`` and ``ty/z`` are clamped to
  the field of view widened by 30 % (``lim_x_pos = (W - cx)/fx + 0.3 * 0.5 W/fx`` etc.);
- blur: ``cov2d += eps2d * I``; cull when ``det(cov2d) <= 0``;
- conic = ``inverse(cov2d)`` stored as ``(a, b, c)`` = (xx, xy, yy) entries;
- opacity-aware extent: cull when ``opacity < 1/255``, else
  ``extend = min(3.33, sqrt(2 log(255 opacity)))`` and per-axis radii
  ``ceil(extend * sqrt(cov2d_xx))``, ``ceil(extend * sqrt(cov2d_yy))``;
- cull when both radii are ``<= radius_clip``, or when the box ``mean +- radius`` lies off-screen
  (``x + rx <= 0``, ``x - rx >= W``, ``y + ry <= 0`` or ``y - ry >= H``).

Culled Gaussians get radii ``(0, 0)`` and zero ``means2d``/``conics`` (gsplat leaves them
uninitialised); their depths are still the true camera-space ``z``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Smallest alpha a Gaussian may contribute to a pixel (gsplat's ``ALPHA_THRESHOLD``)."""

MAX_EXTEND = 3.33
"""Largest radius, in standard deviations, of a projected Gaussian's bounding box."""


class Projected(NamedTuple):
    """Per-camera projections of N Gaussians into C cameras.

    Attributes:
        radii: [C, N, 2] int32 bounding-box half sizes in pixels (x, y); 0 = culled.
        means2d: [C, N, 2] projected centres in pixels (x = column + 0.5, y = row + 0.5).
        depths: [C, N] camera-space z.
        conics: [C, N, 3] inverse 2D covariance (a, b, c) = (xx, xy, yy).
    """

    radii: Tensor
    means2d: Tensor
    depths: Tensor
    conics: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (not necessarily unit) wxyz quaternions [..., 4]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances [N, 3, 3] = ``R S S R^T`` from quats [N, 4] (wxyz) and scales [N, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


def world_to_camera(means: Tensor, covars: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor]:
    """Camera-space means [C, N, 3] and covariances [C, N, 3, 3].

    Args:
        means: [N, 3] world positions.
        covars: [N, 3, 3] world covariances.
        viewmats: [C, 4, 4] world-to-camera transforms.
    """
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)
    return means_c, covars_c


def perspective_ewa(
    means_c: Tensor, covars_c: Tensor, Ks: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Pinhole projection of camera-space Gaussians (gsplat's ``persp_proj``).

    Args:
        means_c: [C, N, 3] camera-space means with z > 0 (callers replace culled z by a safe value).
        covars_c: [C, N, 3, 3] camera-space covariances.
        Ks: [C, 3, 3] intrinsics.

    Returns:
        means2d [C, N, 2] in pixels and cov2d [C, N, 2, 2] (before the eps2d blur).
    """
    x, y, z = means_c.unbind(-1)  # [C, N]
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    return means2d, cov2d


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Projected:
    """Project N Gaussians into C cameras with gsplat's conventions (differentiable).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] wxyz quaternions (normalised here).
        scales: [N, 3] activated scales (standard deviations along the local axes).
        opacities: [N] activated opacities in (0, 1]; only used for the radii (culling extent).
        viewmats: [C, 4, 4] world-to-camera.
        Ks: [C, 3, 3] intrinsics (not differentiated, as in gsplat).
        width, height: image size in pixels.

    Returns:
        :class:`Projected` with radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N],
        conics [C, N, 3]. Gradients reach means, quats and scales through means2d, depths, conics.
    """
    Ks = Ks.detach()
    covars = quat_scale_to_covar(quats, scales)
    means_c, covars_c = world_to_camera(means, covars, viewmats)
    depths = means_c[..., 2]
    valid = (depths >= near_plane) & (depths <= far_plane)
    safe_z = torch.where(valid, depths, torch.ones_like(depths))
    means_c_safe = torch.cat([means_c[..., :2], safe_z[..., None]], dim=-1)
    means2d, cov2d = perspective_ewa(means_c_safe, covars_c, Ks, width, height)

    eye = torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    cov2d = cov2d + eps2d * eye
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    valid = valid & (det > 0)
    safe_det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack(
        [cov2d[..., 1, 1] / safe_det, -cov2d[..., 0, 1] / safe_det, cov2d[..., 0, 0] / safe_det],
        dim=-1,
    )
    radii, valid = _radii(
        means2d.detach(), cov2d.detach(), opacities.detach(), valid, width, height, radius_clip
    )
    zeros2 = torch.zeros_like(means2d)
    means2d = torch.where(valid[..., None], means2d, zeros2)
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    return Projected(radii=radii, means2d=means2d, depths=depths, conics=conics)


def _radii(
    means2d: Tensor,
    cov2d: Tensor,
    opacities: Tensor,
    valid: Tensor,
    width: int,
    height: int,
    radius_clip: float,
) -> tuple[Tensor, Tensor]:
    """Per-axis radii [C, N, 2] int32 and the final validity mask [C, N] (no gradients)."""
    opac = opacities.to(cov2d.dtype).expand(valid.shape)
    valid = valid & (opac >= ALPHA_THRESHOLD)
    ratio = torch.clamp(opac / ALPHA_THRESHOLD, min=1.0)
    extend = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=MAX_EXTEND)
    var = torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], dim=-1).clamp(min=0.0)
    radius = torch.ceil(extend[..., None] * torch.sqrt(var))  # [C, N, 2]
    valid = valid & ~((radius[..., 0] <= radius_clip) & (radius[..., 1] <= radius_clip))
    off = (
        (means2d[..., 0] + radius[..., 0] <= 0)
        | (means2d[..., 0] - radius[..., 0] >= width)
        | (means2d[..., 1] + radius[..., 1] <= 0)
        | (means2d[..., 1] - radius[..., 1] >= height)
    )
    valid = valid & ~off
    radii = torch.where(valid[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return radii, valid
