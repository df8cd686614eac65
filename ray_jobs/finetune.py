"""Fine-tune a face parser on facegs shards with Ray Train (TorchTrainer, DDP).

    python -m ray_jobs.finetune --shards ROOT_URL --init CKPT --out OUT_CKPT \\
        --storage-path DIR --name RUN [--workers 2] [--use-gpu] [--epochs E] [--epoch-length N] ...

What it does:

- Every Ray Train worker builds the parser from --init (a facegs checkpoint or a bare BiSeNet
  state_dict in the published layout, read once by the driver with
  :func:`facegs.parser.checkpoint.load_parser` and shipped through the object store, so workers
  need no access to the file), wraps it with ``ray.train.torch.prepare_model`` (DDP when there is
  more than one worker; backend set explicitly: nccl with --use-gpu, gloo on CPU) and trains with
  the facegs recipe (:func:`facegs.train.loop.train_step`: SGD, poly LR with warm-up, OHEM on all
  heads, optional structure-via-consensus loss; float16 autocast with a GradScaler on GPU only).
- Data: :class:`facegs.shards.stream.ShardDataset` with ``resampled=True`` and ``epoch_length=N`` samples
  per rank per epoch, labels remapped to the parser's label set, then
  :class:`facegs.train.shard_batches.ShardTrainTransform` (augmentation seeded per
  (seed, epoch, key); the shard confidence map as per-pixel loss weight unless --no-confidence;
  ignore pixels -> 255). Optionally a fraction --mix-ratio of every batch comes from the original
  labelled data (--mix-dir), see :class:`facegs.train.mixing.MixedIterable`.
  --background-prob P puts a shard sample over a new background with probability P (procedural
  clutter, or images from --backgrounds DIR; exact with the renders' ``alpha.png``, else the
  background-labelled pixels are replaced; :mod:`facegs.train.backgrounds`): renders are over
  black, real images are not. --abs-yaw-range LO HI keeps only shard samples with LO <= |yaw| <= HI
  (the driver drops shards whose yaw histogram cannot hold one; the stream filters per sample).
- Ranks see disjoint samples: the manifest's shard list (same order on every rank) is split
  strided by world rank BEFORE resampling (``split_shards(shards, rank, world)``: rank r gets
  shards r, r + W, r + 2W, ...), and each rank's ShardDataset resamples only within its own subset.
  Every sample lives in exactly one shard and keys are unique in a dataset, so the key sets of two
  ranks never intersect (within an epoch and across epochs). Resampling itself is per rank and
  DataLoader worker (generators seeded by (seed, epoch, rank, worker)), so a rank may draw a sample
  twice. Every rank yields exactly N samples per epoch, hence the same number of steps: uneven data
  cannot hang DDP. Needs at least --workers shards (an error otherwise).
- After every epoch all ranks call ``ray.train.report`` (a barrier): rank 0 reports the epoch's
  metrics (mean loss over all ranks, LR, samples/s, time waiting for data, and per rank: sample
  and step counts, the number of distinct sample keys, a SHA-256 of the sorted key set and up to
  --report-keys of the keys themselves) with a checkpoint directory holding ``parser.pt`` (a facegs
  checkpoint, :func:`facegs.parser.checkpoint.save_parser`), ``train_state.pt`` (optimizer,
  GradScaler, epoch and step: plain tensors and numbers, read back with ``weights_only=True``) and
  ``history.json`` (the metrics of every epoch so far).
- Fault tolerance: a worker that dies (or raises) makes Ray Train restart the whole worker group
  (up to --max-failures times); the training function then resumes from ``ray.train.get_checkpoint()``,
  the last checkpoint the Ray Train controller registered, instead of starting over. (The
  controller collects reports by polling the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s
  by default, and a worker holds at most one unpolled report, on which ``ray.train.report`` blocks:
  a failure within that window after a report can lose the most recent report, and training then
  resumes an epoch earlier.) A driver that dies is resumed by running the
  same command again with the same --storage-path and --name: Ray Train finds the run's
  checkpoints there and ``get_checkpoint()`` returns the latest. Asking for more --epochs than a
  finished run had continues it. A run name belongs to one parser: a different --init (width,
  classes) under an existing --name is an error; use a new --name.
- At the end the last checkpoint's parser is written to --out (loadable by ``load_parser``; its
  input size is --size) and the per-epoch history to ``<out stem>.metrics.json`` next to it.
- Epoch length: each ``report`` waits until the controller has collected the previous one (up to
  one poll interval), so epochs should last well over RAY_TRAIN_HEALTH_CHECK_INTERVAL_S.

In-process use (a pipeline step): ``run_finetune(FinetuneConfig(shards=..., init=..., out=...,
storage_path=..., name=..., ...))`` (or a dict of the same fields) returns the summary that is also
written as the metrics JSON; it uses the caller's Ray when one is initialised.

Exit status: 0 on success, 1 when training failed (after --max-failures restarts), 2 for bad
arguments (missing manifest, too few shards, unknown label set, unusable --init, ...).
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
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ray_jobs.ray_session import connect

PARSER_FILE = "parser.pt"
STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


class FinetuneError(RuntimeError):
    """Training failed (after Ray Train's restarts) or produced no checkpoint."""


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; :func:`run_finetune` takes this (or a dict of its fields).

    Paths: ``shards`` and ``out`` may be fsspec URLs (with ``storage_options``); ``init`` too (it
    is read by the driver only). ``storage_path`` is where Ray Train keeps the run (local directory,
    or shared storage such as ``s3://`` or NFS for multi-node clusters). ``mix_dir`` is a local
    directory every worker can read.
    """

    shards: str
    init: str
    out: str
    storage_path: str
    name: str
    workers: int = 2
    use_gpu: bool = False
    epochs: int = 10
    epoch_length: int = 1024           # samples per rank per epoch
    batch_size: int = 8                # per rank
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 50             # capped at a tenth of all steps
    size: int = 512                    # square training crop (and the output checkpoint's input size)
    augment: bool = True
    use_confidence: bool = True        # shard confidence maps as per-pixel loss weights
    consensus_weight: float = 0.0
    mix_dir: str | None = None
    mix_label_set: str | None = None
    mix_ratio: float = 0.0
    abs_yaw_range: tuple[float, float] | None = None  # keep shard samples with lo <= |yaw| <= hi (degrees)
    background_prob: float = 0.0       # replace a shard sample's background with this probability
    backgrounds: str = "procedural"    # "procedural" or a local directory of background images
    storage_options: dict[str, Any] | None = None
    seed: int = 0
    max_failures: int = 2
    address: str | None = None
    num_cpus: int | None = None        # CPUs of a new local Ray (default: all)
    loader_workers: int = 1            # DataLoader worker processes per rank
    shuffle_buffer: int = 16
    threads: int = 1                   # torch CPU threads per training worker
    cpus_per_worker: float = 1.0
    keep_checkpoints: int = 2
    report_keys: int = 16              # sample keys listed per rank per epoch in the metrics
    train_log_level: str = "WARNING"   # Ray Train's own logs (INFO prints every report's metrics)
    events_log: str | None = None      # local JSONL: rank 0's epoch start/end events (monitoring)
    fail_injection: dict[str, Any] | None = None  # tests only: see _maybe_fail

    @classmethod
    def from_any(cls, cfg: "FinetuneConfig | dict[str, Any]") -> "FinetuneConfig":
        if isinstance(cfg, cls):
            return cfg
        names = {f.name for f in fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise ValueError(f"unknown fine-tuning options {sorted(unknown)}")
        return cls(**cfg)


def _metrics_path(out: str) -> str:
    base = out[: -len(Path(out).suffix)] if Path(out).suffix else out
    return base + ".metrics.json"


def _check_numbers(c: FinetuneConfig) -> None:
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


def _shards_in_yaw_range(table: Any, yaw_range: tuple[float, float]) -> list[str]:
    """Manifest shards whose yaw histogram has samples in bins overlapping ``lo <= |yaw| <= hi``
    (the manifest keeps 15-degree bins, so a kept shard may hold none exactly in range; the stream
    filters per sample). Raises ValueError when no shard can hold such a sample."""
    from facegs.shards.schema import YAW_EDGES

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
    from facegs.core.errors import InputError
    from facegs.core.labels import get_label_set
    from facegs.core.storage import fetch_local
    from facegs.parser.bisenet import BiSeNet
    from facegs.parser.checkpoint import load_parser
    from facegs.shards.manifest import read_manifest
    from facegs.train.mixing import scan_labelled_dir

    _check_numbers(cfg)
    so = cfg.storage_options or {}
    table = read_manifest(cfg.shards, so)  # InputError "dataset has no manifest" names the path
    shards = table.column("shard").to_pylist()
    n_samples = int(sum(table.column("num_samples").to_pylist()))
    if cfg.abs_yaw_range is not None:
        shards = _shards_in_yaw_range(table, cfg.abs_yaw_range)
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
        from facegs.train.backgrounds import BackgroundConfig, BackgroundSampler

        BackgroundSampler(BackgroundConfig(cfg.background_prob, cfg.backgrounds))  # an empty directory fails here
    mix_count = 0
    if cfg.mix_dir:
        if cfg.mix_label_set is not None:
            get_label_set(cfg.mix_label_set)
        mix_count = len(scan_labelled_dir(cfg.mix_dir, cfg.mix_label_set))
    return {"shards": shards, "n_manifest_samples": n_samples, "init": init, "mix_items": mix_count}


# ----------------------------------------------------------------------------------------------
# the training function (runs in every Ray Train worker)
# ----------------------------------------------------------------------------------------------


def _maybe_fail(fail: dict[str, Any] | None, rank: int, epoch: int, step_in_epoch: int) -> None:
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


def _event(path: str | None, **rec: Any) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": time.time(), **rec}) + "\n")


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop (see the module docstring). ``config``: :func:`_worker_config`."""
    import cv2
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from facegs.parser.bisenet import BiSeNet
    from facegs.parser.checkpoint import save_parser
    from facegs.shards.stages import split_shards
    from facegs.shards.stream import ShardDataset
    from facegs.train.augment import AugmentConfig
    from facegs.train.backgrounds import BackgroundConfig
    from facegs.train.loop import TrainConfig, make_optimizer, train_step
    from facegs.train.losses import ParserLossConfig
    from facegs.train.mixing import MixedIterable, scan_labelled_dir
    from facegs.train.shard_batches import ShardTrainTransform, batches_per_epoch, make_train_loader

    c = FinetuneConfig.from_any(config["cfg"])
    torch.set_num_threads(max(1, c.threads))
    cv2.setNumThreads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"
    torch.manual_seed(c.seed)

    init = ray.get(config["init_ref"])
    net = BiSeNet(init["n_classes"], init["width"])
    net.load_state_dict(init["state_dict"], strict=True)
    label_set = init["label_set"]

    # --- resume -------------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    state: dict[str, Any] | None = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / PARSER_FILE, map_location="cpu", weights_only=True)
            m = saved["meta"]
            if (int(m["n_classes"]), float(m["width"]), m["label_set"]) != (init["n_classes"], init["width"],
                                                                             label_set):
                raise ValueError(f"run '{ctx.get_experiment_name()}' holds a checkpoint of a different parser "
                                 f"({m['n_classes']} classes, width {m['width']}, {m['label_set']}) than --init "
                                 f"({init['n_classes']}, {init['width']}, {label_set}): use a new --name")
            net.load_state_dict(saved["state_dict"], strict=True)
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
    resumed_from = int(state["epoch"]) if state is not None else -1
    start_epoch = resumed_from + 1

    model = ray.train.torch.prepare_model(net)  # moves to the device; DDP when world > 1
    bpe = batches_per_epoch(c.epoch_length, c.batch_size, c.loader_workers)
    total_steps = c.epochs * bpe
    tcfg = TrainConfig(steps=total_steps, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                       weight_decay=c.weight_decay, warmup_steps=min(c.warmup_steps, max(1, total_steps // 10)),
                       loss=ParserLossConfig(consensus_weight=c.consensus_weight), seed=c.seed,
                       num_workers=c.loader_workers)
    optimizer = make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])

    # --- data ---------------------------------------------------------------------------------
    my_shards = split_shards(config["shards"], rank, world)
    aug = AugmentConfig(out_size=c.size) if c.augment else None
    bg = BackgroundConfig(c.background_prob, c.backgrounds) if c.background_prob > 0 else None
    transform = ShardTrainTransform(c.size, aug, seed=c.seed, use_confidence=c.use_confidence, label_set=label_set,
                                    background=bg)
    mixing = c.mix_ratio > 0
    shard_ds = ShardDataset(c.shards, storage_options=c.storage_options, shards=my_shards, rank=rank,
                            world_size=world, shuffle_buffer=c.shuffle_buffer, seed=c.seed, resampled=True,
                            epoch_length=c.epoch_length, target_label_set=label_set,
                            transform=None if mixing else transform,
                            abs_yaw_range=tuple(c.abs_yaw_range) if c.abs_yaw_range is not None else None)
    dataset: Any = shard_ds
    if mixing:
        items = scan_labelled_dir(c.mix_dir, c.mix_label_set)  # type: ignore[arg-type]
        dataset = MixedIterable(shard_ds, items, c.mix_ratio, transform=transform, seed=c.seed, rank=rank,
                                world_size=world)
    loader = make_train_loader(dataset, c.batch_size, c.loader_workers, pin_memory=use_amp)

    # --- epochs -------------------------------------------------------------------------------
    for epoch in range(start_epoch, c.epochs):
        dataset.set_epoch(epoch)
        transform.set_epoch(epoch)
        if rank == 0:
            _event(c.events_log, event="epoch_start", epoch=epoch, resumed_from_epoch=resumed_from,
                   run=config["driver_id"], world_size=world)
        t_epoch = time.perf_counter()
        data_wait = compute = first_wait = 0.0
        losses: list[float] = []
        keys: list[str] = []
        n_mix = 0
        lr = 0.0
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            t1 = time.perf_counter()
            data_wait += t1 - t0
            if not losses:
                first_wait = t1 - t0  # includes starting the loader processes and filling the buffer
            if batch is None:
                break
            _maybe_fail(c.fail_injection, rank, epoch, len(losses))
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
        mine = {"rank": rank, "samples": len(keys), "steps": len(losses), "loss_sum": float(np.sum(losses)),
                "loss": float(np.mean(losses)) if losses else float("nan"), "wall_s": wall,
                "samples_per_s": len(keys) / wall if wall > 0 else 0.0, "data_wait_s": data_wait,
                "first_batch_wait_s": first_wait,
                "compute_s": compute, "mix_samples": n_mix, "n_unique_keys": len(uniq),
                "keys_sha256": hashlib.sha256("\n".join(uniq).encode()).hexdigest(),
                "keys": uniq[: c.report_keys], "keys_truncated": len(uniq) > c.report_keys,
                "n_shards": len(my_shards), "shards": my_shards[: c.report_keys]}
        ranks = _gather(mine)
        n_all = sum(r["samples"] for r in ranks)
        wall_max = max(r["wall_s"] for r in ranks)
        record = {
            "epoch": epoch, "step": step, "world_size": world,
            "loss": sum(r["loss_sum"] for r in ranks) / max(1, sum(r["steps"] for r in ranks)),
            "lr": lr, "samples": n_all, "samples_per_s": n_all / wall_max if wall_max > 0 else 0.0,
            "epoch_time_s": wall_max, "data_wait_s": max(r["data_wait_s"] for r in ranks),
            "data_wait_frac": max(r["data_wait_s"] / r["wall_s"] for r in ranks if r["wall_s"] > 0),
            "steady_data_wait_frac": max((r["data_wait_s"] - r["first_batch_wait_s"]) / r["wall_s"]
                                         for r in ranks if r["wall_s"] > 0),
            "resumed_from_epoch": resumed_from, "attempt_start_epoch": start_epoch, "run": config["driver_id"],
            "device": device.type, "amp": use_amp,
            "ranks": [{k: v for k, v in r.items() if k != "loss_sum"} for r in ranks],
        }
        history.append(record)
        if rank == 0:
            _event(c.events_log, event="epoch_end", epoch=epoch, loss=record["loss"], run=config["driver_id"])
            with tempfile.TemporaryDirectory(prefix="facegs-ft-ckpt-") as d:
                save_parser(Path(d) / PARSER_FILE, model, label_set=label_set, input_size=(c.size, c.size),
                            normalization=init["normalization"],
                            extra_meta={"finetune": {"epoch": epoch, "step": step, "shards": c.shards,
                                                     "init": c.init, "init_sha256": init["init_sha256"],
                                                     "size": c.size, "mix_ratio": c.mix_ratio,
                                                     "consensus_weight": c.consensus_weight}})
                torch.save({"optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else {},
                            "epoch": epoch, "step": step}, Path(d) / STATE_FILE)
                (Path(d) / HISTORY_FILE).write_text(json.dumps(history))
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(record)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def _write_bytes(url: str, data: bytes, so: dict[str, Any] | None) -> None:
    import fsspec

    from facegs.core.storage import put_bytes_atomic

    fs, path = fsspec.core.url_to_fs(url, **(so or {}))
    if "://" not in url:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    put_bytes_atomic(fs, path, data)


def run_finetune(config: FinetuneConfig | dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one fine-tuning run in-process; returns a summary dict.

    Starts a local Ray when none is initialised and no address is given (and shuts it down at the
    end); uses the caller's Ray otherwise. Resumes automatically when ``storage_path``/``name``
    already hold checkpoints of this run.

    Returns ``{"out", "metrics_path", "checkpoint_path" (Ray's last checkpoint), "run_path",
    "epochs_done", "final_loss", "first_loss", "history" (one record per epoch, see the module
    docstring), "resumed_from_epoch" (epoch of the checkpoint this call started from; -1 = fresh),
    "worker_restarts" (worker-group restarts in this call that went on to finish an epoch),
    "driver_runs" (calls that contributed epochs to this run), "wall_s", "run" (this call's id)}``.

    Raises ``ValueError``/``KeyError``/``InputError``/``FileNotFoundError`` for bad configs (before any
    Ray work) and :class:`FinetuneError` when training fails.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = FinetuneConfig.from_any(config)
    t0 = time.time()
    info = prepare(cfg)
    driver_id = uuid.uuid4().hex[:12]
    started = connect(cfg.address, cfg.num_cpus)
    try:
        init_ref = ray.put(info["init"])
        worker_cfg = {"cfg": asdict(cfg), "init_ref": init_ref, "shards": info["shards"], "driver_id": driver_id}
        resources = {"CPU": cfg.cpus_per_worker}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=worker_cfg,
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=cfg.name, storage_path=_local_abs(cfg.storage_path),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=max(1, cfg.keep_checkpoints)),
                                 logging_config=LoggingConfig(log_level=cfg.train_log_level)),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise FinetuneError(f"fine-tuning run '{cfg.name}' failed: {e}") from e
        if result.checkpoint is None:
            raise FinetuneError(f"fine-tuning run '{cfg.name}' reported no checkpoint")
        with result.checkpoint.as_directory() as d:
            parser_bytes = (Path(d) / PARSER_FILE).read_bytes()
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
        ckpt_path = result.checkpoint.path
        run_path = result.path
    finally:
        if started:
            ray.shutdown()

    _write_bytes(cfg.out, parser_bytes, cfg.storage_options)
    mine = [h for h in history if h.get("run") == driver_id]
    summary = {
        "out": cfg.out, "metrics_path": _metrics_path(cfg.out), "checkpoint_path": ckpt_path, "run_path": run_path,
        "run": driver_id, "epochs_done": len(history),
        "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
        "resumed_from_epoch": mine[0]["resumed_from_epoch"] if mine else (history[-1]["epoch"] if history else -1),
        "worker_restarts": max(0, len({h["resumed_from_epoch"] for h in mine}) - 1),
        "driver_runs": len({h["run"] for h in history}), "wall_s": round(time.time() - t0, 2),
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "fail_injection"},
                   "storage_options": sorted(cfg.storage_options or {})},  # names only: no secrets in files
        "n_shards": len(info["shards"]), "n_manifest_samples": info["n_manifest_samples"],
        "history": history,
    }
    _write_bytes(summary["metrics_path"], json.dumps(summary, indent=1, default=_json_default).encode(),
                 cfg.storage_options)
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = FinetuneConfig("", "", "", "", "")
    p = argparse.ArgumentParser(prog="python -m ray_jobs.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--shards", required=True, help="shard dataset root holding manifest.parquet (path or fsspec URL)")
    io.add_argument("--init", required=True,
                    help="parser to start from: facegs checkpoint or BiSeNet state_dict (e.g. 79999_iter.pth)")
    io.add_argument("--out", required=True, help="where to write the fine-tuned facegs checkpoint (path or URL); "
                                                 "the metrics go to <out without suffix>.metrics.json")
    io.add_argument("--storage-options", default=None, help="JSON dict of fsspec options for --shards/--init/--out")
    run = p.add_argument_group("Ray Train run (resumable: same --storage-path and --name continue a run)")
    run.add_argument("--storage-path", required=True,
                     help="Ray Train storage for checkpoints (local dir; shared storage such as s3:// or NFS for "
                          "multi-node clusters)")
    run.add_argument("--name", required=True, help="run name under --storage-path")
    run.add_argument("--workers", type=int, default=d.workers, help="training workers (ranks)")
    run.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, float16 autocast")
    run.add_argument("--max-failures", type=int, default=d.max_failures,
                     help="worker-group restarts (from the last checkpoint) before giving up; -1 = unlimited")
    run.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all)")
    run.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    run.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per worker")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--epoch-length", type=int, default=d.epoch_length, help="samples per rank per epoch")
    tr.add_argument("--batch-size", type=int, default=d.batch_size, help="per rank")
    tr.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (poly decay, power 0.9)")
    tr.add_argument("--momentum", type=float, default=d.momentum)
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay)
    tr.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    tr.add_argument("--size", type=int, default=d.size, help="square training size in px (multiple of 32 advised)")
    tr.add_argument("--no-augment", action="store_true", help="plain resize instead of scale/rotate/crop/jitter/flip")
    tr.add_argument("--no-confidence", action="store_true", help="do not weight the loss by the shard confidence")
    tr.add_argument("--consensus-weight", type=float, default=d.consensus_weight,
                    help="weight of the structure-via-consensus loss (0 = off)")
    tr.add_argument("--seed", type=int, default=d.seed)
    da = p.add_argument_group("data")
    da.add_argument("--mix-dir", default=None,
                    help="original labelled data mixed in: images/ + labels/ (label maps in --mix-label-set) or "
                         "facegs subject directories; a local path every worker can read")
    da.add_argument("--mix-label-set", default=None, help="label set of --mix-dir's label maps (e.g. celebamask_hq)")
    da.add_argument("--mix-ratio", type=float, default=d.mix_ratio, help="fraction of samples from --mix-dir")
    da.add_argument("--abs-yaw-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="train only on shard samples with LO <= |yaw| <= HI degrees (e.g. 30 90: the renders "
                         "cover the extreme poses, --mix-dir the frontal ones)")
    da.add_argument("--background-prob", type=float, default=d.background_prob,
                    help="probability of replacing a shard sample's background (renders are over black; "
                         "real images are not): composited with the sample's alpha, else its background pixels")
    da.add_argument("--backgrounds", default=d.backgrounds,
                    help="'procedural' (random clutter, default) or a local directory of background images")
    da.add_argument("--loader-workers", type=int, default=d.loader_workers, help="DataLoader processes per rank")
    da.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer)
    da.add_argument("--report-keys", type=int, default=d.report_keys, help="sample keys listed per rank per epoch")
    run.add_argument("--train-log-level", default=d.train_log_level,
                     help="log level of Ray Train's own messages (INFO also prints every report's metrics)")
    da.add_argument("--events-log", default=None, help="local JSONL file for rank 0's epoch start/end events")
    p.add_argument("--fail-injection", default=None, help=argparse.SUPPRESS)  # tests: JSON for _maybe_fail
    return p.parse_args(argv)


def _local_abs(p: str | None) -> str | None:
    """Local relative paths made absolute on the driver: Ray Train workers run in another directory."""
    return p if p is None or "://" in p else str(Path(p).expanduser().resolve())


def config_from_args(a: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        shards=_local_abs(a.shards), init=_local_abs(a.init), out=_local_abs(a.out), storage_path=a.storage_path,
        name=a.name, workers=a.workers,
        use_gpu=a.use_gpu, epochs=a.epochs, epoch_length=a.epoch_length, batch_size=a.batch_size, lr=a.lr,
        momentum=a.momentum, weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, size=a.size,
        augment=not a.no_augment, use_confidence=not a.no_confidence, consensus_weight=a.consensus_weight,
        mix_dir=_local_abs(a.mix_dir), mix_label_set=a.mix_label_set, mix_ratio=a.mix_ratio,
        abs_yaw_range=tuple(a.abs_yaw_range) if a.abs_yaw_range else None, background_prob=a.background_prob,
        backgrounds=a.backgrounds if a.backgrounds == "procedural" else _local_abs(a.backgrounds),
        storage_options=json.loads(a.storage_options) if a.storage_options else None, seed=a.seed,
        max_failures=a.max_failures, address=a.address, num_cpus=a.num_cpus, loader_workers=a.loader_workers,
        shuffle_buffer=a.shuffle_buffer, threads=a.threads, cpus_per_worker=a.cpus_per_worker,
        keep_checkpoints=a.keep_checkpoints, report_keys=a.report_keys, events_log=a.events_log,
        train_log_level=a.train_log_level,
        fail_injection=json.loads(a.fail_injection) if a.fail_injection else None,
    )


def main(argv: list[str] | None = None) -> int:
    from facegs.core.errors import InputError

    a = parse_args(argv)
    try:
        cfg = config_from_args(a)
        summary = run_finetune(cfg)
    except json.JSONDecodeError as e:
        print(f"error: --storage-options is not valid JSON: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, InputError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    h = summary["history"]
    print(f"[finetune] {summary['epochs_done']} epochs (this call started after epoch "
          f"{summary['resumed_from_epoch']}; {summary['worker_restarts']} worker-group restart(s)); loss "
          f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}; last epoch "
          f"{h[-1]['samples_per_s']:.1f} samples/s" if h else "[finetune] no epoch ran", flush=True)
    print(f"[finetune] parser:  {summary['out']}\n[finetune] metrics: {summary['metrics_path']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
