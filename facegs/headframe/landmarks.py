"""Face landmarks from labelled 3D points: kNN label smoothing, membership, trimmed centroids.

A point belongs to a landmark when its own argmax is one of the landmark's classes and its
neighbourhood agrees (see :func:`find_landmarks`); isolated noisy labels fail this test, thin parts
such as brows pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set, mapping_lut
from facegs.headframe.frame import HeadFrameConfig
from facegs.headframe.template import LANDMARK_CLASSES, LR_LANDMARK_PAIRS, TEMPLATE


def to_canonical_probs(class_probs: np.ndarray, label_set: str) -> np.ndarray:
    """[N, C_src] -> [N, 19] canonical probabilities (source classes summed into their target)."""
    if label_set == CANONICAL:
        return np.asarray(class_probs, dtype=np.float32)
    lut = mapping_lut(label_set, CANONICAL)
    src = get_label_set(label_set)
    out = np.zeros((class_probs.shape[0], get_label_set(CANONICAL).num_classes), dtype=np.float32)
    for i in range(src.num_classes):
        if lut[i] != IGNORE_INDEX:
            out[:, lut[i]] += class_probs[:, i]
    return out


def smooth_probs_knn(points: np.ndarray, probs: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """[N, C] weighted mean of ``probs`` over each point's ``k`` nearest points (self included)."""
    if k <= 1 or len(points) <= 1:
        return probs
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    w = weights[idx]  # [N, k]
    num = np.einsum("nk,nkc->nc", w, probs[idx])
    return num / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)


def trimmed_centroid(points: np.ndarray, w: np.ndarray, trim_mad: float = 3.0, iters: int = 2) -> np.ndarray:
    """Weighted centroid [3] of ``points`` [M, 3], dropping points beyond median + trim_mad * MAD."""
    keep = w > 0
    c = np.average(points[keep], axis=0, weights=w[keep])
    for _ in range(iters):
        d = np.linalg.norm(points - c, axis=1)
        med = np.median(d[keep])
        mad = np.median(np.abs(d[keep] - med)) + 1e-12
        k2 = keep & (d <= med + trim_mad * 1.4826 * mad)
        if k2.sum() < 3:
            break
        keep = k2
        c = np.average(points[keep], axis=0, weights=w[keep])
    return c


def find_landmarks(
    points: np.ndarray, probs: np.ndarray, smoothed: np.ndarray, weights: np.ndarray, cfg: HeadFrameConfig
) -> dict[str, dict[str, Any]]:
    """Landmark name -> {"position" [3], "count", "mass"} for the landmarks with enough points.

    ``probs`` [N, 19] canonical per-point probabilities, ``smoothed`` [N, 19] their kNN average
    (:func:`smooth_probs_knn`). A point belongs to a landmark when its own argmax is one of the
    landmark's classes AND its neighbourhood agrees: the smoothed probability of those classes is
    at least ``cfg.min_share``. (A threshold, not the smoothed argmax, so that thin parts such as
    brows, a few points thick, survive while isolated noisy labels do not.)
    """
    ls = get_label_set(CANONICAL)
    arg = np.argmax(probs, axis=1)
    out: dict[str, dict[str, Any]] = {}
    for name, classes in LANDMARK_CLASSES.items():
        cols = [ls.index(c) for c in classes]
        member = np.isin(arg, cols) & (smoothed[:, cols].sum(axis=1) >= cfg.min_share)
        if member.sum() < cfg.min_points:
            continue
        w = weights[member] * probs[member][:, cols].sum(axis=1)
        if w.sum() <= 0:
            continue
        out[name] = {
            "position": trimmed_centroid(points[member], w, cfg.trim_mad),
            "count": int(member.sum()),
            "mass": float(w.sum()),
        }
    return out


def template_point(name: str, present: list[str]) -> tuple[float, float, float]:
    """Template position of a landmark; ``name@eye_g`` variants apply when glasses are present."""
    if "eye_g" in present and f"{name}@eye_g" in TEMPLATE:
        return TEMPLATE[f"{name}@eye_g"]
    return TEMPLATE[name]


def swap_lr_name(name: str) -> str:
    for a, b in LR_LANDMARK_PAIRS:
        if name == a:
            return b
        if name == b:
            return a
    return name
