"""Fine-tuning a parser on shards: the options, the driver's checks, and the per-worker steps (no Ray).

In: a shard dataset root (``manifest.parquet``), an initial parser checkpoint, optionally an original
labelled set to mix in. Out: a fine-tuned facegs parser checkpoint and one metrics record per epoch.
``ray_jobs/finetune.py`` is the Ray Train shell around these pieces: it owns the worker context
(rank, device, DDP), the barrier (``ray.train.report``) and the checkpoint registry; everything
here runs as well in one process.

- :class:`FinetuneConfig`: every option, documented at its field (the CLI derives from it).
- :func:`prepare`: the driver's checks and what the workers need (shard list, initial weights).
- :mod:`facegs.train.epochs`: the steps of a worker's loop.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from facegs.core.errors import InputError
from facegs.core.labels import get_label_set
from facegs.core.options import opt
from facegs.core.storage import fetch_local
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import load_parser
from facegs.shards.manifest import read_manifest
from facegs.shards.schema import YAW_EDGES
from facegs.train.backgrounds import BackgroundConfig, BackgroundSampler
from facegs.train.mixing import scan_labelled_dir

IO = "input and output"


RUN = "Ray Train run (resumable: same --storage-path and --name continue a run)"


TRAIN = "training"


DATA = "data"


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
