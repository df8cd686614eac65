"""Ingest one NeRSemble (v2) time step into a facegs subject.

NeRSemble v2 ships, per participant, ``calibration/camera_params.json`` with ``"world_2_cam"``: a
4x4 world-to-camera matrix (OpenCV axes) per camera serial, and ``"intrinsics"``: ONE 3x3 matrix
shared by all cameras; optionally ``calibration/color_calibration.json``: per serial a colour
correction matrix (3x3, or 3x4 with a constant term) that acts on linear RGB (sRGB decoded). Images
come as one video per camera, ``sequences/SEQ/images/cam_{serial}.mp4``; extracted frames named
``cam_{serial}.png`` (or ``.jpg``, or ``{serial}.png``) work too.

Conventions: images carry no distortion. ``K`` is taken in OpenCV's integer pixel-centre convention
by default (``pixel_centers="integer"``: cx, cy += 0.5); pass ``"half"`` if your calibration
already uses +0.5 centres. If the images are not at the resolution the intrinsics describe, pass
``calib_size=(W, H)`` and ``K`` is scaled (uniform scaling only). The colour correction is applied
to the images when present (disable with ``color_correction=False``); it is recorded in source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest
from facegs.ingest.common import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    CaptureView,
    PixelCenters,
    as_matrix,
    check_pinhole,
    check_rigid,
    find_image,
    k_from_source,
    read_json,
    resolve_subject_id,
    sanitize_id,
    write_subject,
)

CAMERA_PARAMS = "camera_params.json"
COLOR_CALIBRATION = "color_calibration.json"
LAYOUT = """\
nersemble: a NeRSemble v2 participant folder (or any folder) holding
    camera_params.json or calibration/camera_params.json
        {"world_2_cam": {SERIAL: 4x4 world-to-camera (OpenCV)}, "intrinsics": 3x3 shared K}
    color_calibration.json (optional, same folder): {SERIAL: 3x3 or 3x4 colour matrix on linear
        RGB}; applied to the images unless --no-color-correction
    images: cam_SERIAL.png/.jpg (or SERIAL.png) in --images DIR, SRC/images or SRC; or videos
        cam_SERIAL.mp4 (then --frame T picks the time step; with --sequence SEQ the videos are
        read from SRC/sequences/SEQ/images)
  --calib-size WxH scales K when the images are smaller than the calibrated resolution."""


def find_camera_params(src: Path) -> Path:
    """``camera_params.json`` in ``src`` or ``src/calibration``; :class:`InputError` if absent."""
    for p in (src / CAMERA_PARAMS, src / "calibration" / CAMERA_PARAMS):
        if p.is_file():
            return p
    raise InputError(f"no {CAMERA_PARAMS} in {src} or {src / 'calibration'}", path=str(src / CAMERA_PARAMS))


def _image_for_serial(folders: list[Path], serial: str) -> Path | None:
    stems = [f"cam_{serial}", serial]
    for folder in folders:
        p = find_image(folder, stems, IMAGE_EXTS + VIDEO_EXTS)
        if p is not None:
            return p
    return None


def parse_camera_params(
    params: Any,
    *,
    subject: str,
    path: Path,
    image_folders: list[Path],
    colors: dict[str, Any] | None,
    colors_path: Path | None,
    pixel_centers: PixelCenters,
    frame: int,
    calib_size: tuple[int, int] | None,
) -> list[CaptureView]:
    """Camera records, one per serial in ``world_2_cam`` (sorted by serial)."""
    if not isinstance(params, dict):
        raise InputError("camera_params.json must hold a JSON object", subject=subject, path=str(path))
    for key in ("world_2_cam", "intrinsics"):
        if key not in params:
            raise InputError(f"missing '{key}'", subject=subject, field=key, path=str(path))
    w2cs = params["world_2_cam"]
    if not isinstance(w2cs, dict) or not w2cs:
        raise InputError("'world_2_cam' must map camera serials to 4x4 matrices", subject=subject, field="world_2_cam", path=str(path))
    K_src = as_matrix(params["intrinsics"], ((3, 3),), subject=subject, view=None, field="intrinsics", path=path)
    check_pinhole(K_src, subject=subject, view=None, field="intrinsics", path=path)
    K = k_from_source(K_src, pixel_centers)
    views = []
    for serial in sorted(w2cs):
        vid = sanitize_id(serial)
        field = f"world_2_cam.{serial}"
        w2c = as_matrix(w2cs[serial], ((4, 4),), subject=subject, view=vid, field=field, path=path)
        check_rigid(w2c, subject=subject, view=vid, field=field, path=path)
        ccm = None
        if colors is not None:
            if serial not in colors:
                raise InputError("no colour correction matrix for this camera", subject=subject, view=vid, field=serial, path=str(colors_path))
            ccm = as_matrix(colors[serial], ((3, 3), (3, 4)), subject=subject, view=vid, field=serial, path=colors_path)
        image = _image_for_serial(image_folders, serial)
        if image is None:
            raise InputError(
                f"no image or video for camera {serial} (looked for cam_{serial}.png/.jpg/.mp4 in "
                f"{', '.join(str(f) for f in image_folders)})",
                subject=subject, view=vid, field="image", path=str(image_folders[0] / f"cam_{serial}.png"),
            )
        views.append(
            CaptureView(
                view_id=vid, image_path=image, K=K, world_to_camera=w2c, color_matrix=ccm, frame=frame, calib_size=calib_size
            )
        )
    return views


def ingest_nersemble(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subject_id: str | None = None,
    overwrite: bool = False,
    images: str | os.PathLike | None = None,
    sequence: str | None = None,
    frame: int = 0,
    color_correction: bool = True,
    calib_size: tuple[int, int] | None = None,
    pixel_centers: PixelCenters = "integer",
    scale: float = 1.0,
    units: str = "m",
    label_set: str = CANONICAL,
) -> SubjectManifest:
    """Ingest NeRSemble cameras (``camera_params.json``) and one frame per camera into ``out``."""
    src = Path(src)
    subject = resolve_subject_id(subject_id, out)
    params_path = find_camera_params(src)
    params = read_json(params_path, subject=subject)
    colors = colors_path = None
    if color_correction:
        cand = params_path.parent / COLOR_CALIBRATION
        if cand.is_file():
            colors_path = cand
            colors = read_json(cand, subject=subject)
            if not isinstance(colors, dict):
                raise InputError("colour calibration must map serials to matrices", subject=subject, path=str(cand))
    if images is not None:
        folders = [Path(images)]
    elif sequence is not None:
        folders = [src / "sequences" / sequence / "images"]
    else:
        folders = [src / "images", src]
    views = parse_camera_params(
        params, subject=subject, path=params_path, image_folders=folders, colors=colors, colors_path=colors_path,
        pixel_centers=pixel_centers, frame=frame, calib_size=calib_size,
    )
    source = {
        "format": "nersemble",
        "path": str(src.resolve()),
        "camera_params": str(params_path.resolve()),
        "units": units,
        "pixel_centers": pixel_centers,
        "color_correction": None if colors_path is None else str(colors_path.resolve()),
        "frame": int(frame),
    }
    if sequence is not None:
        source["sequence"] = sequence
    if calib_size is not None:
        source["calib_size"] = [int(calib_size[0]), int(calib_size[1])]
    return write_subject(out, subject, views, source=source, overwrite=overwrite, label_set=label_set, world_scale=scale)
