"""Labelled views as PyTorch datasets, read from subject manifests.

A :class:`ViewItem` is one (image, label map) pair with its head-relative pose; a
:class:`ParsingDataset` turns a list of them into training tensors:
``image`` [3, S, S] float32 (ImageNet-normalised RGB), ``labels`` [S, S] int64 (255 = ignore),
``yaw``/``pitch`` floats. Augmentation is seeded per (seed, epoch, index), so a run is repeatable
whatever the number of loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from facegs.core.errors import InputError
from facegs.core.imageio import read_labels, read_rgb
from facegs.core.labels import CANONICAL, remap
from facegs.core.manifest import find_subject_dirs, load_manifest
from facegs.parser.normalize import normalize_rgb
from facegs.train.augment import AugmentConfig, augment, resize_pair


@dataclass(frozen=True)
class ViewItem:
    """One labelled view. Paths are absolute; ``label_set`` names the label map's classes."""

    subject_id: str
    view_id: str
    image: str
    labels: str
    label_set: str
    yaw: float
    pitch: float


def collect_views(
    roots: Iterable[str | os.PathLike],
    label_field: str = "gt_labels",
    max_abs_yaw: float | None = None,
    max_abs_pitch: float | None = None,
) -> list[ViewItem]:
    """All views with a ``label_field`` map under the given subject directories or trees.

    ``max_abs_yaw`` / ``max_abs_pitch`` (degrees) keep only views within that pose range (the
    near-frontal bias of CelebAMask-HQ is |yaw| <= 30, |pitch| <= 15). Views without a known pose
    are kept only when no pose filter is given.
    """
    items: list[ViewItem] = []
    for root in roots:
        for sd in find_subject_dirs(root):
            m = load_manifest(sd)
            for v in m.views:
                rel = getattr(v, label_field)
                if rel is None:
                    raise InputError(f"view has no '{label_field}' map", subject=m.subject_id, view=v.view_id,
                                     field=label_field, path=str(m.path("subject.json")))
                if (max_abs_yaw is not None or max_abs_pitch is not None) and v.pose is None:
                    continue
                yaw = float("nan") if v.pose is None else v.pose["yaw"]
                pitch = float("nan") if v.pose is None else v.pose["pitch"]
                if max_abs_yaw is not None and abs(yaw) > max_abs_yaw:
                    continue
                if max_abs_pitch is not None and abs(pitch) > max_abs_pitch:
                    continue
                items.append(ViewItem(m.subject_id, v.view_id, str(m.path(v.image)), str(m.path(rel)),
                                      m.label_set, yaw, pitch))
    return items


def to_tensor_image(rgb: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 RGB -> [3, H, W] float32, ImageNet-normalised (BiSeNet's input)."""
    return normalize_rgb(torch.from_numpy(np.ascontiguousarray(rgb))[None], channels_last=True)[0]


class ParsingDataset(Dataset):
    """Map-style dataset over :class:`ViewItem` s with optional augmentation.

    ``__getitem__`` returns a dict: ``image`` [3, S, S] float32, ``labels`` [S, S] int64 in the
    canonical set, ``yaw``, ``pitch``, ``index``. Without ``augment_cfg`` images are resized to
    ``size`` deterministically (evaluation).
    """

    def __init__(
        self,
        items: Sequence[ViewItem],
        size: int,
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
        target_label_set: str = CANONICAL,
    ) -> None:
        self.items = list(items)
        self.size = size
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0
        self.target_label_set = target_label_set

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        it = self.items[i]
        rgb = read_rgb(it.image)
        lab = read_labels(it.labels)
        if lab.shape != rgb.shape[:2]:
            raise InputError(f"label map is {lab.shape[1]}x{lab.shape[0]} but the image is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}", subject=it.subject_id, view=it.view_id,
                             field="labels", path=it.labels)
        if it.label_set != self.target_label_set:
            lab = remap(lab, it.label_set, self.target_label_set)
        return rgb, lab

    def __getitem__(self, i: int) -> dict:
        rgb, lab = self.load(i)
        if self.augment_cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            rgb, lab = augment(rgb, lab, rng, self.augment_cfg, self.target_label_set)
        else:
            rgb, lab = resize_pair(rgb, lab, self.size)
        it = self.items[i]
        return {
            "image": to_tensor_image(rgb),
            "labels": torch.from_numpy(lab.astype(np.int64)),
            "yaw": float(it.yaw),
            "pitch": float(it.pitch),
            "index": i,
        }
