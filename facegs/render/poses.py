"""Head poses for rendering new views, and the virtual cameras that realise them.

All angles are degrees in facegs' head frame (see :mod:`facegs.core.cameras`): origin at the head centre,
+x = the subject's LEFT, +y up, +z out of the face. A pose is one row ``(yaw, pitch, roll)`` of a
``[N, 3]`` float64 array; yaw = +90 puts the camera on the subject's left (it sees the LEFT ear),
pitch > 0 puts it above the head looking down, roll turns the camera about its optical axis.

- :func:`yaw_pitch_grid`: every (yaw, pitch) combination, roll 0.
- :func:`sample_poses`: seeded random poses, uniform or weighted towards extreme angles.
- :func:`cameras_for_poses`: ``(w2c [4, 4], K [3, 3])`` per pose, every camera aimed at the head
  origin from a fixed distance (via :func:`facegs.core.cameras.head_pose_to_w2c`).
- :func:`match_capture_intrinsics`: distance and focal length that make the rendered head as large
  in the output image as it was in the capture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facegs.core.cameras import camera_center, head_pose_to_w2c
from facegs.core.manifest import SubjectManifest

DISTRIBUTIONS = ("uniform", "extreme-weighted")
_CDF_GRID = 4097  # samples of the inverse-CDF table used for "extreme-weighted"


def yaw_pitch_grid(yaws: Sequence[float], pitches: Sequence[float]) -> np.ndarray:
    """All (yaw, pitch) combinations with roll 0, as ``[len(yaws) * len(pitches), 3]`` float64.

    Yaw-major order: row ``i * len(pitches) + j`` is ``(yaws[i], pitches[j], 0)``.
    """
    y, p = np.meshgrid(np.asarray(yaws, dtype=np.float64), np.asarray(pitches, dtype=np.float64), indexing="ij")
    return np.stack([y.ravel(), p.ravel(), np.zeros(y.size)], axis=1)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_range(name: str, r: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(r[0]), float(r[1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite (low, high) with low <= high, got {r}")
    return lo, hi


def _sample_extreme(n: int, lo: float, hi: float, gain: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` angles in [lo, hi] with density proportional to ``1 + gain * (|a| / max(|lo|, |hi|))^2``.

    Inverse-CDF sampling on a fine grid (deterministic given ``rng``).
    """
    if hi == lo:
        return np.full(n, lo)
    grid = np.linspace(lo, hi, _CDF_GRID)
    amax = max(abs(lo), abs(hi), 1e-12)
    dens = 1.0 + gain * (np.abs(grid) / amax) ** 2
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return np.interp(rng.uniform(0.0, 1.0, n), cdf, grid)


def sample_poses(
    n: int,
    rng: np.random.Generator | int | None = 0,
    yaw_range: tuple[float, float] = (-90.0, 90.0),
    pitch_range: tuple[float, float] = (-40.0, 40.0),
    roll_jitter_deg: float = 5.0,
    distribution: str = "uniform",
    extreme_gain: float = 3.0,
) -> np.ndarray:
    """``n`` random head poses as ``[n, 3]`` float64 rows ``(yaw, pitch, roll)`` in degrees.

    Yaw and pitch are drawn independently within their (inclusive) ranges; roll is uniform in
    ``[-roll_jitter_deg, +roll_jitter_deg]``.

    ``distribution``:
    - ``"uniform"``: uniform in yaw and in pitch.
    - ``"extreme-weighted"``: each angle ``a`` has density proportional to
      ``1 + extreme_gain * (|a| / a_max)^2`` with ``a_max`` the larger bound magnitude, so with the
      default gain 3 an angle at the range edge is 4x as likely as a frontal one.

    Deterministic: the same ``rng`` seed (an int, or a fresh ``Generator`` with the same state)
    gives the same poses.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution '{distribution}'; choose one of {DISTRIBUTIONS}")
    if roll_jitter_deg < 0:
        raise ValueError(f"roll_jitter_deg must be >= 0, got {roll_jitter_deg}")
    gen = _as_rng(rng)
    ylo, yhi = _check_range("yaw_range", yaw_range)
    plo, phi = _check_range("pitch_range", pitch_range)
    if distribution == "uniform":
        yaw = gen.uniform(ylo, yhi, n)
        pitch = gen.uniform(plo, phi, n)
    else:
        yaw = _sample_extreme(n, ylo, yhi, extreme_gain, gen)
        pitch = _sample_extreme(n, plo, phi, extreme_gain, gen)
    roll = gen.uniform(-roll_jitter_deg, roll_jitter_deg, n)
    return np.stack([yaw, pitch, roll], axis=1)


def intrinsics_from_focal(width: int, height: int, focal: float) -> np.ndarray:
    """[3, 3] K with square pixels of focal ``focal`` px and the principal point at the image centre."""
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def cameras_for_poses(
    poses: np.ndarray | Sequence[Sequence[float]],
    world_from_head: np.ndarray | None,
    distance: float,
    intrinsics: np.ndarray | tuple[int, int, float],
    target_head: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Virtual cameras for head poses: a list of ``(w2c [4, 4], K [3, 3])`` float64 pairs.

    ``poses``: ``[N, 3]`` (yaw, pitch, roll) degrees, or ``[N, 2]`` (roll 0). Each camera sits at
    ``distance`` (world units) from ``target_head`` (head coordinates, default the head origin) in
    the pose's direction, looks at it with the head's +y up in the image, then is rolled.
    ``world_from_head`` [4, 4] maps head to world coordinates (None = identity).
    ``intrinsics``: a [3, 3] K shared by all cameras, or ``(width, height, focal)``.
    """
    P = np.asarray(poses, dtype=np.float64)
    if P.size == 0:
        return []
    if P.ndim != 2 or P.shape[1] not in (2, 3):
        raise ValueError(f"poses must be [N, 2] or [N, 3], got {list(P.shape)}")
    if distance <= 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    if isinstance(intrinsics, tuple) and len(intrinsics) == 3:
        K = intrinsics_from_focal(int(intrinsics[0]), int(intrinsics[1]), float(intrinsics[2]))
    else:
        K = np.asarray(intrinsics, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics must be K [3, 3] or (width, height, focal), got shape {list(K.shape)}")
    out = []
    for row in P:
        roll = float(row[2]) if P.shape[1] == 3 else 0.0
        w2c = head_pose_to_w2c(float(row[0]), float(row[1]), roll, distance, world_from_head, target_head)
        out.append((w2c, K.copy()))
    return out


def match_capture_intrinsics(
    manifest: SubjectManifest,
    width: int | None = None,
    height: int | None = None,
    world_from_head: np.ndarray | None = None,
) -> tuple[float, float, int, int]:
    """``(distance, focal, width, height)`` that reproduce the capture's framing of the head.

    - ``distance``: median over views of the distance from the camera centre to the head origin
      (world units). The head origin comes from ``world_from_head`` (e.g. an estimated
      :class:`facegs.headframe.frame.HeadFrame`) or else ``manifest.world_from_head``.
    - ``focal``: median over views of the mean focal length ``(fx + fy) / 2``, each scaled by
      ``min(width / view.width, height / view.height)``, i.e. the capture image fitted inside the
      output image, so the head covers the same fraction of the image (in the limiting dimension).
    - ``width``, ``height``: the output size; defaults to the median capture size.
    """
    if not manifest.views:
        raise ValueError(f"subject '{manifest.subject_id}' has no views")
    T = world_from_head if world_from_head is not None else manifest.world_from_head
    if T is None:
        raise ValueError(
            f"subject '{manifest.subject_id}' has no world_from_head: pass an estimated head frame "
            "(facegs.headframe.estimate.estimate_head_frame)"
        )
    origin = np.asarray(T, dtype=np.float64)[:3, 3]
    ws = np.array([v.width for v in manifest.views], dtype=np.float64)
    hs = np.array([v.height for v in manifest.views], dtype=np.float64)
    out_w = int(round(np.median(ws))) if width is None else int(width)
    out_h = int(round(np.median(hs))) if height is None else int(height)
    dists = [np.linalg.norm(camera_center(v.world_to_camera) - origin) for v in manifest.views]
    scale = np.minimum(out_w / ws, out_h / hs)
    focals = np.array([0.5 * (v.K[0, 0] + v.K[1, 1]) for v in manifest.views]) * scale
    return float(np.median(dists)), float(np.median(focals)), out_w, out_h
