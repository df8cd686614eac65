"""Placing a fitted subject's head frame so that it cannot fail silently.

Three estimates, two of them independent of the labels (and a third label-free cue for the fallback):

1. **labels**: semantic landmarks of the *visible* labelled surface
   (:func:`facegs.headframe.visible.visible_surface_points`, each point weighted by its consensus
   confidence) fitted to the template (:func:`facegs.headframe.estimate.estimate_head_frame`);
2. **geometry**: the face's bilateral symmetry plane (:mod:`facegs.headframe.symmetry`): its
   normal is the head's x axis, its offset the origin's x;
3. **rig**: the capture rig's prior (:func:`facegs.headframe.priors.head_frame_from_cameras`):
   forward = towards the mean camera, up = the cameras' mean image-up;
4. **profile** (label-free, for the fallback): the reference face profile registered to the
   surface in the symmetry plane (:mod:`facegs.headframe.profile`): the rotation about x and the
   origin from the face's shape rather than from where the cameras point.

Fusion: x comes from the symmetry plane (sign: the subject's left by the labels' frame, else the
rig's); the rotation about x, the origin and the scale come from the landmarks refitted with x
fixed (:mod:`facegs.headframe.inplane`: a 2D similarity in the plane perpendicular to x, outliers
dropped as in the free fit). The
frame is **reliable** when every check passes (:class:`PlacementConfig` holds the limits):

- ``label_vs_symmetry_deg``: the labels' own x axis against the symmetry normal;
- ``rig_forward_deg`` / ``rig_up_deg``: the fused frame against the rig prior (a rig faces the
  front of the face; a frame 60 degrees off it looks from below or behind);
- ``residual_rel``: rms landmark residual in template metres (world residual / scale);
- ``symmetry_rel``: the symmetry plane's median mirror distance in template metres;
- ``scale_log``: |log| of the face's width along x over the template's, in the fitted scale;
- ``landmark_spread_log``: log of the landmark fit's scale over the head's width scale, when
  positive (the template spread wider than the head is: ears that are the hair behind them;
  the in-plane fit first drops landmarks to stay within it, :mod:`facegs.headframe.inplane`);
- ``n_landmarks`` >= ``min_landmarks``.

Each check gives a term in [0, 1] (1 inside its limit, falling linearly to 0 at twice the limit);
``reliability`` is the minimum over the fused frame's own checks (``label_frame_reliability`` in
the diagnostics): ``label_vs_symmetry_deg`` is recorded (and listed in ``reasons``) but does not
lower it, since the frame is the one with x from the plane (signed by the rig when the labels' x
disagrees). Measured on the benchmark's fits: where that check failed, the labels' free frame was
24-59 degrees off and the fused frame 0.6-3.2 (docs/benchmarks.md); a flat 0.6 for those frames
ranked correct subjects below wrong ones. A frame whose own checks give less than
``min_reliability`` (0.9: every check within about 1.1x its limit) is replaced by the most reliable
label-free estimate (``policy="fallback"``) or the subject fails with the reasons (``policy="fail"``,
:class:`facegs.core.errors.FitError`). The label-free estimates, most reliable first:

- ``"profile+symmetry"``: x from the symmetry plane (signed by the rig), the rotation about it and
  the origin from the face's profile, used when the profile's own checks pass (``profile_rel``:
  its mean distance to the surface in template metres; ``profile_vs_rig_up_deg``: its up against
  the rig's, within ``max_rig_up_deg``);
- ``"cameras+symmetry"``: x from the plane, the rotation about it and the origin from the rig;
- ``"cameras"``: the rig prior alone (no plane).

A fallback frame's reliability is 0.5, 0.4 or 0.25 (in that order; the rig's up direction was
6.9 degrees off the head's on average over the benchmark's fits, 19 at most, the profile's 2.4 and
6.3) times the minimum of its own checks (``fallback_checks``: the plane's ``symmetry_rel`` and
``rig_x_vs_symmetry_deg``, the plane's normal against the rig's x axis, and the profile's two
checks when it is used); a fallback whose checks give 0 fails the subject under either policy (the
labels, the plane and the rig all disagree: no frame to trust). The source is recorded:
``"labels+symmetry"``, ``"labels"`` (no plane), ``"profile+symmetry"``, ``"cameras+symmetry"`` or
``"cameras"``. Whenever a plane and the rig exist the profile is fitted and recorded
(``diagnostics["profile"]``, with ``vs_frame_deg``: its up against the placed frame's, in the plane),
also where the labels' frame is kept: a cross-check a user can read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from facegs.core.errors import FitError
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.options import opt
from facegs.headframe.estimate import estimate_head_frame
from facegs.headframe.frame import HeadFrame, HeadFrameConfig, HeadFrameError
from facegs.headframe.inplane import Estimate, fit_with_fixed_x, width_scale
from facegs.headframe.priors import head_frame_from_cameras
from facegs.headframe.profile import ProfileFit, fit_profile
from facegs.headframe.symmetry import SymmetryPlane, symmetry_plane
from facegs.headframe.template import LR_LANDMARK_PAIRS, TEMPLATE
from facegs.headframe.visible import CameraView, SurfacePoints, ViewRender, render_capture_views, visible_surface_points

# classes of the (nearly) mirror-symmetric face; hair, clothes and accessories are often asymmetric
SYMMETRIC_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "nose", "mouth",
                     "u_lip", "l_lip", "neck")
TEMPLATE_FACE_WIDTH = 2.0 * TEMPLATE["l_ear"][0]  # metres: ear to ear on the reference head
POLICIES = ("fallback", "fail")
# a label-free frame takes the rotation about x (pitch) and the origin from the face's profile or from
# the rig, which only knows where the cameras point, not how the head is held: at most this reliable,
# times its own checks
FALLBACK_RELIABILITY = {"profile+symmetry": 0.5, "cameras+symmetry": 0.4, "cameras": 0.25}


@dataclass(frozen=True)
class PlacementConfig:
    """Limits of the reliability checks (see the module docstring) and what to do when one fails."""

    policy: str = field(default="fallback", metadata=opt(
        "head frame whose checks fail: 'fallback' = replace it by the label-free estimate (symmetry plane + "
        "rig; recorded as fit_metrics.head_frame_source), 'fail' = the subject fails with the reasons",
        flag="--head-frame-policy", choices=POLICIES))
    max_label_vs_symmetry_deg: float = 12.0
    max_rig_forward_deg: float = 35.0
    max_rig_up_deg: float = 35.0
    max_residual_rel: float = 0.012  # template metres
    max_symmetry_rel: float = 0.006  # template metres
    max_scale_log: float = float(np.log(1.5))  # |log(face width / template face width)|
    # log(landmark scale / the head's width scale): the template cannot be spread wider than the
    # head is (1.2: correctly placed frames measured <= 1.05, hair-as-ears fits 1.34-1.63); the
    # in-plane fit drops landmarks to stay within it (facegs.headframe.inplane.fit_with_fixed_x)
    max_landmark_spread_log: float = float(np.log(1.2))
    min_landmarks: int = 3
    # 0.9, not 0.5: a frame whose face width was 1.6x the template's (scale_log term 0.8) was
    # 13.2 degrees off; the fallback for it, 8.4 (docs/benchmarks.md, facescape s5024 parser labels)
    min_reliability: float = 0.9
    symmetry: bool = True
    # the label-free fallback's rotation about x and origin from the face's profile (else the rig's)
    profile: bool = True
    # the profile's mean distance to the surface, template metres: 0.5-1.5 mm on the benchmark's fitted
    # scenes, 0.4-3.0 on the exact surfaces of bench/profile_frame.py (above it the rig's pitch is used)
    max_profile_rel: float = 0.003
    max_side: int = 128  # capture views are rendered at most this large for the surface points
    alpha_min: float = 0.9
    max_points: int = 80_000


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))


def _axis_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between the lines along ``a`` and ``b`` (sign ignored: a plane's normal has none)."""
    return min(_angle(a, b), _angle(a, -b))


def _term(value: float | None, limit: float) -> float:
    """1 within ``limit``, falling linearly to 0 at twice the limit (None: 0)."""
    if value is None or not np.isfinite(value):
        return 0.0
    return float(np.clip(2.0 - value / limit, 0.0, 1.0)) if limit > 0 else float(value <= 0)


def _lr_sign(points: SurfacePoints, n: np.ndarray) -> float:
    """Evidence (signed) that +n points to the subject's left, from the left/right labelled points."""
    ls = get_label_set(CANONICAL)
    lab, conf = points.labels, points.confidence
    ev = 0.0
    for left, right in LR_LANDMARK_PAIRS:
        ml, mr = lab == ls.index(left), lab == ls.index(right)
        if ml.sum() >= 10 and mr.sum() >= 10:
            cl = np.average(points.points[ml], axis=0, weights=conf[ml])
            cr = np.average(points.points[mr], axis=0, weights=conf[mr])
            ev += float((cl - cr) @ n) * min(ml.sum(), mr.sum())
    return ev


def place_head_frame(params: dict[str, torch.Tensor], views: Sequence[CameraView], cfg: PlacementConfig | None = None,
                     *, subject: str | None = None, backend: str = "auto",
                     renders: Sequence[ViewRender] | None = None) -> tuple[HeadFrame, str]:
    """The subject's head frame and its source (see the module docstring). ``views``: the capture
    cameras ``(K, world-to-camera, width, height)``; ``renders``: those views already rendered
    (:func:`facegs.headframe.visible.render_capture_views`), else they are rendered here.
    Diagnostics hold every estimate, the checks, ``reliability``, ``reasons`` and
    ``landmarks_found`` (the landmark names found on the visible labelled surface). Raises
    :class:`FitError` when no frame can be placed, or with ``policy="fail"`` when the checks fail."""
    cfg = cfg or PlacementConfig()
    if cfg.policy not in POLICIES:
        raise ValueError(f"head frame policy must be one of {POLICIES}, got '{cfg.policy}'")
    if renders is None:
        renders = render_capture_views(params, views, max_side=cfg.max_side, backend=backend)
    surface = visible_surface_points(renders, alpha_min=cfg.alpha_min, max_points=cfg.max_points)
    w2cs = np.stack([np.asarray(v[1], np.float64) for v in views])
    diag: dict[str, Any] = {"n_surface_points": len(surface)}
    reasons: list[str] = []
    rig = labels = None
    try:
        rig = head_frame_from_cameras(w2cs)
    except HeadFrameError as e:
        reasons.append(f"no rig prior: {e}")
    hcfg = HeadFrameConfig()
    found: list[str] = []  # the landmarks found on the visible labelled surface (quality: face_parts)
    if len(surface) >= 50:
        try:
            labels = estimate_head_frame(surface.points, surface.probs, weights=surface.confidence, cfg=hcfg)
            found = sorted(labels.diagnostics["landmarks"])
        except HeadFrameError as e:
            reasons.append(f"labels: {e}")
            found = sorted(e.found)
    else:
        reasons.append(f"only {len(surface)} opaque surface points in the capture views")
    diag["landmarks_found"] = found
    plane = _plane(surface, labels, rig, cfg, reasons)
    fused, fdiag = _fuse(labels, plane, rig, surface, hcfg, cfg, reasons)
    diag.update(fdiag)
    checks = _checks(fused, labels, plane, rig, surface, cfg, fdiag)
    diag["checks"] = checks
    terms = {k: v["term"] for k, v in checks.items()}
    own = [v for k, v in terms.items() if k != "label_vs_symmetry_deg"]  # the fused frame's own checks
    reliability = min(own) if own else 0.0
    failed = [f"{k} = {v['value']} (limit {v['limit']})" for k, v in checks.items() if v["term"] < 1.0]
    diag["label_frame_reliability"] = round(float(reliability), 4)
    profile = _profile(surface, plane, rig, cfg, diag)
    if fused is not None and reliability >= cfg.min_reliability:
        source = "labels+symmetry" if plane is not None else "labels"
        frame = fused
    else:
        why = "; ".join(reasons + failed) or "no estimate"
        if cfg.policy == "fail":
            raise FitError(f"cannot place the head frame reliably (reliability {reliability:.2f} < "
                           f"{cfg.min_reliability}): {why}", subject=subject)
        fb_checks = _fallback_checks(plane, rig, surface, cfg)
        prof_checks = _profile_checks(profile, rig, cfg)
        use_profile = bool(prof_checks) and all(c["term"] >= 1.0 for c in prof_checks.values())
        if use_profile:
            fb_checks.update(prof_checks)
        elif prof_checks:
            diag["profile_rejected"] = prof_checks
        frame, source = _fallback(plane, rig, profile if use_profile else None, subject, why)
        diag["fallback_reason"] = why
        diag["fallback_checks"] = fb_checks
        reliability = FALLBACK_RELIABILITY[source] * min([c["term"] for c in fb_checks.values()] or [1.0])
        if reliability <= 0.0:
            # the labels, the symmetry plane and the rig all disagree: no estimate to ship renders with
            bad = "; ".join(f"{k} = {v['value']} (limit {v['limit']})" for k, v in fb_checks.items() if v["term"] <= 0)
            raise FitError(f"cannot place the head frame: the label frame fails its checks ({why}) and the label-free "
                           f"fallback ({source}) fails its own ({bad})", subject=subject)
    diag["reliability"] = round(float(reliability), 4)
    diag["reasons"] = reasons + failed
    diag["source"] = source
    if labels is not None:
        diag["labels_frame"] = labels.world_from_head.tolist()
        diag["label_diagnostics"] = {k: v for k, v in labels.diagnostics.items() if k != "landmarks"}
    if plane is not None:
        diag["symmetry"] = {"normal": plane.normal.tolist(), "offset": plane.offset, "residual": plane.residual,
                            "n_points": plane.n_points}
    if rig is not None:
        diag["rig_frame"] = rig.world_from_head.tolist()
    if profile is not None:
        diag["profile"] = {"up": profile.up.tolist(), "origin": profile.origin.tolist(), "scale": profile.scale,
                           "cost_rel": round(profile.cost, 6), "n_points": profile.n_points,
                           "vs_frame_deg": round(_angle(profile.up, frame.R[:, 1]), 3)}
    return HeadFrame(world_from_head=frame.matrix(), diagnostics=diag), source


def _plane(surface: SurfacePoints, labels: HeadFrame | None, rig: HeadFrame | None, cfg: PlacementConfig,
           reasons: list[str]) -> SymmetryPlane | None:
    if not cfg.symmetry:
        return None
    ls = get_label_set(CANONICAL)
    face = np.isin(surface.labels, [ls.index(c) for c in SYMMETRIC_CLASSES])
    inits = [f.world_from_head[:3, 0] for f in (labels, rig) if f is not None]
    try:
        return symmetry_plane(surface.points[face], inits, near=None if rig is None else rig.world_from_head[:3, 0],
                              max_deg=cfg.max_rig_forward_deg)
    except ValueError as e:
        reasons.append(f"no symmetry plane: {e}")
        return None


def _profile(surface: SurfacePoints, plane: SymmetryPlane | None, rig: HeadFrame | None, cfg: PlacementConfig,
             diag: dict[str, Any]) -> ProfileFit | None:
    """The face's profile in the symmetry plane (:mod:`facegs.headframe.profile`), started from the
    rig's up and origin, the plane's normal signed by the rig's x; None without a plane or a rig, or
    when it cannot be fitted (why: ``diag["profile_error"]``; not a reason against the frame)."""
    if not cfg.profile or plane is None or rig is None:
        return None
    R0 = rig.world_from_head[:3, :3]
    n, d = plane.towards(R0[:, 0])
    try:
        return fit_profile(surface.points, n, d, R0[:, 1], rig.world_from_head[:3, 3],
                           width_scale(surface.points, n, TEMPLATE_FACE_WIDTH))
    except ValueError as e:
        diag["profile_error"] = str(e)
        return None


def _fuse(labels: HeadFrame | None, plane: SymmetryPlane | None, rig: HeadFrame | None, surface: SurfacePoints,
          hcfg: HeadFrameConfig, cfg: PlacementConfig, reasons: list[str]) -> tuple[Estimate | None, dict[str, Any]]:
    """The labels' landmarks refitted with x from the symmetry plane (or the labels' frame alone).
    The plane's sign (which side is the subject's left) is the labels' x, or the rig's x when the
    labels' x is more than ``max_label_vs_symmetry_deg`` off the plane."""
    if labels is None:
        return None, {}
    d = labels.diagnostics
    T = labels.world_from_head
    if plane is None:
        return Estimate(T[:3, :3], T[:3, 3], d["scale"]), {"used": d["used"], "scale": d["scale"],
                                                            "rms_residual": d["rms_residual"]}
    ref = T[:3, 0]
    if rig is not None and _axis_angle(ref, plane.normal) > cfg.max_label_vs_symmetry_deg:
        ref = rig.world_from_head[:3, 0]
    n, offset = plane.towards(ref)
    lms = {k: np.asarray(v["position"]) for k, v in d["landmarks"].items() if k in d["used"]}
    try:
        wscale = width_scale(surface.points, n, TEMPLATE_FACE_WIDTH)
        est, info = fit_with_fixed_x(lms, n, offset, hcfg.weights, hcfg,
                                     max_scale=wscale * float(np.exp(cfg.max_landmark_spread_log)))
    except HeadFrameError as e:
        reasons.append(f"in-plane fit: {e}")
        return None, {}
    info["lr_evidence"] = _lr_sign(surface, n)
    info["width_scale"] = wscale
    return est, info


def _checks(fused: Estimate | None, labels: HeadFrame | None, plane: SymmetryPlane | None, rig: HeadFrame | None,
            surface: SurfacePoints, cfg: PlacementConfig, fdiag: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each check: ``{"value", "limit", "term"}`` (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, limit: float) -> None:
        out[name] = {"value": None if value is None else round(float(value), 5), "limit": limit,
                     "term": round(_term(value, limit), 4)}

    if fused is None:
        add("n_landmarks", None, cfg.min_landmarks)
        return out
    n_lm = len(fdiag.get("used", []))
    out["n_landmarks"] = {"value": n_lm, "limit": cfg.min_landmarks, "term": float(n_lm >= cfg.min_landmarks)}
    scale = fused.scale or 1.0
    add("residual_rel", fdiag.get("rms_residual", np.inf) / scale, cfg.max_residual_rel)
    if plane is not None and labels is not None:
        add("label_vs_symmetry_deg", _axis_angle(labels.world_from_head[:3, 0], plane.normal),
            cfg.max_label_vs_symmetry_deg)
        add("symmetry_rel", plane.residual / scale, cfg.max_symmetry_rel)
        x = fused.R[:, 0]
        u = (surface.points - fused.origin) @ x
        width = float(np.percentile(u, 97.5) - np.percentile(u, 2.5)) / scale
        add("scale_log", abs(np.log(max(width, 1e-9) / TEMPLATE_FACE_WIDTH)), cfg.max_scale_log)
        if fdiag.get("width_scale"):
            add("landmark_spread_log", max(0.0, float(np.log(scale / fdiag["width_scale"]))),
                cfg.max_landmark_spread_log)
    if rig is not None:
        add("rig_forward_deg", _angle(fused.R[:, 2], rig.world_from_head[:3, 2]), cfg.max_rig_forward_deg)
        add("rig_up_deg", _angle(fused.R[:, 1], rig.world_from_head[:3, 1]), cfg.max_rig_up_deg)
    return out


def _fallback_checks(plane: SymmetryPlane | None, rig: HeadFrame | None, surface: SurfacePoints,
                     cfg: PlacementConfig) -> dict[str, dict[str, Any]]:
    """The checks a label-free frame can pass: a clean mirror plane (residual in template metres,
    the scale from the face's width along its normal) that agrees with the rig's x axis."""
    if plane is None or rig is None:
        return {}
    u = surface.points @ plane.normal
    scale = float(np.percentile(u, 97.5) - np.percentile(u, 2.5)) / TEMPLATE_FACE_WIDTH
    out: dict[str, dict[str, Any]] = {}
    for name, value, limit in (
            ("symmetry_rel", plane.residual / max(scale, 1e-9), cfg.max_symmetry_rel),
            ("rig_x_vs_symmetry_deg", _axis_angle(rig.world_from_head[:3, 0], plane.normal), cfg.max_rig_forward_deg)):
        out[name] = {"value": round(float(value), 5), "limit": limit, "term": round(_term(value, limit), 4)}
    return out


def _profile_checks(profile: ProfileFit | None, rig: HeadFrame | None,
                    cfg: PlacementConfig) -> dict[str, dict[str, Any]]:
    """The profile's checks: its mean distance to the surface (template metres) and its up against the rig's."""
    if profile is None or rig is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, value, limit in (("profile_rel", profile.cost, cfg.max_profile_rel),
                               ("profile_vs_rig_up_deg", _angle(profile.up, rig.world_from_head[:3, 1]),
                                cfg.max_rig_up_deg)):
        out[name] = {"value": round(float(value), 5), "limit": limit, "term": round(_term(value, limit), 4)}
    return out


def _fallback(plane: SymmetryPlane | None, rig: HeadFrame | None, profile: ProfileFit | None, subject: str | None,
              why: str) -> tuple[Estimate, str]:
    """The label-free frame: x from the symmetry plane (signed by the rig), the rotation about it
    and the origin from the face's profile when given, else from the rig prior; the rig prior alone
    without a plane."""
    if rig is None:
        raise FitError(f"cannot place the head frame: {why}; and no rig prior", subject=subject)
    R0, o0 = rig.world_from_head[:3, :3], rig.world_from_head[:3, 3]
    if plane is None:
        return Estimate(R0, o0), "cameras"
    if profile is not None:
        n = np.cross(profile.up, profile.forward)
        return Estimate(np.stack([n, profile.up, profile.forward], axis=1), profile.origin), "profile+symmetry"
    n, offset = plane.towards(R0[:, 0])
    up = R0[:, 1] - (R0[:, 1] @ n) * n
    up /= np.linalg.norm(up)
    R = np.stack([n, up, np.cross(n, up)], axis=1)
    return Estimate(R, o0 - (o0 @ n - offset) * n), "cameras+symmetry"


def capture_views(m: Any) -> list[CameraView]:
    """``(K, world-to-camera, width, height)`` of a subject manifest's views."""
    return [(np.asarray(v.K), np.asarray(v.world_to_camera), int(v.width), int(v.height)) for v in m.views]


