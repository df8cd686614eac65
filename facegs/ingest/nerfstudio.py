"""Ingest a nerfstudio / instant-NGP style ``transforms.json`` into a facegs subject.

Fields: intrinsics ``fl_x fl_y cx cy w h`` (or ``camera_angle_x`` [``camera_angle_y``] as in the
Blender NeRF scenes, with the principal point at the image centre), distortion ``k1 k2 k3 k4 p1
p2``, ``camera_model`` (``OPENCV`` default, ``PINHOLE``, ``SIMPLE_PINHOLE``, ``OPENCV_FISHEYE``); every
intrinsic may be overridden per frame. ``frames[i].file_path`` is relative to the JSON file;
``frames[i].transform_matrix`` is CAMERA-TO-WORLD in the OpenGL/Blender camera convention (+x right,
+y up, +z backward).

Conversion: ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` (flip the camera's y and z axes), then
``world_to_camera = inverse(c2w_cv)``. The world frame is kept as is (an ``applied_transform`` that
ns-process-data recorded is copied into ``source``).

Pixel convention (assumed): nerfstudio generates rays through ``pixel index + 0.5`` with the given
cx, cy, i.e. pixel centres at +0.5, the same as facegs and COLMAP (whose cx, cy ns-process-data
copies unchanged), so ``K = [[fl_x, 0, cx], [0, fl_y, cy], [0, 0, 1]]`` is used unchanged.
Distortion (radial k1..k3, tangential p1 p2) is undone with ``cv2.undistort`` keeping ``K``;
nerfstudio's k4 (an r^8 term) has no OpenCV equivalent and is refused unless zero.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from facegs.core.errors import InputError
from facegs.core.imageio import image_size
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest
from facegs.ingest.common import (
    IMAGE_EXTS,
    CaptureView,
    as_matrix,
    check_pinhole,
    check_rigid,
    read_json,
    resolve_subject_id,
    rigid_inverse,
    unique_ids,
    write_subject,
)

TRANSFORMS_NAME = "transforms.json"
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
LAYOUT = """\
nerfstudio: a folder with transforms.json (or the JSON file itself):
    fl_x fl_y cx cy w h [k1 k2 k3 k4 p1 p2] [camera_model: OPENCV | PINHOLE | OPENCV_FISHEYE]
    (or camera_angle_x for Blender-style scenes), each overridable per frame;
    frames: [{file_path: relative image path, transform_matrix: 4x4 camera-to-world, OpenGL
    camera axes (+y up, +z backward)}]
  Converted to OpenCV world-to-camera. cx, cy are taken with pixel centres at +0.5 (nerfstudio
  offsets pixel indices by 0.5), like facegs. Distorted images are undistorted to the same K."""

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model",
                   "camera_angle_x", "camera_angle_y")
_PERSPECTIVE = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}


def gl_c2w_to_cv_w2c(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world [4, 4] -> OpenCV world-to-camera [4, 4]."""
    return rigid_inverse(np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV)


def _resolve_image(base: Path, file_path: str) -> Path:
    p = base / file_path
    if p.is_file() or p.suffix.lower() in IMAGE_EXTS:
        return p
    for ext in IMAGE_EXTS:  # Blender scenes name frames without an extension ("./train/r_0")
        if (cand := p.with_name(p.name + ext)).is_file():
            return cand
    return p


def _number(d: dict[str, Any], key: str, *, subject: str, view: str, field: str, path: Path) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"expected a finite number, got {v!r}", subject=subject, view=view, field=field, path=str(path))
    return float(v)


def _frame_camera(
    cam: dict[str, Any], image: Path, *, subject: str, view: str, prefix: str, path: Path
) -> tuple[np.ndarray, np.ndarray | None, bool, int | None, int | None]:
    """(K, distortion, fisheye, w, h) of one frame from its merged intrinsics ``cam``."""
    ctx = dict(subject=subject, view=view, path=path)
    model = cam.get("camera_model", "OPENCV")
    if model not in _PERSPECTIVE and model != "OPENCV_FISHEYE":
        raise InputError(f"unsupported camera_model {model!r}", field=f"{prefix}camera_model", **ctx)
    w = int(_number(cam, "w", field=f"{prefix}w", **ctx)) if "w" in cam else None
    h = int(_number(cam, "h", field=f"{prefix}h", **ctx)) if "h" in cam else None
    if "fl_x" in cam:
        fx = _number(cam, "fl_x", field=f"{prefix}fl_x", **ctx)
        fy = _number(cam, "fl_y", field=f"{prefix}fl_y", **ctx) if "fl_y" in cam else fx
    elif "camera_angle_x" in cam:
        if w is None or h is None:  # Blender scenes give no size: read it from the image header
            if not image.is_file():
                raise InputError("image file does not exist", subject=subject, view=view, field=f"{prefix}file_path", path=str(image))
            w, h = image_size(image)
        fx = 0.5 * w / math.tan(0.5 * _number(cam, "camera_angle_x", field=f"{prefix}camera_angle_x", **ctx))
        fy = 0.5 * h / math.tan(0.5 * _number(cam, "camera_angle_y", field=f"{prefix}camera_angle_y", **ctx)) if "camera_angle_y" in cam else fx
    else:
        raise InputError("no focal length (fl_x or camera_angle_x)", field=f"{prefix}fl_x", **ctx)
    if "cx" in cam and "cy" in cam:
        cx = _number(cam, "cx", field=f"{prefix}cx", **ctx)
        cy = _number(cam, "cy", field=f"{prefix}cy", **ctx)
    else:
        if w is None or h is None:
            raise InputError("no principal point (cx, cy) and no image size (w, h)", field=f"{prefix}cx", **ctx)
        cx, cy = w / 2.0, h / 2.0
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    check_pinhole(K, field=f"{prefix}fl_x", **ctx)
    coef = {k: _number(cam, k, field=f"{prefix}{k}", **ctx) if k in cam else 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if model == "OPENCV_FISHEYE":
        dist = np.array([coef["k1"], coef["k2"], coef["k3"], coef["k4"]])
        return K, (dist if np.any(dist) else None), True, w, h
    if coef["k4"] != 0.0:
        raise InputError("k4 (an r^8 radial term) has no OpenCV equivalent", field=f"{prefix}k4", **ctx)
    dist = np.array([coef["k1"], coef["k2"], coef["p1"], coef["p2"], coef["k3"]])
    return K, (dist if np.any(dist) else None), False, w, h


def parse_transforms(doc: Any, *, base: Path, subject: str, path: Path) -> list[CaptureView]:
    """Camera records of every frame of a parsed ``transforms.json``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list) or not doc["frames"]:
        raise InputError("transforms.json must hold a non-empty 'frames' list", subject=subject, field="frames", path=str(path))
    frames = doc["frames"]
    names = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise InputError("frame has no 'file_path' string", subject=subject, view=f"#{i}", field=f"frames[{i}].file_path", path=str(path))
        names.append(Path(fr["file_path"]).stem if Path(fr["file_path"]).suffix.lower() in IMAGE_EXTS else Path(fr["file_path"]).name)
    ids = unique_ids(names)
    shared = {k: doc[k] for k in _INTRINSIC_KEYS if k in doc}
    views = []
    for i, (vid, fr) in enumerate(zip(ids, frames)):
        prefix = f"frames[{i}]."
        if "transform_matrix" not in fr:
            raise InputError("frame has no 'transform_matrix'", subject=subject, view=vid, field=f"{prefix}transform_matrix", path=str(path))
        c2w = as_matrix(fr["transform_matrix"], ((4, 4), (3, 4)), subject=subject, view=vid, field=f"{prefix}transform_matrix", path=path)
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
        check_rigid(c2w, subject=subject, view=vid, field=f"{prefix}transform_matrix", path=path)
        image = _resolve_image(base, fr["file_path"])
        cam = {**shared, **{k: fr[k] for k in _INTRINSIC_KEYS if k in fr}}
        K, dist, fisheye, w, h = _frame_camera(cam, image, subject=subject, view=vid, prefix=prefix, path=path)
        views.append(
            CaptureView(
                view_id=vid, image_path=image, K=K, world_to_camera=gl_c2w_to_cv_w2c(c2w), distortion=dist,
                fisheye=fisheye, width=w, height=h, size_fields=(f"{prefix}w", f"{prefix}h"),
            )
        )
    return views


def ingest_nerfstudio(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subject_id: str | None = None,
    overwrite: bool = False,
    scale: float = 1.0,
    units: str = "unknown",
    label_set: str = CANONICAL,
) -> SubjectManifest:
    """Ingest ``transforms.json`` (``src`` is the file or its folder) and its images into ``out``."""
    src = Path(src)
    path = src / TRANSFORMS_NAME if src.is_dir() else src
    subject = resolve_subject_id(subject_id, out)
    doc = read_json(path, subject=subject)
    views = parse_transforms(doc, base=path.parent, subject=subject, path=path)
    source: dict[str, Any] = {"format": "nerfstudio", "path": str(path.resolve()), "units": units, "pixel_centers": "half"}
    if isinstance(doc, dict) and "applied_transform" in doc:
        source["applied_transform"] = np.asarray(doc["applied_transform"], dtype=np.float64).tolist()
    return write_subject(out, subject, views, source=source, overwrite=overwrite, label_set=label_set, world_scale=scale)
