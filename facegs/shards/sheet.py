"""A contact sheet of a dataset's samples spread over yaw, labels overlaid (``facegs dataset sheet``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from facegs.core.imageio import encode_rgb
from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.core.viz import caption, fit_tile, legend_strip, overlay
from facegs.shards.stream import ShardDataset


def shard_contact_sheet(root_url: str, max_samples: int = 24, tile: int = 128, cols: int | None = None,
                        storage_options: dict | None = None, alpha: float = 0.5) -> np.ndarray:
    """Grid of dataset samples (a facegs shard root): each cell is the RGB beside its label overlay
    with the ignore mask hatched in grey, captioned with key, yaw and pitch. Samples are spread
    evenly over yaw (sorted), so extreme poses are always shown. Returns [H, W, 3] uint8 RGB."""

    if max_samples < 1 or tile < 16:
        raise ValueError("max_samples must be >= 1 and tile >= 16")
    samples = sorted(ShardDataset(root_url, storage_options=storage_options),
                     key=lambda s: (float(s["meta"]["yaw"]), s["__key__"]))
    if not samples:
        raise ValueError(f"dataset {root_url} has no samples")
    idx = np.unique(np.linspace(0, len(samples) - 1, min(max_samples, len(samples))).round().astype(int))
    chosen = [samples[i] for i in idx]
    n = len(chosen)
    cols = cols or max(1, math.ceil(math.sqrt(n / 2)))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * tile, cols * 2 * tile, 3), dtype=np.uint8)
    present: set[int] = set()
    ls = get_label_set(chosen[0]["meta"]["label_set"])
    for k, s in enumerate(chosen):
        seg = s["seg"].copy()
        present.update(np.unique(seg[seg != IGNORE_INDEX]).tolist())
        ov = overlay(s["rgb"], seg, ls, alpha)
        hatch = s["ignore"] & ((np.add.outer(np.arange(seg.shape[0]), np.arange(seg.shape[1])) // 3) % 2 == 0)
        ov[hatch] = 128
        left, right = fit_tile(s["rgb"], tile), fit_tile(ov, tile)
        m = s["meta"]
        caption(left, s["__key__"])
        caption(right, f"y{m['yaw']:+.0f} p{m['pitch']:+.0f}")
        r, c = divmod(k, cols)
        sheet[r * tile:(r + 1) * tile, c * 2 * tile:(c * 2 + 1) * tile] = left
        sheet[r * tile:(r + 1) * tile, (c * 2 + 1) * tile:(c * 2 + 2) * tile] = right
    if present - {0}:
        sheet = np.concatenate([sheet, legend_strip(sorted(present - {0}), ls, sheet.shape[1], max(18, tile // 8))], axis=0)
    return sheet


def write_shard_contact_sheet(root_url: str, out_path: str | os.PathLike, **kw) -> Path:
    """Render :func:`shard_contact_sheet` (``kw`` passed on) and save it; returns the path."""
    sheet = shard_contact_sheet(root_url, **kw)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_rgb(sheet, out.suffix or ".png"))
    return out
