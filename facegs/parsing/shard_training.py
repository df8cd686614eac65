"""Training batches for parser fine-tuning from facegs shards (plus, optionally, original labelled data).

No Ray here: :mod:`ray_jobs.finetune` builds on these pieces, and they run as well in one process.

Pieces:

- :class:`ShardTrainTransform`: a decoded stream sample (:mod:`facegs.stream`) -> a training sample
  ``{"image" [3, S, S] float32 ImageNet-normalised, "labels" [S, S] int64 (255 = ignore), "weight"
  [S, S] float32 (only with ``use_confidence``), "yaw", "pitch" (float, degrees; NaN if unknown),
  "key" (str), "source" ("shard" | "mix")}``. Augmentation (the scale/rotate/crop, colour jitter and
  left/right-aware flip of :func:`facegs.parsing.augment.augment`) draws from a generator seeded by
  ``(seed, epoch, key)``: the same sample in the same epoch gets the same augmentation in any process,
  DataLoader worker or rank, and a different one after :meth:`ShardTrainTransform.set_epoch`.
  Optional background replacement (:mod:`facegs.parsing.backgrounds`) for shard samples, drawn
  from ``(seed, epoch, key, 5)``, before the geometric augmentation.
  (With resampled shards a key drawn twice in one epoch is augmented the same way twice.)
- :class:`LabelledItem`, :func:`scan_labelled_dir`, :func:`load_labelled_item`: the "original"
  labelled data set, either a CelebAMask-HQ style directory (``images/*.jpg|png`` and ``labels/*.png``
  matched by file stem, the label maps in a declared label set) or facegs subject directories
  (:func:`facegs.parsing.data.collect_views`, label set from each subject manifest). Labels are
  remapped to the training label set (canonical ``celebamask19`` by default) through
  :func:`facegs.labels.mapping_lut`, so classes the source lacks never silently become background.
- :class:`MixedIterable`: an ``IterableDataset`` interleaving the shard stream with the labelled
  items at a fixed ratio (deterministic, seeded; exact to within one sample per reader).
- :func:`make_train_loader`, :func:`collate_train`: the DataLoader (``drop_last=True``: BatchNorm
  on the global-average branch cannot train on a batch of one).

Equal counts for DDP: with a resampled :class:`facegs.stream.ShardDataset` (``epoch_length=N``) a
:class:`MixedIterable` yields exactly ``N`` samples per rank per epoch (a mixed position replaces a
shard sample instead of adding one), so every rank runs :func:`batches_per_epoch` steps.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from facegs.errors import InputError
from facegs.imageio import read_labels, read_rgb
from facegs.labels import CANONICAL, IGNORE_INDEX, get_label_set, mapping_lut
from facegs.parsing.augment import AugmentConfig, augment, color_jitter, hflip, random_affine, resize_pair
from facegs.parsing.backgrounds import BackgroundConfig, BackgroundSampler, composite
from facegs.parsing.data import collect_views, to_tensor_image
from facegs.stream import default_rank_world, per_worker_count

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def key_seed(key: str) -> int:
    """A stable 63-bit integer from a sample key (SHA-256; Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# stream sample -> training sample
# ----------------------------------------------------------------------------------------------


class ShardTrainTransform:
    """Callable: decoded stream sample -> training sample (see the module docstring for the output).

    Input: a dict as :mod:`facegs.stream` yields it: ``rgb`` [H, W, 3] uint8, ``seg`` [H, W] uint8 in
    ``meta["label_set"]`` (255 = ignore), ``conf`` [H, W] float32 in [0, 1], ``ignore`` [H, W] bool,
    ``meta`` (``yaw``, ``pitch``, ``label_set``), ``__key__``.

    Args:
        size: output side ``S`` (square). With ``augment_cfg`` its ``out_size`` is replaced by ``size``.
        augment_cfg: training augmentation, or ``None`` for a deterministic resize to ``S`` x ``S``.
        seed: base seed; the generator of one sample is seeded by ``(seed, epoch, key_seed(key))``.
        use_confidence: also return ``weight`` [S, S] float32: the sample's ``conf`` map, warped with
            the image (bilinear; 0 where the crop leaves the source). Mixed-in labelled samples get 1.
        ignore_to_255: set ``labels`` to 255 where ``ignore`` is True (before any warp, so that the
            ignore region moves with the image). False keeps the labels as stored.
        label_set: the label set of the returned ``labels``; samples in another set are remapped.
        background: replace the background of shard samples (not mixed-in ones) with probability
            ``background.prob`` (:mod:`facegs.parsing.backgrounds`; the sample's ``alpha`` when the
            shard has it, else its background-class pixels), drawn from ``(seed, epoch, key, 5)``.
    """

    def __init__(self, size: int, augment_cfg: AugmentConfig | None = None, seed: int = 0,
                 use_confidence: bool = False, ignore_to_255: bool = True, label_set: str = CANONICAL,
                 background: BackgroundConfig | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        get_label_set(label_set)  # unknown names raise KeyError listing the known ones
        self.size = int(size)
        self.augment_cfg = None if augment_cfg is None else _with_out_size(augment_cfg, self.size)
        self.seed = int(seed)
        self.use_confidence = bool(use_confidence)
        self.ignore_to_255 = bool(ignore_to_255)
        self.label_set = label_set
        self._bg_sampler = BackgroundSampler(background) if background is not None and background.prob > 0 else None
        self._bg_class = get_label_set(label_set).index("background") if self._bg_sampler is not None else 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds every sample's augmentation."""
        self.epoch = int(epoch)

    def rng_for(self, key: str) -> np.random.Generator:
        """The generator one sample's augmentation draws from."""
        return np.random.default_rng([self.seed, self.epoch, key_seed(key)])

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = str(sample["__key__"])
        meta = sample.get("meta") or {}
        rgb = np.asarray(sample["rgb"])
        seg = np.asarray(sample["seg"], dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or seg.shape != rgb.shape[:2]:
            raise InputError(f"expected rgb [H, W, 3] uint8 and seg [H, W], got {rgb.dtype} {list(rgb.shape)} "
                             f"and {list(seg.shape)}", view=key, field="rgb")
        src = meta.get("label_set", CANONICAL)
        if src != self.label_set:
            seg = mapping_lut(src, self.label_set)[seg]
        if self._bg_sampler is not None and sample.get("__source__", "shard") != "mix":
            rgb = self._replace_background(rgb, seg, sample, key)
        if self.ignore_to_255 and sample.get("ignore") is not None:
            seg = np.where(np.asarray(sample["ignore"], dtype=bool), np.uint8(IGNORE_INDEX), seg)
        conf = sample.get("conf") if self.use_confidence else None
        if self.use_confidence and conf is None:
            conf = np.ones(seg.shape, np.float32)
        rgb, seg, conf = self._geometry_and_colour(rgb, seg, conf, key)
        out: dict[str, Any] = {
            "image": to_tensor_image(rgb),
            "labels": torch.from_numpy(seg.astype(np.int64)),
            "yaw": float(meta.get("yaw", float("nan"))),
            "pitch": float(meta.get("pitch", float("nan"))),
            "key": key,
            "source": str(sample.get("__source__", "shard")),
        }
        if self.use_confidence:
            out["weight"] = torch.from_numpy(np.ascontiguousarray(conf, dtype=np.float32))
        return out

    def _replace_background(self, rgb: np.ndarray, seg: np.ndarray, sample: dict[str, Any], key: str) -> np.ndarray:
        assert self._bg_sampler is not None
        rng = np.random.default_rng([self.seed, self.epoch, key_seed(key), 5])
        if rng.random() >= self._bg_sampler.cfg.prob:
            return rgb
        bg = self._bg_sampler.draw(rgb.shape[0], rgb.shape[1], rng)
        return composite(rgb, bg, alpha=sample.get("alpha"), seg=seg, ignore=sample.get("ignore"),
                         background_class=self._bg_class)

    def _geometry_and_colour(self, rgb: np.ndarray, seg: np.ndarray, conf: np.ndarray | None,
                             key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cfg = self.augment_cfg
        if cfg is None:
            rgb2, seg2 = resize_pair(rgb, seg, self.size)
            if conf is not None and conf.shape != (self.size, self.size):
                conf = cv2.resize(np.asarray(conf, np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            return rgb2, seg2, conf
        rng = self.rng_for(key)
        if conf is None:
            rgb2, seg2 = augment(rgb, seg, rng, cfg, self.label_set)
            return rgb2, seg2, None
        # Same draws, in the same order, as facegs.parsing.augment.augment; the confidence map rides
        # along as a 4th image channel so that it gets exactly the image's warp.
        conf8 = np.clip(np.asarray(conf, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgba, seg2 = random_affine(np.dstack([rgb, conf8]), seg, rng, cfg)
        rgb2, conf2 = np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].astype(np.float32) / np.float32(255.0)
        rgb2 = color_jitter(rgb2, rng, cfg)
        if rng.random() < cfg.flip_prob:
            rgb2, seg2 = hflip(rgb2, seg2, self.label_set)
            conf2 = np.ascontiguousarray(conf2[:, ::-1])
        return rgb2, seg2, conf2


def _with_out_size(cfg: AugmentConfig, size: int) -> AugmentConfig:
    from dataclasses import replace

    return cfg if cfg.out_size == size else replace(cfg, out_size=size)


# ----------------------------------------------------------------------------------------------
# the original labelled data set
# ----------------------------------------------------------------------------------------------


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
      ``label_field`` map (:func:`facegs.parsing.data.collect_views`); the label set comes from each
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


# ----------------------------------------------------------------------------------------------
# mixing
# ----------------------------------------------------------------------------------------------


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
    :func:`facegs.stream.per_worker_count`), so the per-rank total stays exactly ``epoch_length``.
    A fraction ``ratio`` of the positions (:func:`mix_positions`) takes the next item of a
    permutation of the labelled items, the others the next shard sample. The permutation is seeded
    by ``(seed, epoch)`` and split strided over the readers, so ranks and workers draw disjoint
    labelled items while there are enough of them (a reader with none left cycles its share again;
    with fewer items than readers every reader uses all items). Without ``epoch_length`` (a finite,
    non-resampled shard stream) the output ends when the shard stream does.

    Args:
        shards: an iterable dataset of decoded stream samples (a :class:`facegs.stream.ShardDataset`
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


# ----------------------------------------------------------------------------------------------
# loader
# ----------------------------------------------------------------------------------------------


def collate_train(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack training samples: ``image`` [B, 3, S, S], ``labels`` [B, S, S] int64, ``weight`` [B, S, S]
    (when present), ``yaw``/``pitch`` [B] float32 tensors; ``key`` and ``source`` lists of str."""
    out: dict[str, Any] = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], float):
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = list(vals)
    return out


def batches_per_epoch(epoch_length: int, batch_size: int, num_workers: int) -> int:
    """Batches one rank's DataLoader gives per epoch (``drop_last=True``; each worker batches its own
    share of ``epoch_length``). Equal on every rank, so DDP never waits on a missing step."""
    w = max(1, num_workers)
    return sum(per_worker_count(epoch_length, i, w) // batch_size for i in range(w))


def make_train_loader(dataset: IterableDataset, batch_size: int, num_workers: int = 0,
                      pin_memory: bool = False, prefetch_factor: int | None = None,
                      mp_context: str | None = "forkserver") -> DataLoader:
    """DataLoader over an iterable training dataset (``ShardDataset`` + transform, or :class:`MixedIterable`).

    ``drop_last=True`` (see :func:`batches_per_epoch`); no persistent workers, so that
    ``dataset.set_epoch(e)`` before each ``iter(loader)`` reaches the worker processes.
    Worker processes start from a fork server by default: forking a process that already runs
    threads (Ray's, fsspec's async I/O loop for S3, OpenMP) can deadlock the child — seen in the
    test suite after S3 tests had started fsspec's loop. ``mp_context=None`` uses torch's default.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kw: dict[str, Any] = {}
    if num_workers > 0 and prefetch_factor is not None:
        kw["prefetch_factor"] = prefetch_factor
    if num_workers > 0 and mp_context is not None:
        kw["multiprocessing_context"] = mp_context
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_train,
                      drop_last=True, pin_memory=pin_memory, worker_init_fn=_worker_init if num_workers else None,
                      **kw)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


__all__ = [
    "LabelledItem", "MixedIterable", "ShardTrainTransform", "batches_per_epoch", "collate_train", "key_seed",
    "load_labelled_item", "make_train_loader", "mix_positions", "scan_labelled_dir",
]
