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
written as the metrics JSON; it uses the caller's Ray when one is initialised. The options, the
driver's checks and the steps of a worker's loop are :mod:`facegs.train.finetune` (no Ray); this
module is the Ray Train shell around them, and its command line is derived from
:class:`facegs.train.finetune.FinetuneConfig`.

Exit status: 0 on success, 1 when training failed (after --max-failures restarts), 2 for bad
arguments (missing manifest, too few shards, unknown label set, unusable --init, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import fsspec
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from facegs.core.errors import InputError
from facegs.core.options import add_options, from_namespace
from facegs.core.storage import put_bytes_atomic
from facegs.shards.stages import split_shards
from facegs.train.epochs import (
    HISTORY_FILE,
    PARSER_FILE,
    epoch_record,
    event,
    initial_model,
    json_default,
    make_data,
    make_training,
    maybe_fail,
    restore,
    run_epoch,
    write_checkpoint,
)
from facegs.train.finetune import FinetuneConfig, metrics_path, prepare
from ray_jobs.ray_session import connect


class FinetuneError(RuntimeError):
    """Training failed (after Ray Train's restarts) or produced no checkpoint."""


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop (see the module docstring). ``config``: ``{"cfg": FinetuneConfig as a
    dict, "init_ref": object ref of prepare()'s initial weights, "shards", "driver_id"}``."""

    c = FinetuneConfig.from_any(config["cfg"])
    torch.set_num_threads(max(1, c.threads))
    cv2.setNumThreads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"
    torch.manual_seed(c.seed)
    init = ray.get(config["init_ref"])
    net = initial_model(init)
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = restore(d, init, net, ctx.get_experiment_name())
    else:
        restored = restore(None, init, net, ctx.get_experiment_name())
    history = restored.history
    start_epoch = restored.epoch + 1
    model = ray.train.torch.prepare_model(net)  # moves to the device; DDP when world > 1
    tcfg, optimizer, scaler, step = make_training(c, model, restored, use_amp)
    data = make_data(c, split_shards(config["shards"], rank, world), rank, world, init["label_set"], use_amp)
    for epoch in range(start_epoch, c.epochs):
        data.set_epoch(epoch)
        if rank == 0:
            event(c.events_log, event="epoch_start", epoch=epoch, resumed_from_epoch=restored.epoch,
                  run=config["driver_id"], world_size=world)
        stats, step = run_epoch(model, data, optimizer, tcfg, device, scaler, step, rank=rank,
                                report_keys=c.report_keys,
                                before_step=lambda i, e=epoch: maybe_fail(c.fail_injection, rank, e, i))
        record = epoch_record(epoch, step, _gather(stats), resumed_from=restored.epoch, start_epoch=start_epoch,
                              run=config["driver_id"], device=device.type, amp=use_amp)
        history.append(record)
        if rank == 0:
            event(c.events_log, event="epoch_end", epoch=epoch, loss=record["loss"], run=config["driver_id"])
            with tempfile.TemporaryDirectory(prefix="facegs-ft-ckpt-") as d:
                write_checkpoint(d, model, c, init, optimizer, scaler, epoch, step, history)
                ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(record)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def _write_bytes(url: str, data: bytes, so: dict[str, Any] | None) -> None:
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
    cfg = FinetuneConfig.from_any(config).absolute()
    t0 = time.time()
    info = prepare(cfg)
    driver_id = uuid.uuid4().hex[:12]
    started = connect(cfg.address, cfg.num_cpus)
    try:
        init_ref = ray.put(info["init"])
        worker_cfg = {"cfg": asdict(cfg), "init_ref": init_ref, "shards": info["shards"], "driver_id": driver_id}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=worker_cfg,
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=RunConfig(name=cfg.name, storage_path=cfg.storage_path,
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
        "out": cfg.out, "metrics_path": metrics_path(cfg.out), "checkpoint_path": ckpt_path, "run_path": run_path,
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
    _write_bytes(summary["metrics_path"], json.dumps(summary, indent=1, default=json_default).encode(),
                 cfg.storage_options)
    return summary


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, FinetuneConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    cfg = from_namespace(FinetuneConfig, make_parser().parse_args(argv))
    try:
        summary = run_finetune(cfg)
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
