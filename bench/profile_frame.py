"""The label-free head frame's pitch on subjects no part of it was tuned on: the face's profile
(``facegs.headframe.profile``) against the rig's up direction, on exact synthetic surfaces.

``bench/label_refinement.py`` records both label-free frames on its fitted scenes, but the profile's
registration settings were chosen looking at those fits. Here fresh synthetic subjects (seeds
disjoint from the template's 0-11 and from every benchmark), each held in its rig with the
generator's random head pose, are rendered exactly (depth and labels back-projected from every
capture view: the surface the cameras see), and the placement's label-free pieces run on them as
the fallback would: the symmetry plane of the face classes (started from the rig's x), the profile
registered in it, the rig prior. Errors against the generator's true frame: rotation of the frame
with x from the plane and up from the profile or from the rig (degrees), and its origin (cm).

    .venv/bin/python bench/profile_frame.py                          # 3 rigs x 16 subjects, 80 px
    .venv/bin/python bench/profile_frame.py --rigs facescape --seeds 16 --res 64

Prints a table per rig and writes bench/out/profile_frame.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegs.core.cameras import rotation_angle_deg  # noqa: E402
from facegs.core.labels import get_label_set  # noqa: E402
from facegs.core.manifest import load_manifest  # noqa: E402
from facegs.headframe.calibrate import labelled_points_from_views  # noqa: E402
from facegs.headframe.inplane import width_scale  # noqa: E402
from facegs.headframe.place import SYMMETRIC_CLASSES, TEMPLATE_FACE_WIDTH  # noqa: E402
from facegs.headframe.priors import head_frame_from_cameras  # noqa: E402
from facegs.headframe.profile import fit_profile  # noqa: E402
from facegs.headframe.symmetry import symmetry_plane  # noqa: E402
from facegs.synth.generate import generate_subject  # noqa: E402

LS = get_label_set("celebamask19")


def frame_error(n: np.ndarray, up: np.ndarray, T: np.ndarray) -> float:
    """Rotation error (degrees) of the frame with x = ``n`` and y = ``up`` (made perpendicular)."""
    up = up - (up @ n) * n
    up = up / np.linalg.norm(up)
    return rotation_angle_deg(np.stack([n, up, np.cross(n, up)], axis=1), T[:3, :3])


def one(rig: str, seed: int, res: int, work: Path) -> dict:
    sid = f"p{seed}"
    generate_subject(work, sid, seed, rig=rig, res=res, write_masks=False)
    m = load_manifest(work / sid)
    T = np.asarray(m.world_from_head)
    pts, probs = labelled_points_from_views(m, "gt_labels", stride=1)
    lab = probs.argmax(1)
    rigf = head_frame_from_cameras(np.stack([np.asarray(v.world_to_camera) for v in m.views])).world_from_head
    face = np.isin(lab, [LS.index(c) for c in SYMMETRIC_CLASSES])
    plane = symmetry_plane(pts[face], [rigf[:3, 0]], near=rigf[:3, 0])
    n, d = plane.towards(rigf[:3, 0])
    t0 = time.perf_counter()
    p = fit_profile(pts, n, d, rigf[:3, 1], rigf[:3, 3], width_scale(pts, n, TEMPLATE_FACE_WIDTH))
    t_prof = time.perf_counter() - t0
    o = rigf[:3, 3] - (rigf[:3, 3] @ n - d) * n
    return {"rig": rig, "seed": seed, "profile_deg": frame_error(n, p.up, T), "rig_deg": frame_error(n, rigf[:3, 1], T),
            "plane_deg": float(np.degrees(np.arccos(min(1.0, abs(float(n @ T[:3, 0])))))),
            "profile_origin_cm": 100 * float(np.linalg.norm(p.origin - T[:3, 3])),
            "rig_origin_cm": 100 * float(np.linalg.norm(o - T[:3, 3])), "profile_cost_mm": 1000 * p.cost,
            "profile_s": round(t_prof, 3), "n_points": len(pts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rigs", nargs="+", default=["facescape", "nersemble", "frontal8"])
    ap.add_argument("--seeds", type=int, default=16, help="subjects per rig")
    ap.add_argument("--first-seed", type=int, default=7000, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--res", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/out/profile_frame.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rig in a.rigs:
            for seed in range(a.first_seed, a.first_seed + a.seeds):
                rows.append(one(rig, seed, a.res, Path(tmp) / rig))
                r = rows[-1]
                print(f"[{rig}] s{seed}: profile {r['profile_deg']:5.1f} deg, rig {r['rig_deg']:5.1f} deg "
                      f"(plane {r['plane_deg']:.1f}); origin {r['profile_origin_cm']:.1f} / {r['rig_origin_cm']:.1f} cm; "
                      f"cost {r['profile_cost_mm']:.2f} mm", flush=True)
    summary = {}
    print("\n| rig | subjects | profile: mean / max deg, > 5 | rig: mean / max deg, > 5 | origin profile / rig (cm) | "
          "profile closer | profile cost (mm) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for rig in [*a.rigs, "all"]:
        rs = [r for r in rows if rig in ("all", r["rig"])]
        col = lambda k, rs=rs: np.array([r[k] for r in rs])  # noqa: E731
        pd, rd = col("profile_deg"), col("rig_deg")
        summary[rig] = {"subjects": len(rs), "profile_deg_mean": float(pd.mean()), "profile_deg_max": float(pd.max()),
                        "profile_over_5": int((pd > 5).sum()), "rig_deg_mean": float(rd.mean()),
                        "rig_deg_max": float(rd.max()), "rig_over_5": int((rd > 5).sum()),
                        "profile_origin_cm": float(col("profile_origin_cm").mean()),
                        "rig_origin_cm": float(col("rig_origin_cm").mean()), "profile_closer": int((pd < rd).sum()),
                        "profile_cost_mm": [float(col("profile_cost_mm").min()), float(col("profile_cost_mm").max())]}
        s = summary[rig]
        print(f"| {rig} | {len(rs)} | {s['profile_deg_mean']:.1f} / {s['profile_deg_max']:.1f}, {s['profile_over_5']} | "
              f"{s['rig_deg_mean']:.1f} / {s['rig_deg_max']:.1f}, {s['rig_over_5']} | "
              f"{s['profile_origin_cm']:.1f} / {s['rig_origin_cm']:.1f} | {s['profile_closer']} | "
              f"{s['profile_cost_mm'][0]:.2f}-{s['profile_cost_mm'][1]:.2f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "summary": summary, "subjects": rows}, indent=1))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
