"""A loaded face parser: :class:`ParserModel`, whose outputs are always in the canonical label set.

A parser trained on another label set (CelebAMask-HQ's own order, FaRL, LaPa) is mapped to
``celebamask19`` logits through :func:`to_canonical_logits`: canonical classes the source lacks get
:data:`MISSING_LOGIT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facegs.core.labels import CANONICAL, LabelSet, get_label_set, mapping_lut
from facegs.parser.normalize import Normalization, normalize_rgb

MISSING_LOGIT = -1.0e4
"""Logit given to canonical classes the source label set lacks (finite: safe under interpolation
and in float16; far below any logit a trained parser produces)."""


def _label_set(ls: LabelSet | str) -> LabelSet:
    return get_label_set(ls) if isinstance(ls, str) else ls


def canonical_sources(label_set: LabelSet | str) -> list[list[int]]:
    """For each canonical class, the indices of ``label_set``'s classes that map to it (may be empty)."""
    src = _label_set(label_set)
    lut = mapping_lut(src, CANONICAL)[: src.num_classes]
    n_canon = get_label_set(CANONICAL).num_classes
    return [[int(i) for i in np.flatnonzero(lut == c)] for c in range(n_canon)]


def to_canonical_logits(logits: torch.Tensor, label_set: LabelSet | str) -> torch.Tensor:
    """``[B, K_src, H, W]`` logits in ``label_set`` order -> ``[B, 19, H, W]`` in ``celebamask19`` order.

    One source class -> its logit; several -> ``logsumexp``; none -> :data:`MISSING_LOGIT`.
    The canonical set itself is returned unchanged (same tensor).
    """
    ls = _label_set(label_set)
    if logits.ndim != 4 or logits.shape[1] != ls.num_classes:
        raise ValueError(f"label set '{ls.name}' has {ls.num_classes} classes; logits have shape {list(logits.shape)}")
    if ls.name == CANONICAL:
        return logits
    sources = canonical_sources(ls)
    b, _, h, w = logits.shape
    out = logits.new_full((b, len(sources), h, w), MISSING_LOGIT)
    for c, idx in enumerate(sources):
        if len(idx) == 1:
            out[:, c] = logits[:, idx[0]]
        elif idx:
            out[:, c] = torch.logsumexp(logits[:, idx], dim=1)
    return out


class ParserModel:
    """A loaded face parser with its label set, input size and normalisation.

    ``module``: the ``nn.Module`` (or TorchScript module), kept in eval mode; it takes normalised
    ``[B, 3, h, w]`` float and returns ``[B, K, h', w']`` logits (or a tuple whose element 0 is).
    ``label_set``: the module's own label set. ``input_size``: ``(h, w)`` images are resized to
    before the module, or ``None`` to run at each image's own size. ``meta``: JSON-able description.
    """

    def __init__(
        self,
        module: nn.Module,
        label_set: str,
        *,
        input_size: tuple[int, int] | None,
        normalization: Normalization | str | Mapping[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        get_label_set(label_set)  # raises KeyError for unknown sets
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.label_set = label_set
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.normalization = Normalization.from_spec(normalization)
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        """Number of classes of the module's own label set."""
        return get_label_set(self.label_set).num_classes

    def raw_logits(self, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB ``uint8 [B, H, W, 3]`` (or ``[B, 3, H, W]``, or float in [0, 1]) -> ``[B, K, H, W]``
        logits in the module's own label set, on ``self.device``.

        Images are normalised, resized to ``input_size`` (bilinear, antialiased when shrinking), run
        through the module, and the logits resized back to ``(H, W)`` (bilinear, align_corners=False).
        """
        x = normalize_rgb(torch.as_tensor(rgb).to(self.device), self.normalization)
        h, w = int(x.shape[2]), int(x.shape[3])
        if self.input_size is not None and (h, w) != self.input_size:
            shrink = self.input_size[0] < h or self.input_size[1] < w
            x = F.interpolate(x, size=list(self.input_size), mode="bilinear", align_corners=False, antialias=shrink)
        with torch.no_grad():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 4 or out.shape[1] != self.num_classes:
            raise ValueError(
                f"parser output has shape {list(out.shape)}; label set '{self.label_set}' needs [B, {self.num_classes}, h, w]"
            )
        if tuple(out.shape[2:]) != (h, w):
            out = F.interpolate(out, size=[h, w], mode="bilinear", align_corners=False)
        return out.float()

    def predict_logits(self, rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """RGB ``uint8 [B, H, W, 3]`` -> ``[B, 19, H, W]`` float logits in canonical ``celebamask19`` order.

        See :meth:`raw_logits` for resizing and :func:`to_canonical_logits` for the class mapping.
        """
        return to_canonical_logits(self.raw_logits(rgb), self.label_set)

    def predict_labels(self, rgb: np.ndarray | torch.Tensor) -> np.ndarray:
        """RGB ``uint8 [B, H, W, 3]`` -> ``[B, H, W]`` uint8 canonical class indices (argmax)."""
        return self.predict_logits(rgb).argmax(dim=1).to(torch.uint8).cpu().numpy()
