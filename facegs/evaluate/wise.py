"""Choosing WiSE-FT's mixing weight on the user's near-frontal validation views (an evaluation).

In: a base and a fine-tuned parser (:mod:`facegs.train.wise` interpolates them) and labelled
validation views (:func:`facegs.evaluate.testsets.load_test_items`). Out: the largest ``alpha`` whose
mean F1 on those views loses at most ``max_drop`` points against the base, the table of every
alpha's score, and (:func:`write_chosen`) the interpolated checkpoint with both in its metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from facegs.evaluate.compare import evaluate_checkpoints
from facegs.parser.checkpoint import load_parser
from facegs.parser.model import ParserModel
from facegs.train.wise import DEFAULT_ALPHAS, interpolate_parsers, write_interpolated


def overall_mean_f1(results: Any, name: str) -> float:
    """Mean F1 (points) over all views of one evaluated checkpoint (NaN when undefined)."""
    v = results[name].summary()["overall"]["mean_f1"]
    return float("nan") if v is None else 100.0 * float(v)


WISE_RULES = ("largest", "best")


def evaluate_alphas(base: ParserModel, ft: ParserModel, items: Sequence[Any], alphas: Sequence[float], *,
                    flip_tta: bool = False, progress: bool = False,
                    include: Sequence[float] = (0.0,)) -> tuple[list[float], list[str], Any]:
    """Every interpolation of ``base`` and ``ft`` at ``alphas`` (plus ``include``; sorted, unique)
    evaluated on ``items``: ``(alphas, checkpoint names, EvalResults)`` with the names in the order
    of the alphas (``"a0300"`` = alpha 0.3)."""
    grid = sorted({float(a) for a in alphas} | {float(a) for a in include})
    names = [f"a{int(round(a * 1000)):04d}" for a in grid]
    models = {n: interpolate_parsers(base, ft, a) for n, a in zip(names, grid)}
    return grid, names, evaluate_checkpoints(models, items, flip_tta=flip_tta, progress=progress, pitch_bins=None)


def choose_alpha(base: ParserModel, ft: ParserModel, val_items: Sequence[Any], *, max_drop: float = 1.0,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, flip_tta: bool = False, rule: str = "largest",
                 progress: bool = False) -> tuple[float, list[dict[str, float]]]:
    """Choose the interpolation ``alpha`` among those in ``alphas`` (0 = the base is always a
    candidate) whose mean F1 on ``val_items`` (near-frontal labelled views,
    :func:`facegs.evaluate.testsets.load_test_items`) is at least the base's minus ``max_drop`` points.

    ``rule``: ``largest`` takes the largest such alpha (the most fine-tuning the validation set
    allows); ``best`` the one with the highest validation mean F1 (the smallest on ties: WiSE-FT's
    mixing coefficient chosen on held-out data). ``0.0`` when none qualifies. Returns
    ``(alpha, [{"alpha", "mean_f1"}, ...])``.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 points, got {max_drop}")
    if rule not in WISE_RULES:
        raise ValueError(f"rule must be one of {WISE_RULES}, got {rule!r}")
    grid, names, res = evaluate_alphas(base, ft, val_items, alphas, flip_tta=flip_tta, progress=progress)
    table = [{"alpha": a, "mean_f1": overall_mean_f1(res, n)} for a, n in zip(grid, names)]
    floor = table[0]["mean_f1"] - max_drop
    ok = [row for row in table if row["mean_f1"] >= floor]
    if not ok:
        return 0.0, table
    if rule == "best":
        return max(ok, key=lambda row: (row["mean_f1"], -row["alpha"]))["alpha"], table
    return max(row["alpha"] for row in ok), table


def write_chosen(base_path: str | os.PathLike, ft_path: str | os.PathLike, out: str | os.PathLike,
                 val_items: Sequence[Any], *, max_drop: float = 1.0, flip_tta: bool = False, rule: str = "largest",
                 progress: bool = False, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load both checkpoints once, :func:`choose_alpha` on ``val_items`` and write the interpolated
    checkpoint (:func:`facegs.train.wise.write_interpolated`); its ``wise_ft`` metadata also records
    the number of views, ``max_drop`` and the alpha table. Returns that metadata."""
    base, ft = load_parser(base_path), load_parser(ft_path)
    alpha, table = choose_alpha(base, ft, val_items, max_drop=max_drop, flip_tta=flip_tta, rule=rule,
                                progress=progress)
    return write_interpolated(base_path, ft_path, out, alpha, base=base, ft=ft,
                              extra={"val_views": len(val_items), "max_drop": float(max_drop), "rule": rule,
                                     "table": table,
                                     **dict(extra or {})})
