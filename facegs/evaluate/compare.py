"""Compare parser checkpoints on one test set, view by view, binned by head pose.

In: checkpoints (paths or loaded :class:`facegs.parser.model.ParserModel`, names checked by
:func:`check_name`) and test views (:mod:`facegs.evaluate.testsets`). Out: :class:`EvalResults`:
one :class:`facegs.evaluate.metrics.PoseBinnedEvaluator` per checkpoint plus per-view scores, and
the deltas of each against a base checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facegs.core.errors import InputError
from facegs.core.ids import check_id
from facegs.core.labels import CANONICAL, get_label_set
from facegs.evaluate.confusion import ConfusionMatrix
from facegs.evaluate.metrics import PoseBinnedEvaluator
from facegs.evaluate.testsets import read_pair
from facegs.parser.checkpoint import load_parser
from facegs.parser.model import ParserModel
from facegs.parser.predict import predict_images
from facegs.train.data import ViewItem

#: Class groups shown per checkpoint at extreme yaw and in ``group_f1_vs_yaw.png``.
REPORT_GROUPS: tuple[str, ...] = ("eyes", "brows", "nose", "mouth", "ears", "skin", "hair")


#: Scores compared between checkpoints (keys of a bin summary; group F1 separately).
DELTA_KEYS: tuple[str, ...] = ("mean_f1", "miou", "pixel_acc", "overall_f1", "cc_error")




@dataclass(frozen=True)
class ViewScore:
    """Scores of one checkpoint on one view (fractions; NaN where undefined)."""

    miou: float
    mean_f1: float
    pixel_acc: float


class EvalResults(dict):
    """``{checkpoint name: PoseBinnedEvaluator}`` (insertion order = the order given) plus what the
    report needs beyond the pooled metrics:

    - ``test_items``: the evaluated :class:`ViewItem` s;
    - ``per_view``: ``{name: [ViewScore per item]}`` (same order as ``test_items``);
    - ``parsers``: ``{name: ParserModel}`` (kept to draw the contact sheet; drop the results, or call
      :meth:`release`, to free their memory);
    - ``sources``: ``{name: checkpoint path or "<in-memory>"}``; ``flip_tta``, ``seconds``.

    A plain ``dict`` of evaluators is accepted by :func:`write_report` too (no contact sheet then).
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.test_items: list[ViewItem] = []
        self.per_view: dict[str, list[ViewScore]] = {}
        self.parsers: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.flip_tta = False
        self.seconds = 0.0

    def release(self) -> None:
        """Drop the loaded parsers (the metrics stay)."""
        self.parsers = {}


def check_name(name: str) -> str:
    """A checkpoint name becomes part of file names: it follows the identifier rule
    (:func:`facegs.core.ids.check_id`)."""
    return check_id(name, what="checkpoint name", field="name")


def _load_checkpoint(name: str, src: Any, device: str, label_set: str | None) -> tuple[Any, str]:
    if isinstance(src, ParserModel):
        return src, "<in-memory>"
    path = Path(src)
    if not path.is_file():
        raise InputError(f"checkpoint '{name}': file not found", field=name, path=str(path))
    try:
        return load_parser(path, device=device, label_set=label_set), str(path)
    except InputError as e:
        raise InputError(f"checkpoint '{name}': {e.message}", field=name, path=str(path)) from e
    except (KeyError, ValueError, RuntimeError) as e:
        raise InputError(f"checkpoint '{name}': cannot load ({type(e).__name__}: {e})", field=name,
                         path=str(path)) from e


def pose_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def evaluate_checkpoints(
    ckpts: Mapping[str, Any],
    items: Sequence[ViewItem],
    flip_tta: bool = False,
    device: str = "cpu",
    batch_size: int = 16,
    *,
    label_sets: Mapping[str, str] | None = None,
    yaw_bins: Sequence[float] = (0, 30, 60, 75, 90),
    pitch_bins: Sequence[float] | None = (-90, -30, -15, 15, 30, 90),
    progress: bool = True,
) -> EvalResults:
    """Evaluate every checkpoint on every view; returns ``{name: PoseBinnedEvaluator}`` (an :class:`EvalResults`).

    ``ckpts``: ``{name: path}`` (facegs checkpoint, bare BiSeNet state_dict or TorchScript; see
    :func:`facegs.parser.checkpoint.load_parser`) or ``{name: ParserModel}``; names must satisfy
    :func:`check_name`. ``label_sets``: declared output label set per name (TorchScript files
    without embedded metadata). All checkpoints are loaded first (a bad file fails before any work,
    with an :class:`InputError` naming the checkpoint). Each batch of views is read once and parsed
    by every checkpoint; the argmax prediction (optionally flip TTA, left/right aware) is scored at
    the label map's resolution against the canonical ground truth. Views with an unknown (NaN) pose
    count in ``overall`` only. Deterministic for a given device: identical weights give identical
    metrics.
    """
    if not ckpts:
        raise ValueError("no checkpoints to evaluate")
    if not items:
        raise InputError("the test set is empty: nothing to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    label_sets = dict(label_sets or {})
    res = EvalResults()
    res.test_items = list(items)
    res.flip_tta = bool(flip_tta)
    for name, src in ckpts.items():
        check_name(name)
        res.parsers[name], res.sources[name] = _load_checkpoint(name, src, device, label_sets.get(name))
        res[name] = PoseBinnedEvaluator(CANONICAL, yaw_bins, pitch_bins)
        res.per_view[name] = []
    K = get_label_set(CANONICAL).num_classes
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), desc="evaluate", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(items), batch_size):
        chunk = res.test_items[start:start + batch_size]
        pairs = []
        for it in chunk:
            try:
                pairs.append(read_pair(it))
            except InputError as e:
                raise e.with_context(subject=it.subject_id, view=it.view_id) from None
        imgs = [p[0] for p in pairs]
        for name, parser in res.parsers.items():
            for probs, (_, gt), it in zip(predict_images(parser, imgs, flip_tta), pairs, chunk, strict=True):
                pred = probs.argmax(dim=0).numpy().astype(np.uint8)
                res[name].update(pred, gt, yaw=pose_or_none(it.yaw), pitch=pose_or_none(it.pitch))
                cm = ConfusionMatrix(K).update(pred, gt)
                res.per_view[name].append(ViewScore(cm.miou(), cm.mean_f1(), cm.pixel_accuracy()))
        bar.update(len(chunk))
    bar.close()
    res.seconds = time.perf_counter() - t0
    return res


def sub_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def bin_delta(s: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {k: sub_or_none(s.get(k), b.get(k)) for k in DELTA_KEYS}
    d["group_f1"] = {g: sub_or_none(v, b["group_f1"].get(g)) for g, v in s["group_f1"].items()}
    d["f1_per_class"] = {c: sub_or_none(v, b["f1_per_class"].get(c)) for c, v in s["f1_per_class"].items()}
    return d


def summary_deltas(summary: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Per-bin ``summary - base`` (fractions) for ``overall``, every |yaw| bin and every pitch bin.

    Bins are matched by position and must have the same edges. Each bin holds ``lo``, ``hi``,
    ``label`` and the deltas of :data:`DELTA_KEYS`, ``group_f1`` and ``f1_per_class`` (``None``
    where either side is undefined, e.g. an empty bin).
    """
    out: dict[str, Any] = {"overall": bin_delta(summary["overall"], base["overall"])}
    for axis in ("yaw", "pitch"):
        if [(x["lo"], x["hi"]) for x in summary[axis]] != [(x["lo"], x["hi"]) for x in base[axis]]:
            raise ValueError(f"cannot compare summaries with different {axis} bins")
        out[axis] = [{"lo": s["lo"], "hi": s["hi"], "label": s["label"], **bin_delta(s, b)}
                     for s, b in zip(summary[axis], base[axis])]
    return out


def extreme_summary(ev: PoseBinnedEvaluator, extreme_yaw: float = 60.0) -> dict[str, Any]:
    """Scores of the union of the |yaw| bins whose lower edge is >= ``extreme_yaw`` (one bin summary
    with ``lo``, ``hi``, ``label``, ``n_images``, ``mean_f1``, ``group_f1``, ...; pooled over pixels like
    every bin). With the default bins and ``extreme_yaw=60`` that is |yaw| 60-90."""
    state = ev.state_dict()
    edges = list(state["yaw_bins"])
    idx = [i for i in range(len(edges) - 1) if edges[i] >= extreme_yaw]
    lo = edges[idx[0]] if idx else float(extreme_yaw)
    hi = edges[-1] if edges else 90.0
    merged = PoseBinnedEvaluator(ev.label_set, (lo, hi), None, ev.min_area, ev.ignore_index, ev.connectivity)
    st = merged.state_dict()
    bins = [state["yaw"][i] for i in idx]
    if bins:
        acc = bins[0]
        for b in bins[1:]:
            acc = {"confusion": {**acc["confusion"],
                                 "matrix": (np.asarray(acc["confusion"]["matrix"]) + b["confusion"]["matrix"]).tolist(),
                                 "invalid_pred": (np.asarray(acc["confusion"]["invalid_pred"])
                                                  + b["confusion"]["invalid_pred"]).tolist()},
                   "n_images": acc["n_images"] + b["n_images"],
                   "cc_abs": (np.asarray(acc["cc_abs"]) + b["cc_abs"]).tolist(),
                   "cc_n": (np.asarray(acc["cc_n"]) + b["cc_n"]).tolist()}
        st["yaw"] = [acc]
    out = PoseBinnedEvaluator.from_state_dict(st).summary()["yaw"][0]
    out["label"] = f">={lo:g}"
    return out


def summaries(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: ev.summary() for name, ev in results.items()}


def base_name_of(results: Mapping[str, Any], base_name: str | None) -> str:
    if not results:
        raise ValueError("no results to report")
    if base_name is None:
        return next(iter(results))
    if base_name not in results:
        raise ValueError(f"base '{base_name}' is not among the checkpoints {list(results)}")
    return base_name
