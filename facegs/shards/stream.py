"""Reading facegs shards for training: a torch ``IterableDataset`` built from small generator stages.

Shards are opened with fsspec (local, ``s3://``, ``memory://``, ...) as file objects and read
sequentially; there is no ``gopen`` and never a ``pipe:`` URL. Every tar member is checked by
:mod:`facegs.shards.tarsafe` (no absolute paths, no ``..``, no links or devices, no oversized members).

What a reader trusts: the shard paths (from the manifest or given) are relative paths inside the
dataset root (``shards=['../x']`` is refused); with ``verify=True`` (the default) every shard must
be a row of ``manifest.parquet``, no sample key may appear in two rows, and each shard is checked
against its row while it streams (sha256, bytes and sample count, :mod:`facegs.shards.integrity`);
every sample's metadata, label values and image sizes are checked as it is decoded
(:func:`facegs.shards.stages.decode_sample`, images over ``max_pixels`` refused from their header).

A decoded sample is a dict:

- ``__key__`` (str), ``__shard__`` (shard path relative to the root),
- ``rgb``: [H, W, 3] uint8 RGB,
- ``seg``: [H, W] uint8 class indices (the palette PNG is decoded to indices, never to colours;
  255 = ignore),
- ``conf``: [H, W] float32 in [0, 1] (8-bit quantised),
- ``ignore``: [H, W] bool (True = excluded from the loss),
- ``alpha``: [H, W] float32 in [0, 1] (8-bit quantised) when the sample has ``alpha.png``
  (renders: the subject's coverage), else ``None``,
- ``meta``: the sample's JSON metadata (``schemas/shard_sample.schema.json``),
- ``hflip``: bool, True when the sample was mirrored by :func:`random_hflip`.

Other members of a sample are ignored: nothing is ever unpickled (webdataset's own ``.decode()``
appends ``basichandlers``, which unpickle ``.pyd``/``.pkl``/``.pickle`` members: never use it on
shards you did not write).

Stages (each a generator over samples; they run on plain iterables, no tar needed):
:func:`iter_shard_members` -> :func:`group_by_key` -> (:func:`select_abs_yaw`) -> :func:`shuffle` (raw bytes) ->
:func:`decode_samples` -> :func:`random_hflip` -> :func:`remap_labels` -> ``transform``.

Splitting and epochs (:class:`ShardDataset`):

- Without resampling, the shard list (optionally shuffled with a generator seeded by
  ``(seed, epoch)``, identical on every rank) is split over ``world_size * num_workers`` readers:
  reader ``g = rank * num_workers + worker`` takes shards ``g, g + R, g + 2R, ...`` -- a disjoint,
  complete cover. Ranks may then see different numbers of samples, which hangs DDP.
- For DDP use ``resampled=True, epoch_length=N``: every rank draws shards with replacement
  (generator seeded by ``(seed, epoch, rank, worker)``) and yields exactly ``N`` samples per epoch,
  whatever the shard sizes (split over DataLoader workers as ``N // W`` plus one for the first
  ``N % W`` workers).
- The shuffle buffer and flips use generators seeded by ``(seed, epoch, rank, worker)``: the
  order is deterministic for a seed and epoch, and changes with :meth:`ShardDataset.set_epoch`.

Horizontal flip (``flip_prob``): the image, label, confidence and ignore maps are mirrored; left/
right classes are swapped with the label set's ``flip_lut`` (``l_eye`` <-> ``r_eye``, ...). The
metadata describes the mirrored image: ``yaw -> -yaw``, ``roll -> -roll``, ``K``'s ``cx -> W - cx``
and skew ``-> -skew``, ``world_to_camera -> diag(-1, 1, 1, 1) @ world_to_camera`` (a reflection,
det = -1), so projecting world points with the new ``K`` and ``world_to_camera`` lands on the
mirrored pixels. ``world_from_head`` is unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from facegs.core.errors import InputError
from facegs.core.ids import relative_path_problem
from facegs.core.labels import get_label_set
from facegs.shards.integrity import ShardExpectation, iter_verified_samples
from facegs.shards.manifest import read_manifest
from facegs.shards.root import DATASET_MANIFEST, DatasetRoot
from facegs.shards.stages import (
    DEFAULT_MAX_MEMBER_PIXELS,
    Decoded,
    RawSample,
    decode_samples,
    per_worker_count,
    random_hflip,
    remap_labels,
    select_abs_yaw,
    shuffle,
    split_shards,
)
from facegs.shards.tarsafe import DEFAULT_MAX_MEMBER_BYTES

log = logging.getLogger(__name__)


def default_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Iterable dataset over the shards of a facegs dataset root (its ``manifest.parquet``).

    Args:
        root_url: dataset root (``/data/ds``, ``s3://bucket/ds``, ``memory://ds``).
        storage_options: fsspec options (e.g. ``endpoint_url``, ``key``, ``secret``).
        shards: shard paths relative to the root; default: the manifest's shards, in manifest order.
        rank, world_size: default from torch.distributed if initialised, else RANK/WORLD_SIZE.
        shuffle_shards: shuffle the shard order per epoch (non-resampled mode).
        shuffle_buffer: sample shuffle buffer size (0 = no shuffling).
        seed: base seed; generators are seeded by (seed, epoch, rank, worker).
        resampled, epoch_length: draw shards with replacement, exactly ``epoch_length`` samples per
            rank per epoch (required together).
        flip_prob: probability of a left/right-aware horizontal flip.
        target_label_set: remap ``seg`` to this label set (e.g. ``"lapa11"``).
        transform: callable applied last to each decoded sample dict.
        abs_yaw_range: ``(lo, hi)`` degrees: only samples with ``lo <= |yaw| <= hi`` are read (e.g.
            ``(30, 90)`` to train on the extreme poses of a render set while an original labelled
            set covers frontal views). With ``resampled=True`` the ``epoch_length`` counts kept samples.
        on_error: "raise" (default) or "skip" (log and skip the rest of a bad shard, or a sample that
            fails its checks).
        verify: check every shard against its manifest row while it streams (sha256, bytes, sample
            count; see the module docstring). ``False`` reads shards the manifest does not list,
            unchecked (the per-sample checks stay on).
        max_pixels: largest image (width x height) a sample member may declare; refused from the
            header, before decoding.
    """

    def __init__(
        self,
        root_url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        shards: Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_shards: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resampled: bool = False,
        epoch_length: int | None = None,
        flip_prob: float = 0.0,
        target_label_set: str | None = None,
        transform: Callable[[Decoded], Any] | None = None,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
        on_error: Literal["raise", "skip"] = "raise",
        abs_yaw_range: tuple[float, float] | None = None,
        verify: bool = True,
        max_pixels: int = DEFAULT_MAX_MEMBER_PIXELS,
    ) -> None:
        super().__init__()
        if abs_yaw_range is not None:
            lo, hi = (float(x) for x in abs_yaw_range)
            if not (0.0 <= lo <= hi):
                raise ValueError(f"abs_yaw_range must be (lo, hi) with 0 <= lo <= hi degrees, got {abs_yaw_range}")
            abs_yaw_range = (lo, hi)
        self.abs_yaw_range = abs_yaw_range
        if resampled != (epoch_length is not None):
            raise ValueError("resampled=True needs epoch_length (samples per rank per epoch) and vice versa")
        if epoch_length is not None and epoch_length < 0:
            raise ValueError("epoch_length must be >= 0")
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        if target_label_set is not None:
            get_label_set(target_label_set)  # fail early on an unknown name
        self.root_url = root_url
        self.storage_options = dict(storage_options or {})
        self.verify, self.max_pixels = bool(verify), int(max_pixels)
        table = read_manifest(root_url, self.storage_options) if (shards is None or verify) else None
        if table is not None:
            check_manifest_table(table, root_url)
        self.shards = list(table.column("shard").to_pylist() if shards is None and table is not None else shards or [])
        for rel in self.shards:
            if (why := relative_path_problem(rel)) is not None:
                raise InputError(f"shard path {rel!r} {why}: a reader only reads shards inside its dataset root",
                                 path=root_url)
        self._expect: dict[str, ShardExpectation] = {}
        if verify and table is not None:
            rows = {r: ShardExpectation(int(n), int(b), str(h)) for r, n, b, h in zip(
                *(table.column(c).to_pylist() for c in ("shard", "num_samples", "num_bytes", "sha256")))}
            missing = [rel for rel in self.shards if rel not in rows]
            if missing:
                raise InputError(f"{len(missing)} shard(s) are not rows of {DATASET_MANIFEST}, so they cannot be verified "
                                 f"(e.g. {missing[0]!r}); pass verify=False to read them unchecked", path=root_url)
            self._expect = {rel: rows[rel] for rel in self.shards}
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.shuffle_buffer, self.seed = shuffle_shards, shuffle_buffer, seed
        self.resampled, self.epoch_length = resampled, epoch_length
        self.flip_prob, self.target_label_set, self.transform = flip_prob, target_label_set, transform
        self.max_member_bytes, self.on_error = max_member_bytes, on_error
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds shard order, shuffle buffer, resampling and flips."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples per rank per epoch; only defined with ``resampled=True``."""
        if self.epoch_length is None:
            raise TypeError("len() is only defined for resampled=True (epoch_length samples per rank)")
        return self.epoch_length

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        r, w = default_rank_world()
        return (self.rank if self.rank is not None else r), (self.world_size if self.world_size is not None else w)

    def _shard_stream(self, fs: fsspec.AbstractFileSystem, root: str, shards: Iterable[str]) -> Iterator[RawSample]:
        """Raw samples of the given shards in order (errors per ``on_error``)."""
        bad_in_a_row = 0
        for rel in shards:
            got = False
            try:
                for raw in iter_verified_samples(fs, f"{root}/{rel}", rel, self._expect.get(rel), self.max_member_bytes):
                    got = True
                    yield raw
            except InputError as e:
                if self.on_error == "raise":
                    raise
                log.warning("skipping the rest of shard %s: %s", rel, e)
            bad_in_a_row = 0 if got else bad_in_a_row + 1
            if self.resampled and bad_in_a_row >= max(len(self.shards), 1) * 4:
                raise InputError(f"{bad_in_a_row} shards in a row gave no samples", path=self.root_url)

    def __iter__(self) -> Iterator[Any]:
        root = DatasetRoot.open(self.root_url, self.storage_options)
        rank, world = self._rank_world()
        wi = get_worker_info()
        worker, num_workers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        if self.resampled:
            if not self.shards:
                raise InputError("no shards to resample from", path=self.root_url)
            shard_rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
            shards: Iterable[str] = (self.shards[int(shard_rng.integers(len(self.shards)))] for _ in iter(int, 1))
        else:
            order = list(self.shards)
            if self.shuffle_shards:
                order = [order[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
            shards = split_shards(order, rank, world, worker, num_workers)
        stream: Iterable[Any] = self._shard_stream(root.fs, root.path, shards)
        if self.abs_yaw_range is not None:
            stream = select_abs_yaw(stream, *self.abs_yaw_range)
        stream = shuffle(stream, self.shuffle_buffer, rng)
        stream = decode_samples(stream, self.max_pixels, skip_bad=self.on_error == "skip")
        if self.flip_prob > 0:
            stream = random_hflip(stream, self.flip_prob, np.random.default_rng([self.seed, self.epoch, rank, worker, 2]))
        stream = remap_labels(stream, self.target_label_set)
        if self.transform is not None:
            stream = map(self.transform, stream)
        if self.resampled:
            assert self.epoch_length is not None
            n = per_worker_count(self.epoch_length, worker, num_workers)
            if n == 0:
                return
            for i, s in enumerate(stream):
                yield s
                if i + 1 >= n:
                    return
        else:
            yield from stream


def check_manifest_table(table: pa.Table, root_url: str) -> None:
    """What a reader checks of ``manifest.parquet`` itself: shard paths inside the root, each shard
    listed once, no sample key in two rows (:class:`InputError` naming an example)."""
    shards = table.column("shard")
    if pc.count_distinct(shards).as_py() != len(shards):
        dup = next(c["values"] for c in pc.value_counts(shards).to_pylist() if c["counts"] > 1)
        raise InputError(f"shard {dup!r} is listed more than once", path=f"{root_url}/{DATASET_MANIFEST}")
    keys = pc.list_flatten(table.column("keys"))
    if len(keys) and pc.count_distinct(keys).as_py() != len(keys):
        counts = pc.value_counts(keys)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        where = [r["shard"] for r in table.select(["shard", "keys"]).to_pylist() if dup in r["keys"]]
        raise InputError(f"sample key {dup!r} appears in more than one shard ({', '.join(where[:4])}); every key must be "
                         "unique in a dataset", path=f"{root_url}/{DATASET_MANIFEST}")


def to_tensor(sample: Decoded) -> dict[str, Any]:
    """Decoded sample -> tensors for training.

    ``image`` [3, H, W] float32 in [0, 1]; ``seg`` [H, W] uint8 (call ``.long()`` on the device);
    ``conf`` [H, W] float32; ``ignore`` [H, W] bool; ``key``, ``meta`` and ``hflip`` pass through.
    """
    return {
        "image": torch.from_numpy(np.ascontiguousarray(sample["rgb"].transpose(2, 0, 1))).float().div_(255.0),
        "seg": torch.from_numpy(np.ascontiguousarray(sample["seg"])),
        "conf": torch.from_numpy(np.ascontiguousarray(sample["conf"], dtype=np.float32)),
        "ignore": torch.from_numpy(np.ascontiguousarray(sample["ignore"], dtype=bool)),
        "key": sample["__key__"],
        "meta": sample["meta"],
        "hflip": bool(sample.get("hflip", False)),
    }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack :func:`to_tensor` outputs: tensors -> [B, ...]; keys, meta, hflip -> lists."""
    out: dict[str, Any] = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out
