"""Offline tools for the head frame: labelled points from depth maps, template calibration, accuracy.

:func:`calibrate_template` made :data:`facegs.headframe.template.TEMPLATE` and
:func:`calibrate_profile` made :data:`facegs.headframe.template.PROFILE` from synthetic subjects
with a known head pose; :func:`evaluate_on_manifest` measures :func:`facegs.headframe.estimate.estimate_head_frame`
on such a subject (rotation error in degrees, origin error in world units).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from facegs.core.imageio import read_depth, read_labels
from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set
from facegs.core.manifest import SubjectManifest
from facegs.headframe.estimate import estimate_head_frame
from facegs.headframe.frame import HeadFrameConfig, frame_errors
from facegs.headframe.landmarks import find_landmarks, smooth_probs_knn, swap_lr_name
from facegs.headframe.template import GLASSES_VARIANTS


def backproject_depth(
    depth: np.ndarray, K: np.ndarray, w2c: np.ndarray, stride: int = 1
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """World points of the pixels with depth > 0 (depth = camera z, pixel centres at +0.5).

    Returns ``points`` [M, 3] float64 and ``pix`` (rows, cols) index arrays of those pixels, taken
    on a ``stride`` grid.
    """
    d = np.asarray(depth, dtype=np.float64)[::stride, ::stride]
    ii, jj = np.nonzero(d > 0)
    ii_full, jj_full = ii * stride, jj * stride
    z = d[ii, jj]
    uv1 = np.stack([jj_full + 0.5, ii_full + 0.5, np.ones_like(z)], axis=1)
    x_cam = (uv1 @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T) * z[:, None]
    R, t = np.asarray(w2c, dtype=np.float64)[:3, :3], np.asarray(w2c, dtype=np.float64)[:3, 3]
    return (x_cam - t) @ R, (ii_full, jj_full)


def labelled_points_from_views(
    manifest: SubjectManifest,
    label_field: str = "gt_labels",
    stride: int = 2,
    depth_field: str = "gt_depth",
    view_ids: Iterable[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project labelled pixels of a subject's views into world points.

    Uses each view's depth map (``depth_field``, metres along the camera z axis, 0 = no surface)
    and label map (``label_field``, in ``manifest.label_set``) on a ``stride`` pixel grid; pixels
    with depth 0 or label ``IGNORE_INDEX`` are skipped. Returns ``points`` [N, 3] float64 (world)
    and one-hot ``probs`` [N, C] float32 in the manifest's label set.
    """

    C = get_label_set(manifest.label_set).num_classes
    wanted = None if view_ids is None else set(view_ids)
    pts, labs = [], []
    for v in manifest.views:
        if wanted is not None and v.view_id not in wanted:
            continue
        lab_path, depth_path = getattr(v, label_field), getattr(v, depth_field)
        if lab_path is None or depth_path is None:
            continue
        depth = read_depth(manifest.path(depth_path))
        lab = read_labels(manifest.path(lab_path))
        p, (ii, jj) = backproject_depth(depth, v.K, v.world_to_camera, stride)
        lv = lab[ii, jj]
        ok = (lv != IGNORE_INDEX) & (lv < C)
        pts.append(p[ok])
        labs.append(lv[ok])
    if not pts:
        raise ValueError(f"subject '{manifest.subject_id}' has no view with both {label_field} and {depth_field}")
    labels = np.concatenate(labs).astype(np.int64)
    probs = np.zeros((labels.size, C), dtype=np.float32)
    probs[np.arange(labels.size), labels] = 1.0
    return np.concatenate(pts), probs


def calibrate_template(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: HeadFrameConfig | None = None
) -> dict[str, tuple[float, float, float]]:
    """Mean landmark centroids in the head frame over subjects with a known head pose.

    ``samples``: ``(points [N, 3] world, probs [N, 19] canonical, world_from_head [4, 4])`` per
    subject (e.g. :func:`labelled_points_from_views` on ``facegs.synth`` subjects). The result,
    symmetrised left/right (x mirrored and averaged), is what :data:`TEMPLATE` holds.
    """
    cfg = cfg or HeadFrameConfig()
    acc: dict[str, list[np.ndarray]] = {}
    for pts, probs, T in samples:
        T = np.asarray(T, dtype=np.float64)
        head = (np.asarray(pts, dtype=np.float64) - T[:3, 3]) @ T[:3, :3]
        ones = np.ones(len(head))
        lms = find_landmarks(head, probs, smooth_probs_knn(head, probs, ones, cfg.knn), ones, cfg)
        glasses = "eye_g" in lms
        for n, d in lms.items():
            key = f"{n}@eye_g" if glasses and n in GLASSES_VARIANTS else n
            acc.setdefault(key, []).append(d["position"])
    mean = {n: np.mean(v, axis=0) for n, v in acc.items()}
    out: dict[str, tuple[float, float, float]] = {}
    for n, m in mean.items():
        twin = swap_lr_name(n.split("@")[0])
        twin = twin if "@" not in n else twin + "@" + n.split("@")[1]
        if twin != n and twin in mean:
            m = 0.5 * (m + mean[twin] * np.array([-1.0, 1.0, 1.0]))
        elif twin == n:
            m = m * np.array([0.0, 1.0, 1.0])
        out[n] = (round(float(m[0]), 4), round(float(m[1]), 4), round(float(m[2]), 4))
    return out


# the face's midline classes: the profile is the face's, not the hair's, a hat's or the clothes'
PROFILE_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


def calibrate_profile(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *, half_width: float = 0.003,
    centre: tuple[float, float] = (-0.03, 0.0), step_deg: float = 2.0, max_deg: float = 80.0,
    min_share: float = 2.0 / 3.0,
) -> list[tuple[float, float]]:
    """The mean mid-sagittal profile of the face, ``[(y, z), ...]`` in the head frame (metres).

    ``samples`` as for :func:`calibrate_template`. Per subject, the face's points (``PROFILE_CLASSES``)
    within ``half_width`` of the mid-plane x = 0 are binned by their angle about ``centre`` (head-frame
    (y, z), in the plane; 0 = straight ahead, +90 = up) in ``step_deg`` bins within +-``max_deg``, and
    each bin keeps its outermost point's distance (the surface a camera sees, not the nostrils'
    inside). The profile is the median distance per bin over the subjects, for the bins at least
    ``min_share`` of them have. Returned from chin to forehead, rounded to 0.1 mm.
    """
    ls = get_label_set(CANONICAL)
    face = [ls.index(c) for c in PROFILE_CLASSES]
    c = np.asarray(centre, dtype=np.float64)
    bins = np.radians(np.arange(-max_deg, max_deg + 1e-9, step_deg))
    half = np.radians(step_deg) / 2.0
    radii = []
    for pts, probs, T in samples:
        T = np.asarray(T, dtype=np.float64)
        head = (np.asarray(pts, dtype=np.float64) - T[:3, 3]) @ T[:3, :3]
        sel = (np.abs(head[:, 0]) < half_width) & np.isin(np.argmax(probs, axis=1), face)
        yz = head[sel][:, 1:] - c
        ang, r = np.arctan2(yz[:, 0], yz[:, 1]), np.linalg.norm(yz, axis=1)
        row = np.full(len(bins), np.nan)
        for i, b in enumerate(bins):
            m = np.abs(ang - b) < half
            if m.sum() >= 2:
                row[i] = r[m].max()
        radii.append(row)
    if not radii:
        raise ValueError("calibrate_profile needs at least one subject")
    R = np.array(radii)
    ok = np.isfinite(R).sum(axis=0) >= min_share * len(R)
    med = np.array([np.median(col[np.isfinite(col)]) if k else np.nan for col, k in zip(R.T, ok)])
    return [(round(float(c[0] + r * np.sin(b)), 4), round(float(c[1] + r * np.cos(b)), 4))
            for b, r, k in zip(bins, med, ok) if k]


def evaluate_on_manifest(
    manifest: SubjectManifest,
    label_field: str = "gt_labels",
    stride: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    cfg: HeadFrameConfig | None = None,
) -> dict[str, Any]:
    """Accuracy of :func:`estimate_head_frame` on a subject with a known ``world_from_head``.

    Back-projects ``label_field`` with the views' ``gt_depth`` (:func:`labelled_points_from_views`),
    optionally replaces a fraction ``noise`` of the point labels by uniformly random classes
    (seeded), estimates the frame and returns ``{"rotation_error_deg", "origin_error",
    "diagnostics"}`` (origin error in world units).
    """
    if manifest.world_from_head is None:
        raise ValueError(f"subject '{manifest.subject_id}' has no ground-truth world_from_head")
    pts, probs = labelled_points_from_views(manifest, label_field, stride)
    if noise > 0:
        rng = np.random.default_rng(seed)
        lab = np.argmax(probs, axis=1)
        m = rng.uniform(size=lab.size) < noise
        lab[m] = rng.integers(0, probs.shape[1], int(m.sum()))
        probs = np.zeros_like(probs)
        probs[np.arange(lab.size), lab] = 1.0
    hf = estimate_head_frame(pts, probs, label_set=manifest.label_set, cfg=cfg)
    rot, org = frame_errors(hf.world_from_head, manifest.world_from_head)
    return {"rotation_error_deg": rot, "origin_error": org, "diagnostics": hf.diagnostics}
