"""Per-subject quality without ground truth: scores a user can read on real captures.

Computed for every subject before its samples are written (so that a bad subject is never shipped
silently), from what the factory has anyway:

- ``input_agreement``: per class, the IoU between the refined labels rendered at the capture views
  and the initial labels of those views (``input_iou``, classes present in either); its mean is
  ``input_miou``. A class that the 3D consensus does not reproduce (an eye never recovered) shows
  as a low IoU, whatever the noise of the other classes;
- ``consensus_confidence``: the mean probability of the rendered label over the pixels the scene
  covers at the capture views: how strongly the views agree in 3D;
- ``consensus_margin``: the mean of ``1 - p2 / p1`` over the same pixels (``p1``, ``p2`` the two
  largest class probabilities): near 1 when one class clearly leads, whatever share of the labels
  was uniform noise (that lowers ``p1`` and leaves ``p2`` small), near 0 where two classes tie;
- ``head_frame_reliability``: :func:`facegs.headframe.place.place_head_frame`'s reliability;
- ``ignore_fraction``: the fraction of the rendered foreground that the clean-up ignores, over
  ``probe_views`` of the subject's novel views;
- ``unobserved_fraction``: the share of the rendered foreground, over the same views, whose surface
  no capture view saw (:mod:`facegs.render.observed`): labels the fit guessed. Reported, not part of
  ``quality``: it measures the rig's coverage of the sampled poses more than the subject, and the
  renders' samples carry it per view;
- ``psnr``: the fit's PSNR at the capture views (when the fit evaluated itself);
- ``face_parts``: the share of the six parts every face shows, found as landmarks on the visible
  labelled surface by the head-frame placement (``landmarks_found``): left eye, right eye (either
  one: glasses, which hide them), left brow, right brow, nose, mouth (:func:`face_parts`). Ears are
  not among them (hair hides them on many subjects). A part missing from the 3D consensus is a
  part the labels missed in every view, the one error the consensus cannot remove or see.

``quality`` = ``head_frame_reliability`` x ``consensus_margin`` x (1 - ``ignore_fraction``) x
``face_parts``, in [0, 1]. The agreement with the input labels, the mean top probability and the PSNR are reported
beside it but not part of it: on the label-refinement benchmark's fits (docs/benchmarks.md) the
input agreement measures the *input's* noise (a fit that removes 50% pixel noise disagrees with
half its input), the mean top probability falls with uniform noise the consensus removed, and the
RGB PSNR ranks label accuracy inversely. Spearman against the true mIoU of the renders (the
numbers, with and without ``face_parts``, in docs/benchmarks.md): the margin alone does not see
labels that are wrong the same way in every view (a weak parser's: the consensus agrees with
them); the missing parts do. A subject whose face is really covered (a mask over the mouth,
bangs over both brows) loses 1/6 per part. The factory fails subjects below ``--min-quality``
(recorded as failures with the reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from facegs.core.imageio import read_labels
from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set, remap
from facegs.core.manifest import SubjectManifest
from facegs.headframe.visible import ViewRender
from facegs.label.views import ViewLabels
from facegs.render.views import RenderedView

PROBE_VIEWS = 8  # novel views rendered before the samples, for the ignore fraction (reused as samples)


def _input_labels(m: SubjectManifest, labels: Mapping[str, ViewLabels] | None, i: int) -> np.ndarray | None:
    v = m.views[i]
    if labels is not None:
        return labels[v.view_id].labels
    if v.labels is None:
        return None
    lab = read_labels(m.path(v.labels))
    return lab if m.label_set == CANONICAL else remap(lab, m.label_set, CANONICAL)


def input_agreement(m: SubjectManifest, renders: Sequence[ViewRender],
                    labels: Mapping[str, ViewLabels] | None) -> dict[str, Any]:
    """``{"input_miou", "input_iou": {class: IoU}, "consensus_confidence", "consensus_margin"}`` at the
    capture views (``probs`` [H, W, K] of each render; foreground = alpha >= 0.5)."""
    ls = get_label_set(CANONICAL)
    K = ls.num_classes
    inter = np.zeros(K)
    union = np.zeros(K)
    conf_sum = margin_sum = conf_n = 0.0
    for i, r in enumerate(renders):
        lab = _input_labels(m, labels, i)
        pred = r.labels
        fg = r.alpha >= 0.5
        top2 = np.partition(r.probs[fg].astype(np.float64), -2, axis=-1)[:, -2:]  # [N, 2]: second, first
        conf_sum += float(top2[:, 1].sum())
        margin_sum += float((1.0 - top2[:, 0] / np.maximum(top2[:, 1], 1e-12)).sum())
        conf_n += float(fg.sum())
        if lab is None:
            continue
        lab = cv2.resize(lab, (r.width, r.height), interpolation=cv2.INTER_NEAREST)
        ok = (lab != IGNORE_INDEX) & (lab < K)
        p, g = pred[ok].astype(np.int64), lab[ok].astype(np.int64)
        inter += np.bincount(g[p == g], minlength=K)[:K]
        union += np.bincount(p, minlength=K)[:K] + np.bincount(g, minlength=K)[:K] - np.bincount(g[p == g], minlength=K)[:K]
    present = union > 0
    iou = {ls.classes[k]: round(float(inter[k] / union[k]), 4) for k in range(K) if present[k]}
    return {"input_miou": round(float(np.mean(list(iou.values()))), 4) if iou else None, "input_iou": iou,
            "consensus_confidence": round(conf_sum / conf_n, 4) if conf_n else None,
            "consensus_margin": round(margin_sum / conf_n, 4) if conf_n else None}


def ignore_fraction(views: Sequence[RenderedView]) -> float | None:
    """Ignored share of the rendered foreground (labels > 0) over ``views``."""
    ign = fg = 0
    for rv in views:
        f = rv.labels > 0
        fg += int(f.sum())
        ign += int((rv.ignore & f).sum())
    return round(ign / fg, 4) if fg else None


def unobserved_share(views: Sequence[RenderedView]) -> float | None:
    """Share of the rendered foreground (labels > 0) over ``views`` whose surface no capture view saw
    (None: not measured or no foreground)."""
    unseen = fg = 0
    for rv in views:
        if rv.observed is None:
            return None
        f = rv.labels > 0
        fg += int(f.sum())
        unseen += int((f & (rv.observed == 0)).sum())
    return round(unseen / fg, 4) if fg else None


# parts every face shows, each a group of landmark names any one of which counts (glasses hide the eyes)
FACE_PARTS: tuple[tuple[str, ...], ...] = (("l_eye", "eye_g"), ("r_eye", "eye_g"), ("l_brow",), ("r_brow",),
                                           ("nose",), ("mouth",))


def face_parts(found: Sequence[str] | None) -> float | None:
    """Share of :data:`FACE_PARTS` among the landmark names ``found`` (None: not measured)."""
    if found is None:
        return None
    have = set(found)
    return round(sum(bool(have.intersection(g)) for g in FACE_PARTS) / len(FACE_PARTS), 4)


def combine(terms: Mapping[str, Any]) -> float:
    """The scalar ``quality`` (see the module docstring); a missing margin, reliability or
    face_parts is 0."""
    margin = terms.get("consensus_margin")
    rel = terms.get("head_frame_reliability")
    parts = terms.get("face_parts")
    ign = terms.get("ignore_fraction") or 0.0
    margin = 0.0 if margin is None else float(margin)
    rel = 0.0 if rel is None else float(rel)
    parts = 0.0 if parts is None else float(parts)
    return round(rel * margin * (1.0 - float(ign)) * parts, 4)
