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
    from facegs.factory import capture_samples
    from facegs.manifest import load_manifest
    from facegs.parsing.checkpoint import load_parser
    from facegs.parsing.label_views import label_subject_with_parser
    from facegs.shards import commit_subject, merge_manifest

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
    from facegs.manifest import load_manifest
    from facegs.shards import Sample, commit_subject, merge_manifest, read_manifest
    from facegs.stream import ShardDataset
    from facegs.synth.params import HeadParams
    from facegs.synth.render import render_views as synth_render

    if (root / "manifest.parquet").exists():
        return
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
                      ignore=np.zeros(s["seg"].shape, bool), meta={**s["meta"], "config_hash": "00000c1e"})
               for s, g in zip(samples, gts)]
        commit_subject(out, str(root), sid)
    merge_manifest(str(root))


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
    ap.add_argument("--seed", type=int, default=3000, help="master seed of the capture subjects")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)
    from facegs.parsing.report import evaluate_checkpoints, load_test_items, make_test_set, summary_table, write_report
    from facegs.synth.generate import generate_dataset
    from ray_jobs import build_dataset, finetune

    out = Path(a.out)
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
        ckpts = {"base": a.parser}
        for arm in ("raw", "refined", "oracle"):
            ck = out / "ckpt" / f"{arm}.pt"
            if not ck.is_file():
                args = ["--shards", str(out / arm), "--init", a.parser, "--out", str(ck), "--storage-path",
                        str((out / "ray_train").resolve()), "--name", arm, "--workers", str(a.workers), "--epochs",
                        str(a.epochs), "--epoch-length", str(a.epoch_length), "--batch-size", str(a.batch_size),
                        "--lr", str(a.lr), "--size", str(a.res), "--seed", "0"]
                if a.frontal_data and a.mix_ratio > 0:
                    args += ["--mix-dir", a.frontal_data, "--mix-ratio", str(a.mix_ratio)]
                assert finetune.main(args) == 0, f"fine-tuning arm {arm} failed"
            ckpts[arm] = str(ck)
            lap(f"finetune_{arm}")
    finally:
        ray.shutdown()
    results = evaluate_checkpoints(ckpts, load_test_items(test_dir), flip_tta=True, progress=False)
    write_report(results, out / "report", base_name="base", title="fine-tuning experiment (same budget per arm)")
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
    doc = {"args": vars(a), "timings_s": timings, "mean_f1": table,
           "frontal_change": {k: table[k]["0-30"] - table["base"]["0-30"] for k in arms},
           "gain_ge60": gain, "oracle_share_recovered": share,
           "summaries": {k: results[k].summary() for k in arms}}
    (out / "experiment.json").write_text(json.dumps(doc, indent=1))
    print(summary_table(results, base_name="base"))
    print(f"\n{'arm':8s} {'F1 0-30':>8s} {'F1 30-60':>9s} {'F1 >=60':>8s} {'d frontal':>10s} {'d >=60':>7s}")
    for k in arms:
        print(f"{k:8s} {100 * table[k]['0-30']:8.1f} {100 * table[k]['30-60']:9.1f} {100 * table[k]['>=60']:8.1f} "
              f"{100 * doc['frontal_change'][k]:+10.1f} {100 * gain[k]:+7.1f}")
    print(f"\nshare of the oracle's gain at |yaw| >= 60 recovered by refined labels: {share:.2f}")
    print(f"timings (s): {timings}\nreport: {out / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
