"""``facegs label SUBJECTS (--parser CKPT | --noise SPEC)``: initial labels written into subjects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facegs.cli.parser import device_of
from facegs.core.manifest import find_subject_dirs
from facegs.label.views import label_subject_with_noise, label_subject_with_parser
from facegs.parser.checkpoint import load_parser


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "label",
        help="write initial labels + confidence for every view (a parser, or a noise model on ground truth)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Predict a label map (canonical celebamask19 classes) and a per-pixel confidence (max softmax "
            "probability) for every view of each subject, and record them in subject.json as 'labels' and "
            "'confidence'. Previous labels are replaced only once the new ones are complete.\n\n"
            "With --noise, labels are derived from the subjects' ground truth through a seeded noise model "
            "instead (benchmarks): pixel:R (fraction R of pixels set to a random class), lr_swap:P (per-view "
            "left/right swap with probability P), boundary:K (region boundaries shifted by up to K px), "
            "pose:S (degradation growing with |yaw|, strength S); combine with commas."
        ),
    )
    lab.add_argument("subjects", nargs="+", help="subject directories or trees of subjects")
    g = lab.add_mutually_exclusive_group(required=True)
    g.add_argument("--parser", help="parser checkpoint (facegs, published BiSeNet layout, or TorchScript)")
    g.add_argument("--noise", help="noise spec applied to ground truth, e.g. 'pixel:0.5' or 'lr_swap:0.3,boundary:2'")
    lab.add_argument("--label-set", default=None, help="declared label set of a TorchScript parser's outputs")
    lab.add_argument("--flip-tta", action="store_true", help="flip test-time augmentation (left/right aware)")
    lab.add_argument("--batch-size", type=int, default=8)
    lab.add_argument("--seed", type=int, default=0, help="seed of the noise model")
    lab.add_argument("--device", default="auto")
    lab.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    dirs = [d for s in a.subjects for d in find_subject_dirs(s)]
    if not dirs:
        print(f"facegs label: error: no subject.json found under {a.subjects}", file=sys.stderr)
        return 1
    if a.parser:
        parser = load_parser(a.parser, device=device_of(a.device), label_set=a.label_set)
        for d in dirs:
            label_subject_with_parser(d, parser, batch_size=a.batch_size, flip_tta=a.flip_tta,
                                      parser_name=Path(a.parser).name)
    else:
        for d in dirs:
            label_subject_with_noise(d, a.noise, a.seed)
    print(f"labelled {len(dirs)} subject(s)")
    return 0
