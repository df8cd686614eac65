"""The bilateral symmetry plane of a face's surface: a head frame axis that does not depend on labels.

A face is close to mirror-symmetric about its midsagittal plane, so the plane's normal is the head
frame's x axis (up to sign: which side is the subject's left is a question for the labels or the
rig). Estimated by mirror ICP on surface points (:mod:`facegs.headframe.visible`), restricted by the
caller to the face (skin and face parts: hair, clothes and accessories are often asymmetric):

1. reflect every point through the current plane ``n . x = d``;
2. match each reflected point to its nearest surface point ``q`` (a kd-tree); keep the pairs whose
   distance is at most ``trim`` times the median;
3. the plane's normal is the principal direction of the differences ``p - q`` (for a mirror pair
   they are parallel to the normal), its offset the median of ``n . (p + q) / 2``;

until the normal moves by less than 0.01 degree. Several starting normals are tried (the ones the
caller gives and rotations of them by +-``spread`` degrees about the other two axes); the plane with
the lowest median mirror distance wins. That distance, relative to the face size, says how
symmetric the fitted surface really is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class SymmetryPlane:
    """``normal`` [3] unit vector, ``offset``: the plane is ``normal . x = offset`` (world units);
    ``residual``: median distance of a reflected point to the surface (world units)."""

    normal: np.ndarray
    offset: float
    residual: float
    n_points: int


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    t = np.radians(deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def _icp(P: np.ndarray, tree: cKDTree, n: np.ndarray, iters: int, trim: float) -> tuple[np.ndarray, float, float]:
    n = n / np.linalg.norm(n)
    d = float(np.median(P @ n))
    for _ in range(iters):
        dist, j = tree.query(P - 2.0 * ((P @ n) - d)[:, None] * n)
        keep = dist <= trim * max(float(np.median(dist)), 1e-12)
        Q = P[j[keep]]
        D = P[keep] - Q
        if len(D) < 10:
            break
        n_new = np.linalg.eigh(D.T @ D)[1][:, -1]
        if n_new @ n < 0:
            n_new = -n_new
        d = float(np.median(0.5 * (P[keep] + Q) @ n_new))
        moved = np.degrees(np.arccos(np.clip(n_new @ n, -1.0, 1.0)))
        n = n_new
        if moved < 0.01:
            break
    dist, _ = tree.query(P - 2.0 * ((P @ n) - d)[:, None] * n)
    return n, d, float(np.median(dist))


def symmetry_plane(points: np.ndarray, init_normals: Sequence[np.ndarray], *, iters: int = 40, trim: float = 2.5,
                   spread: float = 20.0, max_points: int = 8000, seed: int = 0) -> SymmetryPlane:
    """The mirror plane of ``points`` [M, 3] (see the module docstring). Raises ValueError for fewer
    than 50 points or no starting normal."""
    P = np.asarray(points, dtype=np.float64)
    if len(P) < 50 or not init_normals:
        raise ValueError(f"need >= 50 surface points and a starting normal, got {len(P)} points")
    if len(P) > max_points:
        P = P[np.sort(np.random.default_rng(seed).choice(len(P), max_points, replace=False))]
    tree = cKDTree(P)
    best: tuple[np.ndarray, float, float] | None = None
    for n0 in init_normals:
        n0 = np.asarray(n0, dtype=np.float64)
        n0 = n0 / np.linalg.norm(n0)
        helper = np.array([0.0, 0.0, 1.0]) if abs(n0[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        a1 = np.cross(n0, helper)
        a2 = np.cross(n0, a1)
        starts = [n0] + [_rotation(a, s * spread) @ n0 for a in (a1, a2) for s in (-1.0, 1.0)]
        for start in starts:
            cand = _icp(P, tree, start, iters, trim)
            if best is None or cand[2] < best[2]:
                best = cand
    assert best is not None
    return SymmetryPlane(normal=best[0], offset=best[1], residual=best[2], n_points=len(P))
