"""Estimate a subject's head frame from labelled 3D points (Gaussians or back-projected pixels).

Head frame (as everywhere in facegs, see :mod:`facegs.core.cameras`): +x = the subject's LEFT, +y up,
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

from typing import Any

import numpy as np

from facegs.core.labels import CANONICAL
from facegs.headframe.frame import HeadFrame, HeadFrameConfig, HeadFrameError
from facegs.headframe.landmarks import (
    find_landmarks,
    smooth_probs_knn,
    swap_lr_name,
    template_point,
    to_canonical_probs,
)
from facegs.headframe.template import LANDMARK_CLASSES, LR_LANDMARK_PAIRS


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


def _fit(names: list[str], obs: np.ndarray, cfg: HeadFrameConfig, swap: bool) -> dict[str, Any]:
    """Robust similarity fit of the template to observed landmarks (``swap``: l/r names swapped)."""
    tmpl = np.array([template_point(swap_lr_name(n) if swap else n, names) for n in names], dtype=np.float64)
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
        raise HeadFrameError(f"need at least 3 face landmarks, found {sorted(lms)}", found=tuple(sorted(lms)))
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
