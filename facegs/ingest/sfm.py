"""Ingest an UNCALIBRATED folder of images by structure-from-motion (pycolmap, CPU).

Pipeline: SIFT features (``pycolmap.extract_features``) -> matching (``match_exhaustive``, or
``match_sequential`` for video orbits) -> ``incremental_mapping`` in a temporary workspace; the
reconstruction with the most registered images is then ingested exactly like a COLMAP model
(:mod:`facegs.ingest.colmap`): distortion undone, K kept, points written to ``points3d.npz``. The
sparse model itself is kept in the subject under ``sfm/`` (COLMAP binary format).

The world frame, scale and units of an SfM reconstruction are arbitrary (``source.units`` is
``"arbitrary"``); only the relative geometry is meaningful. COLMAP's pixel convention (centres at
+0.5) equals facegs'.

SfM needs texture that stays fixed in the world across views (a face alone is weakly textured; a
static background helps); CPU SIFT is slow on large images, so ``max_image_size`` bounds the size
the features are computed at (the poses and K are still for the full-size images).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegs.core.errors import InputError
from facegs.core.imageio import image_size
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest
from facegs.ingest.colmap import ingest_reconstruction
from facegs.ingest.common import IMAGE_EXTS, resolve_subject_id

if TYPE_CHECKING:
    import pycolmap  # lazy: a large native library, needed only for structure-from-motion

SFM_DIR = "sfm"
LAYOUT = """\
images: an uncalibrated folder of images (.png/.jpg, not recursive) of one subject. pycolmap runs
    SIFT (CPU) + exhaustive matching (--matcher sequential for video orbits) + incremental mapping;
    the largest reconstruction is ingested like a COLMAP model (undistorted, points3d.npz, model
    kept under sfm/). Images of at most 640 px get lower SIFT / inlier thresholds (--profile).
    The world frame and scale are arbitrary. Fails when fewer than 3 images register; the
    registered/total count is printed and recorded in source."""


@dataclass(frozen=True)
class SfmOptions:
    """Settings of :func:`run_sfm`.

    ``camera_model``: COLMAP model to estimate (``SIMPLE_RADIAL`` suits most real cameras;
    ``PINHOLE`` / ``SIMPLE_PINHOLE`` for renders); ``single_camera``: all images share one camera;
    ``matcher``: ``exhaustive`` or ``sequential``; ``max_image_size``: longest side SIFT sees;
    ``num_threads``: -1 = all cores; ``seed``: mapper random seed (reproducible runs).

    ``profile``: ``"colmap"`` keeps COLMAP's thresholds (tuned for megapixel photos);
    ``"low_res"`` (:data:`LOW_RES`) detects lower-contrast SIFT features and accepts image pairs and
    registrations with fewer inliers, which small images (a few hundred pixels) need: on a weakly
    textured 48-view 256-pixel synthetic subject it registered 48/48 views where COLMAP's
    thresholds registered 29 or 30 (bench/sfm_realism.py); ``"auto"`` picks ``low_res`` when the
    largest image side SIFT sees is at most ``low_res_max_side``.
    """

    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = True
    matcher: str = "exhaustive"
    max_image_size: int = 2000
    max_num_features: int = 8192
    num_threads: int = -1
    seed: int = 0
    min_model_size: int = 3
    profile: str = "auto"
    low_res_max_side: int = 640


# SIFT peak threshold (COLMAP: 0.02 / octave_resolution = 0.0067), the inliers an initial image pair
# needs (COLMAP: 100) and the inliers a new image's pose needs (COLMAP: 30).
LOW_RES = {"peak_threshold": 0.004, "init_min_num_inliers": 30, "abs_pose_min_num_inliers": 15}
PROFILES = ("auto", "colmap", "low_res")


@dataclass
class SfmResult:
    """The largest reconstruction and how the run went."""

    reconstruction: pycolmap.Reconstruction
    image_names: list[str]
    num_registered: int
    num_models: int
    seconds: float

    profile: str = "colmap"

    def summary(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "num_images": len(self.image_names),
            "num_registered": self.num_registered,
            "num_models": self.num_models,
            "num_points3d": int(self.reconstruction.num_points3D()),
            "mean_reprojection_error_px": float(self.reconstruction.compute_mean_reprojection_error()),
            "seconds": round(self.seconds, 2),
        }


def list_images(folder: str | os.PathLike) -> list[str]:
    """Names of the image files directly in ``folder``, sorted."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError("image folder does not exist", path=str(d))
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def resolve_profile(image_dir: Path, names: list[str], options: SfmOptions) -> str:
    """``options.profile`` with ``"auto"`` decided from the largest image side SIFT will see."""
    if options.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {options.profile!r}")
    if options.profile != "auto":
        return options.profile
    side = min(max(max(image_size(image_dir / n)) for n in names), options.max_image_size)
    return "low_res" if side <= options.low_res_max_side else "colmap"


@contextlib.contextmanager
def _quiet_colmap() -> Iterator[None]:
    """Silence COLMAP's INFO logging for the duration (warnings and errors still show)."""
    import pycolmap  # lazy: a large native library, needed only for structure-from-motion

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def run_sfm(image_dir: str | os.PathLike, workspace: str | os.PathLike, options: SfmOptions = SfmOptions()) -> SfmResult:
    """Structure-from-motion on the images in ``image_dir``; database and models go to ``workspace``.

    Returns the reconstruction with the most registered images. Raises :class:`InputError` when
    nothing reconstructs.
    """
    import pycolmap  # lazy: a large native library, needed only for structure-from-motion

    names = list_images(image_dir)
    if len(names) < 3:
        raise InputError(f"structure-from-motion needs at least 3 images, found {len(names)}", field="images", path=str(image_dir))
    if options.matcher not in ("exhaustive", "sequential"):
        raise ValueError(f"matcher must be 'exhaustive' or 'sequential', got {options.matcher!r}")
    profile = resolve_profile(Path(image_dir), names, options)
    ws = Path(workspace)
    if ws.exists() and any(ws.iterdir()):
        raise InputError("the SfM workspace must be an empty or new folder", field="workspace", path=str(ws))
    ws.mkdir(parents=True, exist_ok=True)
    db = ws / "database.db"
    models = ws / "sparse"
    models.mkdir(exist_ok=True)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = options.max_image_size
    extraction.num_threads = options.num_threads
    extraction.sift.max_num_features = options.max_num_features
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = options.num_threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = options.num_threads
    mapping.random_seed = options.seed
    mapping.min_model_size = options.min_model_size
    if profile == "low_res":
        extraction.sift.peak_threshold = LOW_RES["peak_threshold"]
        mapping.mapper.init_min_num_inliers = LOW_RES["init_min_num_inliers"]
        mapping.mapper.abs_pose_min_num_inliers = LOW_RES["abs_pose_min_num_inliers"]
    t0 = time.perf_counter()
    with _quiet_colmap():
        pycolmap.extract_features(
            db, str(image_dir), image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE if options.single_camera else pycolmap.CameraMode.PER_IMAGE,
            reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
        )
        if options.matcher == "exhaustive":
            pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
        else:
            pycolmap.match_sequential(db, matching_options=matching, device=pycolmap.Device.cpu)
        recs = pycolmap.incremental_mapping(db, str(image_dir), models, options=mapping)
    seconds = time.perf_counter() - t0
    if not recs:
        raise InputError(
            f"structure-from-motion reconstructed nothing from {len(names)} images (too few feature matches: "
            "the images need overlapping, static texture)",
            field="images", path=str(image_dir),
        )
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    return SfmResult(best, names, int(best.num_reg_images()), len(recs), seconds, profile)


def ingest_images(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subject_id: str | None = None,
    overwrite: bool = False,
    options: SfmOptions | None = None,
    min_registered: int = 3,
    workspace: str | os.PathLike | None = None,
    scale: float = 1.0,
    label_set: str = CANONICAL,
    **option_overrides: Any,
) -> SubjectManifest:
    """Run SfM on the image folder ``src`` and ingest the largest reconstruction into ``out``.

    ``options`` (or keyword overrides of its fields, e.g. ``camera_model="PINHOLE"``) configure
    :func:`run_sfm`; ``workspace`` (an empty or new folder) keeps the database and models
    (default: a temporary folder).
    Raises :class:`InputError` when fewer than ``min_registered`` (>= 3) images register.
    """
    src = Path(src)
    subject = resolve_subject_id(subject_id, out)
    opts = options or SfmOptions()
    if option_overrides:
        opts = SfmOptions(**{**opts.__dict__, **option_overrides})
    with contextlib.ExitStack() as stack:
        ws = Path(workspace) if workspace is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facegs-sfm-")))
        try:
            res = run_sfm(src, ws, opts)
        except InputError as e:
            raise e.with_context(subject=subject) from None
        need = max(3, int(min_registered))
        if res.num_registered < need:
            raise InputError(
                f"only {res.num_registered} of {len(res.image_names)} images registered (need at least {need}): "
                "the images need more overlap or static texture",
                subject=subject, field="images", path=str(src),
            )
        model_dir = ws / "largest_model"
        model_dir.mkdir(exist_ok=True)
        res.reconstruction.write(str(model_dir))
        source = {
            "format": "images",
            "path": str(src.resolve()),
            "units": "arbitrary",
            "sfm": {**res.summary(), "camera_model": opts.camera_model, "matcher": opts.matcher, "model": SFM_DIR},
        }
        return ingest_reconstruction(
            res.reconstruction, src, out, subject=subject, source=source, model_path=model_dir, overwrite=overwrite,
            scale=scale, label_set=label_set, extra_dirs={SFM_DIR: model_dir}, all_image_names=res.image_names,
        )
