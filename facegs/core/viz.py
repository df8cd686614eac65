"""Contact sheets: a grid of a subject's views with a semi-transparent label overlay.

Each tile shows the view's RGB with its label map blended on top (palette of the manifest's label
set; background left untinted), captioned with the view id and its head-relative yaw / pitch
(degrees, :mod:`facegs.core.cameras` conventions: yaw +90 = camera on the subject's left). A legend of
the classes present runs along the bottom. Images are [H, W, 3] uint8 RGB.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from facegs.core.imageio import encode_rgb, read_labels, read_rgb
from facegs.core.labels import IGNORE_INDEX, LabelSet, get_label_set
from facegs.core.manifest import SubjectManifest, View, load_manifest

LABEL_FIELDS = ("gt_labels", "labels")


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay(rgb: np.ndarray, labels: np.ndarray, label_set: LabelSet | str = "celebamask19", alpha: float = 0.5) -> np.ndarray:
    """Blend palette colours of ``labels`` [H, W] uint8 over ``rgb`` [H, W, 3] uint8.

    Background (class 0) is left as is; ignore (255) is tinted white. Returns [H, W, 3] uint8.
    """
    rgb = np.asarray(rgb)
    labels = np.asarray(labels)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"rgb {list(rgb.shape)} and labels {list(labels.shape)} differ in size")
    ls = get_label_set(label_set) if isinstance(label_set, str) else label_set
    col = ls.colorize(labels).astype(np.float32)
    a = np.where((labels != 0)[..., None], float(alpha), 0.0).astype(np.float32)
    out = rgb.astype(np.float32) * (1.0 - a) + col * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fit_tile(img: np.ndarray, tile: int, nearest: bool = False) -> np.ndarray:
    """Resize keeping the aspect ratio and pad to ``tile`` x ``tile`` (black)."""
    h, w = img.shape[:2]
    s = tile / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)
    out = np.zeros((tile, tile) + img.shape[2:], dtype=img.dtype)
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = r
    return out


def caption(img: np.ndarray, text: str) -> None:
    scale = max(0.3, img.shape[1] / 480.0)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.rectangle(img, (0, 0), (min(img.shape[1], tw + 6), th + base + 4), (0, 0, 0), -1)
    cv2.putText(img, text, (3, th + 2), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _select(views: tuple[View, ...], max_views: int) -> list[View]:
    if len(views) <= max_views:
        return list(views)
    idx = np.unique(np.round(np.linspace(0, len(views) - 1, max_views)).astype(int))
    return [views[i] for i in idx]


def legend_strip(classes: list[int], ls: LabelSet, width: int, row_h: int) -> np.ndarray:
    scale = max(0.35, row_h / 40.0)
    items = []
    for c in classes:
        name = ls.classes[c] if c < ls.num_classes else ("ignore" if c == IGNORE_INDEX else str(c))
        (tw, _), _ = cv2.getTextSize(name, _FONT, scale, 1)
        items.append((c, name, row_h + 6 + tw + 12))
    rows, cur, x = [], [], 0
    for it in items:
        if cur and x + it[2] > width:
            rows.append(cur)
            cur, x = [], 0
        cur.append(it)
        x += it[2]
    if cur:
        rows.append(cur)
    out = np.full((max(1, len(rows)) * row_h, width, 3), 32, dtype=np.uint8)
    pal = np.full((256, 3), 255, dtype=np.uint8)
    pal[: ls.num_classes] = ls.palette
    for r, row in enumerate(rows):
        x = 4
        for c, name, w in row:
            y0 = r * row_h
            cv2.rectangle(out, (x, y0 + 4), (x + row_h - 8, y0 + row_h - 4), tuple(int(v) for v in pal[c]), -1)
            cv2.putText(out, name, (x + row_h - 2, y0 + row_h - 8), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
            x += w
    return out


def contact_sheet(
    manifest: SubjectManifest | str | os.PathLike,
    label_field: str = "gt_labels",
    max_views: int = 48,
    tile: int = 192,
    cols: int | None = None,
    alpha: float = 0.5,
    legend: bool = True,
) -> np.ndarray:
    """Grid of up to ``max_views`` views (evenly spaced in manifest order) -> [H, W, 3] uint8 RGB.

    ``manifest``: a :class:`SubjectManifest` (with ``root``) or a subject directory.
    ``label_field``: ``gt_labels`` (ground truth) or ``labels`` (e.g. a parser's prediction); a view
    without that field is shown unlabelled. ``cols`` defaults to ``ceil(sqrt(n))``.
    """
    m = manifest if isinstance(manifest, SubjectManifest) else load_manifest(manifest)
    if label_field not in LABEL_FIELDS:
        raise ValueError(f"label_field must be one of {LABEL_FIELDS}, got '{label_field}'")
    if max_views < 1 or tile < 16:
        raise ValueError("max_views must be >= 1 and tile >= 16")
    ls = get_label_set(m.label_set)
    views = _select(m.views, max_views)
    n = len(views)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    present: set[int] = set()
    for k, v in enumerate(views):
        rgb = read_rgb(m.path(v.image))
        rel = getattr(v, label_field)
        if rel is not None:
            lab = read_labels(m.path(rel))
            present.update(np.unique(lab).tolist())
            img = fit_tile(overlay(rgb, lab, ls, alpha), tile)
        else:
            img = fit_tile(rgb, tile)
        text = v.view_id
        if v.pose is not None:
            text += f" y{v.pose['yaw']:+.0f} p{v.pose['pitch']:+.0f}"
        caption(img, text)
        r, c = divmod(k, cols)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = img
    if legend and present:
        sheet = np.concatenate([sheet, legend_strip(sorted(present - {0}), ls, sheet.shape[1], max(18, tile // 8))], axis=0)
    return sheet


def write_contact_sheet(manifest: SubjectManifest | str | os.PathLike, out_path: str | os.PathLike, **kw) -> Path:
    """Render :func:`contact_sheet` (``kw`` passed on) and save it as PNG or JPEG; returns the path."""
    sheet = contact_sheet(manifest, **kw)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_rgb(sheet, out.suffix or ".png"))
    return out
