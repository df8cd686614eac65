"""Plots for evaluation reports (matplotlib's Agg canvas; never touches the global backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facegs.fsutil import atomic_write_bytes


def _series(bins: Sequence[Mapping[str, Any]], key: str, group: str | None = None) -> tuple[list[float], list[float]]:
    """Bin centres and values (percent) of one score, skipping empty bins and undefined values."""
    xs, ys = [], []
    for b in bins:
        v = b["group_f1"].get(group) if group is not None else b.get(key)
        if b.get("n_images", 0) and v is not None:
            xs.append(float(b["center"]))
            ys.append(100.0 * float(v))
    return xs, ys


def style_yaw_axis(ax: Any, edges: Sequence[float]) -> None:
    """Grid, faint lines at the |yaw| bin edges, and the bin edges as x ticks and limits."""
    ax.grid(True, alpha=0.3)
    for e in edges:
        ax.axvline(e, color="0.85", lw=0.6, zorder=0)
    if edges:
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xticks(edges)


def plot_f1_vs_yaw(
    summaries: Mapping[str, Mapping[str, Any]],
    out_png: str | os.PathLike,
    groups: Sequence[str] | None = None,
    title: str = "Face parsing F1 against |yaw|",
) -> Path:
    """Mean F1 (first panel) and per-class-group F1 (small multiples) against |yaw| bin centre.

    ``summaries``: ``{model or arm name: PoseBinnedEvaluator.summary()}``, one line each (e.g.
    ``{"base": ..., "fine-tuned": ...}``); bins must be the same for a readable comparison (each
    line uses its own bins' centres). Empty bins and undefined scores are left out of a line.
    ``groups`` defaults to the group names of the first summary. Writes ``out_png`` atomically and
    returns its path.
    """
    if not summaries:
        raise ValueError("plot_f1_vs_yaw needs at least one summary")
    first = next(iter(summaries.values()))
    groups = list(first["overall"]["group_f1"]) if groups is None else list(groups)
    panels: list[tuple[str, str, str | None]] = [("mean F1 (foreground)", "mean_f1", None)]
    panels += [(f"{g} F1", "", g) for g in groups]
    ncols = min(5, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    edges = sorted({e for s in summaries.values() for b in s["yaw"] for e in (b["lo"], b["hi"])})
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        label, key, group = panels[k]
        for i, (name, s) in enumerate(summaries.items()):
            xs, ys = _series(s["yaw"], key, group)
            ax.plot(xs, ys, marker="o", lw=2 if k == 0 else 1.5, ms=4, color=f"C{i}", label=name)
        ax.set_title(label, fontsize=10)
        style_yaw_axis(ax, edges)
        if k % ncols == 0:
            ax.set_ylabel("F1 (%)")
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("|yaw| bin centre (deg)")
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(out_png)
    atomic_write_bytes(out, buf.getvalue())
    return out
