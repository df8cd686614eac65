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
   better parser). With ``--wise-max-drop D`` the fine-tuned weights are interpolated with the
   round's starting parser (WiSE-FT, :mod:`facegs.evaluate.wise`): ``parser_wise.pt``, alpha chosen
   among those whose mean F1 on near-frontal validation views (``--wise-val-set``, or subjects
   synthesised into ``OUT/val_frontal``; never the test set) loses at most D points (the largest, or
   with ``--wise-rule best`` the highest-scoring); it is then the round's parser.
Finally ``ray_jobs.evaluate``'s report compares the base parser and every round's parser on the
test set by pose bin (``OUT/report/``), and ``OUT/pipeline.json`` holds per-round numbers: the
factory's counts and failures, the refined labels' agreement with the capture's ground truth
where it exists (synthetic subjects), fine-tuning metrics and evaluation by |yaw| bin.

The stages are called as functions (:func:`ray_jobs.build_dataset.build`,
:func:`ray_jobs.finetune.run_finetune`, the evaluation of :mod:`facegs.evaluate`); the options this
pipeline exposes of them are their own fields (:mod:`facegs.core.options`), and ``--factory-args`` /
``--finetune-args`` pass any other option of those jobs.

Every stage skips finished work (complete subjects, existing checkpoints, Ray Train runs resumed
by name), so rerunning the same command after a crash continues where it stopped. A round's
checkpoint is reused only for the inputs it was trained on: ``parser.inputs.json`` beside it holds
the starting parser's sha256, the sha256 of the round's shards (every complete subject's, from the
done markers), the fine-tuning options and seed, and their fingerprint; the Ray Train run is named
``round{r}-{fingerprint}``, so only a run of the same inputs is resumed. When any of them changed
(a factory option or parser that re-made the shards, other fine-tuning options) or the record is
missing, ``parser.pt`` and ``parser_wise.pt`` are trained again, and the log says why.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from facegs.core.errors import InputError
from facegs.core.hashing import canonical_json, file_sha256
from facegs.core.options import add_options, from_namespace, opt, overrides_from_args
from facegs.core.storage import atomic_write_bytes
from facegs.evaluate.compare import evaluate_checkpoints
from facegs.evaluate.report import write_report
from facegs.evaluate.tables import summary_table
from facegs.evaluate.testsets import load_test_items, make_test_set
from facegs.evaluate.wise import WISE_RULES, write_chosen
from facegs.factory.config import FactoryConfig
from facegs.factory.markers import complete_subjects
from facegs.parser.checkpoint import load_parser
from facegs.train.finetune import FinetuneConfig
from ray_jobs.build_dataset import BuildConfig, BuildError, build
from ray_jobs.finetune import FinetuneError, run_finetune
from ray_jobs.ray_session import connect

# the factory and fine-tuning options this command exposes directly, with the pipeline's defaults
FACTORY_FIELDS = ("fit_preset", "n_renders", "res")
FINETUNE_FIELDS = ("workers", "use_gpu", "epochs", "epoch_length", "batch_size", "lr", "size", "mix_dir",
                   "mix_label_set", "mix_ratio")
FINETUNE_DEFAULTS = {"epochs": 4, "epoch_length": 256, "lr": 2e-3, "size": 128}


@dataclass
class PipelineConfig:
    """K EM rounds and the final evaluation (see the module docstring)."""

    subjects: str = field(metadata=opt("capture subjects (directory or list file; see ray_jobs.build_dataset)"))
    parser: str = field(metadata=opt("the base parser checkpoint (round 1 labels with it)"))
    out: str = field(metadata=opt("output directory (local)"))
    rounds: int = field(default=1, metadata=opt("EM rounds K"))
    first_labels: str = field(default="parser", metadata=opt(
        "round 1's initial labels: 'parser' (--parser), 'existing' (labels already in the subjects, e.g. from another "
        "parser via facegs label) or 'noise:SPEC' (synthetic experiments); later rounds always relabel with the "
        "previous round's fine-tuned parser"))
    test_set: str | None = field(default=None, metadata=opt(
        "test subjects with ground truth (default: OUT/test_set)"))
    make_test: int = field(default=0, metadata=opt(
        "synthesise this many held-out grid subjects into --test-set first (0: use it as is)"))
    test_res: int = field(default=128, metadata=opt("resolution of the synthesised test subjects"))
    seed: int = field(default=0, metadata=opt("seed of the factory (round r fine-tunes with seed + r)"))
    flip_tta: bool = field(default=False, metadata=opt("evaluate with flip test-time augmentation"))
    steps: int | None = field(default=None, metadata=opt("fit steps (default: the preset's)"))
    address: str | None = field(default=None, metadata=opt("Ray address (default: $RAY_ADDRESS, else a local Ray)"))
    num_cpus: int | None = field(default=None, metadata=opt("CPUs of a new local Ray (default: all)"))
    wise_max_drop: float | None = field(default=None, metadata=opt(
        "interpolate each round's fine-tuned weights with the round's starting parser (WiSE-FT), alpha among those "
        "whose mean F1 on near-frontal validation views loses at most this many points (--wise-rule; default: off)"))
    wise_val_set: str | None = field(default=None, metadata=opt(
        "labelled near-frontal validation views for --wise-max-drop (a test-set layout, see ray_jobs.evaluate; "
        "default: --wise-val-subjects synthetic subjects in OUT/val_frontal); never the test set"))
    wise_rule: str = field(default="largest", metadata=opt(
        "how --wise-max-drop picks alpha among those within the drop: 'largest' (the most fine-tuning allowed) or "
        "'best' (the highest validation mean F1)", choices=WISE_RULES))
    # 4, not 2: near-frontal F1 after fine-tuning moves by -5..+1 points from one subject to the next
    # (make demo's test subjects), so two validation subjects chose alpha 0.4 where four chose 0.3
    # (docs/benchmarks.md, "make demo")
    wise_val_subjects: int = field(default=4, metadata=opt(
        "synthetic near-frontal validation subjects (|yaw| <= 30) made when --wise-val-set is not given"))
    factory: dict[str, Any] = field(default_factory=dict)  # FactoryConfig fields for every round's factory
    build: dict[str, Any] = field(default_factory=dict)  # other BuildConfig fields (e.g. progress)
    finetune: dict[str, Any] = field(default_factory=lambda: dict(FINETUNE_DEFAULTS))  # FinetuneConfig fields


def label_quality(markers: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Mean over a dataset's complete subjects (their done ``markers``,
    :func:`facegs.factory.markers.complete_subjects`, so that a rerun that skips finished subjects
    reports the same) of the fit's agreement with ground truth (synthetic captures only):
    ``input_acc_gt`` (the parser's labels) and ``label_acc_gt`` / ``miou_gt`` (the refined scene)."""
    metrics = [marker.get("fit_metrics", {}) for marker in markers.values()]
    out: dict[str, float | None] = {}
    for k in ("input_acc_gt", "label_acc_gt", "input_miou_gt", "miou_gt"):
        vals = [m.get(k) for m in metrics if m.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def finetune_inputs(cfg: PipelineConfig, r: int, current: Path, markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What round ``r``'s fine-tuned parser depends on (see the module docstring; ``markers``: the
    round's dataset's done markers), with its ``fingerprint`` (16 hex digits of the sha256 over the rest)."""
    shards = sorted(f"{sid}/{sh['shard']}:{sh['sha256']}" for sid, m in markers.items() for sh in m.get("shards", []))
    doc: dict[str, Any] = {"init_sha256": file_sha256(str(current)), "n_shards": len(shards),
                           "shards_sha256": hashlib.sha256("\n".join(shards).encode()).hexdigest(),
                           "finetune": cfg.finetune, "seed": cfg.seed + r}
    doc["fingerprint"] = hashlib.sha256(canonical_json(doc)).hexdigest()[:16]
    return doc


def _reusable(ckpt: Path, record: Path, inputs: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``ckpt`` was trained on ``inputs`` (its ``record``), and if not, why."""
    if not ckpt.is_file():
        return False, "no checkpoint yet"
    try:
        old = json.loads(record.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False, f"{ckpt.name} has no readable record of its inputs ({record.name})"
    if old.get("fingerprint") == inputs["fingerprint"]:
        return True, ""
    changed = [k for k in ("init_sha256", "shards_sha256", "finetune", "seed") if old.get(k) != inputs[k]]
    return False, f"{ckpt.name} was trained on other inputs (changed: {', '.join(changed) or 'the record'})"


def _round(cfg: PipelineConfig, r: int, current: Path, out: Path) -> dict[str, Any]:
    """One EM round: factory with the current parser's labels, then fine-tuning from it."""
    rd = out / f"round{r}"
    ts = time.time()
    labels = f"parser:{current}" if r > 1 or cfg.first_labels == "parser" else cfg.first_labels
    factory = FactoryConfig(**{**cfg.factory, "labels": labels, "seed": cfg.seed})
    fsum = build(BuildConfig(subjects=cfg.subjects, out=str(rd / "dataset"), factory=factory, steps=cfg.steps,
                             **cfg.build))
    if fsum["finalize"]["manifest_samples"] == 0:
        raise BuildError(f"round {r}: the factory produced no samples (see {rd / 'dataset' / 'summary.json'})")
    t_factory = time.time() - ts
    ckpt, record = rd / "parser.pt", rd / "parser.inputs.json"
    ts = time.time()
    markers = complete_subjects(str(rd / "dataset"))  # read once: the inputs' shards and the label quality
    inputs = finetune_inputs(cfg, r, current, markers)
    reuse, why = _reusable(ckpt, record, inputs)
    if reuse:
        print(f"[pipeline] round {r}: reusing {ckpt} (inputs {inputs['fingerprint']})")
    else:
        if ckpt.is_file():
            print(f"[pipeline] round {r}: {why}: training it again", flush=True)
        for stale in (ckpt, record, rd / "parser_wise.pt"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        run_finetune(FinetuneConfig(**{**cfg.finetune, "shards": str(rd / "dataset"), "init": str(current),
                                       "out": str(ckpt), "storage_path": str((out / "ray_train").resolve()),
                                       "name": f"round{r}-{inputs['fingerprint']}", "seed": cfg.seed + r}))
        atomic_write_bytes(record, json.dumps(inputs, indent=1).encode())
    wise = _wise(cfg, current, ckpt, rd / "parser_wise.pt", out) if cfg.wise_max_drop is not None else None
    return {"round": r, "labels_from": labels, "dataset": str(rd / "dataset"),
            "parser": str(rd / "parser_wise.pt" if wise else ckpt), "finetuned": str(ckpt), "wise_ft": wise,
            "samples": fsum["finalize"]["manifest_samples"], "subjects_complete": fsum["finalize"]["complete_subjects"],
            "subjects_failed": fsum["subjects_failed"], "label_quality": label_quality(markers),
            "factory_s": round(t_factory, 1), "finetune_s": round(time.time() - ts, 1)}


def _wise(cfg: PipelineConfig, base: Path, ft: Path, dest: Path, out: Path) -> dict[str, Any]:
    """WiSE-FT of one round (``dest`` reused when it exists): alpha, the validation views and table."""
    if dest.is_file():
        info = load_parser(dest).meta["extra"]["wise_ft"]
    else:
        if cfg.wise_val_set:
            val_dir = Path(cfg.wise_val_set)
        else:
            val_dir = out / "val_frontal"
            make_test_set(val_dir, cfg.wise_val_subjects, seed=cfg.seed + 2000, res=cfg.test_res,
                          yaws=(-30, -20, -10, 0, 10, 20, 30))
        info = write_chosen(base, ft, dest, load_test_items(val_dir), max_drop=float(cfg.wise_max_drop),
                            flip_tta=cfg.flip_tta, rule=cfg.wise_rule, extra={"val_set": str(val_dir)})
    print(f"[pipeline] WiSE-FT: alpha {info['alpha']:g} (validation mean F1 by alpha: "
          + ", ".join(f"{row['alpha']:g}:{row['mean_f1']:.1f}" for row in info["table"]) + ")", flush=True)
    return {"alpha": info["alpha"], "val_views": info["val_views"], "table": info["table"]}


def _print_rounds(rounds: list[dict[str, Any]]) -> None:
    print("\nper round: refined-label agreement with ground truth (synthetic captures)")
    print(f"{'round':>5s} {'samples':>8s} {'parser labels acc':>18s} {'refined labels acc':>19s} {'refined mIoU':>13s}")
    for rec in rounds:
        q = rec["label_quality"]
        fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
        print(f"{rec['round']:>5d} {rec['samples']:>8d} {fmt(q['input_acc_gt']):>18s} {fmt(q['label_acc_gt']):>19s} "
              f"{fmt(q['miou_gt']):>13s}")


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """All rounds, then the evaluation; returns the ``pipeline.json`` document. Raises
    :class:`BuildError` / :class:`FinetuneError` / ``InputError`` when a stage fails."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(cfg.parser)
    if not base.is_file():
        raise InputError("base parser not found", field="--parser", path=str(base))
    test_dir = Path(cfg.test_set) if cfg.test_set else out / "test_set"
    if cfg.make_test:
        make_test_set(test_dir, cfg.make_test, seed=cfg.seed + 1000, res=cfg.test_res)
    t0 = time.time()
    started = connect(cfg.address, cfg.num_cpus)
    rounds: list[dict[str, Any]] = []
    ckpts: dict[str, str] = {"base": str(base)}
    current = base
    try:
        for r in range(1, cfg.rounds + 1):
            print(f"\n=== round {r}/{cfg.rounds}: labels from {current.name} -> fit -> shards -> fine-tune ===",
                  flush=True)
            rounds.append(_round(cfg, r, current, out))
            current = Path(rounds[-1]["parser"])
            ckpts[f"round{r}"] = str(current)
    finally:
        if started:
            ray.shutdown()
    print("\n=== evaluation on the held-out test set ===", flush=True)
    items = load_test_items(test_dir)
    results = evaluate_checkpoints(ckpts, items, flip_tta=cfg.flip_tta)
    write_report(results, out / "report", base_name="base", title=f"facegs pipeline: {cfg.rounds} EM round(s)")
    table = summary_table(results, base_name="base")
    for rec in rounds:
        s = results[f"round{rec['round']}"].summary()
        rec["eval"] = {"overall_mean_f1": s["overall"]["mean_f1"],
                       "yaw": {f"{b['lo']:g}-{b['hi']:g}": b["mean_f1"] for b in s["yaw"]}}
    doc = {"rounds": rounds, "test_set": str(test_dir), "test_views": len(items), "wall_s": round(time.time() - t0, 1),
           "report": str(out / "report"), "table": table}
    (out / "pipeline.json").write_text(json.dumps(doc, indent=1))
    print("\n" + table)
    _print_rounds(rounds)
    print(f"\nreport: {out / 'report' / 'report.md'}  (plots, contact_sheet.html)\nsummary: {out / 'pipeline.json'}")
    return doc


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, PipelineConfig)
    f = p.add_argument_group("factory (ray_jobs.build_dataset)")
    add_options(f, FactoryConfig, fields=FACTORY_FIELDS, prefix="factory.")
    f.add_argument("--factory-args", default="", help="further build_dataset arguments, e.g. '--maxcount 16'")
    t = p.add_argument_group("fine-tuning (ray_jobs.finetune)")
    add_options(t, FinetuneConfig, fields=FINETUNE_FIELDS, prefix="finetune.", defaults=FINETUNE_DEFAULTS)
    t.add_argument("--finetune-args", default="", help="further ray_jobs.finetune arguments")
    return p


def parse_args(argv: list[str] | None = None) -> PipelineConfig:
    a = make_parser().parse_args(argv)
    extra_build = overrides_from_args(BuildConfig, shlex.split(a.factory_args), "--factory-args")
    extra_ft = overrides_from_args(FinetuneConfig, shlex.split(a.finetune_args), "--finetune-args")
    factory = {**from_namespace(FactoryConfig, a, prefix="factory.", build=False), **extra_build.pop("factory", {})}
    finetune = {**from_namespace(FinetuneConfig, a, prefix="finetune.", build=False), **extra_ft}
    cfg = from_namespace(PipelineConfig, a, build=False)
    if "steps" in extra_build:
        cfg["steps"] = extra_build.pop("steps")
    return PipelineConfig(**cfg, factory=factory, build=extra_build, finetune=finetune)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        run(cfg)
    except BuildError as e:  # a round's factory could not run or produced nothing
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (InputError, ValueError, KeyError) as e:  # bad arguments
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FinetuneError as e:
        print(f"error: fine-tuning failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
