"""The fit's input: every view of a subject as tensors of one size (:class:`ViewData`).

In: a :class:`facegs.core.manifest.SubjectManifest` (images, masks or alpha, ground truth) and the
initial labels, either in memory (:class:`facegs.label.views.ViewLabels` per view, from the
labelling stage) or named by the manifest (``labels``/``confidence`` files). Out: :class:`ViewData`
on the fit device: images channels-last in [0, 1], labels in the canonical set (255 = ignore),
OpenCV ``viewmats`` (world-to-camera) and ``Ks`` scaled to the fit size (pixel centres at +0.5, so
resizing by ``s`` is ``K -> diag(s_x, s_y, 1) K`` exactly).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from facegs.core.errors import InputError
from facegs.core.imageio import read_confidence, read_labels, read_mask, read_rgb
from facegs.core.labels import CANONICAL, IGNORE_INDEX, remap
from facegs.core.manifest import SubjectManifest, View
from facegs.label.views import ViewLabels


@dataclass
class ViewData:
    """All views of a subject, resized to one size, as tensors on the fit device.

    images [V, H, W, 3] float; labels [V, H, W] int64 (canonical set, 255 = ignore) or None;
    confidence [V, H, W] float or None; masks [V, H, W] float in [0, 1] or None; gt_labels like
    labels or None; weights [V]; viewmats [V, 4, 4]; Ks [V, 3, 3] (already scaled to H x W);
    has_mask [V] bool: which views brought a mask or an alpha channel (the others' ``masks`` are
    all ones), None when every view did or none did.
    """

    view_ids: list[str]
    images: Tensor
    labels: Tensor | None
    confidence: Tensor | None
    masks: Tensor | None
    gt_labels: Tensor | None
    weights: Tensor
    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int
    has_mask: Tensor | None = None

    def __len__(self) -> int:
        return len(self.view_ids)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    return cv2.resize(arr, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _read_alpha(path) -> np.ndarray | None:
    """[H, W] float alpha of an RGBA/LA image file, else None."""
    with Image.open(path) as im:
        if im.mode not in ("RGBA", "LA"):
            return None
        return np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0


def _to_canonical(labels: np.ndarray, label_set: str) -> np.ndarray:
    return labels if label_set == CANONICAL else remap(labels, label_set, CANONICAL)


def load_view_data(manifest: SubjectManifest, views: Sequence[str] | None = None, downscale: float = 1.0,
                   device: str | torch.device = "cpu", labels: Mapping[str, ViewLabels] | None = None) -> ViewData:
    """Read the images, labels, confidences, masks (or alpha) of the chosen views.

    Every view is resized to ``round(W0 / downscale) x round(H0 / downscale)`` of the FIRST view
    (area filter; nearest for label maps) and its K scaled by ``diag(s_x, s_y, 1)``. Label maps are
    mapped to the canonical set. Views lacking labels (while others have them) get all-ignore maps.
    ``labels``: in-memory initial labels per view id (canonical); when given, the manifest's
    ``labels``/``confidence`` files are not read.
    """
    vs = list(manifest.views) if views is None else [manifest.view(v) for v in views]
    if not vs:
        raise InputError("no views to fit", subject=manifest.subject_id)
    W, H = max(1, round(vs[0].width / downscale)), max(1, round(vs[0].height / downscale))
    cols: dict[str, list] = {k: [] for k in ("img", "lab", "conf", "mask", "gt", "K", "w2c", "w")}
    for v in vs:
        try:
            _load_one(manifest, v, (W, H), cols, None if labels is None else labels[v.view_id])
        except InputError as e:
            raise e.with_context(subject=manifest.subject_id, view=v.view_id) from None

    def stack(key, dtype, fill=None):
        items = cols[key]
        if all(x is None for x in items):
            return None
        items = [fill if x is None else x for x in items]
        return torch.from_numpy(np.stack(items)).to(device=device, dtype=dtype)

    ign = np.full((H, W), IGNORE_INDEX, np.uint8)
    with_mask = [m is not None for m in cols["mask"]]
    return ViewData(
        view_ids=[v.view_id for v in vs],
        images=stack("img", torch.float32),
        labels=stack("lab", torch.int64, ign),
        confidence=stack("conf", torch.float32, np.ones((H, W), np.float32)),
        masks=stack("mask", torch.float32, np.ones((H, W), np.float32)),
        gt_labels=stack("gt", torch.int64, ign),
        weights=torch.tensor(cols["w"], dtype=torch.float32, device=device),
        viewmats=stack("w2c", torch.float32),
        Ks=stack("K", torch.float32),
        width=W,
        height=H,
        has_mask=torch.tensor(with_mask, device=device) if any(with_mask) and not all(with_mask) else None,
    )


def _load_one(manifest: SubjectManifest, v: View, size: tuple[int, int], cols: dict[str, list],
              given: ViewLabels | None) -> None:
    W, H = size
    if v.distortion is not None and np.any(np.abs(v.distortion) > 1e-9):
        warnings.warn(f"view '{v.view_id}' has lens distortion: the fit assumes undistorted images", stacklevel=3)
    img = read_rgb(manifest.path(v.image))
    h0, w0 = img.shape[:2]
    cols["img"].append(_resize(img, size).astype(np.float32) / 255.0)
    if given is not None:
        lab, conf = given.labels, given.confidence
    else:
        lab = None if v.labels is None else _to_canonical(read_labels(manifest.path(v.labels)), manifest.label_set)
        conf = None if v.confidence is None else read_confidence(manifest.path(v.confidence))
    cols["lab"].append(None if lab is None else _resize(lab, size, nearest=True))
    cols["conf"].append(None if conf is None else _resize(conf, size))
    if v.mask is not None:
        m = read_mask(manifest.path(v.mask)).astype(np.float32)
    else:
        m = _read_alpha(manifest.path(v.image))
    cols["mask"].append(None if m is None else _resize(m, size))
    gt = None if v.gt_labels is None else _to_canonical(read_labels(manifest.path(v.gt_labels)), manifest.label_set)
    cols["gt"].append(None if gt is None else _resize(gt, size, nearest=True))
    K = np.asarray(v.K, dtype=np.float64).copy()
    K[0] *= W / w0
    K[1] *= H / h0
    cols["K"].append(K)
    cols["w2c"].append(np.asarray(v.world_to_camera, dtype=np.float64))
    cols["w"].append(float(v.weight))


def scene_scale(viewmats: Tensor) -> float:
    """gsplat/3DGS scene extent: 1.1 x the largest distance of a camera centre from their mean."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    centers = -torch.einsum("cji,cj->ci", R, t)
    return 1.1 * float((centers - centers.mean(0)).norm(dim=-1).max().clamp_min(1e-6))
