"""The head frame's rotation about a known x axis: landmarks fitted in the mid-plane.

Once the symmetry plane fixes the head's x axis (``n``, world) and the origin's x (``n . x = d``),
what remains is a 2D similarity in the plane: the rotation about x (pitch), the scale and the
in-plane translation, fitted between the template's (y, z) and the observed landmarks projected on
the plane (:func:`fit_with_fixed_x`). A left/right pair enters as its midpoint, so a pair placed
unevenly, or with its sides swapped, cannot tilt the pitch; a pair placed at the wrong *depth* can:
a parser that labels the hair behind the ears as ears puts the ear midpoint 5-11 cm behind the
head's centre and the pitch follows it (facescape s5024 and nersemble s5031 with the base parser's
labels, 8.4 and 8.7 degrees; docs/benchmarks.md). A check of the pair's separation along x against
the template's was tried and measured: it did not separate those ears from true pairs (the same
parser's eyes, correctly placed, measured 0.49 of the template's separation), so it is not used.

What does separate them is the scale: ears 5-11 cm too far back stretch the fitted template (scale
1.45x and 1.87x the true one), wider than the head itself is (:func:`width_scale`, the visible
surface's extent along x: the landmark scale was 0.75-1.05x of it on every correctly placed frame
of the benchmark, 1.34-1.63x on the three fits with hair labelled as ears). With ``max_scale``,
a fit that exceeds it is replaced by the fit of the largest subset of landmarks that stays within
it (nersemble s5031: 8.7 -> 2.3 degrees); a fit with no such subset (3 landmarks or fewer) is
left to the placement's ``landmark_spread_log`` check, which sends it to the label-free fallback.

Conventions: world points in metres, ``n`` a unit vector towards the subject's left, template
points in the head frame (metres, :mod:`facegs.headframe.template`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from facegs.headframe.frame import HeadFrameConfig, HeadFrameError
from facegs.headframe.landmarks import template_point
from facegs.headframe.template import LR_LANDMARK_PAIRS


@dataclass
class Estimate:
    """One candidate frame: ``R`` [3, 3] (columns x, y, z in world), ``origin`` [3], ``scale``."""

    R: np.ndarray
    origin: np.ndarray
    scale: float | None = None

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = self.R, self.origin
        return M


def _plane_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([0.0, 1.0, 0.0]) if abs(n[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(helper, n)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)  # (n, e1, e2) right-handed


def fit_with_fixed_x(landmarks: Mapping[str, np.ndarray], n: np.ndarray, d: float,
                     weights: Mapping[str, float], cfg: HeadFrameConfig,
                     max_scale: float | None = None) -> tuple[Estimate, dict[str, Any]]:
    """Landmarks -> template with the head's x axis fixed to ``n`` and the origin on the plane
    ``n . x = d``: a weighted 2D similarity (rotation about x, scale, in-plane translation) between
    the template's (y, z) and the landmarks projected on the plane (a left/right pair as its midpoint,
    named ``"l_eye+r_eye"``); the worst landmark is dropped while its 3D residual exceeds
    ``outlier_factor`` x the median and ``outlier_min`` template metres, keeping at least 3.

    ``max_scale`` (world units per template metre; None = no bound): a fit whose scale exceeds it
    spreads the template wider than the head is (see :func:`width_scale`): the landmarks are
    searched for the largest subset (at least 3, by total weight, then the lower rms residual in
    template metres) whose fit stays within the bound; the landmarks it leaves out are listed in
    ``info["dropped_for_scale"]``. Without such a subset the full fit is returned (the placement's
    ``landmark_spread_log`` check then fails it). Raises HeadFrameError with fewer than 2 landmarks."""
    names, obs, tmpl, w_all = _units(landmarks, weights)
    if len(names) < 2:
        raise HeadFrameError(f"need at least 2 landmarks (a left/right pair counts once) for the in-plane fit, "
                             f"got {list(landmarks)}")
    est, info = _fit_units(names, obs, tmpl, w_all, n, d, cfg)
    info["dropped_for_scale"] = []
    if max_scale is None or est.scale is None or est.scale <= max_scale or len(names) <= 3:
        return est, info
    for size in range(len(names) - 1, 2, -1):
        best: tuple[tuple[float, float], Estimate, dict[str, Any], list[int]] | None = None
        for keep in itertools.combinations(range(len(names)), size):
            k = list(keep)
            e, inf = _fit_units([names[i] for i in k], obs[k], tmpl[k], w_all[k], n, d, cfg)
            if e.scale is None or e.scale > max_scale:
                continue
            key = (float(w_all[k].sum()), -inf["rms_residual"] / max(e.scale, 1e-12))
            if best is None or key > best[0]:
                best = (key, e, inf, k)
        if best is not None:
            _, e, inf, k = best
            inf["dropped_for_scale"] = [names[i] for i in range(len(names)) if i not in k]
            return e, inf
    return est, info


def width_scale(points: np.ndarray, n: np.ndarray, template_width: float) -> float:
    """The head's scale from its width: the visible surface's extent along ``n`` (2.5th to 97.5th
    percentile, world units) over ``template_width`` (template metres). Hair, clothes and shoulders
    only widen it; measured on the benchmark's fits, the landmark fit's scale was 0.75-1.05x this on
    every correctly placed frame and 1.34-1.63x where a parser's ears were the hair behind them."""
    u = np.asarray(points, np.float64) @ n
    return float(np.percentile(u, 97.5) - np.percentile(u, 2.5)) / template_width


def _units(landmarks: Mapping[str, np.ndarray], weights: Mapping[str, float]
           ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, observed points [U, 3], template points [U, 3] and weights [U] of the fit's units."""
    present = list(landmarks)
    # a left/right pair projects to one point of the plane: fitted as its midpoint (one landmark,
    # both weights), so a pair placed unevenly (one side too high, or the sides swapped) cannot tilt
    # the rotation about x
    names, obs_l, tmpl_l, w_l = [], [], [], []
    paired = {k for pair in LR_LANDMARK_PAIRS if all(k2 in landmarks for k2 in pair) for k in pair}
    for k in present:
        if k in paired:
            pair = next(p for p in LR_LANDMARK_PAIRS if k in p)
            if k != pair[0]:
                continue
            t = np.array(template_point(pair[0], present), dtype=np.float64)
            names.append(f"{pair[0]}+{pair[1]}")
            obs_l.append(0.5 * (np.asarray(landmarks[pair[0]]) + np.asarray(landmarks[pair[1]])))
            tmpl_l.append(np.array([0.0, t[1], t[2]]))
            w_l.append(weights.get(pair[0], 1.0) + weights.get(pair[1], 1.0))
        else:
            names.append(k)
            obs_l.append(np.asarray(landmarks[k]))
            tmpl_l.append(np.array(template_point(k, present), dtype=np.float64))
            w_l.append(weights.get(k, 1.0))
    if not names:
        return names, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    return names, np.stack(obs_l), np.stack(tmpl_l), np.array(w_l)


def _fit_units(names: list[str], obs: np.ndarray, tmpl: np.ndarray, w_all: np.ndarray, n: np.ndarray, d: float,
               cfg: HeadFrameConfig) -> tuple[Estimate, dict[str, Any]]:
    """The weighted 2D similarity with the outlier loop (see :func:`fit_with_fixed_x`)."""
    e1, e2 = _plane_basis(n)
    a = np.stack([obs @ e1, obs @ e2], axis=1)
    b = tmpl[:, 1:]
    active = np.ones(len(names), dtype=bool)
    dropped: list[str] = []
    while True:
        w = w_all[active] / w_all[active].sum()
        ma, mb = w @ a[active], w @ b[active]
        A, B = a[active] - ma, b[active] - mb
        cov = (A * w[:, None]).T @ B  # [2, 2]
        theta = np.arctan2(cov[1, 0] - cov[0, 1], cov[0, 0] + cov[1, 1])
        c, s_ = np.cos(theta), np.sin(theta)
        Rot = np.array([[c, -s_], [s_, c]])
        var_b = float(w @ (B * B).sum(axis=1))
        scale = float(np.trace(Rot.T @ cov) / max(var_b, 1e-18))
        t2 = ma - scale * Rot @ mb
        y = c * e1 + s_ * e2
        R = np.stack([n, y, np.cross(n, y)], axis=1)
        origin = d * n + t2[0] * e1 + t2[1] * e2
        res = np.linalg.norm(obs - (origin + scale * tmpl @ R.T), axis=1)
        med = float(np.median(res[active]))
        worst = int(np.argmax(np.where(active, res, -1.0)))
        if active.sum() <= 3 or res[worst] <= max(cfg.outlier_factor * med, cfg.outlier_min * scale):
            break
        active[worst] = False
        dropped.append(names[worst])
    rms = float(np.sqrt(np.average(res[active] ** 2, weights=w_all[active])))
    return Estimate(R, origin, scale), {"used": [k for k, m in zip(names, active) if m], "dropped": dropped,
                                        "rms_residual": rms, "scale": scale}
