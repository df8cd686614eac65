"""Compare face parser checkpoints on a test set, binned by head pose, in a report people can review.

Pipeline (library side of ``python -m ray_jobs.evaluate``; no Ray here)::

    dirs = make_test_set(out / "test", n_subjects=8, seed=0, res=128)       # optional: synthetic grid
    items = load_test_items(dirs)                                           # or a user's labelled set
    results = evaluate_checkpoints({"base": "base.pt", "ft": "ft.pt"}, items)
    write_report(results, out / "report", base_name="base")
    print(summary_table(results, "base"))

Conventions (``docs/conventions.md``):

- Poses are head-relative, in degrees: yaw 0 / pitch 0 is frontal, **yaw +90 puts the camera on
  the subject's left** (seeing the left ear), pitch > 0 is a camera above the head.
- |yaw| bins are those of :class:`facegs.evaluate.metrics.PoseBinnedEvaluator`: 0-30, 30-60, 60-75, 75-90
  (``[lo, hi)``, the last closed; |yaw| > 90 counts in the last bin). Pitch bins are on signed pitch.
  Views whose pose is unknown (a flat CelebAMask-HQ-style set without ``poses.csv``) count in
  ``overall`` only.
- Everything is scored in the canonical label set ``celebamask19``: ground truth in another set is
  remapped through :func:`facegs.core.labels.remap` (classes without a canonical counterpart become the
  ignore index 255 and are not scored); parser outputs are mapped by :class:`ParserModel`.
- Predictions are made at each label map's resolution (an image of another size is resized to its
  label map first, e.g. CelebAMask-HQ's 1024 px images with 512 px masks).
- Scores in JSON are fractions in [0, 1] (``None`` where undefined); markdown tables show percent.
  A delta is ``checkpoint - base`` of the same score in the same bin.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facegs.core.labels import CANONICAL
from facegs.core.storage import atomic_write_bytes
from facegs.evaluate.compare import (
    REPORT_GROUPS,
    EvalResults,
    base_name_of,
    bin_delta,
    extreme_summary,
    pose_or_none,
    summaries,
    summary_deltas,
)
from facegs.evaluate.metrics import PoseBinnedEvaluator, summary_to_markdown
from facegs.evaluate.plots import plot_f1_vs_yaw, plot_mean_f1_vs_yaw
from facegs.evaluate.sheet import write_rating_sheet
from facegs.evaluate.tables import group_table, main_table, pitch_table


def _per_view_csv(results: EvalResults, path: Path) -> None:
    names = list(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subject_id", "view_id", "yaw", "pitch"] + [f"{k}_{n}" for n in names for k in ("miou", "mean_f1", "pixel_acc")])
    f = lambda v: "" if v is None or not math.isfinite(v) else f"{v:.6g}"  # noqa: E731
    for i, it in enumerate(results.test_items):
        vals = [f(getattr(results.per_view[n][i], k)) for n in names for k in ("miou", "mean_f1", "pixel_acc")]
        w.writerow([it.subject_id, it.view_id, f(it.yaw), f(it.pitch), *vals])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_report(
    results: Mapping[str, PoseBinnedEvaluator],
    out_dir: str | os.PathLike,
    base_name: str | None = None,
    extreme_yaw: float = 60.0,
    n_examples: int = 12,
    *,
    n_frontal: int = 3,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the comparison report into ``out_dir``; returns the written paths by kind.

    - ``metrics.json``: ``{"format": "facegs.eval_report", "version": 1, "base", "checkpoints":
      {name: path}, "settings", "test_set", "summaries": {name: PoseBinnedEvaluator.summary()},
      "deltas": {name: summary_deltas(summary, base summary)} (the base's are all 0),
      "extreme": {name: extreme_summary()}, "extreme_deltas": {name: ...}, "states": {name:
      state_dict()} (``PoseBinnedEvaluator.from_state_dict`` rebuilds an evaluator), "extra"}``;
    - ``report.md``: the :func:`summary_table` tables (mean F1 per |yaw| bin, mIoU, pixel acc, deltas
      vs base; class-group F1 at |yaw| >= ``extreme_yaw``), mean F1 per pitch bin, links, and the
      full per-checkpoint tables;
    - ``f1_vs_yaw.png`` (mean F1 and its delta vs base against |yaw|) and ``group_f1_vs_yaw.png``
      (one panel per class group of :data:`REPORT_GROUPS`, one line per checkpoint); left out when
      no view has a known pose;
    - ``contact_sheet.html`` + ``contact_sheet/*.png`` and ``per_view.csv`` when ``results`` is an
      :class:`EvalResults` (a plain dict of evaluators has no views to show).

    ``base_name`` defaults to the first checkpoint; ``n_examples`` extreme views (+ ``n_frontal``)
    go into the contact sheet. ``extra``: JSON-able context stored in ``metrics.json``.
    """

    base = base_name_of(results, base_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summ = summaries(results)
    ext = {n: extreme_summary(ev, extreme_yaw) for n, ev in results.items()}
    er = results if isinstance(results, EvalResults) else None
    test_set = _test_set_info(summ[base], er)
    paths: dict[str, Path] = {"json": out / "metrics.json"}
    doc = _metrics_doc(results, summ, ext, base, er, test_set, extreme_yaw, extra)
    atomic_write_bytes(paths["json"], json.dumps(doc, indent=1, allow_nan=False).encode("utf-8"))
    if test_set["n_views_in_yaw_bins"] > 0:
        paths["plot"] = plot_mean_f1_vs_yaw(summ, base, out / "f1_vs_yaw.png")
        groups = [g for g in REPORT_GROUPS if g in summ[base]["overall"]["group_f1"]]
        paths["group_plot"] = plot_f1_vs_yaw(summ, out / "group_f1_vs_yaw.png", groups=groups,
                                             title="Class-group F1 against |yaw| (first panel: mean F1)")
    if er is not None:
        paths["per_view"] = out / "per_view.csv"
        _per_view_csv(er, paths["per_view"])
        if er.parsers:
            paths["contact_sheet"] = write_rating_sheet(er, out, base, extreme_yaw, n_examples, n_frontal)
    paths["markdown"] = out / "report.md"
    md = _report_markdown(summ, ext, base, er, test_set, title, paths)
    atomic_write_bytes(paths["markdown"], "\n".join(md).encode("utf-8"))
    return paths


def _test_set_info(base_summary: Mapping[str, Any], er: EvalResults | None) -> dict[str, Any]:
    """Views, posed views, subjects and label sets of the test set (for metrics.json and the text)."""
    info: dict[str, Any] = {"n_views": base_summary["overall"]["n_images"],
                            "n_views_in_yaw_bins": sum(b["n_images"] for b in base_summary["yaw"]),
                            "n_out_of_range": base_summary["n_out_of_range"]}
    if er is not None:
        info["n_subjects"] = len({it.subject_id for it in er.test_items})
        info["label_sets"] = sorted({it.label_set for it in er.test_items})
        info["n_unknown_pose"] = sum(pose_or_none(it.yaw) is None for it in er.test_items)
    return info


def _metrics_doc(results: Mapping[str, PoseBinnedEvaluator], summ: dict[str, dict], ext: dict[str, dict], base: str,
                 er: EvalResults | None, test_set: dict[str, Any], extreme_yaw: float,
                 extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``metrics.json`` document (see :func:`write_report`)."""
    return {
        "format": "facegs.eval_report", "version": 1, "base": base,
        "checkpoints": dict(er.sources) if er is not None else {n: None for n in results},
        "settings": {"extreme_yaw": extreme_yaw, "flip_tta": None if er is None else er.flip_tta,
                     "label_set": CANONICAL, "seconds": None if er is None else round(er.seconds, 2)},
        "test_set": test_set,
        "summaries": summ,
        "deltas": {n: summary_deltas(summ[n], summ[base]) for n in summ},
        "extreme": ext,
        "extreme_deltas": {n: {**{k: ext[n][k] for k in ("lo", "hi", "label", "n_images")},
                               **bin_delta(ext[n], ext[base])} for n in ext},
        "states": {n: ev.state_dict() for n, ev in results.items()},
        "extra": dict(extra or {}),
    }


def _report_markdown(summ: dict[str, dict], ext: dict[str, dict], base: str, er: EvalResults | None,
                     test_set: dict[str, Any], title: str | None, paths: Mapping[str, Path]) -> list[str]:
    """The lines of ``report.md`` (see :func:`write_report`)."""
    n_views, n_posed = test_set["n_views"], test_set["n_views_in_yaw_bins"]
    md = [f"# {title or 'Face parser comparison by head pose'}", ""]
    md += [f"Base checkpoint: **{base}**. Test set: {n_views} views"
           + (f" of {test_set['n_subjects']} subjects" if "n_subjects" in test_set else "")
           + f"; {n_posed} with a known pose. Scores in percent, deltas in percentage points "
           f"(checkpoint − base). Mean F1 averages the foreground classes; mIoU all classes (background "
           f"included); one confusion matrix per bin over all its pixels. |yaw| bins on head-relative yaw "
           f"(yaw +90° = camera on the subject's left); label set `{CANONICAL}`"
           + ("" if er is None else f"; flip TTA {'on' if er.flip_tta else 'off'}") + ".", ""]
    if er is not None and test_set["n_unknown_pose"]:
        md += [f"**{test_set['n_unknown_pose']} views have no known pose**: they count in *all* only, "
               f"not in any |yaw| or pitch bin.", ""]
    md += ["## Mean F1 by |yaw| (degrees)", "", *main_table(summ, ext, base), ""]
    md += [f"## Class-group F1 at |yaw| {ext[base]['label']} ({ext[base]['n_images']} views)", "",
           *group_table(ext, base), ""]
    if any(b["n_images"] for b in summ[base]["pitch"]):
        md += ["## Mean F1 by pitch (degrees, > 0: camera above)", "", *pitch_table(summ, base), ""]
    md += ["## Files", ""]
    if "plot" in paths:
        md += ["- ![mean F1 against |yaw|](f1_vs_yaw.png) `f1_vs_yaw.png`",
               "- ![class-group F1 against |yaw|](group_f1_vs_yaw.png) `group_f1_vs_yaw.png`"]
    else:
        md += ["- no plots against |yaw|: no view has a known pose"]
    if "contact_sheet" in paths:
        md += ["- [contact_sheet.html](contact_sheet.html): extreme-pose views side by side, with a 1-5 rating "
               "form per checkpoint (exports JSON)"]
    if "per_view" in paths:
        md += ["- `per_view.csv`: per-view mIoU, mean F1 and pixel accuracy of every checkpoint"]
    md += ["- `metrics.json`: all summaries, per-bin deltas vs base, raw confusion matrices", ""]
    md += ["## Details per checkpoint", ""]
    for n, s in summ.items():
        body = summary_to_markdown(s).replace("\n## ", "\n#### ")
        if body.startswith("## "):
            body = "#### " + body[3:]
        src = "" if er is None else f" — `{er.sources.get(n)}`"
        md += [f"### {n}{src}", "", body, ""]
    return md


def save_evaluation(ev: PoseBinnedEvaluator, out_dir: str | os.PathLike, name: str = "model") -> dict[str, Path]:
    """Write one evaluator's ``metrics.json``, ``metrics.md`` and ``f1_vs_yaw.png`` into ``out_dir``.

    ``metrics.json`` is ``{"summary": summary(), "state": state_dict()}`` (the state lets
    :meth:`PoseBinnedEvaluator.load` rebuild and merge evaluators). ``name`` labels the line in the
    plot. Returns the written paths by kind (``json``, ``markdown``, ``plot``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summ = ev.summary()
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "plot": out / "f1_vs_yaw.png"}
    doc = {"summary": summ, "state": ev.state_dict()}
    atomic_write_bytes(paths["json"], json.dumps(doc, indent=1, allow_nan=False).encode("utf-8"))
    atomic_write_bytes(paths["markdown"], summary_to_markdown(summ, f"Parsing metrics: {name}").encode("utf-8"))
    plot_f1_vs_yaw({name: summ}, paths["plot"])
    return paths
