"""``facegs parser ...``: train-base, eval, export, interpolate (WiSE-FT)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from facegs.evaluate.parser import evaluate_parser
from facegs.evaluate.report import save_evaluation
from facegs.evaluate.testsets import load_test_items
from facegs.evaluate.wise import write_chosen
from facegs.parser.checkpoint import export_torchscript, load_parser
from facegs.train.augment import AugmentConfig
from facegs.train.base_parser import BaseParserConfig, train_base_parser
from facegs.train.data import collect_views
from facegs.train.loop import TrainConfig
from facegs.train.losses import ParserLossConfig
from facegs.train.wise import write_interpolated


def device_of(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; other names pass through."""

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parser",
        help="train, evaluate and export face parsers (BiSeNet layout)",
        description="Face parser tools. Checkpoints are loaded with torch.load(weights_only=True).",
    )
    psub = p.add_subparsers(dest="parser_command", metavar="PARSER_COMMAND")

    t = psub.add_parser(
        "train-base",
        help="train the embedded default's base parser on near-frontal synthetic views",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Train a BiSeNet on synthetic training subjects restricted to |yaw| <= --max-yaw and "
            "|pitch| <= --max-pitch (the near-frontal pose bias of CelebAMask-HQ), so that it fails at "
            "extreme poses the way published parsers do. Training subjects are generated into --data "
            "(reused if present). Writes a facegs checkpoint and a JSON training log beside it."
        ),
    )
    t.add_argument("--out", required=True, help="output checkpoint path (.pt)")
    t.add_argument("--data", default=None, help="directory for the generated training subjects (default: OUT.data)")
    t.add_argument("--subjects", type=int, default=24, help="number of training subjects")
    t.add_argument("--views", type=int, default=12, help="near-frontal views per training subject")
    t.add_argument("--res", type=int, default=128, help="render and training resolution (pixels)")
    t.add_argument("--width", type=float, default=0.25, help="BiSeNet channel width (1.0 = published size)")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--max-yaw", type=float, default=30.0)
    t.add_argument("--max-pitch", type=float, default=15.0)
    t.add_argument("--consensus-weight", type=float, default=0.0,
                   help="weight of the structure-via-consensus loss (alpha 10, beta 5); 0 = off")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    t.set_defaults(func=_cmd_train_base)

    e = psub.add_parser(
        "eval",
        help="evaluate a parser on labelled subjects, binned by head pose",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Predict every view of the given subject directories/trees and write metrics.json, "
        "metrics.md and an F1-versus-|yaw| plot to --out.",
    )
    e.add_argument("data", nargs="+", help="subject directories or trees")
    e.add_argument("--parser", required=True, help="checkpoint (facegs, published BiSeNet layout, or TorchScript)")
    e.add_argument("--label-set", default=None, help="declared label set of a TorchScript parser's outputs")
    e.add_argument("--label-field", default="gt_labels", help="manifest field holding the reference labels")
    e.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction (left/right aware)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_cmd_eval)

    x = psub.add_parser("export", help="export a facegs/BiSeNet checkpoint to TorchScript",
                        description="Script the parser's main head; the file embeds facegs metadata.")
    x.add_argument("--parser", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(func=_cmd_export)

    w = psub.add_parser(
        "interpolate",
        help="WiSE-FT: interpolate a base and a fine-tuned parser's weights (alpha given, or chosen on frontal views)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write a parser with weights (1 - alpha) * BASE + alpha * FINETUNED (WiSE-FT, Wortsman et al., CVPR 2022): "
            "it keeps more of the base parser's near-frontal accuracy while keeping part of the fine-tuned gains at "
            "extreme poses.\n\nEither give --alpha, or give --val with near-frontal labelled views (subject "
            "directories, or an images/ + labels/ directory with --val-label-set): alpha is then the largest value "
            "on a 0, 0.1, ..., 1 grid whose mean F1 on --val is at most --max-drop points below the base's. "
            "The choice and the scores are printed and stored in the checkpoint's metadata (extra.wise_ft)."
        ),
    )
    w.add_argument("--base", required=True, help="the parser fine-tuning started from (facegs or BiSeNet checkpoint)")
    w.add_argument("--finetuned", required=True, help="the fine-tuned parser (e.g. ray_jobs.finetune --out)")
    w.add_argument("--out", required=True, help="output facegs checkpoint")
    wg = w.add_mutually_exclusive_group(required=True)
    wg.add_argument("--alpha", type=float, help="interpolation weight of the fine-tuned parser, in [0, 1]")
    wg.add_argument("--val", nargs="+", help="near-frontal labelled validation views to choose alpha on")
    w.add_argument("--val-label-set", default=None, help="label set of an images/ + labels/ --val directory")
    w.add_argument("--max-drop", type=float, default=1.0, help="mean F1 points --val may lose against the base")
    w.add_argument("--flip-tta", action="store_true", help="score --val with flip test-time augmentation")
    w.set_defaults(func=_cmd_interpolate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])



def _cmd_train_base(a: argparse.Namespace) -> int:
    cfg = BaseParserConfig(
        subjects=a.subjects, views=a.views, res=a.res, width=a.width, max_abs_yaw=a.max_yaw,
        max_abs_pitch=a.max_pitch, seed=a.seed,
        train=TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                          loss=ParserLossConfig(consensus_weight=a.consensus_weight),
                          augment=AugmentConfig(out_size=a.res)),
    )
    data = Path(a.data) if a.data else Path(str(a.out) + ".data")
    summary = train_base_parser(cfg, data, Path(a.out), device=device_of(a.device))
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    parser = load_parser(a.parser, device=device_of(a.device), label_set=a.label_set)
    items = collect_views(a.data, label_field=a.label_field)
    ev = evaluate_parser(parser, items, flip_tta=a.flip_tta)
    save_evaluation(ev, a.out)
    print(ev.to_markdown())
    print(f"\nwrote {a.out}/metrics.json, metrics.md and the plot", file=sys.stderr)
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    pm = load_parser(a.parser)
    h, w = pm.input_size if pm.input_size else (512, 512)
    export_torchscript(pm, a.out, example_size=(1, 3, h, w), label_set=pm.label_set,
                       input_size=pm.input_size, normalization=pm.normalization)
    print(f"wrote {a.out}")
    return 0


def _cmd_interpolate(a: argparse.Namespace) -> int:
    if a.alpha is not None and not 0.0 <= a.alpha <= 1.0:
        print(f"facegs parser interpolate: error: --alpha must be in [0, 1], got {a.alpha}", file=sys.stderr)
        return 2
    try:
        if a.val:
            items = load_test_items(a.val, label_set=a.val_label_set)
            info = write_chosen(a.base, a.finetuned, a.out, items, max_drop=a.max_drop, flip_tta=a.flip_tta,
                                progress=True, extra={"chosen_on": [str(v) for v in a.val]})
        else:
            info = write_interpolated(a.base, a.finetuned, a.out, a.alpha)
    except (ValueError, FileNotFoundError) as e:
        print(f"facegs parser interpolate: error: {e}", file=sys.stderr)
        return 2
    if "table" in info:
        print(f"{'alpha':>6s} {'mean F1 on --val':>17s}")
        for row in info["table"]:
            mark = "  <- chosen" if row["alpha"] == info["alpha"] else ""
            print(f"{row['alpha']:6.2f} {row['mean_f1']:17.2f}{mark}")
    print(f"wrote {a.out} (alpha {info['alpha']:g})")
    return 0
