"""Fine-tuning a parser on shards: the options, the driver's checks, and the per-worker steps (no Ray).

In: a shard dataset root (``manifest.parquet``), an initial parser checkpoint, optionally an original
labelled set to mix in. Out: a fine-tuned facegs parser checkpoint and one metrics record per epoch.
``ray_jobs/finetune.py`` is the Ray Train shell around these pieces: it owns the worker context
(rank, device, DDP), the barrier (``ray.train.report``) and the checkpoint registry; everything
here runs as well in one process.

- :class:`FinetuneConfig`: every option, documented at its field (the CLI derives from it).
- :func:`prepare`: the driver's checks and what the workers need (shard list, initial weights).
- :func:`restore`, :func:`make_training`, :func:`make_data`, :func:`run_epoch`,
  :func:`epoch_record`, :func:`write_checkpoint`: the steps of a worker's loop.

Checkpoint directory: ``parser.pt`` (:func:`facegs.parser.checkpoint.save_parser`),
``train_state.pt`` (optimizer, GradScaler, epoch and step: plain tensors and numbers, read back with
``weights_only=True``) and ``history.json`` (the metrics of every epoch so far).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegs.core.errors import InputError
from facegs.core.labels import get_label_set
from facegs.core.options import opt
from facegs.core.storage import fetch_local
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser, save_parser
from facegs.shards.manifest import read_manifest
from facegs.shards.schema import YAW_EDGES
from facegs.shards.stream import ShardDataset
from facegs.train.augment import AugmentConfig
from facegs.train.backgrounds import BackgroundConfig, BackgroundSampler
from facegs.train.loop import TrainConfig, make_optimizer, train_step
from facegs.train.losses import ParserLossConfig
from facegs.train.mixing import MixedIterable, scan_labelled_dir
from facegs.train.shard_batches import ShardTrainTransform, batches_per_epoch, make_train_loader

PARSER_FILE = "parser.pt"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
IO, RUN, TRAIN, DATA = ("input and output", "Ray Train run (resumable: same --storage-path and --name continue a run)",
                        "training", "data")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; ``run_finetune`` takes this (or a dict of its fields).

    Paths: ``shards`` and ``out`` may be fsspec URLs (with ``storage_options``); ``init`` too (it
    is read by the driver only). ``storage_path`` is where Ray Train keeps the run (local directory,
    or shared storage such as ``s3://`` or NFS for multi-node clusters). ``mix_dir`` is a local
    directory every worker can read. Local relative paths are made absolute on the driver
    (:meth:`absolute`): workers run in another directory.
    """

    shards: str = field(metadata=opt("shard dataset root holding manifest.parquet (path or fsspec URL)", group=IO))
    init: str = field(metadata=opt(
        "parser to start from: facegs checkpoint or BiSeNet state_dict (e.g. 79999_iter.pth)", group=IO))
    out: str = field(metadata=opt("where to write the fine-tuned facegs checkpoint (path or URL); the metrics go to "
                                  "<out without suffix>.metrics.json", group=IO))
    storage_path: str = field(metadata=opt(
        "Ray Train storage for checkpoints (local dir; shared storage such as s3:// or NFS for multi-node clusters)",
        group=RUN))
    name: str = field(metadata=opt("run name under --storage-path", group=RUN))
    workers: int = field(default=2, metadata=opt("training workers (ranks)", group=RUN))
    use_gpu: bool = field(default=False, metadata=opt("one GPU per worker, NCCL, float16 autocast", group=RUN))
    epochs: int = field(default=10, metadata=opt("epochs (more than a finished run had: it continues)", group=TRAIN))
    epoch_length: int = field(default=1024, metadata=opt("samples per rank per epoch", group=TRAIN))
    batch_size: int = field(default=8, metadata=opt("per rank", group=TRAIN))
    lr: float = field(default=1e-3, metadata=opt("peak learning rate (poly decay, power 0.9)", group=TRAIN))
    momentum: float = field(default=0.9, metadata=opt("SGD momentum", group=TRAIN))
    weight_decay: float = field(default=5e-4, metadata=opt("SGD weight decay", group=TRAIN))
    warmup_steps: int = field(default=50, metadata=opt("linear warm-up steps (capped at a tenth of all steps)",
                                                       group=TRAIN))
    size: int = field(default=512, metadata=opt(
        "square training size in px (multiple of 32 advised; also the output checkpoint's input size)", group=TRAIN))
    augment: bool = field(default=True, metadata=opt(
        "plain resize instead of scale/rotate/crop/jitter/flip", flag="--no-augment", group=TRAIN))
    use_confidence: bool = field(default=True, metadata=opt(
        "do not weight the loss by the shard confidence", flag="--no-confidence", group=TRAIN))
    consensus_weight: float = field(default=0.0, metadata=opt(
        "weight of the structure-via-consensus loss (0 = off)", group=TRAIN))
    seed: int = field(default=0, metadata=opt("seed of sampling, augmentation and initialisation", group=TRAIN))
    mix_dir: str | None = field(default=None, metadata=opt(
        "original labelled data mixed in: images/ + labels/ (label maps in --mix-label-set) or facegs subject "
        "directories; a local path every worker can read", group=DATA))
    mix_label_set: str | None = field(default=None, metadata=opt(
        "label set of --mix-dir's label maps (e.g. celebamask_hq)", group=DATA))
    mix_ratio: float = field(default=0.0, metadata=opt("fraction of samples from --mix-dir", group=DATA))
    abs_yaw_range: tuple[float, float] | None = field(default=None, metadata=opt(
        "train only on shard samples with LO <= |yaw| <= HI degrees (e.g. 30 90: the renders cover the extreme "
        "poses, --mix-dir the frontal ones)", metavar=("LO", "HI"), group=DATA))
    background_prob: float = field(default=0.0, metadata=opt(
        "probability of replacing a shard sample's background (renders are over black; real images are not): "
        "composited with the sample's alpha, else its background pixels", group=DATA))
    backgrounds: str = field(default="procedural", metadata=opt(
        "'procedural' (random clutter) or a local directory of background images", group=DATA))
    storage_options: dict[str, Any] | None = field(default=None, metadata=opt(
        "JSON dict of fsspec options for --shards/--init/--out", group=IO))
    max_failures: int = field(default=2, metadata=opt(
        "worker-group restarts (from the last checkpoint) before giving up; -1 = unlimited", group=RUN))
    address: str | None = field(default=None, metadata=opt(
        "Ray address (default: $RAY_ADDRESS, else a new local Ray)", group=RUN))
    num_cpus: int | None = field(default=None, metadata=opt("CPUs of a new local Ray (default: all)", group=RUN))
    loader_workers: int = field(default=1, metadata=opt("DataLoader processes per rank", group=DATA))
    shuffle_buffer: int = field(default=16, metadata=opt("sample shuffle buffer per reader", group=DATA))
    threads: int = field(default=1, metadata=opt("torch CPU threads per worker", group=RUN))
    cpus_per_worker: float = field(default=1.0, metadata=opt("CPUs reserved per training worker", group=RUN))
    keep_checkpoints: int = field(default=2, metadata=opt("checkpoints Ray Train keeps", group=RUN))
    report_keys: int = field(default=16, metadata=opt("sample keys listed per rank per epoch", group=DATA))
    train_log_level: str = field(default="WARNING", metadata=opt(
        "log level of Ray Train's own messages (INFO also prints every report's metrics)", group=RUN))
    events_log: str | None = field(default=None, metadata=opt(
        "local JSONL file for rank 0's epoch start/end events", group=DATA))
    fail_injection: dict[str, Any] | None = field(default=None, metadata=opt(argparse.SUPPRESS))  # tests: maybe_fail

    @classmethod
    def from_any(cls, cfg: FinetuneConfig | dict[str, Any]) -> FinetuneConfig:
        if isinstance(cfg, cls):
            return cfg
        names = {f.name for f in fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise ValueError(f"unknown fine-tuning options {sorted(unknown)}")
        return cls(**cfg)

    def absolute(self) -> FinetuneConfig:
        """A copy whose local relative paths are absolute (resolved on the driver)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("shards", "init", "out", "storage_path", "mix_dir"):
            d[k] = local_abs(d[k])
        if d["backgrounds"] != "procedural":
            d["backgrounds"] = local_abs(d["backgrounds"])
        if d["abs_yaw_range"] is not None:
            d["abs_yaw_range"] = tuple(d["abs_yaw_range"])
        return FinetuneConfig(**d)


def local_abs(p: str | None) -> str | None:
    """A local relative path made absolute (URLs and None pass through)."""
    return p if p is None or "://" in p else str(Path(p).expanduser().resolve())


def metrics_path(out: str) -> str:
    """``<out without suffix>.metrics.json``."""
    base = out[: -len(Path(out).suffix)] if Path(out).suffix else out
    return base + ".metrics.json"


def check_numbers(c: FinetuneConfig) -> None:
    """Raise ``ValueError`` naming the option for any out-of-range number."""
    checks = [
        (c.workers >= 1, "--workers must be >= 1"),
        (c.epochs >= 1, "--epochs must be >= 1"),
        (c.batch_size >= 1, "--batch-size must be >= 1"),
        (c.size >= 32, "--size must be >= 32 (BiSeNet downsamples by 32)"),
        (c.lr > 0, "--lr must be > 0"),
        (0.0 <= c.mix_ratio < 1.0, "--mix-ratio must be in [0, 1)"),
        (c.max_failures >= -1, "--max-failures must be >= -1"),
        (c.loader_workers >= 0, "--loader-workers must be >= 0"),
        (c.consensus_weight >= 0, "--consensus-weight must be >= 0"),
        (0.0 <= c.background_prob <= 1.0, "--background-prob must be in [0, 1]"),
        (c.abs_yaw_range is None or 0.0 <= c.abs_yaw_range[0] <= c.abs_yaw_range[1],
         "--abs-yaw-range must be LO HI with 0 <= LO <= HI degrees"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    w = max(1, c.loader_workers)
    if c.epoch_length // w < c.batch_size:
        raise ValueError(f"--epoch-length {c.epoch_length} gives each of the {w} loader worker(s) fewer than "
                         f"--batch-size {c.batch_size} samples: no full batch (increase --epoch-length)")
    if c.mix_ratio > 0 and not c.mix_dir:
        raise ValueError("--mix-ratio > 0 needs --mix-dir")


def shards_in_yaw_range(table: Any, yaw_range: tuple[float, float]) -> list[str]:
    """Manifest shards whose yaw histogram has samples in bins overlapping ``lo <= |yaw| <= hi``
    (the manifest keeps 15-degree bins, so a kept shard may hold none exactly in range; the stream
    filters per sample). Raises ValueError when no shard can hold such a sample."""
    lo, hi = yaw_range
    bins = []
    for i, (a, b) in enumerate(zip(YAW_EDGES[:-1], YAW_EDGES[1:])):
        abs_lo = 0.0 if a < 0 < b else min(abs(a), abs(b))  # |yaw| over the bin spans [abs_lo, abs_hi]
        if abs_lo <= hi and max(abs(a), abs(b)) >= lo:
            bins.append(i)
    keep = [sh for sh, hist in zip(table.column("shard").to_pylist(), table.column("yaw_hist").to_pylist())
            if any(hist[i] for i in bins)]
    if not keep:
        raise ValueError(f"--abs-yaw-range {lo:g} {hi:g}: no sample of the dataset has |yaw| in that range")
    return keep


def prepare(cfg: FinetuneConfig) -> dict[str, Any]:
    """Validate a config on the driver; returns what the workers need (shard list, init weights, ...).

    Raises ``ValueError`` / ``KeyError`` / :class:`facegs.core.errors.InputError` / ``FileNotFoundError``
    with a message that names the offending argument.
    """
    check_numbers(cfg)
    so = cfg.storage_options or {}
    table = read_manifest(cfg.shards, so)  # InputError "dataset has no manifest" names the path
    shards = table.column("shard").to_pylist()
    n_samples = int(sum(table.column("num_samples").to_pylist()))
    if cfg.abs_yaw_range is not None:
        shards = shards_in_yaw_range(table, cfg.abs_yaw_range)
    if len(shards) < cfg.workers:
        raise ValueError(f"the dataset has {len(shards)} shard(s) but --workers is {cfg.workers}: every rank needs "
                         f"its own shards (write smaller shards, e.g. a lower --maxcount, or use fewer workers)")
    with tempfile.TemporaryDirectory(prefix="facegs-init-") as tmp:
        try:
            local = fetch_local(cfg.init, Path(tmp), so)
            pm = load_parser(local, "cpu")
        except FileNotFoundError:
            raise InputError("parser checkpoint not found", field="--init", path=cfg.init) from None
        except InputError as e:
            raise InputError(e.message, field="--init", path=e.path or cfg.init) from None
        if not isinstance(pm.module, BiSeNet):
            raise ValueError(f"--init {cfg.init}: a {pm.meta.get('source')} parser cannot be fine-tuned; give a facegs "
                             "checkpoint or a BiSeNet state_dict")
        net = pm.module
        init = {"state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                "n_classes": int(net.n_classes), "width": float(net.width), "label_set": pm.label_set,
                "normalization": pm.normalization.to_dict(), "init_meta": {k: v for k, v in pm.meta.items()
                                                                            if k in ("source", "input_size", "width")},
                "init_sha256": hashlib.sha256(Path(local).read_bytes()).hexdigest()}
    if cfg.background_prob > 0:
        BackgroundSampler(BackgroundConfig(cfg.background_prob, cfg.backgrounds))  # an empty directory fails here
    mix_count = 0
    if cfg.mix_dir:
        if cfg.mix_label_set is not None:
            get_label_set(cfg.mix_label_set)
        mix_count = len(scan_labelled_dir(cfg.mix_dir, cfg.mix_label_set))
    return {"shards": shards, "n_manifest_samples": n_samples, "init": init, "mix_items": mix_count}


# ----------------------------------------------------------------------------------------------
# the steps of one worker's loop
# ----------------------------------------------------------------------------------------------


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
