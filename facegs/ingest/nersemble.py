"""Ingest one NeRSemble time step into a facegs subject (v2, the benchmark layout, and v1).

Read as NeRSemble's own code reads it (nersemble-data, nersemble-benchmark, the v1 ``nersemble``
data manager and dataset; ``/work/shared/reference/upstream-formats.md``):

- ``camera_params.json`` (``calibration/`` in v2; the participant folder in v1): ``"world_2_cam"``,
  a 4x4 world-to-camera matrix (OpenCV axes) per camera serial, and ``"intrinsics"``: ONE 3x3
  matrix shared by all cameras (v1, v2) or one per serial (the benchmark layout).
- v2 colour correction, ``calibration/color_calibration.json``: per serial a [3, T] matrix on
  linear RGB (sRGB decoded) over T Cheung 2004 polynomial terms (3, 4, 5, 7, 8, 10, 11, 14, 16, 17,
  19, 20, 22 or 35; :func:`facegs.ingest.images.apply_color_matrix`).
- v1 colour correction, ``annotations/SEQ/color_correction/{serial}.npy``: a [3, 4] (or [4, 4])
  affine map on gamma-encoded RGB, ``img @ A[:3, :3] + A[:3, 3]``
  (:func:`facegs.ingest.images.apply_affine_color`); read with ``allow_pickle=False``.
- images: v2 one video per camera, ``sequences/SEQ/images/cam_{serial}.mp4`` (``--frame`` picks the
  time step); v1 frames ``sequences/SEQ/frame_{T:05d}/images-2x[-73fps]/cam_{serial}.png`` at half
  the calibrated resolution (K is scaled by 0.5, as v1's dataparser rescales its cameras); extracted
  frames ``cam_{serial}.png`` (or ``.jpg``, or ``{serial}.png``) in ``--images``, ``SRC/images`` or
  ``SRC`` work too.

Conventions: images carry no distortion. ``K`` is taken with pixel centres at +0.5 by default
(``pixel_centers="half"``: NeRSemble's own training passes cx, cy unchanged to nerfstudio, which
casts rays through pixel index + 0.5; ``docs/conventions.md`` gives the reasoning); pass
``"integer"`` for a calibration in OpenCV's integer-centre convention (cx, cy += 0.5). If the
images are not at the resolution the intrinsics describe, pass ``calib_size=(W, H)`` and ``K`` is
scaled (uniform scaling only). The colour correction is applied to the images when present
(disable with ``color_correction=False``); it is recorded in source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

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
from facegs.ingest.images import CHEUNG2004_TERMS

CAMERA_PARAMS = "camera_params.json"
COLOR_CALIBRATION = "color_calibration.json"
V1_IMAGE_FOLDERS = ("images-2x-73fps", "images-2x")  # v1: half the calibrated resolution
LAYOUT = """\
nersemble: a NeRSemble participant folder (v2, the benchmark layout or v1) holding
    camera_params.json or calibration/camera_params.json
        {"world_2_cam": {SERIAL: 4x4 world-to-camera (OpenCV)}, "intrinsics": 3x3 shared K or
        {SERIAL: 3x3} (benchmark)}
    color_calibration.json (v2, optional, same folder): {SERIAL: 3xT colour matrix on linear RGB,
        T Cheung 2004 terms: 3, 4, 5, 7, 8, 10, 11, 14, 16, 17, 19, 20, 22 or 35}; or (v1)
        annotations/SEQ/color_correction/SERIAL.npy (affine, gamma-encoded RGB); applied unless
        --no-color-correction
    images: cam_SERIAL.png/.jpg (or SERIAL.png) in --images DIR, SRC/images or SRC; or videos
        cam_SERIAL.mp4 (then --frame T picks the time step; with --sequence SEQ the videos are
        read from SRC/sequences/SEQ/images); v1 frames from
        SRC/sequences/SEQ/frame_T/images-2x[-73fps] (K scaled by 0.5, as NeRSemble v1 does)
  K is taken with pixel centres at +0.5 (--pixel-centers half, the default for this format).
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


def _intrinsics(params: dict[str, Any], serials: list[str], *, subject: str, path: Path) -> dict[str, np.ndarray]:
    """Serial -> 3x3 K (source convention): one shared matrix (v1, v2) or one per serial (benchmark)."""
    intr = params["intrinsics"]
    if isinstance(intr, dict):
        missing = [s for s in serials if s not in intr]
        if missing:
            raise InputError(f"per-camera intrinsics lack serials {missing[:5]}", subject=subject, field="intrinsics",
                             path=str(path))
        out = {}
        for serial in serials:
            K = as_matrix(intr[serial], ((3, 3),), subject=subject, view=sanitize_id(serial),
                          field=f"intrinsics.{serial}", path=path)
            out[serial] = check_pinhole(K, subject=subject, view=sanitize_id(serial), field=f"intrinsics.{serial}",
                                        path=path)
        return out
    K = as_matrix(intr, ((3, 3),), subject=subject, view=None, field="intrinsics", path=path)
    check_pinhole(K, subject=subject, view=None, field="intrinsics", path=path)
    return dict.fromkeys(serials, K)


CHEUNG_SHAPES = tuple((3, t) for t in CHEUNG2004_TERMS)


def _color(serial: str, vid: str, colors: dict[str, Any] | None, colors_path: Path | None, v1_dir: Path | None, *,
           subject: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(v2 matrix [3, T], v1 affine [3|4, 4]) of one camera; None where that kind is not in use."""
    if colors is not None:
        if serial not in colors:
            raise InputError("no colour correction matrix for this camera", subject=subject, view=vid, field=serial,
                             path=str(colors_path))
        return as_matrix(colors[serial], CHEUNG_SHAPES, subject=subject, view=vid, field=serial, path=colors_path), None
    if v1_dir is not None:
        p = v1_dir / f"{serial}.npy"
        try:
            A = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise InputError("no colour correction file for this camera", subject=subject, view=vid,
                             field="color_correction", path=str(p)) from None
        except Exception as e:  # not an .npy, a pickle, ...
            raise InputError(f"unreadable colour correction ({type(e).__name__}: {e})", subject=subject, view=vid,
                             field="color_correction", path=str(p)) from None
        return None, as_matrix(A, ((3, 4), (4, 4)), subject=subject, view=vid, field="color_correction", path=p)
    return None, None


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
    v1_colors: Path | None = None,
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
    serials = sorted(w2cs)
    Ks = _intrinsics(params, serials, subject=subject, path=path)
    views = []
    for serial in serials:
        vid = sanitize_id(serial)
        field = f"world_2_cam.{serial}"
        w2c = as_matrix(w2cs[serial], ((4, 4),), subject=subject, view=vid, field=field, path=path)
        check_rigid(w2c, subject=subject, view=vid, field=field, path=path)
        ccm, affine = _color(serial, vid, colors, colors_path, v1_colors, subject=subject)
        image = _image_for_serial(image_folders, serial)
        if image is None:
            raise InputError(
                f"no image or video for camera {serial} (looked for cam_{serial}.png/.jpg/.mp4 in "
                f"{', '.join(str(f) for f in image_folders)})",
                subject=subject, view=vid, field="image", path=str(image_folders[0] / f"cam_{serial}.png"),
            )
        K = k_from_source(Ks[serial], pixel_centers)
        if image.parent.name in V1_IMAGE_FOLDERS and calib_size is None:
            K = np.diag([0.5, 0.5, 1.0]) @ K  # v1 frames are at half resolution (continuous coordinates scale)
        views.append(
            CaptureView(
                view_id=vid, image_path=image, K=K, world_to_camera=w2c, color_matrix=ccm, color_affine=affine,
                frame=frame, calib_size=calib_size,
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
    pixel_centers: PixelCenters = "half",
    scale: float = 1.0,
    units: str = "m",
    label_set: str = CANONICAL,
) -> SubjectManifest:
    """Ingest NeRSemble cameras (``camera_params.json``) and one frame per camera into ``out``."""
    src = Path(src)
    subject = resolve_subject_id(subject_id, out)
    params_path = find_camera_params(src)
    params = read_json(params_path, subject=subject)
    colors = colors_path = v1_colors = None
    if color_correction:
        cand = params_path.parent / COLOR_CALIBRATION
        v1 = src / "annotations" / sequence / "color_correction" if sequence is not None else None
        if cand.is_file():
            colors_path = cand
            colors = read_json(cand, subject=subject)
            if not isinstance(colors, dict):
                raise InputError("colour calibration must map serials to matrices", subject=subject, path=str(cand))
        elif v1 is not None and v1.is_dir():
            v1_colors = colors_path = v1
    if images is not None:
        folders = [Path(images)]
    elif sequence is not None:
        step = src / "sequences" / sequence / f"frame_{int(frame):05d}"
        folders = [src / "sequences" / sequence / "images", *(step / f for f in V1_IMAGE_FOLDERS), step / "images"]
    else:
        folders = [src / "images", src]
    views = parse_camera_params(
        params, subject=subject, path=params_path, image_folders=folders, colors=colors, colors_path=colors_path,
        pixel_centers=pixel_centers, frame=frame, calib_size=calib_size, v1_colors=v1_colors,
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
    elif any(v.image_path.parent.name in V1_IMAGE_FOLDERS for v in views):
        source["intrinsics_scale"] = 0.5  # v1 half-resolution frames
    return write_subject(out, subject, views, source=source, overwrite=overwrite, label_set=label_set, world_scale=scale)
