"""Markdown tables of a comparison: mean F1 per |yaw| bin with deltas against the base, class groups, pitch."""

from __future__ import annotations

import math
from collections.abc import Mapping

from facegs.evaluate.compare import REPORT_GROUPS, base_name_of, extreme_summary, sub_or_none, summaries
from facegs.evaluate.metrics import PoseBinnedEvaluator


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table with padded columns (readable as plain text too); first column left-aligned."""
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    sep = "|" + "|".join(("-" * (w[i] + 1) + ":") if i else ("-" * (w[i] + 2)) for i in range(len(head))) + "|"
    return [fmt(head), sep, *[fmt(r) for r in rows]]


def _with_deltas(names: list[str], base: str, cells) -> list[list[str]]:
    """Rows ``name`` (values) and, for each non-base name, ``  Δ name - base`` (signed deltas)."""
    rows = []
    for n in names:
        rows.append([n + (" (base)" if n == base and n != "base" else "")] + [pct(v) for v in cells(n)])
        if n != base:
            rows.append([f"  Δ {n} − {base}"] + [pct(sub_or_none(v, b), signed=True) for v, b in zip(cells(n), cells(base))])
    return rows


def main_table(summ: dict[str, dict], ext: dict[str, dict], base: str) -> list[str]:
    first = summ[base]
    head = ["checkpoint"] + [f"{b['label']} (n={b['n_images']})" for b in first["yaw"]]
    head += [f"{ext[base]['label']} (n={ext[base]['n_images']})", f"all (n={first['overall']['n_images']})",
             "mIoU", "pixel acc"]

    def cells(n: str) -> list[float | None]:
        s = summ[n]
        return ([b["mean_f1"] for b in s["yaw"]] + [ext[n]["mean_f1"], s["overall"]["mean_f1"],
                                                      s["overall"]["miou"], s["overall"]["pixel_acc"]])

    return _md_table(head, _with_deltas(list(summ), base, cells))


def group_table(ext: dict[str, dict], base: str) -> list[str]:
    groups = [g for g in REPORT_GROUPS if g in ext[base]["group_f1"]]
    head = ["checkpoint"] + groups + ["mean F1", "overall F1"]

    def cells(n: str) -> list[float | None]:
        e = ext[n]
        return [e["group_f1"].get(g) for g in groups] + [e["mean_f1"], e["overall_f1"]]

    return _md_table(head, _with_deltas(list(ext), base, cells))


def pitch_table(summ: dict[str, dict], base: str) -> list[str]:
    head = ["checkpoint"] + [f"{b['label']} (n={b['n_images']})" for b in summ[base]["pitch"]]
    return _md_table(head, _with_deltas(list(summ), base, lambda n: [b["mean_f1"] for b in summ[n]["pitch"]]))


def summary_table(results: Mapping[str, PoseBinnedEvaluator], base_name: str | None = None,
                  extreme_yaw: float = 60.0) -> str:
    """One screen of text: mean F1 (%) per |yaw| bin, at |yaw| >= ``extreme_yaw``, overall, mIoU and
    pixel accuracy per checkpoint, each non-base checkpoint followed by its delta row (percentage
    points vs ``base_name``, default the first checkpoint); then the class-group F1 at extreme yaw.
    Padded markdown tables (paste-able into a PR)."""
    base = base_name_of(results, base_name)
    summ = summaries(results)
    ext = {n: extreme_summary(ev, extreme_yaw) for n, ev in results.items()}
    lines = ["Mean F1 (%, foreground classes) by |yaw| bin (deg); mIoU and pixel acc over all views:", "",
             *main_table(summ, ext, base), "",
             f"Class-group F1 (%) at |yaw| {ext[base]['label']} ({ext[base]['n_images']} views):", "",
             *group_table(ext, base)]
    return "\n".join(lines)
