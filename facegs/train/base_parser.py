"""The embedded default's base parser: a BiSeNet trained only on near-frontal synthetic views.

Published parsers are trained on CelebAMask-HQ, whose faces are near-frontal; they fail at large
yaw. To reproduce that failure mode with data facegs makes itself, the base parser sees training
subjects only at |yaw| <= 30 and |pitch| <= 15 (configurable). Training subjects are disjoint from
evaluation subjects: their seeds come from a separate namespace (``derive_seed("base-train", ...)``)
and their ids are ``train_XXXX``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from facegs.core.hashing import derive_seed
from facegs.parser.bisenet import BiSeNet
from facegs.parser.checkpoint import save_parser
from facegs.synth.generate import generate_subject
from facegs.synth.rigs import custom
from facegs.train.augment import AugmentConfig
from facegs.train.data import ParsingDataset, collect_views
from facegs.train.loop import TrainConfig, infinite_batches, seed_everything, train_loop


@dataclass(frozen=True)
class BaseParserConfig:
    subjects: int = 24
    views: int = 12
    res: int = 128
    width: float = 0.25
    max_abs_yaw: float = 30.0
    max_abs_pitch: float = 15.0
    distance_jitter: float = 0.1  # relative
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


def frontal_rig(rng: np.random.Generator, cfg: BaseParserConfig) -> list:
    """Random near-frontal cameras for one training subject (rig angles; head pose adds a few deg)."""

    margin = 3.0  # the subject's own head pose tilts views by a few degrees: stay inside the limits
    yaws = rng.uniform(-cfg.max_abs_yaw + margin, cfg.max_abs_yaw - margin, cfg.views)
    pitches = rng.uniform(-cfg.max_abs_pitch + margin, cfg.max_abs_pitch - margin, cfg.views)
    rolls = rng.uniform(-8.0, 8.0, cfg.views)
    dists = 1.0 + rng.uniform(-cfg.distance_jitter, cfg.distance_jitter, cfg.views)
    return custom(yaws, pitches, rolls, dists, cfg.res, cfg.res)


def make_training_subjects(data_dir: Path, cfg: BaseParserConfig, progress: bool = True) -> list[Path]:
    """Generate (or reuse) ``cfg.subjects`` near-frontal training subjects in ``data_dir``."""

    dirs = []
    for i in tqdm(range(cfg.subjects), desc="training subjects", disable=not progress, dynamic_ncols=True):
        sid = f"train_{i:04d}"
        d = data_dir / sid
        if not (d / "subject.json").is_file():
            seed = derive_seed("base-train", cfg.seed, i) & 0x7FFFFFFF
            rig = frontal_rig(np.random.default_rng(seed), cfg)
            generate_subject(data_dir, sid, seed, rig=rig, res=cfg.res, background="random", overwrite=d.exists())
        dirs.append(d)
    return dirs


def train_base_parser(cfg: BaseParserConfig, data_dir: Path, out: Path, device: str = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Generate training data, train, and save a facegs checkpoint at ``out`` (+ ``out.log.json``)."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    dirs = make_training_subjects(data_dir, cfg, progress)
    t_data = time.perf_counter() - t0
    items = collect_views(dirs, max_abs_yaw=cfg.max_abs_yaw, max_abs_pitch=cfg.max_abs_pitch)
    if not items:
        raise ValueError(f"no training views within |yaw| <= {cfg.max_abs_yaw}, |pitch| <= {cfg.max_abs_pitch}")
    seed_everything(cfg.seed)
    aug = cfg.train.augment if cfg.train.augment.out_size == cfg.res else AugmentConfig(out_size=cfg.res)
    ds = ParsingDataset(items, cfg.res, aug, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.train.num_workers,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    model = BiSeNet(19, width=cfg.width)
    t1 = time.perf_counter()
    hist = train_loop(model, infinite_batches(loader), cfg.train, device=device, progress=progress)
    t_train = time.perf_counter() - t1
    summary = {
        "checkpoint": str(out),
        "train_views": len(items),
        "train_subjects": len(dirs),
        "seconds_data": round(t_data, 1),
        "seconds_train": round(t_train, 1),
        "loss_first50": float(np.mean([h["loss"] for h in hist[:50]])),
        "loss_last50": float(np.mean([h["loss"] for h in hist[-50:]])),
        "config": json.loads(json.dumps(asdict(cfg))),
    }
    model.eval()
    save_parser(out, model.cpu(), label_set="celebamask19", width=cfg.width, input_size=(cfg.res, cfg.res),
                extra_meta={"kind": "base-parser", "train": summary})
    Path(str(out) + ".log.json").write_text(json.dumps({"summary": summary, "history": hist[::10]}, indent=1))
    return summary
