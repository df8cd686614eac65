"""Base parser benchmark: train on near-frontal synthetic views, evaluate over the full pose range.

The drop at extreme yaw is the problem the rest of facegs solves; this measures it.

    .venv/bin/python bench/base_parser.py            # default configuration (see --help)

Writes bench/out/base_parser/{base.pt, eval/metrics.json, eval/metrics.md, eval/f1_vs_yaw.png,
summary.json} and prints the per-bin table. Training subjects (train_XXXX) and held-out
evaluation subjects (synth_XXXX, facescape rig) come from disjoint seed namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.evaluate.parser import evaluate_parser  # noqa: E402
from facegs.evaluate.report import save_evaluation  # noqa: E402
from facegs.parser.checkpoint import load_parser  # noqa: E402
from facegs.synth.generate import generate_dataset  # noqa: E402
from facegs.train.augment import AugmentConfig  # noqa: E402
from facegs.train.base_parser import BaseParserConfig, train_base_parser  # noqa: E402
from facegs.train.data import collect_views  # noqa: E402
from facegs.train.loop import TrainConfig  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out/base_parser")
    p.add_argument("--train-subjects", type=int, default=24)
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--eval-subjects", type=int, default=6)
    p.add_argument("--eval-seed", type=int, default=1000, help="master seed of the held-out subjects")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=int(os.environ.get("FACEGS_THREADS", "2")))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "base.pt"
    cfg = BaseParserConfig(subjects=a.train_subjects, views=a.views, res=a.res, width=a.width, seed=a.seed,
                           train=TrainConfig(steps=a.steps, batch_size=a.batch_size, seed=a.seed,
                                             augment=AugmentConfig(out_size=a.res)))
    t0 = time.perf_counter()
    train_summary = train_base_parser(cfg, out / "train_subjects", ckpt)
    eval_dirs = generate_dataset(out / "eval_subjects", a.eval_subjects, master_seed=a.eval_seed,
                                 skip_existing=True, rig="facescape", res=a.res)
    parser = load_parser(ckpt)
    ev = evaluate_parser(parser, collect_views(eval_dirs))
    save_evaluation(ev, out / "eval", name="base parser")
    summary = ev.summary()
    result = {
        "command": "bench/base_parser.py " + " ".join(sys.argv[1:]),
        "train": train_summary,
        "eval_subjects": [d.name for d in eval_dirs],
        "seconds_total": round(time.perf_counter() - t0, 1),
        "metrics": summary,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    print(ev.to_markdown(title="Base parser (trained at |yaw| <= 30, |pitch| <= 15) on held-out subjects"))
    print(f"\nwrote {out}/summary.json and {out}/eval/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
