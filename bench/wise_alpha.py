"""WiSE-FT diagnostic: mean F1 by |yaw| for every interpolation alpha, on several labelled sets side by side.

The pipeline chooses alpha on near-frontal *validation* views only (:mod:`facegs.evaluate.wise`);
this benchmark shows, after the fact, how that choice reads on other sets (a test set, a larger
validation set), per subject too: how much a small validation set can mislead the choice.

    .venv/bin/python bench/wise_alpha.py --base models/base_parser/base.pt \\
        --finetuned demo_out/pipeline/round1/parser.pt \\
        --sets demo_out/pipeline/test_set demo_out/pipeline/val_frontal --threads 1

Prints one table per set (pooled mean F1 over all views and per |yaw| bin, per alpha; then the
near-frontal mean F1 per subject at alpha 0 and 1) and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from facegs.evaluate.testsets import load_test_items
from facegs.evaluate.wise import evaluate_alphas, overall_mean_f1
from facegs.parser.checkpoint import load_parser
from facegs.train.wise import DEFAULT_ALPHAS


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * float(v), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", required=True, help="base parser checkpoint (alpha 0)")
    p.add_argument("--finetuned", required=True, help="fine-tuned parser checkpoint (alpha 1)")
    p.add_argument("--sets", nargs="+", required=True, help="labelled sets (test-set layout, see ray_jobs.evaluate)")
    p.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS))
    p.add_argument("--frontal", type=float, default=30.0, help="|yaw| <= this is near-frontal (per-subject table)")
    p.add_argument("--no-flip-tta", action="store_true", help="evaluate without horizontal-flip test-time augmentation")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="bench/out/wise_alpha.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    base, ft = load_parser(a.base), load_parser(a.finetuned)
    doc: dict = {"base": a.base, "finetuned": a.finetuned, "sets": {}}
    for s in a.sets:
        items = load_test_items(s)
        alphas, names, res = evaluate_alphas(base, ft, items, a.alphas, flip_tta=not a.no_flip_tta,
                                             include=(0.0, 1.0))
        doc["alphas"] = alphas
        rows = []
        for n, x in zip(names, alphas):
            summ = res[n].summary()
            rows.append({"alpha": x, "mean_f1": round(overall_mean_f1(res, n), 2),
                         "yaw": {b["label"]: _pct(b["mean_f1"]) for b in summ["yaw"]},
                         "n": {b["label"]: b.get("n_images") for b in summ["yaw"]}})
        subj: dict[str, list[list[float]]] = defaultdict(list)
        for i, it in enumerate(items):
            if abs(it.yaw) <= a.frontal:
                subj[it.subject_id].append([100.0 * res.per_view[names[0]][i].mean_f1,
                                            100.0 * res.per_view[names[-1]][i].mean_f1])
        per_subject = {k: {"views": len(v), "alpha0": round(float(np.nanmean([r[0] for r in v])), 2),
                           "alpha1": round(float(np.nanmean([r[1] for r in v])), 2)} for k, v in subj.items()}
        doc["sets"][s] = {"views": len(items), "rows": rows, "frontal_per_subject": per_subject}
        bins = list(rows[0]["yaw"])
        print(f"\n{s} ({len(items)} views): pooled mean F1 (%) by alpha")
        print("| alpha | all | " + " | ".join(f"{b} (n={rows[0]['n'][b]})" for b in bins) + " |")
        print("|---:|---:|" + "---:|" * len(bins))
        for r in rows:
            print(f"| {r['alpha']:g} | {r['mean_f1']:.2f} | "
                  + " | ".join("-" if r["yaw"][b] is None else f"{r['yaw'][b]:.2f}" for b in bins) + " |")
        print(f"near-frontal (|yaw| <= {a.frontal:g}) mean of per-view mean F1, per subject: alpha 0 -> 1")
        for k, v in per_subject.items():
            print(f"  {k}: {v['views']} views, {v['alpha0']:.2f} -> {v['alpha1']:.2f} ({v['alpha1'] - v['alpha0']:+.2f})")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
