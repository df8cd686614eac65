"""Plots for evaluation reports (matplotlib's Agg canvas; never touches the global backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facegs.core.storage import atomic_write_bytes
from facegs.evaluate.compare import sub_or_none


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


def plot_mean_f1_vs_yaw(summaries: Mapping[str, Mapping[str, Any]], base: str, out_png: str | os.PathLike) -> Path:
    """Mean F1 against |yaw| bin centre for every checkpoint (base drawn black and dashed) and, with
    more than one checkpoint, a second panel of the deltas vs base (percentage points)."""

    def series(bins, other=None):
        xs, ys = [], []
        for i, b in enumerate(bins):
            v = b["mean_f1"] if other is None else sub_or_none(b["mean_f1"], other[i]["mean_f1"])
            if b["n_images"] and v is not None:
                xs.append(b["center"])
                ys.append(100 * v)
        return xs, ys

    two = len(summaries) > 1
    fig = Figure(figsize=(10.5 if two else 5.5, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)[0]
    edges = sorted({e for s in summaries.values() for b in s["yaw"] for e in (b["lo"], b["hi"])})
    others = [n for n in summaries if n != base]
    for k, n in enumerate([base, *others]):
        xs, ys = series(summaries[n]["yaw"])
        style = dict(color="black", ls="--", lw=2, zorder=3) if n == base else dict(color=f"C{k - 1}", lw=2)
        axes[0].plot(xs, ys, marker="o", ms=4, label=n + (" (base)" if n == base and n != "base" else ""), **style)
        if two and n != base:
            xs, ys = series(summaries[n]["yaw"], summaries[base]["yaw"])
            axes[1].plot(xs, ys, marker="o", ms=4, label=f"{n} − {base}", **style)
    axes[0].set_title("mean F1 (foreground classes)", fontsize=10)
    axes[0].set_ylabel("F1 (%)")
    if two:
        axes[1].axhline(0, color="black", lw=0.8)
        axes[1].set_title(f"Δ mean F1 vs {base}", fontsize=10)
        axes[1].set_ylabel("percentage points")
    for ax in axes:
        style_yaw_axis(ax, edges)
        ax.set_xlabel("|yaw| bin centre (deg)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Face parsing against |yaw|", fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)
