"""Own-class vote share of the Gaussians of kept label-refinement scenes (facegs.fit.support).

For each fit named ``RIG_SEED_ARM`` of ``bench/label_refinement.py``'s output (its ``scenes/`` and
``subjects/``), the capture views' initial labels (the arm's, regenerated from the seed) are lifted
onto the fitted Gaussians with :func:`facegs.fit.support.label_votes`, as the factory does after
the fit; per class of the fitted scene it prints the Gaussians, the median share of their votes
for their own class, the median share of their 16 nearest neighbours of the same class, and how
many the support rule would swap. Writes JSON.

    .venv/bin/python bench/label_support.py frontal8_5010_pose_1 frontal8_5010_clean \\
        nersemble_5024_clean facescape_5024_clean nersemble_5024_pixel_0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.core.labels import get_label_set  # noqa: E402
from facegs.core.manifest import load_manifest  # noqa: E402
from facegs.factory.config import FactoryConfig  # noqa: E402
from facegs.factory.subject import support_views  # noqa: E402
from facegs.fit.support import SupportConfig, label_votes, relabel_unsupported  # noqa: E402
from facegs.label.views import initial_labels  # noqa: E402
from facegs.splat.scene import load_tensors  # noqa: E402

LS = get_label_set("celebamask19")
ARMS = {"clean": "noise:pixel:0.0", "pixel_0.5": "noise:pixel:0.5", "lr_swap_0.4": "noise:lr_swap:0.4",
        "pose_1": "noise:pose:1"}


def analyse(root: Path, name: str, every_pixel: bool = False) -> dict:
    parts = name.split("_", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise SystemExit(f"{name}: expected RIG_SEED_ARM, e.g. frontal8_5010_pose_1")
    rig, seed, arm = parts
    if arm not in ARMS:
        raise SystemExit(f"{name}: arm '{arm}' is not one of {sorted(ARMS)} (the parser arm needs the parser)")
    m = load_manifest(root / "subjects" / rig / f"s{seed}")
    labels = initial_labels(m, ARMS[arm], seed=int(seed))
    params, _ = load_tensors(root / "scenes" / f"{name}.pt")
    cfg = FactoryConfig(labels=ARMS[arm]).refine(int(seed))
    votes = label_votes(params, support_views(m, cfg.support, labels, "cpu"), "auto",
                        cfg.fit.matte_over_background and cfg.fit.label_background)
    _, stats = relabel_unsupported(params, votes, SupportConfig(drop_isolated=not every_pixel))
    v = (votes.all if every_pixel else votes.joined).numpy()  # the shares the rule judges
    cls = params["logits"].argmax(1).numpy()
    share = v[np.arange(len(cls)), cls] / np.maximum(v.sum(1), 1e-12)
    _, idx = cKDTree(params["means"].numpy()).query(params["means"].numpy(), k=16)
    knn = (cls[idx] == cls[:, None]).mean(1)
    per = {LS.classes[k]: {"gaussians": int((cls == k).sum()), "own_share_median": round(float(np.median(share[cls == k])), 3),
                           "knn_same_class_median": round(float(np.median(knn[cls == k])), 3)}
           for k in np.unique(cls)}
    return {"per_class": per, "support": stats}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fits", nargs="+", help="RIG_SEED_ARM names of kept scenes")
    p.add_argument("--root", default="bench/out/label_refinement")
    p.add_argument("--out", default="bench/out/label_support.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-isolated-label-pixels", action="store_true",
                   help="shares over every labelled pixel, isolated ones included (the rule before SupportConfig.drop_isolated)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    res = {}
    for name in a.fits:
        res[name] = r = analyse(Path(a.root), name, a.keep_isolated_label_pixels)
        s = r["support"]
        print(f"\n{name}: floor {s['noise_floor']:.4f}, threshold {s['threshold']:.4f}, swapped {s['relabelled']} "
              f"({100 * s['relabelled_fraction']:.2f}%) {s['by_class']}")
        print(f"  {'class':8s} {'gaussians':>9s} {'own share':>9s} {'kNN same':>9s}")
        for c, d in r["per_class"].items():
            print(f"  {c:8s} {d['gaussians']:9d} {d['own_share_median']:9.3f} {d['knn_same_class_median']:9.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
