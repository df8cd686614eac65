"""Ingest a nerfstudio / instant-NGP style ``transforms.json`` into a facegs subject.

Read as nerfstudio's own ``nerfstudio_dataparser.py`` and ``camera_utils.py`` read it:

- intrinsics ``fl_x fl_y cx cy w h``: a key present at the top level is used for every frame;
  per-frame values are used only for keys the top level lacks (upstream's ``fx_fixed = "fl_x" in
  meta``, ...). Blender NeRF scenes give ``camera_angle_x`` [``camera_angle_y``] instead (focal
  ``0.5 w / tan(0.5 angle)``, principal point at the image centre); a missing ``fl_y`` is ``fl_x``.
- distortion: when the top level has any of ``k1 k2 k3 p1 p2 distortion_params`` it is used for every
  frame -- the array ``distortion_params`` (``[k1, k2, k3, k4, p1, p2]``, the order of
  ``camera_utils.get_distortion_params``) if present, else the named keys (``k4`` included, 0 when
  absent); otherwise each frame's own ``distortion_params`` or named keys. (As upstream, a top-level
  ``k4`` alone does not make the distortion shared.)
- ``camera_model`` is read from the top level only: ``OPENCV`` (default), ``PINHOLE``,
  ``SIMPLE_PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL`` are upstream's perspective camera, distorted by
  radial ``1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4`` and tangential ``p1 p2`` terms (a non-zero ``k4``
  is supported: :func:`facegs.ingest.images.radial4_maps`); ``OPENCV_FISHEYE`` uses ``k1..k4``.
  Other models (equirectangular, omnidirectional, FISHEYE624, ...) are refused.
- ``frames[i].file_path`` and ``frames[i].mask_path`` are relative to the JSON file's folder; a mask
  (one channel, non-zero = foreground, upstream's ``get_image_mask_tensor_from_path``) is given for
  every frame or none, is undistorted with its image and becomes the view's ``mask``.
- ``frames[i].transform_matrix`` is CAMERA-TO-WORLD in the OpenGL/Blender camera convention (+x
  right, +y up, +z backward).

Conversion: ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` (flip the camera's y and z axes), then
``world_to_camera = inverse(c2w_cv)``. The world frame is kept as is (an ``applied_transform`` that
ns-process-data recorded is copied into ``source``).

Pixel convention: nerfstudio casts rays through ``pixel index + 0.5`` with the given cx, cy, i.e.
pixel centres at +0.5, the same as facegs and COLMAP (whose cx, cy ns-process-data copies
unchanged), so ``K = [[fl_x, 0, cx], [0, fl_y, cy], [0, 0, 1]]`` is used unchanged. Distorted images
are undistorted keeping ``K`` (``cv2.undistort`` when ``k4`` is 0; nerfstudio's ``r2^4`` term has
no OpenCV equivalent, so a non-zero ``k4`` is undone by resampling through maps of the upstream
model).
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
    fl_x fl_y cx cy w h, distortion k1 k2 k3 k4 p1 p2 or distortion_params [k1 k2 k3 k4 p1 p2],
    camera_model OPENCV | PINHOLE | OPENCV_FISHEYE (top level only); or camera_angle_x for
    Blender-style scenes. Top-level intrinsics win over per-frame ones (as nerfstudio reads them);
    frames: [{file_path: image path, transform_matrix: 4x4 camera-to-world, OpenGL camera axes
    (+y up, +z backward), optional mask_path: one-channel mask, non-zero = foreground}]
  Converted to OpenCV world-to-camera. cx, cy are taken with pixel centres at +0.5 (nerfstudio
  offsets pixel indices by 0.5), like facegs. Distorted images (and masks) are undistorted to the
  same K."""

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
_DIST_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_SHARED_DIST_MARKERS = ("k1", "k2", "k3", "p1", "p2", "distortion_params")  # upstream's distort_fixed test
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


def _distortion(src: dict[str, Any], *, prefix: str, ctx: dict[str, Any]) -> np.ndarray:
    """``[k1, k2, k3, k4, p1, p2]`` from ``distortion_params`` or the named keys of ``src``."""
    if "distortion_params" in src:
        return as_matrix(src["distortion_params"], ((6,),), field=f"{prefix}distortion_params", **ctx)
    return np.array([_number(src, k, field=f"{prefix}{k}", **ctx) if k in src else 0.0 for k in _DIST_KEYS])


def _frame_camera(
    doc: dict[str, Any], fr: dict[str, Any], image: Path, *, subject: str, view: str, prefix: str, path: Path
) -> tuple[np.ndarray, np.ndarray | None, str, int | None, int | None]:
    """(K, distortion, distortion model, w, h) of one frame, upstream's precedence (module docstring)."""
    ctx = dict(subject=subject, view=view, path=path)
    cam = {k: doc[k] if k in doc else fr[k] for k in _INTRINSIC_KEYS if k in doc or k in fr}
    where = {k: ("" if k in doc else prefix) for k in cam}
    model = doc.get("camera_model", "OPENCV")
    if model not in _PERSPECTIVE and model != "OPENCV_FISHEYE":
        raise InputError(f"unsupported camera_model {model!r} (supported: {sorted(_PERSPECTIVE | {'OPENCV_FISHEYE'})})",
                         field="camera_model", **ctx)

    def num(key: str) -> float:
        return _number(cam, key, field=f"{where[key]}{key}", **ctx)

    w = int(num("w")) if "w" in cam else None
    h = int(num("h")) if "h" in cam else None
    if "fl_x" in cam:
        fx = num("fl_x")
        fy = num("fl_y") if "fl_y" in cam else fx
    elif "camera_angle_x" in cam:
        if w is None or h is None:  # Blender scenes give no size: read it from the image header
            if not image.is_file():
                raise InputError("image file does not exist", subject=subject, view=view, field=f"{prefix}file_path", path=str(image))
            w, h = image_size(image)
        fx = 0.5 * w / math.tan(0.5 * num("camera_angle_x"))
        fy = 0.5 * h / math.tan(0.5 * num("camera_angle_y")) if "camera_angle_y" in cam else fx
    else:
        raise InputError("no focal length (fl_x or camera_angle_x)", field=f"{prefix}fl_x", **ctx)
    if "cx" in cam and "cy" in cam:
        cx, cy = num("cx"), num("cy")
    else:
        if w is None or h is None:
            raise InputError("no principal point (cx, cy) and no image size (w, h)", field=f"{prefix}cx", **ctx)
        cx, cy = w / 2.0, h / 2.0
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    check_pinhole(K, field=f"{where.get('fl_x', prefix)}fl_x", **ctx)
    shared = any(k in doc for k in _SHARED_DIST_MARKERS)
    d = _distortion(doc if shared else fr, prefix="" if shared else prefix, ctx=ctx)  # k1 k2 k3 k4 p1 p2
    if not np.any(d):
        return K, None, "opencv", w, h
    if model == "OPENCV_FISHEYE":
        return K, d[:4], "fisheye", w, h
    if d[3] != 0.0:
        return K, d, "radial4", w, h
    return K, np.array([d[0], d[1], d[4], d[5], d[2]]), "opencv", w, h  # OpenCV order: k1 k2 p1 p2 k3


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
    with_mask = [i for i, fr in enumerate(frames) if "mask_path" in fr]
    if with_mask and len(with_mask) != len(frames):
        i = next(i for i in range(len(frames)) if i not in with_mask)
        raise InputError(f"mask_path is given for {len(with_mask)} of {len(frames)} frames; nerfstudio needs it for "
                         "every frame or none", subject=subject, view=f"#{i}", field=f"frames[{i}].mask_path",
                         path=str(path))
    ids = unique_ids(names)
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
        K, dist, model, w, h = _frame_camera(doc, fr, image, subject=subject, view=vid, prefix=prefix, path=path)
        mask = None
        if "mask_path" in fr:
            if not isinstance(fr["mask_path"], str) or not fr["mask_path"]:
                raise InputError("mask_path must be a path", subject=subject, view=vid, field=f"{prefix}mask_path", path=str(path))
            mask = base / fr["mask_path"]
        views.append(
            CaptureView(
                view_id=vid, image_path=image, K=K, world_to_camera=gl_c2w_to_cv_w2c(c2w), distortion=dist,
                fisheye=model == "fisheye", distortion_model=model, width=w, height=h, mask_path=mask,
                size_fields=("w" if "w" in doc else f"{prefix}w", "h" if "h" in doc else f"{prefix}h"),
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
