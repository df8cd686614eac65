"""``facegs ingest``: turn a multi-view capture into a facegs subject directory."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from facegs.ingest import available_formats, format_layout, ingest

# option dest -> formats it applies to
_FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "images": ("colmap", "nersemble"),
    "pixel_centers": ("facescape", "nersemble"),
    "units": ("facescape", "nersemble", "colmap", "nerfstudio"),
    "sequence": ("nersemble",),
    "frame": ("nersemble",),
    "color_correction": ("nersemble",),
    "calib_size": ("nersemble",),
    "camera_model": ("images",),
    "matcher": ("images",),
    "max_image_size": ("images",),
    "num_threads": ("images",),
    "seed": ("images",),
    "min_registered": ("images",),
    "workspace": ("images",),
    "profile": ("images",),
}


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def register(subparsers: argparse._SubParsersAction) -> None:
    layouts = "\n\n".join(format_layout(f) for f in available_formats())
    p = subparsers.add_parser(
        "ingest",
        help="convert a multi-view capture (FaceScape, NeRSemble, COLMAP, nerfstudio, plain images) to a subject",
        description=(
            "Write SRC as a facegs subject directory OUT (subject.json + images/), atomically: after an "
            "error nothing is left at OUT. Cameras become OpenCV world-to-camera 4x4 matrices, K gets pixel "
            "centres at +0.5, images are undistorted to the calibrated K.\n\nInput layouts:\n\n" + layouts
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="the capture (folder or file, see the layouts above)")
    p.add_argument("out", metavar="OUT", help="subject directory to create")
    p.add_argument("--format", "-f", required=True, choices=available_formats(), help="capture format")
    p.add_argument("--subject-id", help="subject id (default: the name of OUT)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--scale", type=float, default=1.0, help="multiply translations and points (0.001: mm -> m)")
    p.add_argument("--units", help="units of the capture's world, recorded in source.units")
    p.add_argument("--label-set", default="celebamask19", help="label set for the label maps added later")
    g = p.add_argument_group("format options")
    g.add_argument("--images", metavar="DIR", help="image folder (colmap, nersemble)")
    g.add_argument("--pixel-centers", choices=("half", "integer"),
                   help="pixel-centre convention of the source K (facescape, nersemble): half (default: K used "
                   "unchanged, as both datasets' own renderers use it) or integer (OpenCV-centred: cx, cy += 0.5); "
                   "docs/conventions.md")
    g.add_argument("--sequence", help="nersemble: read videos from SRC/sequences/SEQUENCE/images")
    g.add_argument("--frame", type=int, help="nersemble: frame index in cam_SERIAL.mp4 videos (default 0)")
    g.add_argument("--no-color-correction", dest="color_correction", action="store_const", const=False,
                   help="nersemble: do not apply color_calibration.json")
    g.add_argument("--calib-size", type=_size, metavar="WxH", help="nersemble: resolution the intrinsics describe")
    g.add_argument("--camera-model", help="images: COLMAP camera model to estimate (default SIMPLE_RADIAL)")
    g.add_argument("--matcher", choices=("exhaustive", "sequential"), help="images: pair selection (default exhaustive)")
    g.add_argument("--max-image-size", type=int, help="images: longest side SIFT sees (default 2000)")
    g.add_argument("--num-threads", type=int, help="images: CPU threads (default all)")
    g.add_argument("--seed", type=int, help="images: mapper random seed (default 0)")
    g.add_argument("--min-registered", type=int, help="images: fail below this many registered images (default 3)")
    g.add_argument("--workspace", metavar="DIR", help="images: keep the SfM database and models here")
    g.add_argument("--profile", choices=("auto", "colmap", "low_res"),
                   help="images: SfM thresholds; low_res suits images of a few hundred pixels (default auto)")
    p.set_defaults(func=run)


def _format_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for dest, formats in _FORMAT_OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if args.format not in formats:
            flag = "--no-color-correction" if dest == "color_correction" else "--" + dest.replace("_", "-")
            raise SystemExit(f"facegs ingest: error: {flag} does not apply to --format {args.format}")
        kw[dest] = value
    return kw


def run(args: argparse.Namespace) -> int:
    kw = _format_kwargs(args)
    m = ingest(
        args.format, args.src, args.out, subject_id=args.subject_id, overwrite=args.overwrite, scale=args.scale,
        label_set=args.label_set, **kw,
    )
    src = m.source
    extra = []
    if src.get("skipped_invalid"):
        extra.append(f"skipped {len(src['skipped_invalid'])} invalid views ({', '.join(src['skipped_invalid'])})")
    if "num_registered" in src:
        extra.append(f"registered {src['num_registered']}/{src['num_images']} images")
    if m.points3d is not None:
        extra.append(f"points3d: {m.points3d}")
    print(f"ingested subject '{m.subject_id}' ({args.format}): {len(m.views)} views -> {m.root}")
    for line in extra:
        print(f"  {line}")
    sys.stdout.flush()
    return 0
