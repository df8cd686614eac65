"""One class of kept label-refinement fits, by |yaw| bin (or by pitch bin, ``--by pitch``): IoU of
the user renders (or of the fixed grid in the true frame, ``--renders grid``), and where the
class's truth pixels went (the predicted classes that took most of them); beside them the fit's
IoU against the input labels at the capture views (the quality term ``input_iou``).

Reads ``bench/label_refinement.py``'s ``fits/NAME.json`` (the pose-binned confusion matrices it
records); renders nothing. Prints a table and writes JSON.

    .venv/bin/python bench/class_by_yaw.py neck_l facescape_5024_clean nersemble_5024_clean frontal8_5024_clean
    .venv/bin/python bench/class_by_yaw.py neck_l nersemble_5024_clean frontal8_5024_clean --renders grid --by pitch

The grid's pitches (-20, 0, 20) fall one per middle pitch bin (-30/-15, -15/15, 15/30).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.core.labels import get_label_set  # noqa: E402
from facegs.evaluate.metrics import PoseBinnedEvaluator  # noqa: E402

LS = get_label_set("celebamask19")


def analyse(path: Path, cls: str, top: int = 4, renders: str = "user", by: str = "yaw") -> dict:
    """IoU per |yaw| (``by="yaw"``) or pitch bin of the ``renders`` ("user" or "grid") and the ``top``
    predicted classes of the class's truth pixels (all bins)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such fit (run bench/label_refinement.py first)")
    rec = json.loads(path.read_text())
    if "user" not in rec:
        raise SystemExit(f"{path}: the fit failed ({rec.get('failed', 'no scores')}): nothing to read")
    k = LS.index(cls)
    ev = PoseBinnedEvaluator.from_state_dict(rec[renders]["pose_state"])
    edges, stats = (ev.yaw_bins, ev.yaw) if by == "yaw" else (ev.pitch_bins, ev.pitch)
    bins = []
    for lo, hi, b in zip(edges[:-1], edges[1:], stats):
        m = b.cm.matrix
        gt, pred, tp = int(m[k].sum() + b.cm.invalid_pred[k]), int(m[:, k].sum()), int(m[k, k])
        bins.append({by: f"{lo:g}/{hi:g}" if by == "pitch" else f"{lo:g}-{hi:g}", "truth_px": gt, "pred_px": pred,
                     "iou": round(tp / (gt + pred - tp), 3) if gt + pred - tp else None})
    m = sum(b.cm.matrix for b in stats)
    went = {LS.classes[j]: int(m[k, j]) for j in np.argsort(-m[k])[:top] if m[k, j]}
    return {"renders": renders, "by": by, "bins": bins, "truth_px_went_to": went,
            "ignored_px": int(sum(b.cm.invalid_pred[k] for b in stats)),
            "capture_view_iou": rec["quality"]["input_iou"].get(cls)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cls", choices=LS.classes, metavar="CLASS", help="a celebamask19 class, e.g. neck_l")
    p.add_argument("fits", nargs="+", help="RIG_SEED_ARM names of fits under --root/fits")
    p.add_argument("--root", default="bench/out/label_refinement")
    p.add_argument("--renders", choices=("user", "grid"), default="user",
                   help="the factory's renders (estimated frame) or the fixed yaw x pitch grid (true frame)")
    p.add_argument("--by", choices=("yaw", "pitch"), default="yaw", help="bin by |yaw| or by signed pitch")
    p.add_argument("--out", help="JSON (default: bench/out/class_by_yaw.json, or class_by_pitch_grid.json etc. "
                   "for the other views)")
    a = p.parse_args()
    res = {name: analyse(Path(a.root) / "fits" / f"{name}.json", a.cls, renders=a.renders, by=a.by)
           for name in a.fits}
    for name, r in res.items():
        cells = "  ".join(f"{b[a.by]}: {b['iou'] if b['iou'] is not None else '-'} ({b['truth_px']} px)" for b in r["bins"])
        print(f"{name} {a.renders} {a.cls} IoU by {'|yaw|' if a.by == 'yaw' else 'pitch'}  {cells}")
        print(f"  truth px went to {r['truth_px_went_to']}, ignored {r['ignored_px']}; "
              f"IoU with the input labels at the capture views {r['capture_view_iou']}")
    suffix = "" if (a.by, a.renders) == ("yaw", "user") else ("_grid" if a.renders == "grid" else "")
    out = Path(a.out or f"bench/out/class_by_{a.by}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"class": a.cls, "fits": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
