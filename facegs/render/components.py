"""Component steps of the label clean-up (:mod:`facegs.render.cleanup`): small components, holes, islands.

Each step relabels whole connected components at once, with the class that the surrounding labels
and the rendered probabilities vote for (:func:`_component_choice`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

from facegs.core.labels import get_label_set

if TYPE_CHECKING:  # the config lives with the entry point, which imports this module
    from facegs.render.cleanup import CleanupConfig


def _touches_border(stats: np.ndarray, h: int, w: int) -> np.ndarray:
    """[n] bool from cv2 component stats rows: does the bounding box touch the image border?"""
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    return (x == 0) | (y == 0) | (x + stats[:, cv2.CC_STAT_WIDTH] == w) | (y + stats[:, cv2.CC_STAT_HEIGHT] == h)


def _neighbour_votes(labels: np.ndarray, comp_ids: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """[n + 1, C] int64: per component, how many of its pixels have each class as nearest kept label.

    ``comp_ids`` [H, W] int32: 0 = kept pixel, k in 1..n = pixel of component k. The nearest kept
    pixel is found with an exact Euclidean distance transform. All zeros when nothing is kept.
    """
    inside = comp_ids > 0
    if inside.all():
        return np.zeros((n + 1, num_classes), dtype=np.int64)
    _, (ii, jj) = ndimage.distance_transform_edt(inside, return_indices=True)
    nearest = labels[ii[inside], jj[inside]].astype(np.int64)
    ids = comp_ids[inside].astype(np.int64)
    return np.bincount(ids * num_classes + nearest, minlength=(n + 1) * num_classes).reshape(n + 1, num_classes)


def _component_choice(
    q: np.ndarray, comp_ids: np.ndarray, n: int, own: np.ndarray, votes: np.ndarray
) -> np.ndarray:
    """[n + 1] int64: new class per component = argmax over classes c != own of vote share + mean q_c.

    Without any vote (nothing kept around), the most probable class other than its own.
    """
    inside = comp_ids > 0
    ids = comp_ids[inside]
    count = np.maximum(np.bincount(ids, minlength=n + 1), 1).astype(np.float64)
    qsum = np.stack([np.bincount(ids, weights=q[c][inside], minlength=n + 1) for c in range(q.shape[0])], axis=1)
    qmean = qsum / count[:, None]
    share = votes / count[:, None]
    score = np.where(votes > 0, share + qmean, -np.inf)
    no_votes = votes.sum(axis=1) == 0
    score[no_votes] = qmean[no_votes]
    score[np.arange(n + 1), own] = -np.inf
    return np.argmax(score, axis=1)


def _relabel_components(
    labels: np.ndarray, q: np.ndarray, comp_ids: np.ndarray, n: int, own: np.ndarray
) -> np.ndarray:
    """Relabel every component of ``comp_ids`` in place as one block; returns the [n + 1] choices."""
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    votes = _neighbour_votes(labels, comp_ids, n, q.shape[0])
    choice = _component_choice(q, comp_ids, n, own, votes)
    inside = comp_ids > 0
    labels[inside] = choice[comp_ids[inside]].astype(np.uint8)
    return choice


def _collect(comp_ids: np.ndarray, own: list[int], cc: np.ndarray, selected: np.ndarray, cls: int) -> None:
    """Append the components ``selected`` (indices into ``cc``'s labels) to ``comp_ids`` / ``own``."""
    if selected.size == 0:
        return
    lut = np.zeros(int(cc.max()) + 1, dtype=np.int32)
    lut[selected] = np.arange(len(own) + 1, len(own) + 1 + selected.size, dtype=np.int32)
    mapped = lut[cc]
    np.copyto(comp_ids, mapped, where=mapped > 0)
    own.extend([cls] * selected.size)


def remove_small_components(
    labels: np.ndarray, q: np.ndarray, cfg: CleanupConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Step 3 in place on ``labels`` [H, W] uint8. Returns (changed mask [H, W] bool, {class: n removed})."""
    ls = get_label_set(cfg.label_set)
    h, w = labels.shape
    min_area = max(int(cfg.min_component_px), int(np.ceil(cfg.min_component_frac * h * w)))
    single = {ls.index(c) for c in cfg.single_instance_classes if c in ls.classes}
    comp_ids = np.zeros((h, w), dtype=np.int32)
    own: list[int] = []
    removed: dict[str, int] = {}
    for c in np.unique(labels):
        if c == 0:
            continue
        _, cc, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        area = stats[1:, cv2.CC_STAT_AREA]
        small = area < min_area
        if int(c) in single:
            small |= area < cfg.single_instance_ratio * area.max()
        sel = np.flatnonzero(small) + 1
        if sel.size:
            removed[ls.classes[c]] = int(sel.size)
        _collect(comp_ids, own, cc, sel, int(c))
    changed = comp_ids > 0
    _relabel_components(labels, q, comp_ids, len(own), np.array([0] + own, dtype=np.int64))
    return changed, removed


def fill_background_holes(
    labels: np.ndarray, q: np.ndarray, alpha: np.ndarray, cfg: CleanupConfig
) -> tuple[np.ndarray, int]:
    """Step 4a in place: enclosed, opaque background holes. Returns (changed [H, W] bool, n holes)."""
    h, w = labels.shape
    n, cc, stats, _ = cv2.connectedComponentsWithStats((labels == 0).astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros((h, w), dtype=bool), 0
    see_through = np.bincount(cc[alpha < cfg.alpha_threshold], minlength=n) > 0
    ok = ~_touches_border(stats, h, w) & ~see_through & (stats[:, cv2.CC_STAT_AREA] <= cfg.max_hole_frac * h * w)
    ok[0] = False  # cv2's label 0 = not background
    sel = np.flatnonzero(ok)
    comp_ids = np.zeros((h, w), dtype=np.int32)
    own: list[int] = []
    _collect(comp_ids, own, cc, sel, 0)
    _relabel_components(labels, q, comp_ids, len(own), np.array([0] + own, dtype=np.int64))
    return comp_ids > 0, len(own)


def fill_islands(labels: np.ndarray, q: np.ndarray, cfg: CleanupConfig) -> tuple[np.ndarray, int]:
    """Step 4b in place: small islands of ``island_classes`` surrounded by one other class.

    Returns (changed [H, W] bool, n islands filled).
    """
    ls = get_label_set(cfg.label_set)
    h, w = labels.shape
    comp_ids = np.zeros((h, w), dtype=np.int32)
    own: list[int] = []
    for name in cfg.island_classes:
        c = ls.index(name)
        if not (labels == c).any():
            continue
        _, cc, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        ok = ~_touches_border(stats, h, w) & (stats[:, cv2.CC_STAT_AREA] <= cfg.max_island_frac * h * w)
        ok[0] = False
        _collect(comp_ids, own, cc, np.flatnonzero(ok), c)
    n = len(own)
    if n == 0:
        return np.zeros((h, w), dtype=bool), 0
    votes = _neighbour_votes(labels, comp_ids, n, q.shape[0])
    enclosed = ((votes > 0).sum(axis=1) == 1) & (votes[:, 0] == 0)  # one surrounding class, not background
    enclosed[0] = False
    keep_ids = np.where(enclosed, np.arange(n + 1), 0)[comp_ids]
    choice = np.argmax(votes, axis=1)
    inside = keep_ids > 0
    labels[inside] = choice[keep_ids[inside]].astype(np.uint8)
    return inside, int(enclosed.sum())
