"""Compare two camera sets of one capture (e.g. structure-from-motion against ground truth).

An SfM reconstruction lives in an arbitrary similarity frame, so the estimated camera centres are
first aligned to the reference centres by a least-squares similarity (Umeyama 1991:
``c_ref ~ s R c_est + t``). Errors are then measured in the reference frame:

- rotation: angle of ``R_est_aligned R_ref^T`` where ``R_est_aligned = R_est R^T`` is the
  estimated world-to-camera rotation expressed in the reference world;
- centre: ``|s R c_est + t - c_ref|``, reported relative to the rig radius (median distance of the
  reference centres from their centroid).

:func:`sfm_cross_check` strips a calibrated subject's cameras, re-estimates them with the
``images`` (structure-from-motion) ingestion and runs this comparison: an outside check of a
capture's calibration and of the realism of synthetic subjects.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facegs.core.cameras import camera_center, rotation_angle_deg
from facegs.core.manifest import SubjectManifest, load_manifest


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R [3, 3], t [3]) minimising ``sum |s R src_i + t - dst_i|^2``; ``src``, ``dst`` [N, 3]."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two [N, 3] point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


@dataclass(frozen=True)
class CameraComparison:
    """Per-view errors after alignment, in view order of ``view_ids``."""

    view_ids: tuple[str, ...]
    rotation_deg: np.ndarray  # [N]
    center_error: np.ndarray  # [N], reference units
    rig_radius: float
    scale: float

    def summary(self) -> dict[str, float | int]:
        rel = self.center_error / self.rig_radius
        return {
            "num_compared": len(self.view_ids),
            "rotation_median_deg": float(np.median(self.rotation_deg)),
            "rotation_max_deg": float(np.max(self.rotation_deg)),
            "center_median_rel": float(np.median(rel)),
            "center_max_rel": float(np.max(rel)),
            "rig_radius": float(self.rig_radius),
        }


def compare_cameras(estimate: SubjectManifest, reference: SubjectManifest) -> CameraComparison:
    """Align ``estimate``'s camera centres to ``reference``'s (views matched by id) and measure errors.

    Views of ``estimate`` without a namesake in ``reference`` are ignored. Needs >= 3 common views.
    """
    ref = {v.view_id: v for v in reference.views}
    common = [v for v in estimate.views if v.view_id in ref]
    if len(common) < 3:
        raise ValueError(f"need at least 3 views in common to align, got {len(common)}")
    c_est = np.stack([camera_center(v.world_to_camera) for v in common])
    c_ref = np.stack([camera_center(ref[v.view_id].world_to_camera) for v in common])
    s, R, t = umeyama(c_est, c_ref)
    rot = np.array(
        [rotation_angle_deg(v.world_to_camera[:3, :3] @ R.T, ref[v.view_id].world_to_camera[:3, :3]) for v in common]
    )
    err = np.linalg.norm((s * (R @ c_est.T)).T + t - c_ref, axis=1)
    radius = float(np.median(np.linalg.norm(c_ref - c_ref.mean(0), axis=1)))
    return CameraComparison(tuple(v.view_id for v in common), rot, err, radius, s)


def sfm_cross_check(
    subject_dir: str | os.PathLike, work_dir: str | os.PathLike, **sfm_options: Any
) -> dict[str, Any]:
    """Re-estimate a calibrated subject's cameras by structure-from-motion and compare.

    The subject's images are copied (calibration stripped) to ``work_dir/images`` as
    ``<view_id><ext>``, ingested with the ``images`` format (``sfm_options`` go to
    :func:`facegs.ingest.sfm.ingest_images`) into ``work_dir/sfm_subject``, and compared with
    :func:`compare_cameras`. Returns registered counts, the comparison summary, the median relative
    focal-length error and the SfM run statistics. An outside check of a capture's calibration, and
    of the realism of synthetic subjects (SfM must find them textured and rigid).
    """
    from facegs.ingest import ingest  # lazy: facegs.ingest imports this module's package

    ref = load_manifest(subject_dir)
    work = Path(work_dir)
    images = work / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    for v in ref.views:
        src = ref.path(v.image)
        shutil.copyfile(src, images / f"{v.view_id}{src.suffix.lower()}")
    est = ingest("images", images, work / "sfm_subject", overwrite=True, **sfm_options)
    cmp = compare_cameras(est, ref)
    refK = {v.view_id: v.K for v in ref.views}
    focal = [abs(v.K[0, 0] / refK[v.view_id][0, 0] - 1.0) for v in est.views if v.view_id in refK]
    return {
        "num_views": len(ref.views),
        "num_registered": len(est.views),
        "registered_fraction": len(est.views) / len(ref.views),
        **cmp.summary(),
        "focal_rel_error_median": float(np.median(focal)),
        "sfm": est.source.get("sfm", {}),
    }
