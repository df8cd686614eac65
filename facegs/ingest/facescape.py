"""Ingest a FaceScape multi-view tuple (one subject, one expression) into a facegs subject.

FaceScape's ``params.json`` holds, per camera index ``i`` (0..N): ``{i}_K`` intrinsics (the docs
say 4x4; 3x3 is accepted too: the upper-left 3x3 is used), ``{i}_Rt`` 3x4 world-to-camera in
OpenCV's axes, ``{i}_distortion`` OpenCV ``k1 k2 p1 p2 k3``, ``{i}_width``, ``{i}_height``,
``{i}_valid`` (False: the camera parameters are unreliable and the view is skipped) and
informational ``{i}_matches``, ``{i}_sn``, ``{i}_ori``. Images are ``{i}.jpg`` next to it.

Conventions: ``K`` is taken with pixel centres at +0.5 by default (``pixel_centers="half"``, used
unchanged): FaceScape's own mesh overlay renders through pyrender's ``IntrinsicsCamera`` with ``K``
as given, and its image resizing scales ``K[:2]`` by the image scale, which is exact only for +0.5
centres (``docs/conventions.md`` weighs this against the toolkit's ``cv2.undistort`` call). Images
are undistorted exactly as the toolkit does, ``cv2.undistort(img, K, dist)`` with ``K`` as given. Pass
``"integer"`` for a calibration in OpenCV's integer-centre convention (cx, cy += 0.5). Units are
the rig's (millimetres); they are recorded in ``source.units`` and kept unless ``scale`` is given
(``scale=0.001`` gives metres).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest
from facegs.ingest.common import (
    CaptureView,
    PixelCenters,
    as_matrix,
    check_pinhole,
    check_rigid,
    find_image,
    k_from_source,
    read_json,
    resolve_subject_id,
    write_subject,
)

PARAMS_NAME = "params.json"
LAYOUT = """\
facescape: one FaceScape multi-view tuple (subject x expression), e.g. IMGS_ROOT/1/1_neutral/
    0.jpg 1.jpg ... N.jpg   one image per camera index i
    params.json             "{i}_K" intrinsics (4x4 or 3x3), "{i}_Rt" 3x4 world-to-camera (OpenCV
                            axes), "{i}_distortion" k1 k2 p1 p2 k3, "{i}_width", "{i}_height",
                            "{i}_valid" (views with false are skipped and counted)
  Images are undistorted (distortion null in the manifest). K is taken with pixel centres at +0.5,
  as FaceScape's own renderer uses it (--pixel-centers half, the default; integer for OpenCV-centred
  calibrations). Units stay the rig's millimetres (recorded in source.units) unless --scale is
  given (0.001: metres)."""

_KEY = re.compile(r"^(\d+)_([A-Za-z]+)$")


def _camera_indices(params: dict[str, Any]) -> list[int]:
    idx = {int(m.group(1)) for k in params if (m := _KEY.match(k))}
    return sorted(idx)


def _as_int(value: Any, *, subject: str, view: str, field: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise InputError(f"expected a positive integer, got {value!r}", subject=subject, view=view, field=field, path=str(path))
    return int(value)


def parse_params(
    params: Any, src_dir: Path, *, subject: str, params_path: Path, pixel_centers: PixelCenters = "half"
) -> tuple[list[CaptureView], list[str]]:
    """Camera records of the valid views and the ids of the views skipped as invalid."""
    if not isinstance(params, dict):
        raise InputError("params.json must hold a JSON object", subject=subject, path=str(params_path))
    indices = _camera_indices(params)
    if not indices:
        raise InputError("no camera keys like '0_K', '0_Rt' found", subject=subject, path=str(params_path))
    views: list[CaptureView] = []
    skipped: list[str] = []
    for i in indices:
        vid = str(i)
        ctx = dict(subject=subject, view=vid, path=params_path)
        valid = params.get(f"{i}_valid", True)
        if not isinstance(valid, (bool, int)) or isinstance(valid, float):
            raise InputError(f"expected true or false, got {valid!r}", field=f"{i}_valid", subject=subject, view=vid, path=str(params_path))
        if not valid:
            skipped.append(vid)
            continue
        for key in ("K", "Rt"):
            if f"{i}_{key}" not in params:
                raise InputError(f"camera {i} has no '{i}_{key}' entry", field=f"{i}_{key}", subject=subject, view=vid, path=str(params_path))
        K = as_matrix(params[f"{i}_K"], ((3, 3), (4, 4)), field=f"{i}_K", **ctx)[:3, :3]
        check_pinhole(K, field=f"{i}_K", **ctx)
        Rt = as_matrix(params[f"{i}_Rt"], ((3, 4), (4, 4)), field=f"{i}_Rt", **ctx)
        w2c = np.eye(4)
        w2c[:3, :] = Rt[:3, :]
        if Rt.shape == (4, 4):
            w2c[3] = Rt[3]
        check_rigid(w2c, field=f"{i}_Rt", **ctx)
        dist = None
        if params.get(f"{i}_distortion") is not None:
            dist = as_matrix(params[f"{i}_distortion"], ((4,), (5,), (8,), (12,), (14,)), field=f"{i}_distortion", **ctx)
        width = height = None
        if params.get(f"{i}_width") is not None:
            width = _as_int(params[f"{i}_width"], subject=subject, view=vid, field=f"{i}_width", path=params_path)
        if params.get(f"{i}_height") is not None:
            height = _as_int(params[f"{i}_height"], subject=subject, view=vid, field=f"{i}_height", path=params_path)
        image = find_image(src_dir, [vid])
        if image is None:
            raise InputError(
                f"no image for camera {i} (looked for {i}.jpg, {i}.jpeg, {i}.png)",
                subject=subject, view=vid, field="image", path=str(src_dir / f"{i}.jpg"),
            )
        views.append(
            CaptureView(
                view_id=vid, image_path=image, K=k_from_source(K, pixel_centers), world_to_camera=w2c,
                distortion=dist, width=width, height=height, size_fields=(f"{i}_width", f"{i}_height"),
                undistort_K=K,  # the toolkit's own cv2.undistort(img, K, dist), whichever centre convention
            )
        )
    return views, skipped


def ingest_facescape(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subject_id: str | None = None,
    overwrite: bool = False,
    pixel_centers: PixelCenters = "half",
    scale: float = 1.0,
    units: str = "mm",
    label_set: str = CANONICAL,
) -> SubjectManifest:
    """Ingest the FaceScape tuple folder ``src`` (images + ``params.json``) into subject ``out``."""
    src = Path(src)
    subject = resolve_subject_id(subject_id, out)
    params_path = src / PARAMS_NAME
    params = read_json(params_path, subject=subject)
    views, skipped = parse_params(params, src, subject=subject, params_path=params_path, pixel_centers=pixel_centers)
    source = {
        "format": "facescape",
        "path": str(src.resolve()),
        "units": units,
        "pixel_centers": pixel_centers,
        "num_cameras": len(views) + len(skipped),
        "skipped_invalid": skipped,
        "undistorted": True,
    }
    return write_subject(out, subject, views, source=source, overwrite=overwrite, label_set=label_set, world_scale=scale)
