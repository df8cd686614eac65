"""Confusion matrices over a whole test set, and connected-component counts.

How the field computes the numbers (the CelebAMask-HQ / LaPa papers): one confusion matrix accumulated
over every image (not a per-image mean); per-class F1 = 2 TP / (|GT| + |Pred|); mean F1 over the
foreground classes (background excluded); mIoU over all classes present. The component count
(per class, in prediction and truth) measures the speckle that IoU hides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from facegs.core.labels import IGNORE_INDEX

ArrayLike = Any  # numpy array or torch tensor


def to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


class ConfusionMatrix:
    """A [K, K] confusion matrix (rows GT, columns prediction) plus invalid predictions per GT class.

    ``update(pred, target)`` takes numpy arrays or torch tensors of any (equal) shape; torch tensors
    are counted on their own device with ``torch.bincount`` and only the counts come back.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX, background: int | None = 0) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.background = background
        self._m = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)  # last col: invalid pred

    # ---- accumulation -------------------------------------------------------------------------
    def update(self, pred: ArrayLike, target: ArrayLike) -> ConfusionMatrix:
        """Add the pixels of ``pred`` and ``target`` (same shape, any shape) to the matrix."""
        K = self.num_classes
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred and target shapes differ: {list(pred.shape)} vs {list(target.shape)}")
        if hasattr(target, "detach") and hasattr(pred, "detach"):
            t = target.detach().reshape(-1).long()
            p = pred.detach().reshape(-1).long().to(t.device)
            valid = (t >= 0) & (t < K) & (t != self.ignore_index)
            t, p = t[valid], p[valid]
            p = torch.where((p >= 0) & (p < K), p, torch.full_like(p, K))
            counts = torch.bincount(t * (K + 1) + p, minlength=K * (K + 1)).cpu().numpy()
        else:
            t = to_numpy(target).reshape(-1).astype(np.int64)
            p = to_numpy(pred).reshape(-1).astype(np.int64)
            valid = (t >= 0) & (t < K) & (t != self.ignore_index)
            t, p = t[valid], p[valid]
            p = np.where((p >= 0) & (p < K), p, K)
            counts = np.bincount(t * (K + 1) + p, minlength=K * (K + 1))
        self._m += counts.reshape(K, K + 1)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix (same number of classes) in place; returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class into {self.num_classes}-class matrix")
        self._m += other._m
        return self

    # ---- raw counts ---------------------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """[K, K] int64 counts, rows ground truth, columns prediction (a copy)."""
        return self._m[:, : self.num_classes].copy()

    @property
    def invalid_pred(self) -> np.ndarray:
        """[K] int64: pixels of each GT class whose prediction was outside ``[0, K)``."""
        return self._m[:, self.num_classes].copy()

    @property
    def total(self) -> int:
        return int(self._m.sum())

    def _tp_gt_pred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self._m[:, : self.num_classes]
        return np.diag(m).astype(np.float64), self._m.sum(1).astype(np.float64), m.sum(0).astype(np.float64)

    # ---- scores -------------------------------------------------------------------------------
    def f1_per_class(self) -> np.ndarray:
        """[K] float64 F1 = 2TP / (|GT| + |Pred|); NaN for classes absent from both."""
        tp, gt, pr = self._tp_gt_pred()
        den = gt + pr
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 2 * tp / den, np.nan)

    def iou_per_class(self) -> np.ndarray:
        """[K] float64 IoU = TP / (|GT| + |Pred| - TP); NaN for classes absent from both."""
        tp, gt, pr = self._tp_gt_pred()
        den = gt + pr - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, tp / den, np.nan)

    def mean_f1(self) -> float:
        """Mean F1 over present foreground classes (background excluded). NaN if none present."""
        f1 = self.f1_per_class()
        if self.background is not None and 0 <= self.background < self.num_classes:
            f1 = np.delete(f1, self.background)
        return _nanmean(f1.tolist())

    def miou(self) -> float:
        """Mean IoU over all present classes, background included. NaN if none present."""
        return _nanmean(self.iou_per_class().tolist())

    def pixel_accuracy(self) -> float:
        """Correct / valid pixels. NaN when no pixel was counted."""
        tot = self.total
        return float(np.trace(self._m[:, : self.num_classes]) / tot) if tot else float("nan")

    def merged_f1(self, classes: Sequence[int]) -> float:
        """F1 of the union of ``classes`` as one binary region (Helen "overall" F1)."""
        idx = np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64)
        if idx.size == 0:
            return float("nan")
        m = self._m[:, : self.num_classes]
        tp = float(m[np.ix_(idx, idx)].sum())
        den = float(self._m[idx].sum() + m[:, idx].sum())
        return 2 * tp / den if den > 0 else float("nan")

    def group_f1(self, classes: Sequence[int]) -> float:
        """Mean of the per-class F1 of ``classes`` that are present (NaN when none is)."""
        f1 = self.f1_per_class()
        return _nanmean([f1[c] for c in classes])

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: ``{"num_classes", "ignore_index", "background", "matrix", "invalid_pred"}``."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "background": self.background,
            "matrix": self.matrix.tolist(),
            "invalid_pred": self.invalid_pred.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfusionMatrix:
        cm = cls(int(d["num_classes"]), int(d.get("ignore_index", IGNORE_INDEX)), d.get("background", 0))
        m = np.asarray(d["matrix"], dtype=np.int64)
        if m.shape != (cm.num_classes, cm.num_classes):
            raise ValueError(f"matrix must be [{cm.num_classes}, {cm.num_classes}], got {list(m.shape)}")
        cm._m[:, : cm.num_classes] = m
        cm._m[:, cm.num_classes] = np.asarray(d.get("invalid_pred", np.zeros(cm.num_classes)), dtype=np.int64)
        return cm


def component_counts(
    labels: np.ndarray, num_classes: int, min_area: int = 0, connectivity: int = 8,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """[K] int64: number of connected components of each class in ``labels`` [H, W].

    Components smaller than ``min_area`` px are not counted. ``valid`` [H, W] bool restricts the
    pixels considered (others belong to no class). Loops over the classes present, not pixels.
    """
    lab = np.asarray(labels)
    if valid is not None:
        lab = np.where(valid, lab, -1)
    counts = np.zeros(num_classes, dtype=np.int64)
    present = np.unique(lab)
    for c in present[(present >= 0) & (present < num_classes)]:
        n, _, stats, _ = cv2.connectedComponentsWithStats((lab == c).astype(np.uint8), connectivity=connectivity)
        counts[c] = int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum()) if n > 1 else 0
    return counts
