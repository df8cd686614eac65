"""Mixing an original labelled set into fine-tuning: folders of labelled images, and an exact-ratio mix.

In: a CelebAMask-HQ-style folder (``images/`` + ``labels/`` in a declared label set) or facegs
subject directories. Out: :class:`MixedIterable`, which interleaves shard samples and labelled
items at exactly ``ratio`` per epoch (deterministic per seed, epoch and rank).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from facegs.core.errors import InputError
from facegs.core.imageio import read_labels, read_rgb
from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.shards.stages import per_worker_count
from facegs.shards.stream import default_rank_world
from facegs.train.data import collect_views

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class LabelledItem:
    """One labelled image of the original data set. ``image``/``labels`` are local paths."""

    key: str
    image: str
    labels: str
    label_set: str
    yaw: float = float("nan")
    pitch: float = float("nan")


def _is_image_dir(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def scan_labelled_dir(root: str | os.PathLike, label_set: str | None = None,
                      label_field: str = "gt_labels") -> list[LabelledItem]:
    """List the labelled images under ``root`` (sorted by key).

    Two layouts:

    - CelebAMask-HQ style: ``root/images/<stem>.jpg|jpeg|png`` and ``root/labels/<stem>.png``
      (8-bit grayscale or palette PNG of class indices in ``label_set``, which must be given).
      Images without a label map are skipped; a label map without an image is an error.
    - facegs subject directories (``subject.json`` at or below ``root``): every view with a
      ``label_field`` map (:func:`facegs.train.data.collect_views`); the label set comes from each
      manifest, and a declared ``label_set`` that differs is an error.

    Raises :class:`InputError` (no such directory, no labelled image, mismatched files) and
    ``KeyError`` for an unknown label set.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise InputError("labelled data directory does not exist", path=str(rootp))
    if _is_image_dir(rootp):
        if label_set is None:
            raise InputError("an images/ + labels/ directory needs its label set declared (e.g. celebamask_hq)",
                             field="label_set", path=str(rootp))
        get_label_set(label_set)
        images = {p.stem: p for p in sorted((rootp / "images").iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        labels = {p.stem: p for p in sorted((rootp / "labels").iterdir()) if p.suffix.lower() == ".png"}
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise InputError(f"{len(orphans)} label maps have no image (first: {orphans[0]}.png)",
                             field="images", path=str(rootp / "images"))
        items = [LabelledItem(s, str(images[s]), str(labels[s]), label_set) for s in sorted(labels)]
    else:
        views = collect_views([rootp], label_field=label_field)
        wrong = sorted({v.label_set for v in views} - {label_set}) if label_set is not None else []
        if wrong:
            raise InputError(f"label set '{label_set}' declared but the subject manifests say {wrong}",
                             field="label_set", path=str(rootp))
        items = [LabelledItem(f"{v.subject_id}/{v.view_id}", v.image, v.labels, v.label_set, v.yaw, v.pitch)
                 for v in views]
    if not items:
        raise InputError("no labelled images found (expected images/ + labels/, or subject directories)",
                         path=str(rootp))
    return items


def load_labelled_item(item: LabelledItem) -> dict[str, Any]:
    """Read one :class:`LabelledItem` as a stream-like sample (the input of :class:`ShardTrainTransform`).

    Returns ``rgb`` [H, W, 3] uint8, ``seg`` [H, W] uint8 in ``item.label_set``, ``conf`` ones,
    ``ignore`` (seg == 255), ``meta`` (label_set, yaw, pitch), ``__key__`` ``"mix/<key>"``,
    ``__source__`` ``"mix"``. When image and label map differ in size (CelebAMask-HQ: 1024 px images,
    512 px masks) the image is resized to the label map's size; different aspect ratios are an error.
    """
    rgb = read_rgb(item.image)
    seg = read_labels(item.labels)
    if rgb.shape[:2] != seg.shape:
        (h, w), (lh, lw) = rgb.shape[:2], seg.shape
        if abs(h * lw - w * lh) > max(h, w):  # aspect ratios differ by more than a pixel
            raise InputError(f"image is {w}x{h} but its label map is {lw}x{lh} (different aspect ratio)",
                             view=item.key, field="labels", path=item.labels)
        rgb = cv2.resize(rgb, (lw, lh), interpolation=cv2.INTER_AREA if h > lh else cv2.INTER_LINEAR)
    return {
        "__key__": f"mix/{item.key}",
        "__source__": "mix",
        "rgb": rgb,
        "seg": seg,
        "conf": np.ones(seg.shape, np.float32),
        "ignore": seg == IGNORE_INDEX,
        "meta": {"label_set": item.label_set, "yaw": item.yaw, "pitch": item.pitch},
    }


def mix_positions(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """[n] bool: which of ``n`` positions take a mixed-in sample.

    Stratified: position ``i`` is mixed when ``floor((i + 1) * ratio + u) > floor(i * ratio + u)``
    for one random phase ``u`` in [0, 1), so the count is ``floor(n * ratio)`` or ``ceil(n * ratio)``
    and mixed samples are spread evenly (not in bursts).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    u = float(rng.random())
    i = np.arange(n, dtype=np.float64)
    return np.floor((i + 1) * ratio + u) > np.floor(i * ratio + u)


class MixedIterable(IterableDataset):
    """Interleave a shard stream with an original labelled data set at a fixed ratio.

    Per reader (rank x DataLoader worker) and epoch, ``n`` output positions are laid out: ``n`` is
    the reader's share of the inner dataset's ``epoch_length`` when it has one (resampled shards:
    :func:`facegs.shards.stages.per_worker_count`), so the per-rank total stays exactly ``epoch_length``.
    A fraction ``ratio`` of the positions (:func:`mix_positions`) takes the next item of a
    permutation of the labelled items, the others the next shard sample. The permutation is seeded
    by ``(seed, epoch)`` and split strided over the readers, so ranks and workers draw disjoint
    labelled items while there are enough of them (a reader with none left cycles its share again;
    with fewer items than readers every reader uses all items). Without ``epoch_length`` (a finite,
    non-resampled shard stream) the output ends when the shard stream does.

    Args:
        shards: an iterable dataset of decoded stream samples (a :class:`facegs.shards.stream.ShardDataset`
            built WITHOUT ``transform``: the transform here is applied to both sources).
        items: :class:`LabelledItem` s (may be empty when ``ratio`` is 0).
        ratio: fraction of output samples from ``items``, in [0, 1).
        transform: applied to every sample of either source (typically :class:`ShardTrainTransform`).
        seed: base seed; positions are drawn from ``(seed, epoch, rank, worker, 3)``.
        rank, world_size: default: the inner dataset's, else torch.distributed / RANK / WORLD_SIZE.
    """

    def __init__(self, shards: Iterable[dict[str, Any]], items: Sequence[LabelledItem], ratio: float,
                 transform: Any = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mix ratio must be in [0, 1), got {ratio}")
        if ratio > 0 and not items:
            raise ValueError("mix ratio > 0 needs at least one labelled item")
        if getattr(shards, "transform", None) is not None:
            raise ValueError("build the shard dataset without transform; MixedIterable applies it to both sources")
        self.shards, self.items, self.ratio = shards, list(items), float(ratio)
        self.transform, self.seed = transform, int(seed)
        self.rank = rank if rank is not None else getattr(shards, "rank", None)
        self.world_size = world_size if world_size is not None else getattr(shards, "world_size", None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for the mix positions, the inner dataset and the transform."""
        self.epoch = int(epoch)
        for obj in (self.shards, self.transform):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.shards)  # type: ignore[arg-type]

    def _rank_world(self) -> tuple[int, int]:
        r, w = default_rank_world()
        return (self.rank if self.rank is not None else r), (self.world_size if self.world_size is not None else w)

    def _mix_share(self, reader: int, readers: int) -> list[int]:
        if not self.items:
            return []
        perm = np.random.default_rng([self.seed, self.epoch, 4]).permutation(len(self.items))
        share = perm[reader::readers] if len(self.items) >= readers else perm
        return [int(i) for i in share]

    def __iter__(self) -> Iterator[Any]:
        rank, world = self._rank_world()
        wi = get_worker_info()
        worker, num_workers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        length = getattr(self.shards, "epoch_length", None)
        n = per_worker_count(length, worker, num_workers) if length is not None else None
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 3])
        share = self._mix_share(rank * num_workers + worker, world * num_workers)
        stream = iter(self.shards)
        # positions: a fixed-length layout, or (finite stream) an unbounded one cut when shards end
        layout = mix_positions(n, self.ratio, rng) if n is not None else None
        i = j = 0
        while n is None or i < n:
            if layout is not None:
                take_mix = bool(layout[i])
            else:  # same stratified rule, one position at a time
                take_mix = math.floor((i + 1) * self.ratio + 0.5) > math.floor(i * self.ratio + 0.5)
            if take_mix and share:
                sample = load_labelled_item(self.items[share[j % len(share)]])
                j += 1
            else:
                try:
                    sample = next(stream)
                except StopIteration:
                    return
            yield self.transform(sample) if self.transform is not None else sample
            i += 1
