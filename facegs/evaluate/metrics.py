"""Face parsing metrics accumulated over a whole test set, binned by head pose.

How the numbers are computed (the field's conventions: CelebAMask-HQ / LaPa papers, e.g. DML-CSR, SegFace):

- One confusion matrix is accumulated over all pixels of all images (never a per-image average).
  Rows are ground truth, columns prediction. Pixels whose ground truth is ``ignore_index`` (or out of
  range) are skipped. A prediction outside ``[0, K)`` on a valid pixel (e.g. 255 from a fused label
  map) counts as wrong: it adds to the ground-truth total of its row but to no prediction column.
- Per-class F1 = 2 TP / (|GT| + |Pred|); IoU = TP / (|GT| + |Pred| - TP). A class absent from both
  ground truth and prediction has no F1/IoU (``None`` in JSON) and is left out of every mean.
- **mean F1** averages the foreground classes (the background class excluded) that are present;
  **mIoU** averages all present classes, background included; **pixel accuracy** = trace / valid px.
- **overall F1** (Helen style): F1 of the single merged region eyes + brows + nose + mouth (inner
  mouth and both lips); a pixel of that region predicted as any class of the region is a hit.
- **group F1**: mean of the per-class F1 of the group's present classes (so a left/right swap inside
  "eyes" is an error; unlike the merged "overall" region).
- **CC error** (structure via consensus): per image and class, |#components(pred) - #components(GT)|
  (components of at least ``min_area`` px, 8-connected, ignored GT pixels removed from both), averaged
  over the (image, class) pairs where the class occurs in GT or prediction.

Pose bins: |yaw| bins on the absolute yaw, pitch bins on the signed pitch (degrees, facegs' head
convention, see ``facegs.core.cameras``). Bins are ``[lo, hi)`` except the last, which is ``[lo, hi]``.
|yaw| beyond the last yaw edge (a camera slightly behind the profile, e.g. |yaw| 93 when a rig's
+-90 camera meets a head turned by 3 degrees) counts in the last yaw bin: it is at least as extreme.
Any other image outside every bin of an axis counts only in ``overall`` (and in ``n_out_of_range``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegs.core.labels import CANONICAL, IGNORE_INDEX, LabelSet, get_label_set
from facegs.evaluate.confusion import ArrayLike, ConfusionMatrix, component_counts, nan_to_none, to_numpy

#: Reporting groups (class names in the canonical set; classes a set lacks are skipped).
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "ears": ("l_ear", "r_ear"),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "skin": ("skin",),
    "hair": ("hair",),
    "accessories": ("eye_g", "ear_r", "neck_l", "hat"),
    "neck_cloth": ("neck", "cloth"),
}


#: The Helen "overall" region: eyes + brows + nose + mouth.
OVERALL_CLASSES: tuple[str, ...] = ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


def _bin_index(value: float, edges: Sequence[float]) -> int | None:
    """Index of the bin ``[edges[i], edges[i+1])`` holding ``value`` (last bin closed); None if outside."""
    e = np.asarray(edges, dtype=np.float64)
    if not math.isfinite(value) or value < e[0] or value > e[-1]:
        return None
    if value == e[-1]:
        return len(e) - 2
    return int(np.searchsorted(e, value, side="right") - 1)


def _bin_label(lo: float, hi: float) -> str:
    f = lambda x: f"{x:g}"  # noqa: E731
    return f"{f(lo)} to {f(hi)}" if lo < 0 or hi < 0 else f"{f(lo)}-{f(hi)}"


class _BinStats:
    """Confusion matrix, image count and CC-error sums of one pose bin."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.cm = ConfusionMatrix(num_classes, ignore_index)
        self.n_images = 0
        self.cc_abs = np.zeros(num_classes, dtype=np.float64)  # sum of |#pred - #gt| per class
        self.cc_n = np.zeros(num_classes, dtype=np.int64)  # (image, class) pairs counted

    def merge(self, other: _BinStats) -> None:
        self.cm.merge(other.cm)
        self.n_images += other.n_images
        self.cc_abs += other.cc_abs
        self.cc_n += other.cc_n

    def to_dict(self) -> dict[str, Any]:
        return {"confusion": self.cm.to_dict(), "n_images": self.n_images,
                "cc_abs": self.cc_abs.tolist(), "cc_n": self.cc_n.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _BinStats:
        cm = ConfusionMatrix.from_dict(d["confusion"])
        s = cls(cm.num_classes, cm.ignore_index)
        s.cm, s.n_images = cm, int(d["n_images"])
        s.cc_abs = np.asarray(d["cc_abs"], dtype=np.float64)
        s.cc_n = np.asarray(d["cc_n"], dtype=np.int64)
        return s


class PoseBinnedEvaluator:
    """Accumulates parsing metrics overall, per |yaw| bin and per pitch bin.

    ``label_set``: a :class:`LabelSet` or its name (predictions and targets use its indices; the
    background class is excluded from mean F1). ``yaw_bins``: edges on |yaw| in degrees;
    ``pitch_bins``: edges on signed pitch (``None`` or empty disables that axis). ``min_area``:
    components below this many pixels are ignored by the CC error. Call :meth:`update` once per
    image; :meth:`merge` combines evaluators of shards of a test set; :meth:`summary`,
    :meth:`to_markdown` and :meth:`save` report.
    """

    def __init__(
        self,
        label_set: LabelSet | str = CANONICAL,
        yaw_bins: Sequence[float] = (0, 30, 60, 75, 90),
        pitch_bins: Sequence[float] | None = (-90, -30, -15, 15, 30, 90),
        min_area: int = 0,
        ignore_index: int = IGNORE_INDEX,
        connectivity: int = 8,
    ) -> None:
        self.label_set = get_label_set(label_set) if isinstance(label_set, str) else label_set
        self.yaw_bins = tuple(float(x) for x in yaw_bins)
        self.pitch_bins = tuple(float(x) for x in pitch_bins) if pitch_bins else ()
        for name, e in (("yaw_bins", self.yaw_bins), ("pitch_bins", self.pitch_bins)):
            if e and (len(e) < 2 or any(b <= a for a, b in zip(e, e[1:]))):
                raise ValueError(f"{name} must be at least 2 strictly increasing edges, got {e}")
        self.min_area = int(min_area)
        self.ignore_index = int(ignore_index)
        self.connectivity = int(connectivity)
        K = self.label_set.num_classes
        self.overall = _BinStats(K, ignore_index)
        self.yaw = [_BinStats(K, ignore_index) for _ in range(max(len(self.yaw_bins) - 1, 0))]
        self.pitch = [_BinStats(K, ignore_index) for _ in range(max(len(self.pitch_bins) - 1, 0))]
        self.n_out_of_range = {"yaw": 0, "pitch": 0}

    # ---- accumulation -------------------------------------------------------------------------
    def cc_error_counts(self, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per class ``(|#cc(pred) - #cc(gt)|, counted)`` for one image ([K] float64, [K] int64)."""
        K = self.label_set.num_classes
        valid = (target != self.ignore_index) & (target >= 0) & (target < K)
        n_gt = component_counts(target, K, self.min_area, self.connectivity, valid)
        n_pr = component_counts(pred, K, self.min_area, self.connectivity, valid)
        counted = (n_gt > 0) | (n_pr > 0)
        return np.where(counted, np.abs(n_pr - n_gt), 0).astype(np.float64), counted.astype(np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike, yaw: float | None = None, pitch: float | None = None) -> None:
        """Add one image: ``pred``, ``target`` [H, W] class indices; ``yaw``/``pitch`` in degrees.

        ``yaw=None`` (or ``pitch=None``) counts the image in ``overall`` only for that axis.
        """
        p = to_numpy(pred).astype(np.int64)
        t = to_numpy(target).astype(np.int64)
        if p.shape != t.shape or p.ndim != 2:
            raise ValueError(f"pred and target must be equal [H, W] maps, got {list(p.shape)} and {list(t.shape)}")
        cc_abs, cc_n = self.cc_error_counts(p, t)
        cm = ConfusionMatrix(self.label_set.num_classes, self.ignore_index).update(p, t)
        targets = [self.overall]
        for axis, value, edges, bins in (("yaw", yaw, self.yaw_bins, self.yaw),
                                         ("pitch", pitch, self.pitch_bins, self.pitch)):
            if value is None or not bins:
                continue
            v = min(abs(float(value)), float(edges[-1])) if axis == "yaw" else float(value)
            i = _bin_index(v, edges)
            if i is None:
                self.n_out_of_range[axis] += 1
            else:
                targets.append(bins[i])
        for s in targets:
            s.cm.merge(cm)
            s.n_images += 1
            s.cc_abs += cc_abs
            s.cc_n += cc_n

    def merge(self, other: PoseBinnedEvaluator) -> PoseBinnedEvaluator:
        """Add another evaluator with the same label set and bins (e.g. from another worker)."""
        if (other.label_set.name, other.yaw_bins, other.pitch_bins) != (self.label_set.name, self.yaw_bins, self.pitch_bins):
            raise ValueError("cannot merge evaluators with different label sets or bins")
        self.overall.merge(other.overall)
        for a, b in zip(self.yaw + self.pitch, other.yaw + other.pitch):
            a.merge(b)
        for k in self.n_out_of_range:
            self.n_out_of_range[k] += other.n_out_of_range[k]
        return self

    # ---- reporting ----------------------------------------------------------------------------
    def _groups(self) -> dict[str, list[int]]:
        names = set(self.label_set.classes)
        return {g: [self.label_set.index(c) for c in cs if c in names]
                for g, cs in CLASS_GROUPS.items() if any(c in names for c in cs)}

    def _bin_summary(self, s: _BinStats) -> dict[str, Any]:
        cm, classes = s.cm, self.label_set.classes
        f1, iou = cm.f1_per_class(), cm.iou_per_class()
        overall_idx = [self.label_set.index(c) for c in OVERALL_CLASSES if c in classes]
        with np.errstate(invalid="ignore", divide="ignore"):
            cc_cls = np.where(s.cc_n > 0, s.cc_abs / np.maximum(s.cc_n, 1), np.nan)
        n_cc = int(s.cc_n.sum())
        return {
            "n_images": s.n_images,
            "n_pixels": cm.total,
            "mean_f1": nan_to_none(cm.mean_f1()),
            "miou": nan_to_none(cm.miou()),
            "pixel_acc": nan_to_none(cm.pixel_accuracy()),
            "overall_f1": nan_to_none(cm.merged_f1(overall_idx)),
            "cc_error": nan_to_none(float(s.cc_abs.sum() / n_cc) if n_cc else float("nan")),
            "group_f1": {g: nan_to_none(cm.group_f1(idx)) for g, idx in self._groups().items()},
            "f1_per_class": {c: nan_to_none(v) for c, v in zip(classes, f1)},
            "iou_per_class": {c: nan_to_none(v) for c, v in zip(classes, iou)},
            "cc_error_per_class": {c: nan_to_none(v) for c, v in zip(classes, cc_cls)},
        }

    def _axis_summary(self, edges: Sequence[float], bins: list[_BinStats]) -> list[dict[str, Any]]:
        return [{"lo": lo, "hi": hi, "center": (lo + hi) / 2, "label": _bin_label(lo, hi), **self._bin_summary(s)}
                for lo, hi, s in zip(edges, edges[1:], bins)]

    def summary(self) -> dict[str, Any]:
        """JSON-able report: settings, ``overall``, ``yaw`` and ``pitch`` (lists of bins, each with
        ``lo``, ``hi``, ``center``, ``label`` and the scores); scores are fractions in [0, 1],
        ``None`` where undefined."""
        return {
            "label_set": self.label_set.name,
            "yaw_bins": list(self.yaw_bins),
            "pitch_bins": list(self.pitch_bins),
            "min_area": self.min_area,
            "n_out_of_range": dict(self.n_out_of_range),
            "overall": self._bin_summary(self.overall),
            "yaw": self._axis_summary(self.yaw_bins, self.yaw),
            "pitch": self._axis_summary(self.pitch_bins, self.pitch),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able raw state (confusion matrices and CC sums) for :meth:`from_state_dict`."""
        return {
            "label_set": self.label_set.name, "yaw_bins": list(self.yaw_bins), "pitch_bins": list(self.pitch_bins),
            "min_area": self.min_area, "ignore_index": self.ignore_index, "connectivity": self.connectivity,
            "n_out_of_range": dict(self.n_out_of_range), "overall": self.overall.to_dict(),
            "yaw": [s.to_dict() for s in self.yaw], "pitch": [s.to_dict() for s in self.pitch],
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> PoseBinnedEvaluator:
        ev = cls(d["label_set"], d["yaw_bins"], d["pitch_bins"], d["min_area"], d["ignore_index"], d["connectivity"])
        ev.n_out_of_range = dict(d["n_out_of_range"])
        ev.overall = _BinStats.from_dict(d["overall"])
        ev.yaw = [_BinStats.from_dict(x) for x in d["yaw"]]
        ev.pitch = [_BinStats.from_dict(x) for x in d["pitch"]]
        return ev

    @classmethod
    def load(cls, path: str | os.PathLike) -> PoseBinnedEvaluator:
        """Rebuild an evaluator from a ``metrics.json`` written by :meth:`save` (or its directory)."""
        p = Path(path)
        p = p / "metrics.json" if p.is_dir() else p
        with open(p, encoding="utf-8") as f:
            return cls.from_state_dict(json.load(f)["state"])

    def to_markdown(self, title: str | None = None) -> str:
        """Readable tables (rows: overall, |yaw| bins, pitch bins). Scores in percent."""
        return summary_to_markdown(self.summary(), title)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def summary_to_markdown(summary: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown tables of a :meth:`PoseBinnedEvaluator.summary`: one row per bin.

    Columns: n images, mean F1, mIoU, pixel acc, overall F1 (percent), CC error (components per
    class and image), then the F1 of each class group (percent). ``–`` marks undefined values.
    """
    groups = list(summary["overall"]["group_f1"])
    head = ["bin", "n images", "mean F1", "mIoU", "pixel acc", "overall F1", "CC err"] + [f"F1 {g}" for g in groups]

    def row(label: str, s: Mapping[str, Any]) -> str:
        cc = "–" if s["cc_error"] is None else f"{s['cc_error']:.3f}"
        cells = [label, str(s["n_images"]), _pct(s["mean_f1"]), _pct(s["miou"]), _pct(s["pixel_acc"]),
                 _pct(s["overall_f1"]), cc] + [_pct(s["group_f1"][g]) for g in groups]
        return "| " + " | ".join(cells) + " |"

    def table(rows: list[str]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|", *rows]

    lines = [f"# {title}", ""] if title else []
    lines += [f"Label set `{summary['label_set']}`; scores in percent; mean F1 excludes background; "
              f"CC err = mean |#components(pred) - #components(GT)| per (image, class) "
              f"(components >= {summary['min_area']} px).", ""]
    lines += ["## Overall", "", *table([row("all", summary["overall"])]), ""]
    if summary["yaw"]:
        lines += ["## By |yaw| (degrees)", "", *table([row(b["label"], b) for b in summary["yaw"]]), ""]
    if summary["pitch"]:
        lines += ["## By pitch (degrees, > 0: camera above)", "", *table([row(b["label"], b) for b in summary["pitch"]]), ""]
    oor = summary.get("n_out_of_range", {})
    if any(oor.values()):
        lines += [f"Images outside every bin (overall only): yaw {oor.get('yaw', 0)}, pitch {oor.get('pitch', 0)}.", ""]
    return "\n".join(lines)
