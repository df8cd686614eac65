"""Camera geometry in OpenCV conventions, and head-relative pose angles.

Camera: +x right, +y down, +z forward. Extrinsics are world-to-camera 4x4 ``[R t; 0 1]``
(``x_cam = R x_world + t``). Intrinsics ``K`` 3x3; pixel (row i, column j) has its centre at
``(u, v) = (j + 0.5, i + 0.5)``.

Head frame (used for yaw/pitch everywhere in facegs): origin at the head centre, +x towards the
subject's LEFT, +y up, +z forward out of the face (right-handed). ``world_from_head`` (4x4) maps
head coordinates to world coordinates.

Pose angles (degrees) describe the camera's viewing direction relative to the head:
- the camera looks along ``-d`` with ``d = (sin(yaw) cos(pitch), sin(pitch), cos(yaw) cos(pitch))``
  in the head frame, i.e. for a camera aimed at the head, ``d`` points from the head to the camera;
- yaw = 0, pitch = 0: frontal; yaw = +90: the camera is on the subject's left and sees the LEFT ear;
  pitch > 0: the camera is above the head looking down;
- roll rotates the camera about its optical axis: ``R = Rz(roll) @ R_look_at`` with
  ``Rz(a) = [[cos a, -sin a, 0], [sin a, cos a, 0], [0, 0, 1]]``.
"""

from __future__ import annotations

import math

import numpy as np

WORLD_UP = np.array([0.0, 1.0, 0.0])


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if n < 1e-12:
        raise ValueError(f"cannot normalise a zero vector {v}")
    return v / n


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """World-to-camera [4, 4] for an OpenCV camera at ``eye`` [3] looking at ``target`` [3].

    ``up`` [3] is the world direction that appears upwards in the image (image -y).
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = _normalize(target - eye)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: pick any perpendicular
        x = np.cross(z, np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    x = _normalize(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def rot_z(angle_deg: float) -> np.ndarray:
    """[3, 3] rotation about +z by ``angle_deg`` (right-hand rule)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def direction_from_yaw_pitch(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Unit vector [3] from the head towards a camera at (yaw, pitch), in the head frame."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    return np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])


def head_pose_to_w2c(
    yaw_deg: float,
    pitch_deg: float,
    roll_deg: float = 0.0,
    distance: float = 1.0,
    world_from_head: np.ndarray | None = None,
    target_head: np.ndarray | None = None,
) -> np.ndarray:
    """World-to-camera [4, 4] of a camera at (yaw, pitch, roll, distance) around the head.

    The camera sits at ``target_head + distance * d(yaw, pitch)`` in the head frame (``target_head``
    defaults to the head origin), looks at ``target_head`` with the head's +y up in the image, and
    is then rolled about its optical axis. ``world_from_head`` [4, 4] defaults to identity.
    """
    T = np.eye(4) if world_from_head is None else np.asarray(world_from_head, dtype=np.float64)
    tgt = np.zeros(3) if target_head is None else np.asarray(target_head, dtype=np.float64)
    eye_h = tgt + distance * direction_from_yaw_pitch(yaw_deg, pitch_deg)
    head_to_cam = look_at(eye_h, tgt, WORLD_UP)  # camera in the head frame
    head_to_cam[:3, :3] = rot_z(roll_deg) @ head_to_cam[:3, :3]
    head_to_cam[:3, 3] = -head_to_cam[:3, :3] @ eye_h
    return head_to_cam @ np.linalg.inv(T)


def w2c_to_head_pose(w2c: np.ndarray, world_from_head: np.ndarray | None = None) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a world-to-camera [4, 4] relative to the head frame.

    Defined by the camera's viewing direction (not its position), so that it is meaningful for
    cameras that are not aimed exactly at the head centre. Inverse of :func:`head_pose_to_w2c`.
    """
    T = np.eye(4) if world_from_head is None else np.asarray(world_from_head, dtype=np.float64)
    R_hc = np.asarray(w2c, dtype=np.float64)[:3, :3] @ T[:3, :3]  # head -> camera rotation
    d = -R_hc[2]  # camera's forward axis in head coordinates, negated: head -> camera
    yaw = math.degrees(math.atan2(d[0], d[2]))
    pitch = math.degrees(math.asin(float(np.clip(d[1], -1.0, 1.0))))
    R0 = look_at(d, np.zeros(3), WORLD_UP)[:3, :3]
    Rz = R_hc @ R0.T
    roll = math.degrees(math.atan2(Rz[1, 0], Rz[0, 0]))
    return yaw, pitch, roll


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """[3, 3] K with square pixels, principal point at the image centre (pixel centres at +0.5)."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def camera_center(w2c: np.ndarray) -> np.ndarray:
    """Camera centre [3] in world coordinates of a world-to-camera [4, 4]."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    return -R.T @ t


def optical_axes_focus(w2cs: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The point closest (least squares) to all cameras' optical axes.

    ``w2cs`` [V, 4, 4] world-to-camera (OpenCV: the optical axis is camera +z). Returns
    ``(point [3], cond, centres [V, 3], axes [V, 3])``: ``cond`` is the condition number of the
    normal matrix (>= 1e6: the axes are nearly parallel, the point is a minimum-norm least-squares
    guess and unreliable).
    """
    T = np.asarray(w2cs, dtype=np.float64)
    centres = np.stack([camera_center(w) for w in T])
    axes = T[:, 2, :3]  # camera +z in world = third row of R
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, axes):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    cond = float(np.linalg.cond(A))
    point = np.linalg.solve(A, b) if cond < 1e6 else np.linalg.lstsq(A, b, rcond=None)[0]
    return point, cond, centres, axes


def rotation_problem(R: np.ndarray, tol: float = 1e-4) -> str | None:
    """Return why ``R`` [3, 3] is not a proper rotation (non-finite, not orthonormal, det != +1)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        return f"rotation must be 3x3, got {list(R.shape)}"
    if not np.all(np.isfinite(R)):
        return "rotation has non-finite entries"
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > tol:
        return f"rotation is not orthonormal (max |R R^T - I| = {err:.3g} > {tol:g})"
    det = np.linalg.det(R)
    if det < 0:
        return f"rotation is a reflection (det = {det:.4f})"
    return None


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in degrees of the relative rotation ``R_a R_b^T``."""
    c = (np.trace(np.asarray(R_a) @ np.asarray(R_b).T) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def pixel_rays(K: np.ndarray, w2c: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through every pixel centre.

    Returns ``origins`` [3] (the camera centre) and ``dirs`` [H, W, 3] unit directions, for pixel
    centres at ``(j + 0.5, i + 0.5)``.
    """
    K = np.asarray(K, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    d_cam = pix @ np.linalg.inv(K).T
    R = np.asarray(w2c, dtype=np.float64)[:3, :3]
    d_world = d_cam @ R  # R^T d for each row
    d_world /= np.linalg.norm(d_world, axis=-1, keepdims=True)
    return camera_center(w2c), d_world
