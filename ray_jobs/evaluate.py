"""Compare face parser checkpoints on a test set, binned by head pose, and write a report to review.

    python -m ray_jobs.evaluate --ckpt base=base.pt --ckpt ft=ft.pt --test-set TEST --out REPORT \\
        [--make-synthetic 8 --seed 0 --res 128] [--label-set celebamask_hq] [--base base] [--flip-tta]

The test set is either facegs subject directories (synthetic subjects with exact ground truth, or
a user's labelled subjects: 'gt_labels', else 'labels'), or a flat CelebAMask-HQ-style directory
(images/*.jpg|png + labels/*.png, label maps in the declared --label-set, remapped to the canonical
celebamask19; pose unknown unless a poses.csv with name,yaw,pitch is present, so such views count
in the overall scores only). --make-synthetic N first renders N held-out synthetic subjects on a
yaw x pitch grid into --test-set (kept if already there) and evaluates exactly those.

Writes to --out: report.md (mean F1 per |yaw| bin 0-30/30-60/60-75/75-90, mIoU, pixel accuracy and
deltas vs the base checkpoint; class-group F1 at |yaw| >= --extreme-yaw), metrics.json (all
summaries, per-bin deltas, raw confusion matrices), f1_vs_yaw.png, group_f1_vs_yaw.png,
per_view.csv and contact_sheet.html (+ contact_sheet/) for a 1-5 human rating study. Yaw +90 =
camera on the subject's left. Prints the summary table and the report's location.

Evaluation runs in this process (one device); there is no Ray here: a test set of a few thousand
views takes minutes on one GPU, and every checkpoint reads the same images once per batch.
Exit status: 0 on success, 2 for bad arguments, a missing or unreadable checkpoint, or an empty or
malformed test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from facegs.core.errors import InputError
from facegs.evaluate.compare import check_name, evaluate_checkpoints
from facegs.evaluate.report import write_report
from facegs.evaluate.tables import summary_table
from facegs.evaluate.testsets import DEFAULT_PITCHES, DEFAULT_YAWS, load_test_items, make_test_set


def _floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def _yaw_range(text: str) -> list[float]:
    """'-90:90:15' (inclusive range) or '-90,-45,0,45,90'."""
    if ":" in text:
        try:
            lo, hi, step = (float(x) for x in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO:HI:STEP, got {text!r}") from None
        if step <= 0 or hi < lo:
            raise argparse.ArgumentTypeError(f"expected LO <= HI and STEP > 0, got {text!r}")
        n = int(round((hi - lo) / step)) + 1
        return [lo + i * step for i in range(n) if lo + i * step <= hi + 1e-9]
    return _floats(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH",
                   help="a checkpoint to evaluate (facegs, published BiSeNet state_dict, or TorchScript); repeat "
                        "for each; NAME labels it in tables and file names (default: the file's stem)")
    p.add_argument("--ckpt-label-set", action="append", default=[], metavar="NAME=SET",
                   help="declared output label set of checkpoint NAME (TorchScript files without facegs metadata)")
    p.add_argument("--base", default=None, help="the checkpoint the others are compared with (default: the first --ckpt)")
    p.add_argument("--test-set", required=True, metavar="DIR",
                   help="subject directories (any depth) or a flat images/ + labels/ directory")
    p.add_argument("--label-set", default=None,
                   help="label set of a flat directory's label maps (required there; e.g. celebamask_hq = the official "
                        "CelebAMask-HQ order, celebamask19 = BiSeNet order, lapa11, farl)")
    p.add_argument("--label-field", default=None, choices=["gt_labels", "labels"],
                   help="manifest field of the reference labels (default: gt_labels where every view has it, else labels)")
    p.add_argument("--out", required=True, metavar="DIR", help="report directory")
    syn = p.add_argument_group("synthetic test set (--make-synthetic)")
    syn.add_argument("--make-synthetic", type=int, default=None, metavar="N",
                     help="first render N held-out synthetic subjects into --test-set (existing ones are kept)")
    syn.add_argument("--seed", type=int, default=0, help="seed of the synthetic test subjects")
    syn.add_argument("--res", type=int, default=128, help="image size of the synthetic views (px)")
    syn.add_argument("--yaws", type=_yaw_range, default=None, metavar="LO:HI:STEP|LIST",
                     help="rig yaws in degrees (default -90:90:15)")
    syn.add_argument("--pitches", type=_floats, default=None, metavar="LIST", help="rig pitches (default -30,0,30)")
    syn.add_argument("--background", default="world", choices=["world", "plain", "random"])
    ev = p.add_argument_group("evaluation and report")
    ev.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction (left/right aware)")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--extreme-yaw", type=float, default=60.0, help="|yaw| from which a view counts as extreme")
    ev.add_argument("--examples", type=int, default=12, help="extreme-pose views in the contact sheet")
    ev.add_argument("--frontal-examples", type=int, default=3, help="near-frontal reference views in the contact sheet")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _pairs(values: list[str], what: str, default_name: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if "=" in v:
            name, val = v.split("=", 1)
        elif default_name:
            name, val = Path(v).stem, v
        else:
            raise ValueError(f"{what} must be NAME=VALUE, got {v!r}")
        name = name.strip()
        if name in out:
            raise ValueError(f"{what}: name '{name}' given twice")
        out[name] = val
    return out


def _error(msg: str) -> int:
    print(f"python -m ray_jobs.evaluate: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    try:
        ckpts = _pairs(a.ckpt, "--ckpt", default_name=True)
        label_sets = _pairs(a.ckpt_label_set, "--ckpt-label-set", default_name=False)
        for name in ckpts:
            check_name(name)
        unknown = sorted(set(label_sets) - set(ckpts))
        if unknown:
            raise ValueError(f"--ckpt-label-set names unknown checkpoints {unknown}; checkpoints: {list(ckpts)}")
        base = a.base or next(iter(ckpts))
        if base not in ckpts:
            raise ValueError(f"--base '{base}' is not one of the checkpoints {list(ckpts)}")
        missing = [f"'{n}' ({p})" for n, p in ckpts.items() if not Path(p).is_file()]
        if missing:
            raise ValueError(f"checkpoint file not found: {', '.join(missing)}")
        if a.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
    except (ValueError, InputError) as e:
        return _error(str(e))

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda but no CUDA device is available")
    progress = not a.no_progress
    try:
        if a.make_synthetic is not None:
            print(f"rendering {a.make_synthetic} synthetic test subjects into {a.test_set}", file=sys.stderr)
            dirs = make_test_set(a.test_set, a.make_synthetic, a.seed, a.res,
                                   a.yaws if a.yaws is not None else DEFAULT_YAWS,
                                   a.pitches if a.pitches is not None else DEFAULT_PITCHES,
                                   a.background, progress=progress)
            items = load_test_items(dirs, a.label_set, a.label_field)
        else:
            items = load_test_items(a.test_set, a.label_set, a.label_field)
        print(f"evaluating {len(ckpts)} checkpoint(s) on {len(items)} views ({device}"
              f"{', flip TTA' if a.flip_tta else ''})", file=sys.stderr)
        results = evaluate_checkpoints(ckpts, items, a.flip_tta, device, a.batch_size,
                                         label_sets=label_sets, progress=progress)
    except (InputError, ValueError, KeyError) as e:
        return _error(str(e).strip("'\""))
    paths = write_report(results, a.out, base, a.extreme_yaw, a.examples, n_frontal=a.frontal_examples,
                           extra={"argv": list(sys.argv[1:] if argv is None else argv)})
    print(summary_table(results, base, a.extreme_yaw))
    print()
    print(f"report: {paths['markdown']}")
    if "contact_sheet" in paths:
        print(f"rating sheet: {paths['contact_sheet']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
