"""The steps of one fine-tuning worker's loop, without Ray (``ray_jobs/finetune.py`` runs them).

:func:`restore` a checkpoint, :func:`make_training` (optimizer, scaler, step), :func:`make_data`
(the rank's own shards, resampled, mixed), :func:`run_epoch`, :func:`epoch_record` (all ranks'
statistics), :func:`write_checkpoint`.

Checkpoint directory: ``parser.pt`` (:func:`facegs.parser.checkpoint.save_parser`),
``train_state.pt`` (optimizer, GradScaler, epoch and step: plain tensors and numbers, read back with
``weights_only=True``) and ``history.json`` (the metrics of every epoch so far).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import save_parser
from facegs.shards.stream import ShardDataset
from facegs.train.augment import AugmentConfig
from facegs.train.backgrounds import BackgroundConfig
from facegs.train.finetune import FinetuneConfig
from facegs.train.loop import TrainConfig, make_optimizer, train_step
from facegs.train.losses import ParserLossConfig
from facegs.train.mixing import MixedIterable, scan_labelled_dir
from facegs.train.shard_batches import ShardTrainTransform, batches_per_epoch, make_train_loader

PARSER_FILE = "parser.pt"


STATE_FILE = "train_state.pt"


HISTORY_FILE = "history.json"


def initial_model(init: dict[str, Any]) -> BiSeNet:
    """The parser :func:`prepare` shipped to the workers."""
    net = BiSeNet(init["n_classes"], init["width"])
    net.load_state_dict(init["state_dict"], strict=True)
    return net


@dataclass
class Restored:
    """What a checkpoint directory holds: the training state (None: a fresh run) and the history."""

    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        """The last finished epoch (-1: none)."""
        return int(self.state["epoch"]) if self.state is not None else -1


def restore(ckpt_dir: str | os.PathLike | None, init: dict[str, Any], net: torch.nn.Module, run_name: str) -> Restored:
    """Load a checkpoint directory into ``net`` (checked to be the same parser as ``init``)."""
    if ckpt_dir is None:
        return Restored()
    d = Path(ckpt_dir)
    saved = torch.load(d / PARSER_FILE, map_location="cpu", weights_only=True)
    m = saved["meta"]
    if (int(m["n_classes"]), float(m["width"]), m["label_set"]) != (init["n_classes"], init["width"],
                                                                     init["label_set"]):
        raise ValueError(f"run '{run_name}' holds a checkpoint of a different parser ({m['n_classes']} classes, "
                         f"width {m['width']}, {m['label_set']}) than --init ({init['n_classes']}, {init['width']}, "
                         f"{init['label_set']}): use a new --name")
    net.load_state_dict(saved["state_dict"], strict=True)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    return Restored(state, json.loads((d / HISTORY_FILE).read_text()))


def make_training(c: FinetuneConfig, model: torch.nn.Module, restored: Restored,
                  use_amp: bool) -> tuple[TrainConfig, torch.optim.Optimizer, Any, int]:
    """(train config, optimizer, GradScaler or None, global step) for a run, restored if resumed."""
    total_steps = c.epochs * batches_per_epoch(c.epoch_length, c.batch_size, c.loader_workers)
    tcfg = TrainConfig(steps=total_steps, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                       weight_decay=c.weight_decay, warmup_steps=min(c.warmup_steps, max(1, total_steps // 10)),
                       loss=ParserLossConfig(consensus_weight=c.consensus_weight), seed=c.seed,
                       num_workers=c.loader_workers)
    optimizer = make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    step = 0
    if restored.state is not None:
        optimizer.load_state_dict(restored.state["optimizer"])
        if scaler is not None and restored.state.get("scaler"):
            scaler.load_state_dict(restored.state["scaler"])
        step = int(restored.state["step"])
    return tcfg, optimizer, scaler, step


@dataclass
class TrainData:
    """One rank's data: the (mixed) dataset, its transform and loader, and the rank's shards."""

    dataset: Any
    transform: ShardTrainTransform
    loader: torch.utils.data.DataLoader
    shards: list[str]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.transform.set_epoch(epoch)


def make_data(c: FinetuneConfig, my_shards: Sequence[str], rank: int, world: int, label_set: str,
              pin_memory: bool) -> TrainData:
    """Rank ``rank``'s resampled shard stream (its own shards only), mixed with ``mix_dir`` when asked."""
    aug = AugmentConfig(out_size=c.size) if c.augment else None
    bg = BackgroundConfig(c.background_prob, c.backgrounds) if c.background_prob > 0 else None
    transform = ShardTrainTransform(c.size, aug, seed=c.seed, use_confidence=c.use_confidence, label_set=label_set,
                                    background=bg)
    mixing = c.mix_ratio > 0
    shard_ds = ShardDataset(c.shards, storage_options=c.storage_options, shards=list(my_shards), rank=rank,
                            world_size=world, shuffle_buffer=c.shuffle_buffer, seed=c.seed, resampled=True,
                            epoch_length=c.epoch_length, target_label_set=label_set,
                            transform=None if mixing else transform,
                            abs_yaw_range=tuple(c.abs_yaw_range) if c.abs_yaw_range is not None else None)
    dataset: Any = shard_ds
    if mixing:
        items = scan_labelled_dir(c.mix_dir, c.mix_label_set)  # type: ignore[arg-type]
        dataset = MixedIterable(shard_ds, items, c.mix_ratio, transform=transform, seed=c.seed, rank=rank,
                                world_size=world)
    loader = make_train_loader(dataset, c.batch_size, c.loader_workers, pin_memory=pin_memory)
    return TrainData(dataset, transform, loader, list(my_shards))


def run_epoch(model: torch.nn.Module, data: TrainData, optimizer: torch.optim.Optimizer, tcfg: TrainConfig,
              device: torch.device, scaler: Any, step: int, *, rank: int, report_keys: int,
              before_step: Callable[[int], None] | None = None) -> tuple[dict[str, Any], int]:
    """Train one epoch; returns (this rank's statistics, the new global step). ``before_step(i)`` is
    called before the i-th step (a test hook)."""
    use_amp = device.type == "cuda"
    t_epoch = time.perf_counter()
    data_wait = compute = first_wait = 0.0
    losses: list[float] = []
    keys: list[str] = []
    n_mix = 0
    lr = 0.0
    it = iter(data.loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        t1 = time.perf_counter()
        data_wait += t1 - t0
        if not losses:
            first_wait = t1 - t0  # includes starting the loader processes and filling the buffer
        if batch is None:
            break
        if before_step is not None:
            before_step(len(losses))
        parts = train_step(model, batch, optimizer, step, tcfg, device, scaler)
        if use_amp:
            torch.cuda.synchronize()
        compute += time.perf_counter() - t1
        step += 1
        losses.append(parts["loss"])
        lr = parts["lr"]
        keys.extend(batch["key"])
        n_mix += sum(1 for s in batch["source"] if s == "mix")
    wall = time.perf_counter() - t_epoch
    uniq = sorted(set(keys))
    stats = {"rank": rank, "samples": len(keys), "steps": len(losses), "loss_sum": float(np.sum(losses)),
             "loss": float(np.mean(losses)) if losses else float("nan"), "wall_s": wall,
             "samples_per_s": len(keys) / wall if wall > 0 else 0.0, "data_wait_s": data_wait,
             "first_batch_wait_s": first_wait, "compute_s": compute, "mix_samples": n_mix, "lr": lr,
             "n_unique_keys": len(uniq), "keys_sha256": hashlib.sha256("\n".join(uniq).encode()).hexdigest(),
             "keys": uniq[:report_keys], "keys_truncated": len(uniq) > report_keys,
             "n_shards": len(data.shards), "shards": data.shards[:report_keys]}
    return stats, step


def epoch_record(epoch: int, step: int, ranks: list[dict[str, Any]], *, resumed_from: int, start_epoch: int,
                 run: str, device: str, amp: bool) -> dict[str, Any]:
    """The epoch's metrics from every rank's :func:`run_epoch` statistics (mean loss over all ranks,
    throughput of the slowest rank, time waiting for data, per-rank key counts and hashes)."""
    n_all = sum(r["samples"] for r in ranks)
    wall_max = max(r["wall_s"] for r in ranks)
    return {
        "epoch": epoch, "step": step, "world_size": len(ranks),
        "loss": sum(r["loss_sum"] for r in ranks) / max(1, sum(r["steps"] for r in ranks)),
        "lr": ranks[0]["lr"], "samples": n_all, "samples_per_s": n_all / wall_max if wall_max > 0 else 0.0,
        "epoch_time_s": wall_max, "data_wait_s": max(r["data_wait_s"] for r in ranks),
        "data_wait_frac": max(r["data_wait_s"] / r["wall_s"] for r in ranks if r["wall_s"] > 0),
        "steady_data_wait_frac": max((r["data_wait_s"] - r["first_batch_wait_s"]) / r["wall_s"]
                                     for r in ranks if r["wall_s"] > 0),
        "resumed_from_epoch": resumed_from, "attempt_start_epoch": start_epoch, "run": run,
        "device": device, "amp": amp,
        "ranks": [{k: v for k, v in r.items() if k not in ("loss_sum", "lr")} for r in ranks],
    }


def write_checkpoint(d: str | os.PathLike, model: torch.nn.Module, c: FinetuneConfig, init: dict[str, Any],
                     optimizer: torch.optim.Optimizer, scaler: Any, epoch: int, step: int,
                     history: list[dict[str, Any]]) -> None:
    """Write the checkpoint directory (see the module docstring)."""
    d = Path(d)
    save_parser(d / PARSER_FILE, model, label_set=init["label_set"], input_size=(c.size, c.size),
                normalization=init["normalization"],
                extra_meta={"finetune": {"epoch": epoch, "step": step, "shards": c.shards, "init": c.init,
                                         "init_sha256": init["init_sha256"], "size": c.size,
                                         "mix_ratio": c.mix_ratio, "consensus_weight": c.consensus_weight}})
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch, "step": step}, d / STATE_FILE)
    (d / HISTORY_FILE).write_text(json.dumps(history))


def maybe_fail(fail: dict[str, Any] | None, rank: int, epoch: int, step_in_epoch: int) -> None:
    """Test hook: ``os._exit(code)`` on rank ``fail["rank"]`` after ``fail["after_steps"]`` steps of
    epoch ``fail["epoch"]`` (and ``fail["sleep_s"]`` seconds), once: the marker file ``fail["marker"]``
    (written first, with the epoch) turns it off for the restarted workers."""
    if not fail or rank != int(fail.get("rank", 0)) or epoch != int(fail["epoch"]):
        return
    if step_in_epoch != int(fail.get("after_steps", 1)):
        return
    marker = Path(fail["marker"])
    if marker.exists():
        return
    marker.write_text(json.dumps({"epoch": epoch, "rank": rank, "pid": os.getpid(), "step_in_epoch": step_in_epoch}))
    time.sleep(float(fail.get("sleep_s", 0.0)))  # e.g. let the controller register the last report first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(fail.get("exit_code", 1)))


def event(path: str | None, **rec: Any) -> None:
    """Append one JSON line to the events log (monitoring), if any."""
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), **rec}) + "\n")


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)``: non-finite floats -> null, anything else -> str."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
