"""Training batches for parser fine-tuning from facegs shards (plus, optionally, original labelled data).

No Ray here: :mod:`ray_jobs.finetune` builds on these pieces, and they run as well in one process.

Pieces:

- :class:`ShardTrainTransform`: a decoded stream sample (:mod:`facegs.shards.stream`) -> a training sample
  ``{"image" [3, S, S] float32 ImageNet-normalised, "labels" [S, S] int64 (255 = ignore), "weight"
  [S, S] float32 (only with ``use_confidence``), "yaw", "pitch" (float, degrees; NaN if unknown),
  "key" (str), "source" ("shard" | "mix")}``. Augmentation (the scale/rotate/crop, colour jitter and
  left/right-aware flip of :func:`facegs.train.augment.augment`) draws from a generator seeded by
  ``(seed, epoch, key)``: the same sample in the same epoch gets the same augmentation in any process,
  DataLoader worker or rank, and a different one after :meth:`ShardTrainTransform.set_epoch`.
  Optional background replacement (:mod:`facegs.train.backgrounds`) for shard samples, drawn
  from ``(seed, epoch, key, 5)``, before the geometric augmentation.
  (With resampled shards a key drawn twice in one epoch is augmented the same way twice.)
- :class:`LabelledItem`, :func:`scan_labelled_dir`, :func:`load_labelled_item`: the "original"
  labelled data set, either a CelebAMask-HQ style directory (``images/*.jpg|png`` and ``labels/*.png``
  matched by file stem, the label maps in a declared label set) or facegs subject directories
  (:func:`facegs.train.data.collect_views`, label set from each subject manifest). Labels are
  remapped to the training label set (canonical ``celebamask19`` by default) through
  :func:`facegs.core.labels.mapping_lut`, so classes the source lacks never silently become background.
- :class:`MixedIterable`: an ``IterableDataset`` interleaving the shard stream with the labelled
  items at a fixed ratio (deterministic, seeded; exact to within one sample per reader).
- :func:`make_train_loader`, :func:`collate_train`: the DataLoader (``drop_last=True``: BatchNorm
  on the global-average branch cannot train on a batch of one).

Equal counts for DDP: with a resampled :class:`facegs.shards.stream.ShardDataset` (``epoch_length=N``) a
:class:`MixedIterable` yields exactly ``N`` samples per rank per epoch (a mixed position replaces a
shard sample instead of adding one), so every rank runs :func:`batches_per_epoch` steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from facegs.core.errors import InputError
from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set, mapping_lut
from facegs.shards.stages import per_worker_count
from facegs.train.augment import AugmentConfig, augment, color_jitter, hflip, random_affine, resize_pair
from facegs.train.backgrounds import BackgroundConfig, BackgroundSampler, composite
from facegs.train.data import to_tensor_image


def key_seed(key: str) -> int:
    """A stable 63-bit integer from a sample key (SHA-256; Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") >> 1


class ShardTrainTransform:
    """Callable: decoded stream sample -> training sample (see the module docstring for the output).

    Input: a dict as :mod:`facegs.shards.stream` yields it: ``rgb`` [H, W, 3] uint8, ``seg`` [H, W] uint8 in
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
            ``background.prob`` (:mod:`facegs.train.backgrounds`; the sample's ``alpha`` when the
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
        # Same draws, in the same order, as facegs.train.augment.augment; the confidence map rides
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
    return cfg if cfg.out_size == size else replace(cfg, out_size=size)


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
