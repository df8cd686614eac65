"""Base parser benchmark: train on near-frontal synthetic views, evaluate over the full pose range.

The drop at extreme yaw is the problem the rest of facegs solves; this measures it.

    .venv/bin/python bench/base_parser.py            # default configuration (see --help)

Writes bench/out/base_parser/{base.pt, eval/metrics.json, eval/metrics.md, eval/f1_vs_yaw.png,
summary.json} and prints the per-bin table. Training subjects (train_XXXX) and held-out
evaluation subjects (synth_XXXX, facescape rig) come from disjoint seed namespaces.

The checkpoint shipped with facegs for ``make demo`` (``models/base_parser/``) is this benchmark's
output copied with ``--ship models/base_parser``: base.pt, its sha256, the command and the metrics
(README.md). ``--ship-existing`` ships a finished ``--out`` without training again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="copy base.pt to DIR with a README.md (command, sha256, metrics), e.g. models/base_parser")
    p.add_argument("--ship-existing", action="store_true",
                   help="do not train: ship the finished result in --out (needs --ship)")
    a = p.parse_args()
    if a.ship_existing:
        if not a.ship:
            p.error("--ship-existing needs --ship DIR")
        ship(Path(a.out), Path(a.ship))
        return 0
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
    if a.ship:
        ship(out, Path(a.ship))
    return 0


def ship(out: Path, dest: Path) -> None:
    """Copy ``out/base.pt`` to ``dest/base.pt`` and write ``dest/README.md`` (command, sha256, metrics)."""
    summary_path = out / "summary.json"
    if not (out / "base.pt").is_file() or not summary_path.is_file():
        raise SystemExit(f"{out}: no finished run (base.pt and summary.json) to ship")
    summary = json.loads(summary_path.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "base.pt", dest / "base.pt")
    digest = hashlib.sha256((dest / "base.pt").read_bytes()).hexdigest()
    size_mb = (dest / "base.pt").stat().st_size / 2**20
    metrics_md = (out / "eval" / "metrics.md").read_text() if (out / "eval" / "metrics.md").is_file() else ""
    train = summary.get("train", {})
    text = "\n".join([
        "# Base parser shipped with facegs",
        "",
        "A small BiSeNet (CelebAMask-HQ 19 classes) trained on near-frontal synthetic views only",
        "(|yaw| <= 30, |pitch| <= 15): the starting point `make demo` refines. Regenerate it with one command:",
        "",
        "```bash",
        f".venv/bin/python {summary['command']} --ship {dest}",
        "```",
        "",
        f"- `base.pt`: {size_mb:.1f} MiB, sha256 `{digest}` (checked by tests/test_shipped_parser.py);",
        "  loaded with `torch.load(weights_only=True)` by `facegs.parser.checkpoint.load_parser`.",
        f"- Training: {train.get('config', {}).get('train', {}).get('steps', '?')} steps on "
        f"{train.get('train_views', '?')} views of {train.get('train_subjects', '?')} subjects, "
        f"{train.get('seconds_train', '?')} s; loss {train.get('loss_first50', float('nan')):.2f} -> "
        f"{train.get('loss_last50', float('nan')):.2f} (first / last 50 steps).",
        f"- Evaluation: held-out subjects {', '.join(summary.get('eval_subjects', []))} (facescape rig, full pose range,",
        "  no flip TTA). Scores in percent:",
        "",
        metrics_md.strip(),
        "",
    ])
    (dest / "README.md").write_text(text)
    print(f"shipped {out / 'base.pt'} to {dest} (sha256 {digest[:16]}..., {size_mb:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
