"""The fit's final evaluation: render every view once and compare with the inputs and the ground truth.

Out: ``psnr``, ``label_acc_input`` (agreement with the initial labels) and, when ground truth
exists, ``label_acc_gt``, ``input_acc_gt``, ``miou_gt`` and ``input_miou_gt``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set
from facegs.fit.config import FitConfig
from facegs.fit.data import ViewData
from facegs.splat.rgb_labels import render_rgb_labels
from facegs.splat.scene import Params


@torch.no_grad()
def evaluate(params: Params, data: ViewData, cfg: FitConfig, backend: str = "auto", batch: int = 4) -> dict[str, float]:
    """Render every view once (black background) and compare with the inputs and ground truth.

    Returns ``psnr`` (vs the masked images), ``label_acc_input`` (rendered argmax vs the input
    labels), and when ``gt_labels`` exist ``label_acc_gt`` (rendered vs GT), ``input_acc_gt``
    (input labels vs GT: what the parser alone achieved), ``miou_gt`` and ``input_miou_gt``.
    """
    has_lab = data.labels is not None
    mse, n_pix = 0.0, 0
    hits = {"in": [0, 0], "gt": [0, 0], "in_gt": [0, 0]}
    K = get_label_set(CANONICAL).num_classes
    iou = {"fused": (torch.zeros(K), torch.zeros(K)), "input": (torch.zeros(K), torch.zeros(K))}
    for s in range(0, len(data), batch):
        idx = torch.arange(s, min(s + batch, len(data)), device=data.images.device)
        bg = torch.zeros(len(idx), 3, device=data.images.device)
        rgb, lab, alpha, _ = render_rgb_labels(params, data.viewmats[idx], data.Ks[idx], data.width, data.height, bg,
                                    label_mode=cfg.label_mode, label_background=cfg.label_background,
                                    label_bg_logit=cfg.label_bg_logit, with_labels=has_lab, backend=backend,
                                    tile_size=cfg.tile_size)
        tgt = data.images[idx] * (1.0 if data.masks is None else data.masks[idx][..., None])
        mse += float(((rgb.clamp(0, 1) - tgt) ** 2).sum())
        n_pix += tgt.numel()
        if not has_lab:
            continue
        pred = lab.argmax(-1)
        _count(hits["in"], pred, data.labels[idx])
        if data.gt_labels is not None:
            gt = data.gt_labels[idx]
            _count(hits["gt"], pred, gt)
            _count(hits["in_gt"], data.labels[idx], gt)
            _iou_counts(iou["fused"], pred, gt, K)
            _iou_counts(iou["input"], data.labels[idx], gt, K)
    out = {"psnr": 10 * math.log10(1.0 / max(mse / max(n_pix, 1), 1e-12))}
    if has_lab:
        out["label_acc_input"] = hits["in"][0] / max(hits["in"][1], 1)
    if has_lab and data.gt_labels is not None:
        out["label_acc_gt"] = hits["gt"][0] / max(hits["gt"][1], 1)
        out["input_acc_gt"] = hits["in_gt"][0] / max(hits["in_gt"][1], 1)
        out["miou_gt"] = _miou(*iou["fused"])
        out["input_miou_gt"] = _miou(*iou["input"])
    return out


def _iou_counts(acc: tuple[Tensor, Tensor], pred: Tensor, gt: Tensor, K: int) -> None:
    """Accumulate per-class intersection and union (pixels where ``gt`` is not ignored)."""
    ok = gt != IGNORE_INDEX
    p = torch.where(ok, pred, K).reshape(-1).clamp(max=K).cpu()
    g = torch.where(ok, gt, K).reshape(-1).cpu()
    inter = torch.bincount(g[p == g], minlength=K + 1)[:K]
    area_p = torch.bincount(p, minlength=K + 1)[:K]
    area_g = torch.bincount(g, minlength=K + 1)[:K]
    acc[0].add_(inter.float())
    acc[1].add_((area_p + area_g - inter).float())


def _miou(inter: Tensor, union: Tensor) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth."""
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def _count(acc: list[int], pred: Tensor, target: Tensor) -> None:
    ok = target != IGNORE_INDEX
    acc[0] += int(((pred == target) & ok).sum())
    acc[1] += int(ok.sum())
