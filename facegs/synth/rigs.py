"""Camera rigs for synthetic captures: lists of ``(view_id, K [3, 3], world_to_camera [4, 4])``.

Cameras are OpenCV pinholes (see :mod:`facegs.core.cameras`) placed on spheres around :data:`RIG_CENTER`
and aimed at it with world +y up in the image. Angles are given in the RIG (= world) frame with the
head-frame conventions: yaw +90 puts the camera on the subject's LEFT, pitch > 0 above the head. A
subject's head is posed near the rig centre by its ``world_from_head``, so the head-relative pose
of a view (``facegs.core.cameras.w2c_to_head_pose``) differs from the rig angles by a few degrees.

Focal length: the image's shorter side spans ``2 * FRAME_HALF`` metres at the rig centre, so a head
(about 0.25 m with hair) fills most of the frame at any distance. Principal point at the image
centre (``cx = W / 2``), square pixels, no distortion. View ids are ``cam_000``, ``cam_001``, ...

- ``facescape``: 48 views on six rows, pitch -30, -15, 0, 15, 30, 45 and yaw spanning -90..90 on
  every row (7, 8, 9, 8, 9, 7 cameras), distance 1.0 m (FaceScape's dense rig has 68 cameras over
  a similar frontal hemisphere).
- ``nersemble``: 16 cameras on a frontal arc, two rows (pitch +12 and -6), |yaw| <= 60, 1.0 m.
- ``frontal8``: a sparse rig, 8 cameras on one frontal arc, |yaw| <= 45, pitch 0, 1.0 m (the hard
  case for refinement: the back and the sides of the head are never seen).
- :func:`custom`: any yaws / pitches / rolls / distances (broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facegs.core.cameras import head_pose_to_w2c

RIG_CENTER = np.array([0.0, -0.02, 0.0])  # world point all rig cameras aim at (metres)
FRAME_HALF = 0.19  # metres: half the shorter image side at the rig centre
RIG_NAMES = ("facescape", "nersemble", "frontal8")

RigView = tuple[str, np.ndarray, np.ndarray]


def intrinsics_for_distance(width: int, height: int, distance: float, frame_half: float = FRAME_HALF) -> np.ndarray:
    """[3, 3] K whose shorter image side spans ``2 * frame_half`` metres at ``distance``."""
    f = 0.5 * min(width, height) * distance / frame_half
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _broadcast(name: str, v: float | Sequence[float], n: int) -> np.ndarray:
    a = np.atleast_1d(np.asarray(v, dtype=np.float64))
    if a.size == 1:
        return np.full(n, float(a[0]))
    if a.size != n:
        raise ValueError(f"custom rig: '{name}' has {a.size} values, expected 1 or {n}")
    return a


def custom(yaws: float | Sequence[float], pitches: float | Sequence[float] = 0.0, rolls: float | Sequence[float] = 0.0,
           distances: float | Sequence[float] = 1.0, width: int = 256, height: int = 256,
           frame_half: float = FRAME_HALF, prefix: str = "cam") -> list[RigView]:
    """Cameras at the given angles (degrees, rig frame) and distances (metres), aimed at the rig centre.

    Scalars broadcast against lists; the number of views is the longest list's length.
    """
    n = max(np.atleast_1d(np.asarray(v)).size for v in (yaws, pitches, rolls, distances))
    y, p, r, d = (_broadcast(k, v, n) for k, v in (("yaws", yaws), ("pitches", pitches), ("rolls", rolls), ("distances", distances)))
    if np.any(d <= 0):
        raise ValueError("custom rig: distances must be positive")
    views = []
    for i in range(n):
        w2c = head_pose_to_w2c(y[i], p[i], r[i], d[i], target_head=RIG_CENTER)
        views.append((f"{prefix}_{i:03d}", intrinsics_for_distance(width, height, d[i], frame_half), w2c))
    return views


def facescape(width: int = 256, height: int = 256) -> list[RigView]:
    """48-view dense rig: yaw -90..90 on six pitch rows -30..45 (see module docstring)."""
    rows = ((-30.0, 7), (-15.0, 8), (0.0, 9), (15.0, 8), (30.0, 9), (45.0, 7))
    yaws, pitches = [], []
    for pitch, n in rows:
        yaws.extend(np.linspace(-90.0, 90.0, n).tolist())
        pitches.extend([pitch] * n)
    return custom(yaws, pitches, 0.0, 1.0, width, height)


def nersemble(width: int = 256, height: int = 256) -> list[RigView]:
    """16 cameras on a frontal arc, |yaw| <= 60, two rows (pitch +12 and -6)."""
    yaws = np.concatenate([np.linspace(-60.0, 60.0, 8), np.linspace(-51.4, 51.4, 8)])
    pitches = np.concatenate([np.full(8, 12.0), np.full(8, -6.0)])
    return custom(yaws, pitches, 0.0, 1.0, width, height)


def frontal8(width: int = 256, height: int = 256) -> list[RigView]:
    """8 cameras on one frontal arc, |yaw| <= 45, pitch 0 (a sparse rig)."""
    return custom(np.linspace(-45.0, 45.0, 8), 0.0, 0.0, 1.0, width, height)


def get_rig(name: str, width: int = 256, height: int = 256) -> list[RigView]:
    """Rig by name (``facescape``, ``nersemble``, ``frontal8``) -> list of ``(view_id, K, world_to_camera)``."""
    if name == "facescape":
        return facescape(width, height)
    if name == "nersemble":
        return nersemble(width, height)
    if name == "frontal8":
        return frontal8(width, height)
    raise KeyError(f"unknown rig '{name}'; available: {list(RIG_NAMES)} (or use facegs.synth.rigs.custom)")
