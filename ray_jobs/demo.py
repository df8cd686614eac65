"""``make demo``: the pipeline on the embedded default (synthetic subjects, CPU).

Stages: synthetic capture subjects -> validation -> contact sheets -> base parser (the checkpoint
shipped in ``models/base_parser/``, trained once on near-frontal views only by the command in its
README; ``--train-parser`` trains a small one instead) -> initial labels of every capture view and their pose-binned evaluation against
ground truth -> the dataset factory on a local Ray (``ray_jobs.build_dataset``: parser labels ->
joint 3DGS fit -> renders in the head frame -> WebDataset shards) and Ray Train fine-tuning over the
shards, then the pose-binned comparison of the base and fine-tuned parsers on held-out subjects
(``ray_jobs.pipeline`` with one EM round). Every stage skips work whose output already exists
(the factory skips complete subjects), so a rerun after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from facegs.core.errors import InputError
from facegs.core.manifest import load_manifest
from facegs.core.viz import write_contact_sheet
from facegs.evaluate.parser import evaluate_parser
from facegs.evaluate.report import save_evaluation
from facegs.ingest.validate import validate_tree
from facegs.label.views import label_subject_with_parser
from facegs.parser.checkpoint import load_parser
from facegs.shards.manifest import read_manifest
from facegs.shards.sheet import write_shard_contact_sheet
from facegs.synth.generate import generate_dataset
from facegs.train.augment import AugmentConfig
from facegs.train.base_parser import BaseParserConfig, make_training_subjects, train_base_parser
from facegs.train.data import collect_views
from facegs.train.loop import TrainConfig
from ray_jobs import pipeline
from ray_jobs.build_dataset import BuildError
from ray_jobs.finetune import FinetuneError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PARSER = REPO / "models" / "base_parser" / "base.pt"
# the fine-tuning configuration that measured best (docs/benchmarks.md, fine-tuning experiment):
# renders at |yaw| 30-90 only (the consensus of a near-frontal parser beats the parser only away from
# frontal), half of every batch from the parser's own near-frontal data, a gentle learning rate
FINETUNE = {"abs_yaw_range": (30.0, 90.0), "mix_ratio": 0.5, "lr": 5e-4}
FT_EPOCHS = 12
FT_EPOCH_LENGTH = 96
# WiSE-FT after fine-tuning: of the interpolations with the base parser that lose at most this many
# mean-F1 points on near-frontal validation subjects (synthesised, disjoint from the test set), the
# one with the highest validation mean F1
WISE_MAX_DROP = 0.5
WISE_RULE = "best"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the facegs pipeline on the embedded default (synthetic subjects, CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output directory")
    p.add_argument("--subjects", type=int, default=4, help="synthetic capture subjects")
    p.add_argument("--rig", default="facescape", choices=["facescape", "nersemble"])
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parser", default=str(SHIPPED_PARSER),
                   help="base parser checkpoint (default: the one shipped with facegs, models/base_parser/README.md)")
    p.add_argument("--train-parser", action="store_true",
                   help="train a small base parser here instead of using --parser (--parser-steps, --parser-subjects)")
    p.add_argument("--parser-steps", type=int, default=600, help="base parser training steps (--train-parser)")
    p.add_argument("--parser-subjects", type=int, default=8,
                   help="near-frontal subjects: the base parser's training data with --train-parser, else the "
                        "first of the shipped parser's own training subjects, regenerated as the frontal data "
                        "mixed into fine-tuning")
    p.add_argument("--fit-steps", type=int, default=600, help="3DGS fit steps per subject (factory)")
    p.add_argument("--renders", type=int, default=32, help="novel views rendered per subject (factory)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--ft-epochs", type=int, default=FT_EPOCHS, help="fine-tuning epochs (Ray Train, 2 workers)")
    p.add_argument("--ft-epoch-length", type=int, default=FT_EPOCH_LENGTH,
                   help="fine-tuning samples per worker per epoch")
    p.add_argument("--test-subjects", type=int, default=3, help="held-out grid subjects for the evaluation")
    p.add_argument("--wise-max-drop", type=float, default=WISE_MAX_DROP,
                   help="WiSE-FT: interpolate the fine-tuned parser with the base, losing at most this many mean-F1 "
                        "points on near-frontal validation subjects (negative: off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    print(f"[1/6] synthesising {a.subjects} subjects ({a.rig} rig, {a.res}px) into {out / 'subjects'}")
    dirs = generate_dataset(out / "subjects", a.subjects, master_seed=a.seed, skip_existing=True, rig=a.rig, res=a.res)
    stage("synth")

    print("[2/6] validating subjects")
    report = validate_tree(out / "subjects")
    n_problems = sum(len(v) for v in report.values())
    if n_problems:
        for subj, probs in report.items():
            for pr in probs:
                print(f"  {subj}: {pr}")
        print("validation failed", file=sys.stderr)
        return 1
    stage("validate")

    print("[3/6] writing contact sheets")
    sheets = out / "contact_sheets"
    sheets.mkdir(exist_ok=True)
    for d in dirs:
        write_contact_sheet(load_manifest(d), sheets / f"{d.name}.png", max_views=24)
    stage("contact_sheets")

    frontal = out / "parser" / "train_subjects"
    if a.train_parser:
        ckpt = out / "parser" / "base.pt"
        if not ckpt.is_file():
            print(f"[4/6] training the base parser on near-frontal views ({a.parser_steps} steps)")
            cfg = BaseParserConfig(subjects=a.parser_subjects, views=12, res=a.res, width=0.25, seed=a.seed,
                                   train=TrainConfig(steps=a.parser_steps, batch_size=12, warmup_steps=30,
                                                     augment=AugmentConfig(out_size=a.res)))
            ckpt.parent.mkdir(exist_ok=True)
            train_base_parser(cfg, frontal, ckpt)
        else:
            print(f"[4/6] reusing base parser {ckpt}")
    else:
        ckpt = Path(a.parser)
        if not ckpt.is_file():
            print(f"no base parser at {ckpt} (pass --parser CKPT or --train-parser)", file=sys.stderr)
            return 2
        train_cfg = json.loads(json.dumps(load_parser(ckpt).meta.get("extra", {}).get("train", {}).get("config", {})))
        cfg = BaseParserConfig(subjects=a.parser_subjects, views=int(train_cfg.get("views", 16)),
                               res=int(train_cfg.get("res", a.res)), seed=int(train_cfg.get("seed", 0)))
        print(f"[4/6] base parser {ckpt}; regenerating {a.parser_subjects} of its near-frontal training subjects "
              "for the fine-tuning mix")
        make_training_subjects(frontal, cfg, progress=False)
    stage("base_parser")

    print("[5/6] labelling every capture view with the base parser and evaluating against ground truth")
    parser = load_parser(ckpt)
    for d in dirs:
        label_subject_with_parser(d, parser, flip_tta=True, parser_name=ckpt.name)
    ev = evaluate_parser(parser, collect_views(dirs), flip_tta=True)
    save_evaluation(ev, out / "eval_base_parser")
    stage("label_and_eval")

    print("[6/6] EM round on a local Ray: parser labels -> 3DGS fit -> head-frame renders -> shards -> Ray Train "
          "fine-tuning -> evaluation on held-out grid subjects")
    ds = out / "pipeline" / "round1" / "dataset"
    try:
        pipeline.run(pipeline.PipelineConfig(
            subjects=str(out / "subjects"), parser=str(ckpt), out=str(out / "pipeline"), rounds=1,
            make_test=a.test_subjects, test_res=a.res, seed=a.seed, steps=a.fit_steps, num_cpus=a.num_cpus,
            wise_max_drop=a.wise_max_drop if a.wise_max_drop >= 0 else None, wise_rule=WISE_RULE, flip_tta=True,
            factory={"fit_preset": "cpu_demo", "n_renders": a.renders},
            finetune={"epochs": a.ft_epochs, "epoch_length": a.ft_epoch_length, "size": a.res, "workers": 2,
                      "mix_dir": str(frontal), **FINETUNE}))
    except (BuildError, FinetuneError, InputError) as e:
        print(f"the pipeline failed ({e}): see {out / 'pipeline'}", file=sys.stderr)
        return 1
    stage("pipeline")

    table = read_manifest(str(ds))
    n_samples = int(sum(table.column("num_samples").to_pylist()))
    sheet = write_shard_contact_sheet(str(ds), out / "contact_sheets" / "dataset_samples.png", max_samples=24)

    summary = {"out": str(out.resolve()), "subjects": [str(d) for d in dirs], "timings_s": timings,
               "dataset": str(ds.resolve()), "shards": table.num_rows, "samples": n_samples,
               "report": str((out / "pipeline" / "report").resolve())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print("base parser vs fine-tuned on held-out subjects (mean F1 by |yaw|):")
    print(json.loads((out / "pipeline" / "pipeline.json").read_text())["table"])
    print()
    print(f"subjects:        {out / 'subjects'}")
    print(f"contact sheets:  {sheets}")
    print(f"base parser:     {ckpt}")
    print(f"evaluation:      {out / 'eval_base_parser'} (metrics.md, metrics.json, plot)")
    print(f"shards:          {ds / 'shards'} ({table.num_rows} shards, {n_samples} samples)")
    print(f"shard manifest:  {ds / 'manifest.parquet'}  factory summary: {ds / 'summary.json'}")
    print(f"shard samples:   {sheet}")
    print(f"report:          {out / 'pipeline' / 'report' / 'report.md'} (plots, contact_sheet.html for rating)")
    print(f"summary:         {out / 'summary.json'}  timings {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
