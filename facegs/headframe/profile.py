"""The rotation about x (pitch) and the origin without labels: the face's profile in its mirror plane.

Once the symmetry plane (:mod:`facegs.headframe.symmetry`) fixes the head's x axis, the label-free
frame still needs the rotation about it and the origin. The capture rig only knows where its cameras
point, not how the head is held in it: on the benchmark's synthetic subjects the frame with its up
direction was 6.9 degrees off the true one on average over 69 fits, 19.3 at most. The face's shape
knows: the surface points in
a thin band about the mirror plane trace the face's profile (forehead, nose, lips, chin), and the
reference profile (:data:`facegs.headframe.template.PROFILE`) registered to them by a 2D similarity
gives the head's up direction and origin in the plane. Measured on the same 69 fits (the fitted
scenes' visible surface, every rig and label arm): 2.4 degrees mean, 6.3 max; the origin 0.8 cm off
against the rig's 2.5 cm (docs/benchmarks.md, "Label refinement"; ``head_frame.label_free`` of
``bench/label_refinement.py``'s records). On the exact surfaces of 48 fresh subjects in three rigs,
started from the rig alone (``bench/profile_frame.py``): 1.6 degrees mean, 3.1 max, against the
rig's 8.3 and 21.9.

The registration (:func:`fit_profile`): iterative closest points from the template's profile to the
band's points (one-sided: the band also holds hair, a hat's brim, the neck and clothes, which the
face's profile does not have), the rotation, scale and translation of each step in closed form
(Procrustes in 2D), started from the rig's up direction turned by -30..30 degrees and from
9 translations about the rig's origin; the start with the lowest final mean distance wins. The
result is trusted by the caller only when that distance (in template metres, ``cost``) is small:
0.5-1.5 mm on the benchmark's fitted scenes, 0.4-3.0 on exact surfaces of 48 fresh subjects at 80 px
(bench/profile_frame.py).

Conventions: world points in metres (any unit works: ``scale0`` carries it), ``n`` a unit vector
towards the subject's left, ``n . x = d`` the mirror plane; template points in the head frame
(metres; +y up, +z out of the face).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from facegs.headframe.template import PROFILE

_PROFILE = np.asarray(PROFILE, dtype=np.float64)  # [Q, 2] (y, z)
_CENTRE = _PROFILE.mean(axis=0)
_CENTRED = _PROFILE - _CENTRE  # the template about its centroid, and its spread, for every ICP step
_SPREAD = float(np.sum(_CENTRED * _CENTRED))


@dataclass(frozen=True)
class ProfileFit:
    """The registered profile: ``up`` [3] the head's +y (world, perpendicular to ``n``), ``forward``
    [3] its +z (``n x up``), ``origin`` [3] the head frame's origin on the mirror plane (world),
    ``scale`` (world units per template metre), ``cost``: mean distance of the registered template
    points to the band's nearest point, in template metres; ``n_points``: the band's points."""

    up: np.ndarray
    forward: np.ndarray
    origin: np.ndarray
    scale: float
    cost: float
    n_points: int


def _rot(phi: float) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, -s], [s, c]])


def _register(A: np.ndarray, tree: cKDTree, s0: float, phi: float, t: np.ndarray, scale_range: tuple[float, float],
              iters: int) -> tuple[float, np.ndarray, float, float]:
    """ICP from the template to the band ``A`` [M, 2]: ``(phi, t, scale, mean distance / scale)``."""
    lo, hi = scale_range[0] * s0, scale_range[1] * s0
    s = s0
    for _ in range(iters):
        _, j = tree.query(s * _PROFILE @ _rot(phi).T + t)
        Q = A[j]
        mq = Q.mean(axis=0)
        Q0 = Q - mq
        cov = _CENTRED.T @ Q0
        phi_new = float(np.arctan2(cov[0, 1] - cov[1, 0], cov[0, 0] + cov[1, 1]))
        Rm = _rot(phi_new)
        s_new = float(np.clip(np.sum((_CENTRED @ Rm.T) * Q0) / _SPREAD, lo, hi))
        t_new = mq - s_new * Rm @ _CENTRE
        converged = abs(phi_new - phi) < 1e-6 and float(np.linalg.norm(t_new - t)) < 1e-7 * s0
        phi, t, s = phi_new, t_new, s_new
        if converged:
            break
    dist, _ = tree.query(s * _PROFILE @ _rot(phi).T + t)
    return phi, t, s, float(np.mean(dist)) / s


def fit_profile(points: np.ndarray, n: np.ndarray, d: float, up0: np.ndarray, origin0: np.ndarray, scale0: float, *,
                half_width: float = 0.004, start_deg: float = 30.0, start_step_deg: float = 10.0,
                start_shift: float = 0.04, scale_range: tuple[float, float] = (0.5, 1.5), iters: int = 60,
                min_points: int = 50) -> ProfileFit:
    """Register the reference profile to the surface ``points`` [M, 3] (world) within
    ``half_width`` template metres of the mirror plane ``n . x = d`` (see the module docstring).

    ``up0`` [3]: a first guess of the head's up (the rig's; projected on the plane); ``origin0`` [3]:
    of its origin (projected on the plane); ``scale0``: world units per template metre (e.g.
    :func:`facegs.headframe.inplane.width_scale`), which also scales the band, the start shifts
    (``start_shift`` template metres along the plane's two axes) and bounds the fitted scale to
    ``scale_range`` times it. Starts: ``up0`` turned by -``start_deg``..``start_deg`` in
    ``start_step_deg`` steps, times the 9 shifts. Raises ValueError with fewer than ``min_points``
    points in the band or an ``up0`` along ``n``."""
    n = np.asarray(n, dtype=np.float64)
    n = n / np.linalg.norm(n)
    y0 = np.asarray(up0, dtype=np.float64) - float(np.asarray(up0) @ n) * n
    if np.linalg.norm(y0) < 1e-9:
        raise ValueError("the first guess of the head's up direction is along the mirror plane's normal")
    y0 /= np.linalg.norm(y0)
    z0 = np.cross(n, y0)
    o = np.asarray(origin0, dtype=np.float64)
    o = o - (o @ n - d) * n
    P = np.asarray(points, dtype=np.float64)
    band = P[np.abs(P @ n - d) < half_width * scale0]
    if len(band) < min_points:
        raise ValueError(f"only {len(band)} surface points within {half_width} template metres of the mirror plane "
                         f"(need {min_points})")
    A = np.stack([(band - o) @ y0, (band - o) @ z0], axis=1)
    tree = cKDTree(A)
    best: tuple[float, np.ndarray, float, float] | None = None
    shifts = (-start_shift * scale0, 0.0, start_shift * scale0)
    for dphi in np.arange(-start_deg, start_deg + 1e-9, start_step_deg):
        for ty in shifts:
            for tz in shifts:
                cand = _register(A, tree, scale0, float(np.radians(dphi)), np.array([ty, tz]), scale_range, iters)
                if best is None or cand[3] < best[3]:
                    best = cand
    assert best is not None
    phi, t, s, cost = best
    up = np.cos(phi) * y0 + np.sin(phi) * z0
    return ProfileFit(up=up, forward=np.cross(n, up), origin=o + t[0] * y0 + t[1] * z0, scale=s, cost=cost,
                      n_points=len(band))
