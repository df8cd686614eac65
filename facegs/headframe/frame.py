"""The head frame contract: :class:`HeadFrame` (``world_from_head`` [4, 4] + diagnostics), its config and error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegs.core.cameras import rotation_angle_deg
from facegs.headframe.template import LANDMARK_WEIGHTS


class HeadFrameError(ValueError):
    """Too few landmarks (or degenerate ones) to fix a head frame. ``found``: the landmark names
    that were found (recorded by the placement even when no frame could be fitted to them)."""

    def __init__(self, message: str, found: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.found = tuple(found)


@dataclass(frozen=True)
class HeadFrameConfig:
    """Parameters of :func:`estimate_head_frame`."""

    knn: int = 16  # neighbours (self included) for the 3D label smoothing; 1 = off
    max_points: int = 200_000  # random subsample above this (seeded)
    min_points: int = 10  # a landmark needs at least this many points
    min_share: float = 0.3  # a point's landmark classes must hold this much of its kNN-smoothed probability
    trim_mad: float = 3.0  # drop points beyond median + trim_mad * MAD from the centroid
    outlier_factor: float = 4.0  # drop a landmark whose residual exceeds this * median residual ...
    outlier_min: float = 0.008  # ... and this many template metres (scaled to world units by the fit)
    min_landmarks: int = 4  # never drop below this many landmarks
    mirror_ratio: float = 0.7  # the swapped fit must have < this * the residual to win
    weights: dict[str, float] = field(default_factory=lambda: dict(LANDMARK_WEIGHTS))
    seed: int = 0


@dataclass
class HeadFrame:
    """An estimated head frame: ``world_from_head`` [4, 4] float64 (rigid) and diagnostics."""

    world_from_head: np.ndarray
    diagnostics: dict[str, Any]


def frame_errors(estimated: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, origin distance in world units) between two world_from_head."""

    return rotation_angle_deg(estimated[:3, :3], true[:3, :3]), float(np.linalg.norm(estimated[:3, 3] - true[:3, 3]))
