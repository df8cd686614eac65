"""Parser training in plain PyTorch (one process). The Ray Train job reuses these functions.

Recipe (the reference BiSeNet trainer's): SGD with momentum, poly learning-rate decay
(power 0.9), OHEM cross-entropy (threshold 0.7) on all three heads, optional
structure-via-consensus loss (Masi et al. 2020) on the main head. Augmentation lives in
:mod:`facegs.train.augment`, data in :mod:`facegs.train.data`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from facegs.train.augment import AugmentConfig
from facegs.train.losses import ParserLossConfig, total_parser_loss


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all seeds explicit)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    warmup_steps: int = 50
    loss: ParserLossConfig = field(default_factory=ParserLossConfig)  # OHEM (+ consensus if weight > 0)
    seed: int = 0
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warm-up then ``lr * (1 - step/steps) ** power``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, 1.0 - step / max(1, cfg.steps)) ** cfg.poly_power


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD; no weight decay on BatchNorm parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum,
    )


def parser_loss(outputs: tuple[torch.Tensor, ...], target: torch.Tensor, cfg: TrainConfig,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """OHEM on every head (+ consensus on the main head when ``cfg.loss.consensus_weight > 0``).

    ``outputs``: heads [B, C, H, W]; ``target`` [B, H, W] int64 (255 = ignore); ``weight``
    optional per-pixel [B, H, W]. Returns the loss and its parts as floats (``loss`` = total).
    """
    loss, parts = total_parser_loss(outputs, target, cfg.loss, weight=weight)
    out = {k: float(v) for k, v in parts.items() if k != "total"}
    out["loss"] = float(loss.detach())
    return loss, out


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               step: int, cfg: TrainConfig, device: torch.device | str = "cpu",
               scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One optimisation step on ``batch`` (keys ``image`` [B,3,H,W], ``labels`` [B,H,W])."""
    lr = poly_lr(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr
    model.train()
    x = batch["image"].to(device, non_blocking=True)
    y = batch["labels"].to(device, non_blocking=True)
    w = batch.get("weight")
    w = None if w is None else w.to(device, non_blocking=True)
    use_amp = scaler is not None
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=use_amp):
        outputs = model(x)
    outputs = tuple(o.float() for o in outputs)
    loss, parts = parser_loss(outputs, y, cfg, weight=w)
    if not math.isfinite(parts["loss"]):
        raise FloatingPointError(f"non-finite loss at step {step}: {parts}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    parts["lr"] = lr
    return parts


def infinite_batches(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Cycle through a DataLoader forever, advancing the dataset's epoch for fresh augmentation."""
    epoch = 0
    while True:
        ds = loader.dataset
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_loop(model: nn.Module, batches: Iterator[dict[str, torch.Tensor]], cfg: TrainConfig,
               device: torch.device | str = "cpu", start_step: int = 0,
               optimizer: torch.optim.Optimizer | None = None,
               on_step: Callable[[int, dict[str, float]], None] | None = None,
               progress: bool = True) -> list[dict[str, float]]:
    """Run ``cfg.steps - start_step`` steps; returns per-step loss records."""
    model.to(device)
    optimizer = optimizer or make_optimizer(model, cfg)
    history: list[dict[str, float]] = []
    bar = tqdm(range(start_step, cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        parts = train_step(model, next(batches), optimizer, step, cfg, device)
        parts["step"] = step
        history.append(parts)
        if on_step is not None:
            on_step(step, parts)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{parts['lr']:.2e}")
    return history
