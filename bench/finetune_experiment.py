"""Does fine-tuning on refined renders help at extreme poses? Four arms, the same training budget.

Held-out synthetic capture subjects (facescape rig, disjoint from the base parser's training
subjects and from the test subjects) are labelled by the base parser; then, with the same
fine-tuning schedule (epochs x samples per rank x workers, same seed, same share of the base
parser's own near-frontal training data mixed in), the arms are:

- ``base``: the base parser, not fine-tuned;
- ``raw``: fine-tuned on the raw capture views with the base parser's (noisy) labels;
- ``refined``: fine-tuned on the factory's renders with refined labels (facegs: fit + render);
- ``oracle``: fine-tuned on the same renders with exact ground-truth labels (rendered by the
  synthetic generator at the renders' cameras): what perfect labels would give.

All are evaluated on a held-out yaw/pitch grid test set (``ray_jobs.evaluate``'s report): mean F1
per |yaw| bin, the change on near-frontal views (|yaw| <= 30), and the share of the oracle's gain
at |yaw| >= 60 that refined labels recover: (refined - base) / (oracle - base).

    .venv/bin/python bench/finetune_experiment.py                   # 6 capture subjects, 3 test subjects
    .venv/bin/python bench/finetune_experiment.py --subjects 12 --epochs 6 --steps 600

Writes bench/out/finetune_experiment/ (datasets, checkpoints, report/) and experiment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path("bench/out/finetune_experiment")


def raw_dataset(subject_dirs: list[Path], parser_path: str, root: Path, work: Path) -> None:
    """Capture views with the base parser's labels (on copies of the subjects) as shards."""
    from facegs.core.manifest import load_manifest
    from facegs.factory.capture import capture_samples
    from facegs.label.views import label_subject_with_parser
    from facegs.parser.checkpoint import load_parser
    from facegs.shards.manifest import merge_manifest
    from facegs.shards.writer import commit_subject

    if (root / "manifest.parquet").exists():
        return
    parser = load_parser(parser_path)
    for d in subject_dirs:
        tmp = work / d.name
        if not tmp.exists():
            shutil.copytree(d, tmp)
        label_subject_with_parser(tmp, parser, flip_tta=True, progress=False)
        m = load_manifest(tmp)
        commit_subject(capture_samples(m, "00000a11", label_field="labels"), str(root), m.subject_id)
    merge_manifest(str(root))


def oracle_dataset(refined_root: Path, subjects_dir: Path, root: Path) -> None:
    """The refined renders' RGB with exact labels rendered by the generator at the same cameras."""
    import hashlib

    from facegs.core.manifest import load_manifest
    from facegs.shards.encode import Sample
    from facegs.shards.manifest import merge_manifest, read_manifest
    from facegs.shards.stream import ShardDataset
    from facegs.shards.writer import commit_subject
    from facegs.synth.params import HeadParams
    from facegs.synth.raytrace import render_views as synth_render

    stamp = hashlib.sha256((refined_root / "manifest.parquet").read_bytes()).hexdigest()
    if (root / "manifest.parquet").exists() and (root / "refined_manifest.sha256").is_file() \
            and (root / "refined_manifest.sha256").read_text() == stamp:
        return
    shutil.rmtree(root, ignore_errors=True)  # stale: the refined renders changed
    by_subject: dict[str, list[dict]] = {}
    for s in ShardDataset(str(refined_root), shards=read_manifest(str(refined_root)).column("shard").to_pylist()):
        by_subject.setdefault(s["meta"]["subject_id"], []).append(s)
    for sid, samples in sorted(by_subject.items()):
        m = load_manifest(subjects_dir / sid)
        params = HeadParams.from_dict(m.source["params"])
        samples.sort(key=lambda s: s["meta"]["view_index"])
        cams = [(np.array(s["meta"]["K"]), np.array(s["meta"]["world_to_camera"]), s["meta"]["width"],
                 s["meta"]["height"]) for s in samples]
        gts = synth_render(params, cams, m.world_from_head, m.source.get("background", "world"))
        out = [Sample(rgb=s["rgb"], seg=g["labels"].astype(np.uint8), conf=np.ones(s["seg"].shape, np.float32),
                      ignore=np.zeros(s["seg"].shape, bool), meta={**s["meta"], "config_hash": "00000c1e"},
                      alpha=s.get("alpha"))
               for s, g in zip(samples, gts)]
        commit_subject(out, str(root), sid)
    merge_manifest(str(root))
    (root / "refined_manifest.sha256").write_text(stamp)


def label_quality_by_pose(refined_root: Path, oracle_root: Path) -> dict[str, float]:
    """Mean F1 (points) of the refined render labels against the exact labels of the same renders,
    per |yaw| bin (the yaw recorded in the shard, i.e. in the estimated head frame)."""
    from facegs.evaluate.metrics import PoseBinnedEvaluator
    from facegs.shards.stream import ShardDataset

    exact = {s["__key__"]: s["seg"] for s in ShardDataset(str(oracle_root))}
    ev = PoseBinnedEvaluator(pitch_bins=None)
    for s in ShardDataset(str(refined_root)):
        ev.update(s["seg"], exact[s["__key__"]], abs(float(s["meta"]["yaw"])))
    return {f"{b['lo']:g}-{b['hi']:g}": (None if b["mean_f1"] is None else round(100 * b["mean_f1"], 2))
            for b in ev.summary()["yaw"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parser", default="bench/out/base_parser_2400/base.pt", help="base parser (bench/base_parser.py)")
    ap.add_argument("--frontal-data", default="bench/out/base_parser_2400/train_subjects",
                    help="the base parser's near-frontal training subjects, mixed into every arm")
    ap.add_argument("--mix-ratio", type=float, default=0.3, help="share of frontal training samples per batch")
    ap.add_argument("--subjects", type=int, default=6, help="capture subjects for fine-tuning")
    ap.add_argument("--test-subjects", type=int, default=3)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--steps", type=int, default=600, help="3DGS fit steps per subject")
    ap.add_argument("--renders", type=int, default=32, help="renders per subject")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--epoch-length", type=int, default=192, help="samples per rank per epoch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--abs-yaw-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="fine-tune on shard samples with LO <= |yaw| <= HI only (every arm)")
    ap.add_argument("--background-prob", type=float, default=0.0,
                    help="replace shard samples' backgrounds with procedural clutter (every arm)")
    ap.add_argument("--tag", default="", help="name of this configuration: checkpoints in ckpt_TAG/, report_TAG/, "
                                               "experiment_TAG.json (default: ckpt/, report/, experiment.json)")
    ap.add_argument("--wise-max-drop", type=float, default=None,
                    help="also evaluate every fine-tuned arm after WiSE-FT weight interpolation with the base "
                         "(facegs.train.wise), alpha chosen per arm as the largest losing at most this many F1 "
                         "points on a separate near-frontal validation set (--val-subjects; never the test set)")
    ap.add_argument("--val-subjects", type=int, default=3, help="near-frontal validation subjects for --wise-max-drop")
    ap.add_argument("--ft-seed", type=int, default=0, help="fine-tuning seed (the same for every arm); vary it to "
                                                              "measure run-to-run spread")
    ap.add_argument("--seed", type=int, default=3000, help="master seed of the capture subjects")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)
    from facegs.evaluate.compare import evaluate_checkpoints
    from facegs.evaluate.report import write_report
    from facegs.evaluate.tables import summary_table
    from facegs.evaluate.testsets import load_test_items, make_test_set
    from facegs.synth.generate import generate_dataset
    from ray_jobs import build_dataset, finetune

    out = Path(a.out)
    sfx = f"_{a.tag}" if a.tag else ""
    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.time() - t0 - sum(timings.values()), 1)

    subjects = generate_dataset(out / "subjects", a.subjects, master_seed=a.seed, skip_existing=True, rig="facescape",
                                res=a.res)
    test_dir = out / "test_set"
    make_test_set(test_dir, a.test_subjects, seed=a.seed + 1, res=a.res)
    lap("synth")
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        rc = build_dataset.main(["--subjects", str(out / "subjects"), "--out", str(out / "refined"), "--labels",
                                 f"parser:{a.parser}", "--preset", "cpu_demo", "--steps", str(a.steps), "--renders",
                                 str(a.renders), "--no-progress"])
        if rc != 0:
            print("warning: some subjects failed in the factory; see refined/summary.json", file=sys.stderr)
        lap("factory")
        raw_dataset(subjects, a.parser, out / "raw", out / "raw_work")
        oracle_dataset(out / "refined", out / "subjects", out / "oracle")
        lap("raw_and_oracle_datasets")
        label_quality = label_quality_by_pose(out / "refined", out / "oracle")
        print(f"[labels] refined render labels vs exact, mean F1 by |yaw|: {label_quality}", flush=True)
        ckpts = {"base": a.parser}
        for arm in ("raw", "refined", "oracle"):
            ck = out / f"ckpt{sfx}" / f"{arm}.pt"
            if not ck.is_file():
                args = ["--shards", str(out / arm), "--init", a.parser, "--out", str(ck), "--storage-path",
                        str((out / "ray_train").resolve()), "--name", arm + sfx, "--workers", str(a.workers), "--epochs",
                        str(a.epochs), "--epoch-length", str(a.epoch_length), "--batch-size", str(a.batch_size),
                        "--lr", str(a.lr), "--size", str(a.res), "--seed", str(a.ft_seed)]
                if a.abs_yaw_range:
                    args += ["--abs-yaw-range", *(str(v) for v in a.abs_yaw_range)]
                if a.background_prob > 0:
                    args += ["--background-prob", str(a.background_prob)]
                if a.frontal_data and a.mix_ratio > 0:
                    args += ["--mix-dir", a.frontal_data, "--mix-ratio", str(a.mix_ratio)]
                assert finetune.main(args) == 0, f"fine-tuning arm {arm} failed"
            ckpts[arm] = str(ck)
            lap(f"finetune_{arm}")
    finally:
        ray.shutdown()
    wise: dict[str, dict] = {}
    if a.wise_max_drop is not None:
        from facegs.parser.checkpoint import load_parser
        from facegs.train.wise import choose_alpha, interpolate_parsers

        # near-frontal validation views (|yaw| <= 30, the test's frontal pitches) of other subjects
        val_dir = out / "val_frontal"
        make_test_set(val_dir, a.val_subjects, seed=a.seed + 2, res=a.res, yaws=(-30, -20, -10, 0, 10, 20, 30))
        val_items = load_test_items(val_dir)
        base_pm = load_parser(a.parser)
        for arm in ("raw", "refined", "oracle"):
            ft_pm = load_parser(ckpts[arm])
            alpha, tab = choose_alpha(base_pm, ft_pm, val_items, max_drop=a.wise_max_drop, flip_tta=True)
            wise[f"{arm}_wise"] = {"alpha": alpha, "val_table": tab}
            ckpts[f"{arm}_wise"] = interpolate_parsers(base_pm, ft_pm, alpha)
            print(f"[wise] {arm}: alpha {alpha:g} (val mean F1 by alpha: "
                  + ", ".join(f"{r['alpha']:g}:{r['mean_f1']:.1f}" for r in tab) + ")", flush=True)
        lap("wise_alpha")
    results = evaluate_checkpoints(ckpts, load_test_items(test_dir), flip_tta=True, progress=False)
    write_report(results, out / f"report{sfx}", base_name="base", title="fine-tuning experiment (same budget per arm)")
    lap("evaluate")

    def f1(name: str, lo: float, hi: float) -> float:
        s = results[name].summary()
        vals = [(b["mean_f1"], b["n_images"]) for b in s["yaw"] if b["lo"] >= lo and b["hi"] <= hi
                and b["mean_f1"] is not None]
        return float(np.average([v for v, _ in vals], weights=[n for _, n in vals])) if vals else float("nan")

    arms = list(ckpts)
    table = {k: {"0-30": f1(k, 0, 30), "30-60": f1(k, 30, 60), ">=60": f1(k, 60, 90)} for k in arms}
    gain = {k: table[k][">=60"] - table["base"][">=60"] for k in arms}
    share = gain["refined"] / gain["oracle"] if gain["oracle"] > 0 else float("nan")
    wshare = (gain["refined_wise"] / gain["oracle_wise"] if wise and gain["oracle_wise"] > 0 else None)
    doc = {"args": vars(a), "timings_s": timings, "mean_f1": table,
           "frontal_change": {k: table[k]["0-30"] - table["base"]["0-30"] for k in arms},
           "gain_ge60": gain, "oracle_share_recovered": share, "wise": wise, "wise_oracle_share_recovered": wshare,
           "refined_label_f1_by_yaw": label_quality,
           "summaries": {k: results[k].summary() for k in arms}}
    (out / f"experiment{sfx}.json").write_text(json.dumps(doc, indent=1))
    print(summary_table(results, base_name="base"))
    print(f"\n{'arm':13s} {'F1 0-30':>8s} {'F1 30-60':>9s} {'F1 >=60':>8s} {'d frontal':>10s} {'d >=60':>7s}")
    for k in arms:
        print(f"{k:13s} {100 * table[k]['0-30']:8.1f} {100 * table[k]['30-60']:9.1f} {100 * table[k]['>=60']:8.1f} "
              f"{100 * doc['frontal_change'][k]:+10.1f} {100 * gain[k]:+7.1f}")
    print(f"\nshare of the oracle's gain at |yaw| >= 60 recovered by refined labels: {share:.2f}")
    if wise:
        alphas = ", ".join(f"{k}={v['alpha']:g}" for k, v in wise.items())
        print(f"after WiSE-FT ({alphas}): share {wshare if wshare is None else round(wshare, 2)}")
    print(f"timings (s): {timings}\nreport: {out / f'report{sfx}' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
