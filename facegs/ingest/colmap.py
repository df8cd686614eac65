"""Ingest a COLMAP sparse model (``cameras``, ``images``, ``points3D`` as ``.bin`` or ``.txt``).

The model is read with ``pycolmap.Reconstruction``. COLMAP's conventions match facegs': the camera
looks down +z with +y down (OpenCV axes), ``cam_from_world`` is world-to-camera, and the centre of
the upper-left pixel is at (0.5, 0.5) (pixel centres at +0.5), so ``K`` is copied unchanged.

Camera models with distortion are undistorted with OpenCV keeping the same ``K``:
``SIMPLE_RADIAL`` (k), ``RADIAL`` (k1 k2), ``OPENCV`` (k1 k2 p1 p2), ``FULL_OPENCV``
(k1 k2 p1 p2 k3 k4 k5 k6: OpenCV's rational model) with ``cv2.undistort``; ``OPENCV_FISHEYE``,
``SIMPLE_RADIAL_FISHEYE`` and ``RADIAL_FISHEYE`` with ``cv2.fisheye``. Other models are refused
(run COLMAP's ``image_undistorter`` first). Images without a pose are skipped and counted. The
3D points go to ``points3d.npz`` (xyz float32 [P, 3], rgb uint8 [P, 3]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest
from facegs.ingest.common import CaptureView, check_pinhole, check_rigid, resolve_subject_id, unique_ids, write_subject

if TYPE_CHECKING:
    import pycolmap  # lazy: a large native library, needed only for COLMAP models

LAYOUT = """\
colmap: a COLMAP sparse model directory (e.g. project/sparse/0) with cameras, images and points3D
    as .bin or .txt; images are found in --images DIR, or else in project/images next to
    sparse/ (tried: SRC/images, SRC/../images, SRC/../../images).
  Pinhole cameras are copied; SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV and the fisheye models
  are undistorted to the same K. COLMAP puts pixel centres at +0.5, like facegs. Unregistered
  images are skipped. 3D points are written to points3d.npz."""

# COLMAP model name -> (K from params, OpenCV distortion from params, fisheye?)
_PINHOLE = {"SIMPLE_PINHOLE", "PINHOLE"}
_SUPPORTED = {
    "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
    "OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
}


def camera_to_opencv(model: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(K [3, 3] with pixel centres at +0.5, OpenCV distortion or None, fisheye?) of a COLMAP camera.

    Raises ``ValueError`` for models OpenCV cannot represent.
    """
    p = np.asarray(params, dtype=np.float64)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        f, cx, cy, extra = p[0], p[1], p[2], p[3:]
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"):
        K = np.array([[p[0], 0.0, p[2]], [0.0, p[1], p[3]], [0.0, 0.0, 1.0]])
        extra = p[4:]
    else:
        raise ValueError(
            f"camera model {model} cannot be undistorted by facegs (supported: {sorted(_SUPPORTED)}); "
            "run COLMAP's image_undistorter first and ingest its sparse model"
        )
    if model in _PINHOLE:
        return K, None, False
    if model == "SIMPLE_RADIAL":
        return K, np.array([extra[0], 0.0, 0.0, 0.0]), False
    if model == "RADIAL":
        return K, np.array([extra[0], extra[1], 0.0, 0.0]), False
    if model in ("OPENCV", "FULL_OPENCV"):
        return K, extra.copy(), False
    if model == "SIMPLE_RADIAL_FISHEYE":
        return K, np.array([extra[0], 0.0, 0.0, 0.0]), True
    if model == "RADIAL_FISHEYE":
        return K, np.array([extra[0], extra[1], 0.0, 0.0]), True
    return K, extra.copy(), True  # OPENCV_FISHEYE: k1 k2 k3 k4


def read_model(model_dir: str | os.PathLike, *, subject: str | None = None) -> pycolmap.Reconstruction:
    """Read a COLMAP sparse model; a missing file or a parse failure becomes an :class:`InputError`."""
    import pycolmap  # lazy: a large native library, needed only for COLMAP models

    d = Path(model_dir)
    if not d.is_dir():
        raise InputError("COLMAP model directory does not exist", subject=subject, path=str(d))
    for stem in ("cameras", "images", "points3D"):
        if not ((d / f"{stem}.bin").is_file() or (d / f"{stem}.txt").is_file()):
            raise InputError(f"COLMAP model has no {stem}.bin or {stem}.txt", subject=subject, field=stem, path=str(d / f"{stem}.bin"))
    try:
        return pycolmap.Reconstruction(str(d))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError with COLMAP's message
        raise InputError(f"COLMAP could not read the model: {e}", subject=subject, path=str(d)) from None


def find_image_dir(model_dir: Path, images: str | os.PathLike | None) -> Path:
    """The folder holding the model's images: ``images`` if given, else the usual COLMAP layouts."""
    if images is not None:
        p = Path(images)
        if not p.is_dir():
            raise InputError("image directory does not exist", field="images", path=str(p))
        return p
    for cand in (model_dir / "images", model_dir.parent / "images", model_dir.parent.parent / "images"):
        if cand.is_dir():
            return cand
    raise InputError(
        "cannot find the images of the COLMAP model (tried SRC/images, SRC/../images, SRC/../../images); pass --images",
        field="images", path=str(model_dir.parent / "images"),
    )


def views_from_reconstruction(
    rec: pycolmap.Reconstruction, image_dir: Path, *, subject: str, model_path: Path
) -> tuple[list[CaptureView], list[str]]:
    """Camera records of the registered images (sorted by name) and the names of unregistered ones."""
    imgs = sorted(rec.images.values(), key=lambda im: im.name)
    posed = [im for im in imgs if im.has_pose]
    unregistered = [im.name for im in imgs if not im.has_pose]
    ids = unique_ids([Path(im.name).with_suffix("").as_posix() for im in posed])
    views = []
    for vid, im in zip(ids, posed):
        cam = im.camera
        model = cam.model.name
        try:
            K, dist, fisheye = camera_to_opencv(model, np.asarray(cam.params))
        except ValueError as e:
            raise InputError(str(e), subject=subject, view=vid, field="camera.model", path=str(model_path)) from None
        check_pinhole(K, subject=subject, view=vid, field="camera.params", path=model_path)
        w2c = np.eye(4)
        w2c[:3, :] = np.asarray(im.cam_from_world().matrix(), dtype=np.float64)
        check_rigid(w2c, subject=subject, view=vid, field="cam_from_world", path=model_path)
        views.append(
            CaptureView(
                view_id=vid, image_path=image_dir / im.name, K=K, world_to_camera=w2c, distortion=dist,
                fisheye=fisheye, width=int(cam.width), height=int(cam.height),
                size_fields=("camera.width", "camera.height"),
            )
        )
    return views, unregistered


def points_from_reconstruction(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(xyz float32 [P, 3], rgb uint8 [P, 3]) of the model's 3D points, by point id."""
    ids = sorted(rec.points3D)
    if not ids:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    xyz = np.stack([np.asarray(rec.points3D[i].xyz, dtype=np.float64) for i in ids]).astype(np.float32)
    rgb = np.stack([np.asarray(rec.points3D[i].color, dtype=np.uint8) for i in ids])
    return xyz, rgb


def ingest_reconstruction(
    rec: pycolmap.Reconstruction,
    image_dir: Path,
    out: str | os.PathLike,
    *,
    subject: str,
    source: dict,
    model_path: Path,
    overwrite: bool = False,
    scale: float = 1.0,
    label_set: str = CANONICAL,
    extra_dirs: dict[str, Path] | None = None,
    all_image_names: list[str] | None = None,
) -> SubjectManifest:
    """Write a subject from an in-memory reconstruction (shared by the colmap and images formats).

    ``all_image_names``: every input image (SfM), so that images the reconstruction never took in
    count as unregistered (COLMAP model files only hold registered images).
    """
    views, unregistered = views_from_reconstruction(rec, image_dir, subject=subject, model_path=model_path)
    if all_image_names is not None:
        registered = {im.name for im in rec.images.values() if im.has_pose}
        unregistered = sorted(set(all_image_names) - registered)
    if not views:
        raise InputError("the COLMAP model has no registered images", subject=subject, field="images", path=str(model_path))
    src = dict(source)
    src.update(
        num_images=len(views) + len(unregistered),
        num_registered=len(views),
        unregistered=unregistered,
        camera_models=sorted({rec.cameras[c].model.name for c in rec.cameras}),
        undistorted=True,
    )
    return write_subject(
        out, subject, views, source=src, points=points_from_reconstruction(rec), overwrite=overwrite,
        label_set=label_set, world_scale=scale, extra_dirs=extra_dirs,
    )


def ingest_colmap(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subject_id: str | None = None,
    overwrite: bool = False,
    images: str | os.PathLike | None = None,
    scale: float = 1.0,
    units: str = "unknown",
    label_set: str = CANONICAL,
) -> SubjectManifest:
    """Ingest the COLMAP sparse model directory ``src`` (and its images) into subject ``out``."""
    src = Path(src)
    subject = resolve_subject_id(subject_id, out)
    rec = read_model(src, subject=subject)
    image_dir = find_image_dir(src, images)
    source = {"format": "colmap", "path": str(src.resolve()), "images": str(image_dir.resolve()), "units": units}
    return ingest_reconstruction(
        rec, image_dir, out, subject=subject, source=source, model_path=src, overwrite=overwrite, scale=scale,
        label_set=label_set,
    )
