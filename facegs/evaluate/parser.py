"""Evaluate a parser on labelled views, binned by head pose (``facegs.evaluate.metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from facegs.core.imageio import read_labels, read_rgb
from facegs.core.labels import CANONICAL, remap
from facegs.evaluate.metrics import PoseBinnedEvaluator
from facegs.parser.predict import predict_images
from facegs.train.data import ViewItem


def evaluate_parser(parser, items: Sequence[ViewItem], *, batch_size: int = 16, flip_tta: bool = False,
                    evaluator: PoseBinnedEvaluator | None = None, progress: bool = True) -> PoseBinnedEvaluator:
    """Predict every view and accumulate pose-binned metrics at the label maps' own resolution."""
    ev = evaluator or PoseBinnedEvaluator(CANONICAL)
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress, dynamic_ncols=True):
        chunk = items[start:start + batch_size]
        imgs = [read_rgb(it.image) for it in chunk]
        gts = [remap(read_labels(it.labels), it.label_set, CANONICAL) for it in chunk]
        for probs, gt, it in zip(predict_images(parser, imgs, flip_tta), gts, chunk):
            ev.update(probs.argmax(dim=0).numpy().astype(np.uint8), gt, yaw=it.yaw, pitch=it.pitch)
    return ev
