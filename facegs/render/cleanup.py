"""Automatic clean-up of rendered class probabilities into training labels.

The paper touched rendered labels up by hand (eyes, lips); facegs does it by code. Input is one
rendered view: class probabilities (or logits) ``[C, H, W]`` in the canonical label order and the
rendered opacity ``alpha [H, W]``; output is a :class:`CleanResult` with uint8 labels, a
confidence map and an ignore mask.

Steps of :func:`clean_labels`, in order (each one reports what it changed):

1. **Probabilities.** Logits are soft-maxed; probabilities are renormalised to sum 1 per pixel
   (alpha-composited probabilities sum to alpha). The rendered pixel is a mix of the scene (weight
   alpha) and empty background, so the effective distribution is
   ``q = alpha * p + (1 - alpha) * onehot(background)``. ``q`` drives confidence and re-labelling.
2. **Argmax and alpha.** ``labels = argmax p``; pixels with ``alpha < alpha_threshold`` become
   background (0).
3. **Small components.** Per foreground class, 8-connected components smaller than
   ``max(min_component_px, min_component_frac * H * W)`` are removed; so are the minor components of
   single-instance classes (eyes, brows, nose, lips, mouth, ears) smaller than
   ``single_instance_ratio`` times the class's largest component. A removed component takes, as one
   block, the class ``c`` (other than its own) maximising ``vote share + mean q_c`` over the
   component, where the vote of a pixel is the label of its nearest kept pixel (the surrounding
   labels): the neighbourhood majority, tie-broken by the second most probable class.
4. **Holes.** Background components (4-connected) that do not touch the image border, contain no
   low-alpha pixel (they are not see-through) and are at most ``max_hole_frac`` of the image are
   filled the same way (so a background hole inside the skin becomes skin). Islands of the
   ``island_classes`` (skin, hair, neck, cloth, hat) up to ``max_island_frac`` of the image whose
   surroundings are a single other class are filled with that class. Facial parts are never filled
   as holes: the mouth inside the lips and the eyes inside the skin stay.
5. **Left/right.** With the camera (``w2c``) and the head frame (``world_from_head``) known, the
   head's +x axis (the subject's LEFT) projects to an image direction ``e``. For each pair
   (eyes, brows, ears): if both classes are present and the left centroid lies on the ``-e`` side of
   the right centroid, the pair is swapped; at a yaw beyond the pair's ``hidden_yaw`` only the near
   side can be seen (yaw < -hidden: only right parts; yaw > +hidden: only left parts), so far-side
   labels are relabelled as the near side; near-frontal (``|yaw| <= single_side_max_yaw``) a lone
   class of a pair on the wrong side of the nose is relabelled. Pair swaps swap the two channels of
   ``q``; relabels move the far-side probability onto the near side.

Outputs:
- ``labels`` [H, W] uint8 (no 255: the ignore mask is separate; see :meth:`CleanResult.labels_with_ignore`).
- ``confidence`` [H, W] float32 = ``q`` of the final label after all steps (for alpha background
  ``>= 1 - alpha``; for pixels re-labelled in steps 3-4 the, typically low, probability of the new
  label: it is not forced to 0).
- ``ignore`` [H, W] bool = ``ignore_alpha_band[0] < alpha < ignore_alpha_band[1]`` (partial
  coverage at silhouettes) OR ``confidence < conf_threshold`` OR the final label leads the
  runner-up by less than ``ignore_margin`` OR changed by steps 3-4 (when ``ignore_changed``, off by
  default) OR changed by step 5 (when ``ignore_lr_changed``, off by default: the geometric check is
  trusted) OR, with ``ignore_unobserved`` (off by default), no capture view saw the pixel's surface
  (:mod:`facegs.render.observed`; applied by :func:`facegs.render.views.render_novel_views`, which
  has the depth). Only what is really uncertain is ignored: a trainer gets labels, not holes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegs.core.cameras import head_pose_to_w2c, w2c_to_head_pose
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.options import opt
from facegs.render.components import fill_background_holes, fill_islands, remove_small_components

FACE_PARTS = ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip", "l_ear", "r_ear")


@dataclass(frozen=True)
class LRPair:
    """A left/right pair checked in the head frame; beyond ``|yaw| > hidden_yaw`` the far one is hidden."""

    left: str
    right: str
    hidden_yaw: float


@dataclass(frozen=True)
class CleanupConfig:
    """Parameters of :func:`clean_labels` (fractions are of the image area H * W)."""

    label_set: str = CANONICAL
    input_kind: str = "auto"  # "probs" | "logits" | "auto" (values outside [0, 1] -> logits)
    alpha_threshold: float = 0.5
    # 2, not 8: at 128 px an eye is 2-4 px wide and a brow 2 px thick, and 8 removed them
    # (measured: eyes IoU 35 -> 52, brows 13 -> 27 on clean labels; docs/benchmarks.md)
    min_component_px: int = 2
    min_component_frac: float = 1e-4
    single_instance_classes: tuple[str, ...] = FACE_PARTS
    single_instance_ratio: float = 0.1
    max_hole_frac: float = 0.01
    island_classes: tuple[str, ...] = ("skin", "hair", "neck", "cloth", "hat")
    max_island_frac: float = 0.001
    lr_check: bool = True
    lr_pairs: tuple[LRPair, ...] = (
        LRPair("l_eye", "r_eye", 70.0),
        LRPair("l_brow", "r_brow", 75.0),
        LRPair("l_ear", "r_ear", 60.0),
    )
    lr_min_axis_norm: float = 0.25  # skip the pair-order test when |projected head +x| is smaller
    lr_margin_frac: float = 0.01  # centroid order must be wrong by > this * image width to swap
    single_side_max_yaw: float = 20.0
    # 0.3, not 0.5: with noisy input labels the consensus probability of a correct label is often
    # 0.4-0.5, and 0.5 ignored 35-49% of the foreground at 50% pixel noise (4-8% at 0.3, of which
    # about half would have been wrong: the really uncertain pixels)
    conf_threshold: float = 0.3
    ignore_margin: float = 0.0  # also ignore where the final label's q leads the runner-up by less than this
    ignore_alpha_band: tuple[float, float] = (0.05, 0.8)
    # relabelled speckle and holes take their neighbourhood's label, which is right far more often
    # than not: they are labelled, not ignored
    ignore_changed: bool = False
    ignore_lr_changed: bool = False
    # pixels of a render no capture view saw (facegs.render.observed): counted always, ignored on request
    ignore_unobserved: bool = field(default=False, metadata=opt(
        "also ignore the pixels of a render whose surface no capture view saw (facegs.render.observed: the chest "
        "below a frontal rig's frames, the back of the head): their labels are the fit's guess. Off: they are "
        "labelled, and every sample's json says which share they are (unobserved_fraction)"))
    observed_depth_tol: float = 0.02  # relative depth agreement for a capture view to have seen a pixel's surface

    def __post_init__(self) -> None:
        if self.input_kind not in ("probs", "logits", "auto"):
            raise ValueError(f"input_kind must be 'probs', 'logits' or 'auto', got '{self.input_kind}'")
        if not 0.0 <= self.alpha_threshold <= 1.0:
            raise ValueError(f"alpha_threshold must be in [0, 1], got {self.alpha_threshold}")
        if not self.observed_depth_tol > 0:
            raise ValueError(f"observed_depth_tol must be > 0, got {self.observed_depth_tol}")


@dataclass
class CleanResult:
    """Cleaned labels of one view. All arrays are [H, W]."""

    labels: np.ndarray  # uint8 class indices (canonical order), no IGNORE_INDEX
    confidence: np.ndarray  # float32 in [0, 1]
    ignore: np.ndarray  # bool
    report: dict[str, Any] = field(default_factory=dict)

    def labels_with_ignore(self, ignore_index: int = 255) -> np.ndarray:
        """[H, W] uint8 labels with ignored pixels set to ``ignore_index``."""
        return np.where(self.ignore, np.uint8(ignore_index), self.labels).astype(np.uint8)


def to_probabilities(x: np.ndarray, kind: str = "auto") -> np.ndarray:
    """[C, H, W] logits or (unnormalised) probabilities -> float32 probabilities summing to 1.

    ``kind="auto"`` treats ``x`` as logits when any value lies outside [0, 1] (tolerance 1e-4).
    Probability maps that sum to ~0 at a pixel become uniform there.
    """
    x = np.asarray(x, dtype=np.float32)
    if kind == "auto":
        kind = "logits" if (x.min() < -1e-4 or x.max() > 1 + 1e-4) else "probs"
    if kind == "logits":
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    p = np.clip(x, 0.0, None)
    s = p.sum(axis=0, keepdims=True)
    return np.where(s > 1e-6, p / np.maximum(s, 1e-6), np.float32(1.0 / x.shape[0])).astype(np.float32)


def effective_probabilities(p: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``q = alpha * p + (1 - alpha) * onehot(0)``: [C, H, W] float32, the rendered pixel's distribution."""
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    q = p * a[None]
    q[0] += 1.0 - a
    return q


def projected_left_axis(w2c: np.ndarray, world_from_head: np.ndarray | None = None) -> np.ndarray:
    """[2] image-plane direction (du, dv) of the head's +x axis (the subject's LEFT), unnormalised.

    Its norm is ~1 when the axis is parallel to the image plane and ~0 in profile views.
    """
    T = np.eye(4) if world_from_head is None else np.asarray(world_from_head, dtype=np.float64)
    x_cam = np.asarray(w2c, dtype=np.float64)[:3, :3] @ T[:3, 0]
    return x_cam[:2]


def _centroid_proj(mask: np.ndarray, e: np.ndarray) -> float:
    """Mean of (u, v) . e over the pixels of ``mask`` (pixel centres at +0.5)."""
    ii, jj = np.nonzero(mask)
    return float(((jj + 0.5) * e[0] + (ii + 0.5) * e[1]).mean())


def _swap_pair(labels: np.ndarray, q: np.ndarray, a: int, b: int) -> np.ndarray:
    """Swap classes ``a`` and ``b`` in labels and in q's channels; returns the changed mask."""
    ma, mb = labels == a, labels == b
    labels[ma], labels[mb] = b, a
    q[[a, b]] = q[[b, a]]
    return ma | mb


def _move_class(labels: np.ndarray, q: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Relabel ``src`` as ``dst`` and move its probability onto ``dst``; returns the changed mask."""
    m = labels == src
    labels[m] = dst
    q[dst] += q[src]
    q[src] = 0.0
    return m


def fix_left_right(
    labels: np.ndarray, q: np.ndarray, yaw: float, e: np.ndarray, cfg: CleanupConfig
) -> tuple[np.ndarray, list[str]]:
    """Step 5 in place. ``yaw`` degrees (head frame), ``e`` [2] = :func:`projected_left_axis`.

    Returns (changed mask [H, W] bool, list of human-readable actions).
    """
    ls = get_label_set(cfg.label_set)
    changed = np.zeros(labels.shape, dtype=bool)
    actions: list[str] = []
    norm = float(np.linalg.norm(e))
    ehat = e / norm if norm > 1e-9 else e
    margin = cfg.lr_margin_frac * labels.shape[1]
    nose = ls.index("nose") if "nose" in ls.classes else None
    for pair in cfg.lr_pairs:
        if pair.left not in ls.classes or pair.right not in ls.classes:
            continue
        li, ri = ls.index(pair.left), ls.index(pair.right)
        has_l, has_r = bool((labels == li).any()), bool((labels == ri).any())
        if yaw < -pair.hidden_yaw and has_l:  # camera on the subject's right: left parts are hidden
            changed |= _move_class(labels, q, li, ri)
            actions.append(f"yaw {yaw:.1f} < -{pair.hidden_yaw:g}: {pair.left} is hidden, relabelled as {pair.right}")
        elif yaw > pair.hidden_yaw and has_r:
            changed |= _move_class(labels, q, ri, li)
            actions.append(f"yaw {yaw:.1f} > {pair.hidden_yaw:g}: {pair.right} is hidden, relabelled as {pair.left}")
        elif has_l and has_r and norm >= cfg.lr_min_axis_norm:
            d = _centroid_proj(labels == li, ehat) - _centroid_proj(labels == ri, ehat)
            if d < -margin:
                changed |= _swap_pair(labels, q, li, ri)
                actions.append(f"{pair.left}/{pair.right} mirrored (left centroid {d:.1f} px on the right): swapped")
        elif has_l != has_r and abs(yaw) <= cfg.single_side_max_yaw and nose is not None and (labels == nose).any():
            lone, other = (li, ri) if has_l else (ri, li)
            side = _centroid_proj(labels == lone, ehat) - _centroid_proj(labels == nose, ehat)
            if (side < -margin) if has_l else (side > margin):
                changed |= _move_class(labels, q, lone, other)
                actions.append(
                    f"lone {ls.classes[lone]} on the wrong side of the nose ({side:.1f} px): "
                    f"relabelled as {ls.classes[other]}"
                )
    return changed, actions


def _view_geometry(
    view_yaw: float | None, world_from_head: np.ndarray | None, w2c: np.ndarray | None
) -> tuple[float, np.ndarray] | None:
    """(yaw, projected head +x) from the camera and head frame, or from a yaw alone (pitch = roll = 0)."""
    if w2c is not None:
        e = projected_left_axis(w2c, world_from_head)
        yaw = w2c_to_head_pose(w2c, world_from_head)[0] if view_yaw is None else float(view_yaw)
        return yaw, e
    if view_yaw is not None:
        return float(view_yaw), projected_left_axis(head_pose_to_w2c(float(view_yaw), 0.0))
    return None


def clean_labels(
    probs: np.ndarray,
    alpha: np.ndarray,
    cfg: CleanupConfig | None = None,
    view_yaw: float | None = None,
    world_from_head: np.ndarray | None = None,
    w2c: np.ndarray | None = None,
) -> CleanResult:
    """Turn rendered class probabilities into clean labels (see the module docstring for the steps).

    ``probs`` [C, H, W] probabilities or logits in the canonical order of ``cfg.label_set``;
    ``alpha`` [H, W] rendered opacity in [0, 1]. The left/right step needs the pose: ``w2c`` [4, 4]
    (world-to-camera, OpenCV) with ``world_from_head`` [4, 4] (None = identity), or ``view_yaw``
    (degrees; used alone it assumes pitch = roll = 0). Without either, the step is skipped.
    """
    cfg = cfg or CleanupConfig()
    ls = get_label_set(cfg.label_set)
    probs = np.asarray(probs)
    alpha = np.asarray(alpha, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] != ls.num_classes or alpha.shape != probs.shape[1:]:
        raise ValueError(
            f"probs must be [{ls.num_classes}, H, W] and alpha [H, W]; got {list(probs.shape)} and {list(alpha.shape)}"
        )
    p = to_probabilities(probs, cfg.input_kind)
    q = effective_probabilities(p, alpha)
    labels = np.argmax(p, axis=0).astype(np.uint8)
    low_alpha = alpha < cfg.alpha_threshold
    labels[low_alpha] = 0
    argmax_labels = labels.copy()

    changed_cc, removed = remove_small_components(labels, q, cfg)
    changed_holes, n_holes = fill_background_holes(labels, q, alpha, cfg)
    changed_islands, n_islands = fill_islands(labels, q, cfg)

    geom = _view_geometry(view_yaw, world_from_head, w2c) if cfg.lr_check else None
    changed_lr = np.zeros(labels.shape, dtype=bool)
    lr_actions: list[str] = []
    if geom is not None:
        changed_lr, lr_actions = fix_left_right(labels, q, geom[0], geom[1], cfg)
    elif cfg.lr_check:
        lr_actions = ["skipped: no camera pose given"]

    confidence = np.clip(np.take_along_axis(q, labels[None].astype(np.int64), axis=0)[0], 0.0, 1.0).astype(np.float32)
    lo, hi = cfg.ignore_alpha_band
    ignore = ((alpha > lo) & (alpha < hi)) | (confidence < cfg.conf_threshold)
    if cfg.ignore_margin > 0:
        others = np.where(np.arange(q.shape[0])[:, None, None] == labels[None], -np.inf, q).max(axis=0)
        ignore |= (confidence - others) < cfg.ignore_margin
    if cfg.ignore_changed:
        ignore |= changed_cc | changed_holes | changed_islands
    if cfg.ignore_lr_changed:
        ignore |= changed_lr
    report = {
        "view_yaw": None if geom is None else float(geom[0]),
        "alpha_background_px": int((low_alpha & (np.argmax(p, axis=0) != 0)).sum()),
        "components_removed": removed,
        "component_px": int(changed_cc.sum()),
        "holes_filled": n_holes,
        "hole_px": int(changed_holes.sum()),
        "islands_filled": n_islands,
        "island_px": int(changed_islands.sum()),
        "lr_actions": lr_actions,
        "lr_px": int(changed_lr.sum()),
        "changed_px": int((labels != argmax_labels).sum()),
        "ignore_px": int(ignore.sum()),
        "ignore_frac": float(ignore.mean()),
        "mean_confidence": float(confidence.mean()),
    }
    return CleanResult(labels=labels, confidence=confidence, ignore=ignore, report=report)
