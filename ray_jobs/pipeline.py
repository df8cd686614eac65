"""EM rounds: label with the current parser -> fit -> render shards -> fine-tune, K times; then evaluate.

    python -m ray_jobs.pipeline --subjects SUBJECTS --parser BASE.pt --out OUT --rounds 2 \\
        --test-set OUT/test_set --make-test 2

Round r (1..K), under ``OUT/round{r}/``:
1. ``dataset/``: ``ray_jobs.build_dataset`` with ``--labels parser:{current parser}``: every capture
   view is relabelled by the current parser, each subject's scene is refit to RGB + those labels
   and re-rendered into shards (the config hash includes the parser's sha256, so a new parser
   means new shards, never a stale skip);
2. ``parser.pt``: ``ray_jobs.finetune`` (Ray Train, DDP) starts from the current parser and trains
   on the round's shards (optionally mixed with an original labelled set); it becomes the current
   parser of round r+1 (the spirit of FOCUS's EM rounds: better labels -> better consensus -> a
   better parser).
Finally ``ray_jobs.evaluate``'s report compares the base parser and every round's parser on the
test set by pose bin (``OUT/report/``), and ``OUT/pipeline.json`` holds per-round numbers: the
factory's counts and failures, the refined labels' agreement with the capture's ground truth
where it exists (synthetic subjects), fine-tuning metrics and evaluation by |yaw| bin.

Every stage skips finished work (complete subjects, existing checkpoints, Ray Train runs resumed
by name), so rerunning the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", required=True, help="capture subjects (directory or list file; see build_dataset)")
    p.add_argument("--parser", required=True, help="the base parser checkpoint (round 1 labels with it)")
    p.add_argument("--out", required=True, help="output directory (local)")
    p.add_argument("--rounds", type=int, default=1, help="EM rounds K")
    p.add_argument("--first-labels", default="parser",
                   help="round 1's initial labels: 'parser' (--parser), 'existing' (labels already in the subjects, "
                        "e.g. from another parser via facegs label) or 'noise:SPEC' (synthetic experiments); later "
                        "rounds always relabel with the previous round's fine-tuned parser")
    p.add_argument("--test-set", default=None, help="test subjects with ground truth (default: OUT/test_set)")
    p.add_argument("--make-test", type=int, default=0,
                   help="synthesise this many held-out grid subjects into --test-set first (0: use it as is)")
    p.add_argument("--test-res", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    f = p.add_argument_group("factory (ray_jobs.build_dataset)")
    f.add_argument("--preset", default="cpu_demo", choices=["test", "cpu_demo", "gpu"])
    f.add_argument("--steps", type=int, default=None, help="fit steps (default: the preset's)")
    f.add_argument("--renders", type=int, default=32)
    f.add_argument("--res", type=int, default=None)
    f.add_argument("--factory-args", default="", help="further build_dataset arguments, e.g. '--maxcount 16'")
    t = p.add_argument_group("fine-tuning (ray_jobs.finetune)")
    t.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    t.add_argument("--use-gpu", action="store_true")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--epoch-length", type=int, default=256, help="samples per rank per epoch")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--size", type=int, default=128, help="training crop size")
    t.add_argument("--mix-dir", default=None, help="original labelled data mixed into fine-tuning")
    t.add_argument("--mix-label-set", default=None)
    t.add_argument("--mix-ratio", type=float, default=0.0)
    t.add_argument("--finetune-args", default="", help="further ray_jobs.finetune arguments")
    r = p.add_argument_group("ray")
    r.add_argument("--address", default=None)
    r.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--flip-tta", action="store_true", help="evaluate with flip test-time augmentation")
    return p.parse_args(argv)


def label_quality(dataset_root: Path) -> dict[str, float | None]:
    """Mean over the dataset's complete subjects (their done markers, so that a rerun that skips
    finished subjects reports the same) of the fit's agreement with ground truth (synthetic captures
    only): ``input_acc_gt`` (the parser's labels) and ``label_acc_gt`` / ``miou_gt`` (the refined scene)."""
    from facegs.factory.markers import complete_subjects

    metrics = [marker.get("fit_metrics", {}) for marker in complete_subjects(str(dataset_root)).values()]
    out: dict[str, float | None] = {}
    for k in ("input_acc_gt", "label_acc_gt", "input_miou_gt", "miou_gt"):
        vals = [m.get(k) for m in metrics if m.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def run(a: argparse.Namespace) -> int:
    import shlex

    import ray

    from facegs.evaluate.compare import evaluate_checkpoints
    from facegs.evaluate.report import write_report
    from facegs.evaluate.tables import summary_table
    from facegs.evaluate.testsets import load_test_items, make_test_set
    from ray_jobs import build_dataset, finetune
    from ray_jobs.ray_session import connect

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(a.parser)
    if not base.is_file():
        print(f"error: base parser {base} not found", file=sys.stderr)
        return 2
    test_dir = Path(a.test_set) if a.test_set else out / "test_set"
    if a.make_test:
        make_test_set(test_dir, a.make_test, seed=a.seed + 1000, res=a.test_res)
    t0 = time.time()
    started = connect(a.address, a.num_cpus)
    rounds: list[dict[str, Any]] = []
    ckpts: dict[str, str] = {"base": str(base)}
    current = base
    try:
        for r in range(1, a.rounds + 1):
            rd = out / f"round{r}"
            print(f"\n=== round {r}/{a.rounds}: labels from {current.name} -> fit -> shards -> fine-tune ===", flush=True)
            ts = time.time()
            labels = f"parser:{current}" if r > 1 or a.first_labels == "parser" else a.first_labels
            fargs = ["--subjects", a.subjects, "--out", str(rd / "dataset"), "--labels", labels,
                     "--preset", a.preset, "--renders", str(a.renders), "--seed", str(a.seed)]
            if a.steps:
                fargs += ["--steps", str(a.steps)]
            if a.res:
                fargs += ["--res", str(a.res)]
            rc = build_dataset.main(fargs + shlex.split(a.factory_args))
            fsum = json.loads((rd / "dataset" / "summary.json").read_text())
            if rc == 2 or fsum["finalize"]["manifest_samples"] == 0:
                print(f"error: round {r}: the factory produced no samples (see {rd / 'dataset' / 'summary.json'})",
                      file=sys.stderr)
                return 1
            t_factory = time.time() - ts
            ckpt = rd / "parser.pt"
            ts = time.time()
            if not ckpt.is_file():
                targs = ["--shards", str(rd / "dataset"), "--init", str(current), "--out", str(ckpt),
                         "--storage-path", str((out / "ray_train").resolve()), "--name", f"round{r}",
                         "--workers", str(a.workers), "--epochs", str(a.epochs), "--epoch-length",
                         str(a.epoch_length), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
                         "--size", str(a.size), "--seed", str(a.seed + r)]
                if a.use_gpu:
                    targs.append("--use-gpu")
                if a.mix_dir:
                    targs += ["--mix-dir", a.mix_dir, "--mix-ratio", str(a.mix_ratio)]
                    if a.mix_label_set:
                        targs += ["--mix-label-set", a.mix_label_set]
                if finetune.main(targs + shlex.split(a.finetune_args)) != 0:
                    print(f"error: round {r}: fine-tuning failed", file=sys.stderr)
                    return 1
            else:
                print(f"[pipeline] round {r}: reusing {ckpt}")
            ckpts[f"round{r}"] = str(ckpt)
            rounds.append({"round": r, "labels_from": labels, "dataset": str(rd / "dataset"),
                           "parser": str(ckpt), "samples": fsum["finalize"]["manifest_samples"],
                           "subjects_complete": fsum["finalize"]["complete_subjects"],
                           "subjects_failed": fsum["subjects_failed"], "label_quality": label_quality(rd / "dataset"),
                           "factory_s": round(t_factory, 1), "finetune_s": round(time.time() - ts, 1)})
            current = ckpt
    finally:
        if started:
            ray.shutdown()

    print("\n=== evaluation on the held-out test set ===", flush=True)
    items = load_test_items(test_dir)
    results = evaluate_checkpoints(ckpts, items, flip_tta=a.flip_tta)
    write_report(results, out / "report", base_name="base", title=f"facegs pipeline: {a.rounds} EM round(s)")
    table = summary_table(results, base_name="base")
    for rec in rounds:
        s = results[f"round{rec['round']}"].summary()
        rec["eval"] = {"overall_mean_f1": s["overall"]["mean_f1"],
                       "yaw": {f"{b['lo']:g}-{b['hi']:g}": b["mean_f1"] for b in s["yaw"]}}
    doc = {"rounds": rounds, "test_set": str(test_dir), "test_views": len(items), "wall_s": round(time.time() - t0, 1),
           "report": str(out / "report"), "table": table}
    (out / "pipeline.json").write_text(json.dumps(doc, indent=1))
    print("\n" + table)
    print("\nper round: refined-label agreement with ground truth (synthetic captures)")
    print(f"{'round':>5s} {'samples':>8s} {'parser labels acc':>18s} {'refined labels acc':>19s} {'refined mIoU':>13s}")
    for rec in rounds:
        q = rec["label_quality"]
        fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
        print(f"{rec['round']:>5d} {rec['samples']:>8d} {fmt(q['input_acc_gt']):>18s} {fmt(q['label_acc_gt']):>19s} "
              f"{fmt(q['miou_gt']):>13s}")
    print(f"\nreport: {out / 'report' / 'report.md'}  (plots, contact_sheet.html)\nsummary: {out / 'pipeline.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
