"""``facegs synth`` (procedural subjects with exact labels) and ``facegs contact-sheet``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from facegs.core.viz import write_contact_sheet
from facegs.synth.generate import generate_subject, subject_id_for, subject_seed
from facegs.synth.rigs import RIG_NAMES, get_rig
from facegs.synth.shading import BACKGROUNDS

SYNTH_HELP = """\
Render procedural 3D heads with EXACT per-pixel ground truth, one subject directory per subject:

  OUT/synth_0000/subject.json         manifest (facegs.core.manifest; label_set celebamask19)
  OUT/synth_0000/images/cam_000.png   RGB
  OUT/synth_0000/gt_labels/cam_000.png  labels, palette PNG, pixel value = celebamask19 index
  OUT/synth_0000/gt_depth/cam_000.png   camera-z depth, uint16 in 0.1 mm units, 0 = background
  OUT/synth_0000/masks/cam_000.png      foreground mask (0/255)

Subject i gets the seed sha256("facegs.synth:S:i") (stable), so a run can be split across machines
with --start and resumed with --skip-existing. Each subject is written atomically.

Conventions: OpenCV cameras (x right, y down, z forward), world-to-camera 4x4 extrinsics, pixel
centres at +0.5. Head frame: +x = the subject's LEFT, +y up, +z out of the face; the manifest's
world_from_head is the ground-truth head pose (a few degrees off the rig). Per-view pose
(yaw, pitch, roll) is head-relative: yaw +90 = camera on the subject's left, seeing the LEFT ear;
pitch > 0 = camera above. l_* classes are the subject's own left. Labels show only the visible
surface (a profile view holds one eye and one ear).

Rigs: facescape = 48 views, yaw -90..90, pitch -30..45; nersemble = 16 views, |yaw| <= 60.
Backgrounds: world = textured environment fixed in the world (structure-from-motion can match it),
random = new texture per view, plain = flat colour.

Example:
  facegs synth --subjects 10 --rig facescape --res 256 --seed 0 --out data/synth
  facegs contact-sheet data/synth/synth_0000 --out sheet.png
"""


def _positive(v: str) -> int:
    i = int(v)
    if i < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return i


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="render procedural heads with exact labels, depth and masks (subject directories)",
        description=SYNTH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--subjects", type=_positive, default=1, help="number of subjects (default 1)")
    p.add_argument("--rig", choices=RIG_NAMES, default="facescape", help="camera rig (default facescape)")
    p.add_argument("--res", type=int, default=256, help="image width = height in pixels, 64..1024 (default 256)")
    p.add_argument("--seed", type=int, default=0, help="master seed S (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output directory (subjects go to OUT/synth_XXXX)")
    p.add_argument("--background", choices=BACKGROUNDS, default="world", help="background (default world)")
    p.add_argument("--symmetric", action="store_true", help="mirror-symmetric subjects with identity head pose (tests)")
    p.add_argument("--start", type=int, default=0, help="index of the first subject (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing subject directories")
    p.add_argument("--skip-existing", action="store_true", help="leave subjects that already have a subject.json")
    p.add_argument("--no-masks", action="store_true", help="do not write masks/")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on shared or busy machines one thread is fastest; "
                        "parallelise over subjects with processes instead)")
    p.set_defaults(func=run_synth)

    c = subparsers.add_parser(
        "contact-sheet",
        help="grid of a subject's views with a label overlay (PNG)",
        description="Write a contact sheet: each view's RGB with a semi-transparent label overlay, captioned "
                    "with the view id and head-relative yaw/pitch, plus a legend of the classes present.",
    )
    c.add_argument("subject_dir", type=Path, help="subject directory (holding subject.json)")
    c.add_argument("--out", required=True, type=Path, help="output image (.png or .jpg)")
    c.add_argument("--labels", choices=("gt_labels", "labels"), default="gt_labels",
                   help="label field to overlay (default gt_labels)")
    c.add_argument("--max-views", type=_positive, default=48, help="at most this many views, evenly spaced (default 48)")
    c.add_argument("--tile", type=int, default=192, help="tile size in pixels (default 192)")
    c.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    c.set_defaults(func=run_contact_sheet)


def run_synth(args: argparse.Namespace) -> int:
    if not 64 <= args.res <= 1024:
        print(f"facegs synth: error: --res must be within 64..1024, got {args.res}", file=sys.stderr)
        return 2
    if args.overwrite and args.skip_existing:
        print("facegs synth: error: --overwrite and --skip-existing exclude each other", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    n_views = len(get_rig(args.rig, args.res, args.res))
    t0 = time.time()
    done = skipped = 0
    with tqdm(total=args.subjects * n_views, unit="view", desc="synth", file=sys.stderr) as bar:
        for i in range(args.start, args.start + args.subjects):
            sid = subject_id_for(i)
            if args.skip_existing and (args.out / sid / "subject.json").is_file():
                skipped += 1
                bar.update(n_views)
                continue
            bar.set_postfix_str(sid)
            generate_subject(args.out, sid, subject_seed(args.seed, i), rig=args.rig, res=args.res,
                             background=args.background, symmetric=args.symmetric, overwrite=args.overwrite,
                             write_masks=not args.no_masks, progress=bar.update)
            done += 1
    dt = time.time() - t0
    print(f"wrote {done} subject(s) ({skipped} skipped) x {n_views} views to {args.out} in {dt:.1f} s")
    return 0


def run_contact_sheet(args: argparse.Namespace) -> int:
    out = write_contact_sheet(args.subject_dir, args.out, label_field=args.labels, max_views=args.max_views,
                              tile=args.tile, alpha=args.alpha)
    print(f"wrote {out}")
    return 0
