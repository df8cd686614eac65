"""Prediction with a parser: class probabilities for RGB images, with left/right-aware flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch

from facegs.core.labels import CANONICAL, get_label_set


@torch.no_grad()
def predict_probs(parser, rgb_batch: np.ndarray, flip_tta: bool = False) -> torch.Tensor:
    """Class probabilities [B, 19, H, W] (canonical order) for RGB [B, H, W, 3] uint8.

    With ``flip_tta`` the mirrored image is parsed too; its probabilities are mirrored back with
    left/right channels swapped, then averaged with the direct prediction.
    """
    probs = torch.softmax(parser.predict_logits(rgb_batch).float().cpu(), dim=1)
    if flip_tta:
        flipped = np.ascontiguousarray(rgb_batch[:, :, ::-1])
        pf = torch.softmax(parser.predict_logits(flipped).float().cpu(), dim=1)
        perm = torch.from_numpy(get_label_set(CANONICAL).flip_permutation)
        probs = 0.5 * (probs + pf[:, perm].flip(-1))
    return probs


def predict_images(parser, images: list[np.ndarray], flip_tta: bool = False) -> list[torch.Tensor]:
    """Probabilities [19, H, W] for each RGB [H, W, 3] uint8 image: one batch when all images share
    a size, else one call per image."""
    if len({im.shape for im in images}) == 1:
        return list(predict_probs(parser, np.stack(images), flip_tta=flip_tta))
    return [predict_probs(parser, im[None], flip_tta=flip_tta)[0] for im in images]
