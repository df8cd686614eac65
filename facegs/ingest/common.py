"""Shared pieces of capture ingestion: parsed camera records and the atomic subject writer.

Every format reader (``facescape``, ``nersemble``, ``colmap``, ``nerfstudio``, ``images``) first
parses its camera files into :class:`CaptureView` records, checking every number before any file is
written, and then hands them to :func:`write_subject`, which reads, undistorts and colour-corrects
the images and writes the subject directory through :func:`facegs.core.storage.atomic_directory`: on any
error nothing is left at ``OUT``.

Conventions of the records (the facegs conventions, see :mod:`facegs`):

- ``K`` [3, 3] with pixel centres at +0.5: pixel (row i, column j) has its centre at continuous
  image coordinate ``(j + 0.5, i + 0.5)``. COLMAP and nerfstudio use the same convention. OpenCV's
  own functions (``calibrateCamera``, ``projectPoints``, ``undistort``) put pixel centres at integer
  coordinates; :func:`k_from_source` and :func:`k_to_opencv` convert (a shift of cx, cy by 0.5).
- ``world_to_camera`` [4, 4] OpenCV (+x right, +y down, +z forward), ``x_cam = R x_world + t``.
- ``distortion``: coefficients of the SOURCE image in ``distortion_model`` -- OpenCV's
  (``k1 k2 p1 p2 [k3 [k4 k5 k6]]``), ``cv2.fisheye``'s four (``fisheye``), or nerfstudio's
  ``[k1, k2, k3, k4, p1, p2]`` (``radial4``, :mod:`facegs.ingest.images`). The writer undistorts
  with the same ``K`` (``cv2.undistort(img, K_cv, dist, newCameraMatrix=K_cv)`` for OpenCV's), so
  the manifest keeps ``K`` and records ``distortion: null``. A view's mask, when the source has one,
  is undistorted with the same maps (nearest neighbour) and written to ``masks/<view_id>.png``.

Images land in ``OUT/images/<view_id><ext>``: copied byte for byte when nothing changes them,
otherwise re-encoded in the source's format (PNG lossless; JPEG quality 95; video frames as PNG).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facegs.core.cameras import rotation_problem
from facegs.core.errors import InputError
from facegs.core.imageio import decode_rgb, encode_rgb, write_mask
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest, View, save_manifest
from facegs.core.storage import atomic_directory
from facegs.ingest.images import (
    apply_affine_color,
    apply_color_matrix,
    read_nonzero_mask,
    read_video_frame,
    undistort,
    undistort_mask,
)

PixelCenters = Literal["half", "integer"]
PIXEL_CENTERS = ("half", "integer")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
IMAGES_DIR = "images"
MASKS_DIR = "masks"


POINTS_NAME = "points3d.npz"


_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class CaptureView:
    """One source view, parsed and checked, before its image is read.

    ``K`` [3, 3] facegs convention (pixel centres at +0.5) of the source image; ``world_to_camera``
    [4, 4] OpenCV; ``distortion`` OpenCV coefficients of the source image or None;
    ``color_matrix`` [3, T] NeRSemble v2 colour-correction matrix on linear RGB with T Cheung 2004
    terms (T = 3: R G B; T = 4: R G B 1; :func:`facegs.ingest.images.apply_color_matrix`);
    ``color_affine`` [3, 4] or [4, 4] NeRSemble v1 affine correction on gamma-encoded RGB
    (:func:`facegs.ingest.images.apply_affine_color`); ``mask_path``: a foreground mask of the
    source image (any non-zero value is foreground, as nerfstudio reads it); ``frame``: frame index when
    ``image_path`` is a video; ``width``/``height``: the size the calibration declares (checked
    against the image; ``size_fields`` name them in errors) or None to accept the image's size.
    """

    view_id: str
    image_path: Path
    K: np.ndarray
    world_to_camera: np.ndarray
    distortion: np.ndarray | None = None
    fisheye: bool = False
    width: int | None = None
    height: int | None = None
    color_matrix: np.ndarray | None = None
    color_affine: np.ndarray | None = None
    mask_path: Path | None = None
    distortion_model: str = "opencv"  # "opencv" | "fisheye" | "radial4" (fisheye=True means "fisheye")
    undistort_K: np.ndarray | None = None  # the K (OpenCV convention) the source's own tools undistort with
    frame: int | None = None
    calib_size: tuple[int, int] | None = None  # (W, H) that K describes, when the image may be scaled
    size_fields: tuple[str, str] = ("width", "height")  # source field names of width / height, for errors


def sanitize_id(name: str) -> str:
    """Turn any name into a manifest id (``[A-Za-z0-9_-]+``): other runs become ``_``."""
    s = _ID_BAD.sub("_", str(name)).strip("_")
    return s or "x"


def unique_ids(names: list[str]) -> list[str]:
    """Sanitised ids for ``names``, made unique by appending ``_2``, ``_3`` ... where they collide."""
    out: list[str] = []
    seen: set[str] = set()
    for n in names:
        base = sanitize_id(n)
        cand, k = base, 2
        while cand in seen:
            cand, k = f"{base}_{k}", k + 1
        seen.add(cand)
        out.append(cand)
    return out


def resolve_subject_id(subject_id: str | None, out: str | os.PathLike) -> str:
    """``subject_id`` checked against the manifest pattern, or by default the output directory's
    name, sanitised."""
    if subject_id is None:
        return sanitize_id(Path(out).resolve().name)
    if not subject_id or sanitize_id(subject_id) != subject_id:
        raise InputError(
            f"subject id {subject_id!r} must match [A-Za-z0-9_-]+ (no dots: it becomes part of WebDataset keys)",
            field="subject_id",
        )
    return subject_id


def read_json(path: str | os.PathLike, *, subject: str | None = None) -> Any:
    """Parse a JSON file; a missing file or a syntax error becomes an :class:`InputError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file does not exist", subject=subject, path=str(p)) from None
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror}", subject=subject, path=str(p)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", subject=subject, path=str(p)
        ) from None


def as_matrix(
    value: Any,
    shapes: tuple[tuple[int, ...], ...],
    *,
    subject: str | None,
    view: str | None,
    field: str,
    path: str | os.PathLike | None,
) -> np.ndarray:
    """``value`` as a finite float64 array of one of ``shapes``; otherwise an :class:`InputError`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"expected a numeric array of shape {' or '.join(map(str, map(list, shapes)))}, got {value!r:.80}",
            subject=subject, view=view, field=field, path=None if path is None else str(path),
        ) from None
    if arr.shape not in shapes:
        raise InputError(
            f"expected shape {' or '.join(str(list(s)) for s in shapes)}, got {list(arr.shape)}",
            subject=subject, view=view, field=field, path=None if path is None else str(path),
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(
            "has non-finite entries (NaN or inf)",
            subject=subject, view=view, field=field, path=None if path is None else str(path),
        )
    return arr


def check_pinhole(K: np.ndarray, *, subject: str | None, view: str | None, field: str, path: Any) -> np.ndarray:
    """Check a 3x3 pinhole ``K`` (finite, positive focal lengths, last row 0 0 1); return it."""
    p = None if path is None else str(path)
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9) or abs(K[1, 0]) > 1e-9:
        raise InputError(
            f"not a pinhole intrinsic matrix (need [[fx, s, cx], [0, fy, cy], [0, 0, 1]]), got {K.tolist()}",
            subject=subject, view=view, field=field, path=p,
        )
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(
            f"focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}",
            subject=subject, view=view, field=field, path=p,
        )
    return K


def check_rigid(w2c: np.ndarray, *, subject: str | None, view: str | None, field: str, path: Any) -> np.ndarray:
    """Check a 4x4 rigid transform (last row 0 0 0 1, proper rotation); return it."""
    p = None if path is None else str(path)
    if not np.allclose(w2c[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise InputError(f"last row must be [0, 0, 0, 1], got {w2c[3].tolist()}", subject=subject, view=view, field=field, path=p)
    why = rotation_problem(w2c[:3, :3])
    if why is not None:
        raise InputError(why, subject=subject, view=view, field=field, path=p)
    return w2c


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform ``[R t; 0 1]`` (exact: ``[R^T, -R^T t]``)."""
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def k_from_source(K: np.ndarray, pixel_centers: PixelCenters) -> np.ndarray:
    """Convert a source ``K`` to facegs' convention (pixel centres at +0.5).

    ``"half"``: the source already puts pixel centres at +0.5 (COLMAP, nerfstudio): unchanged.
    ``"integer"``: OpenCV calibration (pixel centres at integer coordinates): cx, cy += 0.5.
    """
    if pixel_centers not in PIXEL_CENTERS:
        raise ValueError(f"pixel_centers must be one of {PIXEL_CENTERS}, got {pixel_centers!r}")
    K = np.array(K, dtype=np.float64)
    if pixel_centers == "integer":
        K[0, 2] += 0.5
        K[1, 2] += 0.5
    return K


def find_image(folder: Path, stems: list[str], exts: tuple[str, ...] = IMAGE_EXTS) -> Path | None:
    """First existing ``folder/stem.ext`` for the given stems and extensions (case-insensitive ext)."""
    if not folder.is_dir():
        return None
    for stem in stems:
        for ext in exts:
            for e in (ext, ext.upper()):
                p = folder / f"{stem}{e}"
                if p.is_file():
                    return p
    return None


def _load_source_image(v: CaptureView, subject: str) -> tuple[np.ndarray, bytes | None]:
    """(RGB pixels, original bytes or None for video frames) of a view's source image."""
    try:
        if v.image_path.suffix.lower() in VIDEO_EXTS:
            return read_video_frame(v.image_path, v.frame or 0), None
        try:
            data = v.image_path.read_bytes()
        except FileNotFoundError:
            raise InputError("image file does not exist", path=str(v.image_path)) from None
        except OSError as e:
            raise InputError(f"cannot read image: {e.strerror}", path=str(v.image_path)) from None
        return decode_rgb(data, str(v.image_path)), data
    except InputError as e:
        raise InputError(e.message, subject=subject, view=v.view_id, field=e.field or "image", path=e.path) from None


def _size_checked_K(v: CaptureView, w: int, h: int, subject: str) -> np.ndarray:
    """The view's K for an image of size (w, h): checks declared sizes, scales from ``calib_size``."""
    if v.width is not None and v.width != w:
        raise InputError(
            f"image is {w}x{h} pixels but the calibration says width {v.width}",
            subject=subject, view=v.view_id, field=v.size_fields[0], path=str(v.image_path),
        )
    if v.height is not None and v.height != h:
        raise InputError(
            f"image is {w}x{h} pixels but the calibration says height {v.height}",
            subject=subject, view=v.view_id, field=v.size_fields[1], path=str(v.image_path),
        )
    K = np.array(v.K, dtype=np.float64)
    if v.calib_size is not None and v.calib_size != (w, h):
        cw, ch = v.calib_size
        sx, sy = w / cw, h / ch
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise InputError(
                f"image is {w}x{h} but the calibration is for {cw}x{ch}: not a uniform scaling",
                subject=subject, view=v.view_id, field="calib_size", path=str(v.image_path),
            )
        K = np.diag([sx, sy, 1.0]) @ K  # continuous coordinates (corner origin) scale with the image
    if not (0.0 < K[0, 2] < w and 0.0 < K[1, 2] < h):
        raise InputError(
            f"principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) lies outside the {w}x{h} image: the intrinsics "
            "are probably for another resolution (give the calibration size)",
            subject=subject, view=v.view_id, field="K", path=str(v.image_path),
        )
    return K


def _opencv_K(v: CaptureView, K: np.ndarray) -> np.ndarray | None:
    """The source tools' own undistortion K, scaled like ``K`` when the image was resized."""
    if v.undistort_K is None:
        return None
    s = K[0, 0] / v.K[0, 0], K[1, 1] / v.K[1, 1]
    return np.diag([s[0], s[1], 1.0]) @ np.asarray(v.undistort_K, dtype=np.float64)


def _process_view(v: CaptureView, subject: str, images_dir: Path) -> View:
    """Read, check, undistort / colour-correct one view; write its image (and mask); return its View."""
    rgb, data = _load_source_image(v, subject)
    h, w = rgb.shape[:2]
    K = _size_checked_K(v, w, h, subject)
    has_dist = v.distortion is not None and bool(np.any(np.asarray(v.distortion) != 0))
    model = "fisheye" if v.fisheye else v.distortion_model
    transformed = has_dist or v.color_matrix is not None or v.color_affine is not None or data is None
    ext = v.image_path.suffix.lower()
    if ext not in IMAGE_EXTS:
        ext = ".png"
    name = f"{IMAGES_DIR}/{v.view_id}{ext}"
    if transformed:
        if has_dist:
            rgb = undistort(rgb, K, np.asarray(v.distortion), v.fisheye, model, opencv_K=_opencv_K(v, K))
        if v.color_affine is not None:
            rgb = apply_affine_color(rgb, v.color_affine)
        if v.color_matrix is not None:
            rgb = apply_color_matrix(rgb, v.color_matrix)
        (images_dir.parent / name).write_bytes(encode_rgb(rgb, ext))
    else:
        (images_dir.parent / name).write_bytes(data)  # untouched: copy the original bytes
    mask_name = None
    if v.mask_path is not None:
        try:
            mask = read_nonzero_mask(Path(v.mask_path), (w, h)).astype(np.uint8) * 255
        except InputError as e:
            raise InputError(e.message, subject=subject, view=v.view_id, field="mask_path", path=e.path) from None
        if has_dist:
            mask = undistort_mask(mask, K, np.asarray(v.distortion), v.fisheye, model, opencv_K=_opencv_K(v, K))
        mask_name = f"{MASKS_DIR}/{v.view_id}.png"
        (images_dir.parent / MASKS_DIR).mkdir(exist_ok=True)
        write_mask(images_dir.parent / mask_name, mask >= 128)
    return View(view_id=v.view_id, image=name, width=w, height=h, K=K, mask=mask_name,
                world_to_camera=np.array(v.world_to_camera, dtype=np.float64))


def write_subject(
    out: str | os.PathLike,
    subject_id: str,
    views: list[CaptureView],
    *,
    source: dict[str, Any],
    points: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
    label_set: str = CANONICAL,
    world_scale: float = 1.0,
    extra_dirs: dict[str, Path] | None = None,
) -> SubjectManifest:
    """Write a subject directory at ``out`` atomically and return its manifest (``root = out``).

    ``views``: parsed records (ids must be unique); ``points``: optional (xyz [P, 3], rgb [P, 3]
    uint8) written to ``points3d.npz``; ``world_scale`` multiplies every translation and point (for
    example 0.001 to turn a millimetre rig into metres); ``extra_dirs``: name -> directory copied
    into the subject (for example the SfM model). Raises :class:`InputError` (nothing written) on
    any bad view.
    """
    if not views:
        raise InputError("no usable views", subject=subject_id, field="views")
    ids = [v.view_id for v in views]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"duplicate view ids {dup}", subject=subject_id, field="view_id")
    if not (np.isfinite(world_scale) and world_scale > 0):
        raise InputError(f"world scale must be a positive number, got {world_scale}", subject=subject_id, field="scale")
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        images_dir = tmp / IMAGES_DIR
        images_dir.mkdir()
        written = []
        for v in views:
            mv = _process_view(v, subject_id, images_dir)
            if world_scale != 1.0:
                w2c = mv.world_to_camera.copy()
                w2c[:3, 3] *= world_scale
                mv = replace(mv, world_to_camera=w2c)
            written.append(mv)
        points_rel = None
        if points is not None:
            xyz, rgb = points
            np.savez(
                tmp / POINTS_NAME,
                xyz=(np.asarray(xyz, dtype=np.float64) * world_scale).astype(np.float32).reshape(-1, 3),
                rgb=np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
            )
            points_rel = POINTS_NAME
        for name, src_dir in (extra_dirs or {}).items():
            shutil.copytree(src_dir, tmp / name)
        src = dict(source)
        if world_scale != 1.0:
            src["world_scale"] = float(world_scale)
        m = SubjectManifest(
            subject_id=subject_id, label_set=label_set, views=tuple(written), points3d=points_rel, source=src, root=tmp
        )
        save_manifest(m, tmp)
    return SubjectManifest(
        subject_id=m.subject_id, label_set=m.label_set, views=m.views, points3d=m.points3d, source=m.source, root=out
    )
