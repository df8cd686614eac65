"""Evaluate a parser on labelled views, binned by head pose (``facegs.metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from facegs.imageio import read_labels, read_rgb
from facegs.labels import CANONICAL, remap
from facegs.metrics import PoseBinnedEvaluator
from facegs.parsing.data import ViewItem
from facegs.parsing.label_views import predict_probs


def evaluate_parser(parser, items: Sequence[ViewItem], *, batch_size: int = 16, flip_tta: bool = False,
                    evaluator: PoseBinnedEvaluator | None = None, progress: bool = True) -> PoseBinnedEvaluator:
    """Predict every view and accumulate pose-binned metrics at the label maps' own resolution."""
    ev = evaluator or PoseBinnedEvaluator(CANONICAL)
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress, dynamic_ncols=True):
        chunk = items[start:start + batch_size]
        imgs = [read_rgb(it.image) for it in chunk]
        gts = [remap(read_labels(it.labels), it.label_set, CANONICAL) for it in chunk]
        same = len({im.shape for im in imgs}) == 1
        groups = [list(range(len(chunk)))] if same else [[k] for k in range(len(chunk))]
        for g in groups:
            pred = predict_probs(parser, np.stack([imgs[k] for k in g]), flip_tta=flip_tta).argmax(dim=1).numpy()
            for j, k in enumerate(g):
                ev.update(pred[j].astype(np.uint8), gts[k], yaw=chunk[k].yaw, pitch=chunk[k].pitch)
    return ev
