"""Weight-space interpolation of a base and a fine-tuned parser (WiSE-FT), with the mixing weight
chosen on near-frontal validation views.

Fine-tuning on extreme-pose renders moves a parser away from the near-frontal regime it was
trained for. WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) takes
the weights ``theta(alpha) = (1 - alpha) * theta_base + alpha * theta_ft`` of the two models
(same architecture, fine-tuned from the base, so they sit in one loss basin) and trades the
base's accuracy on its own domain against the fine-tuned model's gains, without retraining.

:func:`choose_alpha` makes the trade explicit with data a user has: their near-frontal labelled
validation views (e.g. a held-out part of CelebAMask-HQ). It scores ``alpha`` on a grid and keeps
the largest one whose mean F1 on those views is at most ``max_drop`` points below the base's.
Extreme-pose ground truth, which users lack, is never needed.

Interpolated tensors: every floating-point parameter and buffer (BatchNorm running statistics
included); integer buffers (``num_batches_tracked``) are taken from the fine-tuned model.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser, save_parser
from facegs.parser.model import ParserModel

DEFAULT_ALPHAS = tuple(float(a) for a in np.round(np.linspace(0.0, 1.0, 11), 2))


def interpolate_state_dicts(base: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * ft`` for floating tensors; integer tensors from ``ft``.

    Raises ValueError when the keys or shapes differ (not the same architecture) or ``alpha`` is
    outside [0, 1].
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if set(base) != set(ft):
        diff = sorted(set(base) ^ set(ft))
        raise ValueError(f"the two parsers have different parameters (e.g. {diff[:3]}): not the same architecture")
    out: dict[str, torch.Tensor] = {}
    for k, b in base.items():
        f = ft[k]
        if b.shape != f.shape:
            raise ValueError(f"parameter {k}: shape {list(b.shape)} in the base, {list(f.shape)} fine-tuned")
        if torch.is_floating_point(f):
            out[k] = torch.lerp(b.detach().to(f.dtype), f.detach(), float(alpha)).clone()
        else:
            out[k] = f.detach().clone()
    return out


def _bisenet(pm: ParserModel, what: str) -> BiSeNet:
    if not isinstance(pm.module, BiSeNet):
        raise ValueError(f"{what}: a {pm.meta.get('source')} parser cannot be interpolated; give a facegs checkpoint "
                         "or a BiSeNet state_dict")
    return pm.module


def interpolate_parsers(base: ParserModel, ft: ParserModel, alpha: float) -> ParserModel:
    """A new :class:`ParserModel` with the interpolated weights; label set, input size and
    normalisation from ``ft`` (both must share the label set)."""
    nb, nf = _bisenet(base, "base"), _bisenet(ft, "fine-tuned")
    if base.label_set != ft.label_set:
        raise ValueError(f"label sets differ: base '{base.label_set}', fine-tuned '{ft.label_set}'")
    net = copy.deepcopy(nf).cpu()
    net.load_state_dict(interpolate_state_dicts(nb.state_dict(), nf.state_dict(), alpha), strict=True)
    meta = {**ft.meta, "wise_alpha": float(alpha)}
    return ParserModel(net, ft.label_set, input_size=ft.input_size, normalization=ft.normalization, meta=meta,
                       device=ft.device)




def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_interpolated(base_path: str | os.PathLike, ft_path: str | os.PathLike, out: str | os.PathLike,
                       alpha: float, *, base: ParserModel | None = None, ft: ParserModel | None = None,
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Interpolate the two checkpoints (loaded ``weights_only``, unless already given as ``base`` /
    ``ft``) at ``alpha`` and save a facegs checkpoint at ``out`` (atomically). Its metadata
    ``extra.wise_ft`` records ``alpha``, both inputs' sha256 and ``extra``; that dict is returned."""
    base = base if base is not None else load_parser(base_path)
    ft = ft if ft is not None else load_parser(ft_path)
    pm = interpolate_parsers(base, ft, alpha)
    info = {"alpha": float(alpha), "base": str(base_path), "base_sha256": _sha256(base_path),
            "finetuned": str(ft_path), "finetuned_sha256": _sha256(ft_path), **dict(extra or {})}
    save_parser(out, pm.module, label_set=pm.label_set, input_size=pm.input_size, normalization=pm.normalization,
                extra_meta={"wise_ft": info})
    return info
