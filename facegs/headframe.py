"""Estimate a subject's head frame from labelled 3D points (Gaussians or back-projected pixels).

Head frame (as everywhere in facegs, see :mod:`facegs.cameras`): +x = the subject's LEFT, +y up,
+z forward out of the face, right-handed; ``world_from_head`` [4, 4] maps head to world coordinates.

Method (:func:`estimate_head_frame`):

1. **Denoise labels in 3D.** Each point's class distribution is averaged over its ``knn`` nearest
   points (itself included, weighted): random per-point label noise averages out, real parts
   (dense clusters) keep a high share. This is the 3D k-nearest-neighbour consistency idea of
   Gaussian Grouping, applied once.
2. **Landmarks.** A point belongs to landmark ``k`` when its own argmax is one of the landmark's
   classes (:data:`LANDMARK_CLASSES`: eyes, brows, ears, nose, mouth = mouth + lips, glasses) and
   those classes hold at least ``min_share`` of its smoothed distribution (isolated noisy labels
   fail this; thin parts such as brows pass). The landmark position is a trimmed weighted centroid
   (weights = the point's probability of the landmark's classes * the optional per-point weight,
   e.g. opacity; points beyond ``median + trim_mad * MAD`` of the distance to the centroid are
   dropped, twice). A landmark with fewer than ``min_points`` points is missing (ears under hair,
   eyes behind glasses, ...): the fit uses what is present (at least 3 landmarks).
3. **Fit.** A weighted similarity transform (Umeyama) maps the :data:`TEMPLATE` (landmark
   positions in the head frame of a reference head) onto the observed landmarks. The worst
   landmark is dropped while its residual exceeds both ``outlier_factor`` times the median and
   ``outlier_min`` (8 mm on the reference head, above the natural variation of proportions),
   keeping at least ``min_landmarks``. Rotation and translation give ``world_from_head``; the
   scale (world units per template metre) is reported in the diagnostics.
4. **Left/right sanity.** The fit is repeated with left and right landmarks swapped. If the
   swapped fit explains the points clearly better (or, when the residuals do not decide, the
   handedness ``det[left, up, forward]`` of the raw landmarks is negative), the labelling is
   mirrored: ``diagnostics["mirrored"] = True`` and the frame of the swapped fit (the physical one)
   is returned.

**Origin.** The origin is the template's origin, which IS ``facegs.synth``'s head origin: the
template holds the mean landmark centroids of synthetic subjects expressed in their true head
frames (:func:`calibrate_template`), so on synthetic data the estimated origin is directly
comparable with the manifest's ``world_from_head`` (no offset to apply). Anatomically it lies
:data:`ORIGIN_FROM_EAR_MIDPOINT` = (0, +1.8 mm, +3.3 mm) from the midpoint of the two ears'
visible-surface centroids (reference head size): level with the ears, between them, a few mm in
front. In the generator's own geometry (``facegs.synth.head``) it is 15 mm below and 12 mm in
front of the cranium ellipsoid's centre, and 8 mm in front of the ear shells' centres. On real
captures the same landmarks define the same point, up to the subject's proportions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from scipy.spatial import cKDTree

from facegs.cameras import optical_axes_focus
from facegs.labels import CANONICAL, IGNORE_INDEX, get_label_set, mapping_lut
from facegs.manifest import SubjectManifest

# landmark name -> canonical classes whose points define it
LANDMARK_CLASSES: dict[str, tuple[str, ...]] = {
    "l_eye": ("l_eye",),
    "r_eye": ("r_eye",),
    "l_brow": ("l_brow",),
    "r_brow": ("r_brow",),
    "l_ear": ("l_ear",),
    "r_ear": ("r_ear",),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "eye_g": ("eye_g",),
}
LR_LANDMARK_PAIRS: tuple[tuple[str, str], ...] = (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))

# Landmark centroids in the head frame (metres) of the reference head: the mean over 12 synthetic
# subjects (facegs.synth seeds 0-11, facescape rig, 80 px, ground-truth labels, symmetrised), made by
# calibrate_template. "nose@eye_g" replaces "nose" when glasses are present (the frame hides the
# upper nose, which moves the visible nose's centroid down).
TEMPLATE: dict[str, tuple[float, float, float]] = {
    "l_eye": (0.0305, 0.0037, 0.0783),
    "r_eye": (-0.0305, 0.0037, 0.0783),
    "l_brow": (0.0319, 0.0304, 0.0797),
    "r_brow": (-0.0319, 0.0304, 0.0797),
    "l_ear": (0.0828, -0.0018, -0.0033),
    "r_ear": (-0.0828, -0.0018, -0.0033),
    "nose": (0.0, -0.0185, 0.0981),
    "nose@eye_g": (0.0, -0.0252, 0.0989),
    "mouth": (0.0, -0.0686, 0.0848),
    "eye_g": (0.0, 0.0062, 0.0907),
}
# landmarks whose visible part changes when glasses are worn: separate template entries "name@eye_g"
GLASSES_VARIANTS = ("nose",)
ORIGIN_FROM_EAR_MIDPOINT = tuple(-0.5 * (a + b) for a, b in zip(TEMPLATE["l_ear"], TEMPLATE["r_ear"]))

# relative trust of each landmark in the fit
LANDMARK_WEIGHTS: dict[str, float] = {
    "l_eye": 1.0, "r_eye": 1.0, "l_brow": 0.7, "r_brow": 0.7, "l_ear": 1.0, "r_ear": 1.0,
    "nose": 1.0, "mouth": 1.0, "eye_g": 0.3,
}


class HeadFrameError(ValueError):
    """Too few landmarks (or degenerate ones) to fix a head frame."""


@dataclass(frozen=True)
class HeadFrameConfig:
    """Parameters of :func:`estimate_head_frame`."""

    knn: int = 16  # neighbours (self included) for the 3D label smoothing; 1 = off
    max_points: int = 200_000  # random subsample above this (seeded)
    min_points: int = 10  # a landmark needs at least this many points
    min_share: float = 0.3  # a point's landmark classes must hold this much of its kNN-smoothed probability
    trim_mad: float = 3.0  # drop points beyond median + trim_mad * MAD from the centroid
    outlier_factor: float = 4.0  # drop a landmark whose residual exceeds this * median residual ...
    outlier_min: float = 0.008  # ... and this many template metres (scaled to world units by the fit)
    min_landmarks: int = 4  # never drop below this many landmarks
    mirror_ratio: float = 0.7  # the swapped fit must have < this * the residual to win
    weights: dict[str, float] = field(default_factory=lambda: dict(LANDMARK_WEIGHTS))
    seed: int = 0


@dataclass
class HeadFrame:
    """An estimated head frame: ``world_from_head`` [4, 4] float64 (rigid) and diagnostics."""

    world_from_head: np.ndarray
    diagnostics: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# labelled points from views
# ----------------------------------------------------------------------------------------------


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
    from facegs.imageio import read_depth, read_labels

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


# ----------------------------------------------------------------------------------------------
# landmarks
# ----------------------------------------------------------------------------------------------


def to_canonical_probs(class_probs: np.ndarray, label_set: str) -> np.ndarray:
    """[N, C_src] -> [N, 19] canonical probabilities (source classes summed into their target)."""
    if label_set == CANONICAL:
        return np.asarray(class_probs, dtype=np.float32)
    lut = mapping_lut(label_set, CANONICAL)
    src = get_label_set(label_set)
    out = np.zeros((class_probs.shape[0], get_label_set(CANONICAL).num_classes), dtype=np.float32)
    for i in range(src.num_classes):
        if lut[i] != IGNORE_INDEX:
            out[:, lut[i]] += class_probs[:, i]
    return out


def smooth_probs_knn(points: np.ndarray, probs: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """[N, C] weighted mean of ``probs`` over each point's ``k`` nearest points (self included)."""
    if k <= 1 or len(points) <= 1:
        return probs
    k = min(k, len(points))
    _, idx = cKDTree(points).query(points, k=k)
    w = weights[idx]  # [N, k]
    num = np.einsum("nk,nkc->nc", w, probs[idx])
    return num / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)


def trimmed_centroid(points: np.ndarray, w: np.ndarray, trim_mad: float = 3.0, iters: int = 2) -> np.ndarray:
    """Weighted centroid [3] of ``points`` [M, 3], dropping points beyond median + trim_mad * MAD."""
    keep = w > 0
    c = np.average(points[keep], axis=0, weights=w[keep])
    for _ in range(iters):
        d = np.linalg.norm(points - c, axis=1)
        med = np.median(d[keep])
        mad = np.median(np.abs(d[keep] - med)) + 1e-12
        k2 = keep & (d <= med + trim_mad * 1.4826 * mad)
        if k2.sum() < 3:
            break
        keep = k2
        c = np.average(points[keep], axis=0, weights=w[keep])
    return c


def find_landmarks(
    points: np.ndarray, probs: np.ndarray, smoothed: np.ndarray, weights: np.ndarray, cfg: HeadFrameConfig
) -> dict[str, dict[str, Any]]:
    """Landmark name -> {"position" [3], "count", "mass"} for the landmarks with enough points.

    ``probs`` [N, 19] canonical per-point probabilities, ``smoothed`` [N, 19] their kNN average
    (:func:`smooth_probs_knn`). A point belongs to a landmark when its own argmax is one of the
    landmark's classes AND its neighbourhood agrees: the smoothed probability of those classes is
    at least ``cfg.min_share``. (A threshold, not the smoothed argmax, so that thin parts such as
    brows, a few points thick, survive while isolated noisy labels do not.)
    """
    ls = get_label_set(CANONICAL)
    arg = np.argmax(probs, axis=1)
    out: dict[str, dict[str, Any]] = {}
    for name, classes in LANDMARK_CLASSES.items():
        cols = [ls.index(c) for c in classes]
        member = np.isin(arg, cols) & (smoothed[:, cols].sum(axis=1) >= cfg.min_share)
        if member.sum() < cfg.min_points:
            continue
        w = weights[member] * probs[member][:, cols].sum(axis=1)
        if w.sum() <= 0:
            continue
        out[name] = {
            "position": trimmed_centroid(points[member], w, cfg.trim_mad),
            "count": int(member.sum()),
            "mass": float(w.sum()),
        }
    return out


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------


def umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted similarity ``dst ~ s R src + t``: returns (s, R [3, 3] proper rotation, t [3]).

    ``src``, ``dst`` [M, 3], ``w`` [M] >= 0. Raises :class:`HeadFrameError` when the points are
    (nearly) collinear.
    """
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    if D[1] < 1e-9 * max(D[0], 1e-30):
        raise HeadFrameError("landmarks are collinear: cannot fix a rotation")
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    R = U @ S @ Vt
    var_s = float(w @ (xs * xs).sum(axis=1))
    s = float(np.trace(np.diag(D) @ S) / var_s)
    return s, R, mu_d - s * R @ mu_s


def _template_point(name: str, present: list[str]) -> tuple[float, float, float]:
    """Template position of a landmark; ``name@eye_g`` variants apply when glasses are present."""
    if "eye_g" in present and f"{name}@eye_g" in TEMPLATE:
        return TEMPLATE[f"{name}@eye_g"]
    return TEMPLATE[name]


def _swap_name(name: str) -> str:
    for a, b in LR_LANDMARK_PAIRS:
        if name == a:
            return b
        if name == b:
            return a
    return name


def _fit(names: list[str], obs: np.ndarray, cfg: HeadFrameConfig, swap: bool) -> dict[str, Any]:
    """Robust similarity fit of the template to observed landmarks (``swap``: l/r names swapped)."""
    tmpl = np.array([_template_point(_swap_name(n) if swap else n, names) for n in names], dtype=np.float64)
    wts = np.array([cfg.weights.get(n, 1.0) for n in names], dtype=np.float64)
    active = np.ones(len(names), dtype=bool)
    dropped: list[str] = []
    while True:
        s, R, t = umeyama(tmpl[active], obs[active], wts[active])
        res = np.linalg.norm(tmpl * s @ R.T + t - obs, axis=1)
        med = float(np.median(res[active]))
        worst = int(np.argmax(np.where(active, res, -1.0)))
        if active.sum() <= cfg.min_landmarks or res[worst] <= max(cfg.outlier_factor * med, cfg.outlier_min * s):
            break
        active[worst] = False
        dropped.append(names[worst])
    rms = float(np.sqrt(np.average(res[active] ** 2, weights=wts[active])))
    # for comparing fits: every landmark counts, dropped ones with a capped residual, so that a fit
    # cannot look good by dropping what it does not explain
    capped = np.minimum(res, 2.0 * cfg.outlier_min * s)
    score = float(np.sqrt(np.average(capped**2, weights=wts)))
    return {"s": s, "R": R, "t": t, "residuals": res, "active": active, "dropped": dropped, "rms": rms,
            "score": score}


def handedness(landmarks: dict[str, np.ndarray]) -> float | None:
    """``det[left, up, forward]`` of unit vectors from raw landmarks: > 0 = consistent labelling.

    left = sum of (left - right) over present pairs; up = mid(eyes/brows) - mouth (or nose);
    forward = nose - mid(ears), else nose - mid(eyes/brows). None when it cannot be formed.
    """
    pairs = [(a, b) for a, b in LR_LANDMARK_PAIRS if a in landmarks and b in landmarks]
    if not pairs or "nose" not in landmarks:
        return None
    left = sum(landmarks[a] - landmarks[b] for a, b in pairs)
    upper = [landmarks[n] for n in ("l_eye", "r_eye", "l_brow", "r_brow") if n in landmarks]
    lower = landmarks.get("mouth")
    if not upper or lower is None:
        return None
    up = np.mean(upper, axis=0) - lower
    back = (
        0.5 * (landmarks["l_ear"] + landmarks["r_ear"])
        if "l_ear" in landmarks and "r_ear" in landmarks
        else np.mean(upper, axis=0)
    )
    fwd = landmarks["nose"] - back
    vs = [v / max(np.linalg.norm(v), 1e-12) for v in (left, up, fwd)]
    return float(np.linalg.det(np.stack(vs)))


def _decide_mirror(
    fit_std: dict[str, Any], fit_swp: dict[str, Any], hand: float | None, cfg: HeadFrameConfig
) -> tuple[bool, str]:
    """(mirrored, reason) from the two fits' residuals, else the handedness sign."""
    if fit_swp["score"] < cfg.mirror_ratio * fit_std["score"]:
        return True, "swapped fit has the lower residual"
    if fit_std["score"] < cfg.mirror_ratio * fit_swp["score"]:
        return False, "template fit has the lower residual"
    if hand is not None and abs(hand) > 0.05:
        return hand < 0, "residuals ambiguous; decided by handedness"
    return False, "ambiguous (residuals and handedness undecided): assumed not mirrored"


def estimate_head_frame(
    points: np.ndarray,
    class_probs: np.ndarray,
    weights: np.ndarray | None = None,
    label_set: str = CANONICAL,
    cfg: HeadFrameConfig | None = None,
) -> HeadFrame:
    """Estimate ``world_from_head`` from labelled points (see the module docstring for the method).

    ``points`` [N, 3] world coordinates; ``class_probs`` [N, C] class probabilities (or one-hot) in
    ``label_set`` order; ``weights`` [N] optional non-negative per-point weights (e.g. opacity).
    Raises :class:`HeadFrameError` when fewer than 3 landmarks are found.

    Diagnostics: ``landmarks`` (name -> position, count, mass, residual), ``used`` / ``dropped``
    landmark names, ``scale`` (world units per template metre), ``rms_residual`` (world units),
    ``mirrored`` (bool) with ``mirror_reason``, ``fit_score`` / ``fit_score_other`` (residual over
    all landmarks, dropped ones capped, of the chosen and of the other left/right hypothesis), ``handedness``,
    ``origin_cue`` ("ears" when both ears were used, else "face": origin extrapolated from the face).
    """
    cfg = cfg or HeadFrameConfig()
    P = np.asarray(points, dtype=np.float64)
    probs = to_canonical_probs(np.asarray(class_probs, dtype=np.float32), label_set)
    if P.ndim != 2 or P.shape[1] != 3 or probs.shape[0] != P.shape[0]:
        raise ValueError(f"points must be [N, 3] and class_probs [N, C]; got {list(P.shape)} and {list(probs.shape)}")
    w = np.ones(len(P)) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    ok = np.all(np.isfinite(P), axis=1) & np.all(np.isfinite(probs), axis=1) & (w > 0)
    P, probs, w = P[ok], probs[ok], w[ok]
    if len(P) > cfg.max_points:
        sel = np.sort(np.random.default_rng(cfg.seed).choice(len(P), cfg.max_points, replace=False))
        P, probs, w = P[sel], probs[sel], w[sel]
    lms = find_landmarks(P, probs, smooth_probs_knn(P, probs, w, cfg.knn), w, cfg)
    if len(lms) < 3:
        raise HeadFrameError(f"need at least 3 face landmarks, found {sorted(lms)}")
    names = list(lms)
    obs = np.stack([lms[n]["position"] for n in names])
    fit_std, fit_swp = _fit(names, obs, cfg, False), _fit(names, obs, cfg, True)
    hand = handedness({n: lms[n]["position"] for n in names})
    mirrored, reason = _decide_mirror(fit_std, fit_swp, hand, cfg)
    fit = fit_swp if mirrored else fit_std
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = fit["R"], fit["t"]
    diag = {
        "landmarks": {
            n: {"position": lms[n]["position"].tolist(), "count": lms[n]["count"], "mass": lms[n]["mass"],
                "residual": float(fit["residuals"][i])}
            for i, n in enumerate(names)
        },
        "used": [n for i, n in enumerate(names) if fit["active"][i]],
        "dropped": fit["dropped"],
        "missing": [n for n in LANDMARK_CLASSES if n not in lms],
        "scale": fit["s"],
        "rms_residual": fit["rms"],
        "fit_score": fit["score"],
        "fit_score_other": (fit_std if mirrored else fit_swp)["score"],
        "mirrored": bool(mirrored),
        "mirror_reason": reason,
        "handedness": hand,
        "num_points": int(len(P)),
    }
    diag["origin_cue"] = "ears" if {"l_ear", "r_ear"} <= set(diag["used"]) else "face"
    return HeadFrame(world_from_head=T, diagnostics=diag)


# ----------------------------------------------------------------------------------------------
# template calibration (offline)
# ----------------------------------------------------------------------------------------------


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
        twin = _swap_name(n.split("@")[0])
        twin = twin if "@" not in n else twin + "@" + n.split("@")[1]
        if twin != n and twin in mean:
            m = 0.5 * (m + mean[twin] * np.array([-1.0, 1.0, 1.0]))
        elif twin == n:
            m = m * np.array([0.0, 1.0, 1.0])
        out[n] = (round(float(m[0]), 4), round(float(m[1]), 4), round(float(m[2]), 4))
    return out


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


def frame_errors(estimated: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, origin distance in world units) between two world_from_head."""
    from facegs.cameras import rotation_angle_deg

    return rotation_angle_deg(estimated[:3, :3], true[:3, :3]), float(np.linalg.norm(estimated[:3, 3] - true[:3, 3]))


def head_frame_from_cameras(world_to_cameras: np.ndarray) -> HeadFrame:
    """A rig prior for the head frame when the fitted scene shows too few face parts.

    ``world_to_cameras`` [V, 4, 4] (OpenCV). Origin: the point closest (least squares) to all
    optical axes; forward (+z): from there towards the mean camera centre (capture rigs surround
    the front of the face); up (+y): the cameras' mean image-up direction, orthogonalised; +x =
    up x forward (the subject's left). Only as good as the rig's centring on the face: yaw and
    pitch become rig-relative. ``diagnostics["source"] == "cameras"``.
    """
    T = np.asarray(world_to_cameras, dtype=np.float64)
    R = T[:, :3, :3]
    origin, _, centres, _ = optical_axes_focus(T)
    fwd = centres.mean(0) - origin
    if np.linalg.norm(fwd) < 1e-9:
        raise HeadFrameError("cameras surround the head evenly: no forward direction")
    fwd /= np.linalg.norm(fwd)
    up = -R[:, 1, :].mean(0)  # image up = camera -y
    up -= up.dot(fwd) * fwd
    if np.linalg.norm(up) < 1e-9:
        raise HeadFrameError("camera up directions are parallel to the forward direction")
    up /= np.linalg.norm(up)
    x = np.cross(up, fwd)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = x, up, fwd, origin
    return HeadFrame(world_from_head=M, diagnostics={"source": "cameras", "n_cameras": int(len(T))})


__all__ = [
    "HeadFrame",
    "HeadFrameConfig",
    "HeadFrameError",
    "LANDMARK_CLASSES",
    "TEMPLATE",
    "backproject_depth",
    "calibrate_template",
    "estimate_head_frame",
    "evaluate_on_manifest",
    "frame_errors",
    "head_frame_from_cameras",
    "labelled_points_from_views",
    "umeyama",
]
