"""Samples and their encoding: arrays + metadata -> the member bytes of one WebDataset sample.

:class:`Sample` holds RGB [H, W, 3] uint8, labels [H, W] uint8, confidence and alpha [H, W] float32
in [0, 1] (stored as 8 bits), ignore [H, W] bool and the JSON metadata; :func:`validate_sample`
checks all of it before anything is written; encoders are deterministic (equal inputs, equal bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from facegs.core.errors import InputError
from facegs.core.hashing import canonical_json, to_builtin
from facegs.core.ids import check_id
from facegs.core.imageio import encode_gray_png, encode_label_png, encode_rgb, quantize_unit
from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.shards.schema import (
    OPTIONAL_FIELDS,
    RGB_FIELDS,
    SAMPLE_FIELDS,
    check_sample_meta,
    sample_key,
)


def member_order(rgb_format: str, alpha: bool = False) -> tuple[str, ...]:
    """Fixed order of a sample's members in a shard: the RGB image, then :data:`SAMPLE_FIELDS`
    (with ``alpha.png`` before ``json`` when the sample has an alpha map)."""
    if rgb_format not in RGB_FIELDS:
        raise ValueError(f"rgb_format must be one of {RGB_FIELDS}, got {rgb_format!r}")
    fields = SAMPLE_FIELDS[:-1] + (OPTIONAL_FIELDS if alpha else ()) + SAMPLE_FIELDS[-1:]
    return (rgb_format, *fields)


@dataclass
class Sample:
    """One view of one subject, ready to be written to a shard.

    - ``rgb``: [H, W, 3] uint8 RGB.
    - ``seg``: [H, W] uint8 class indices in ``meta["label_set"]`` (255 = ignore).
    - ``conf``: [H, W] float32 in [0, 1] (stored as 8 bits: ``round(conf * 255)``).
    - ``ignore``: [H, W] bool, True where the pixel must be excluded from the loss.
    - ``alpha``: optional [H, W] float32 in [0, 1], the render's coverage (stored as 8 bits), for
      compositing the premultiplied-over-black RGB over other backgrounds.
    - ``meta``: the ``json`` member (``schemas/shard_sample.schema.json``): key, subject_id,
      view_index, pose, K, world_to_camera, label set, config hash, facegs version, ...
    """

    rgb: np.ndarray
    seg: np.ndarray
    conf: np.ndarray
    ignore: np.ndarray
    meta: dict[str, Any]
    alpha: np.ndarray | None = None

    @property
    def key(self) -> str:
        return str(self.meta.get("key"))

    @property
    def subject_id(self) -> str:
        return str(self.meta.get("subject_id"))

    @property
    def view_index(self) -> int:
        return int(self.meta.get("view_index", -1))


def validate_sample(sample: Sample) -> dict[str, Any]:
    """Check a sample's arrays and metadata; return the metadata as plain JSON types.

    Raises :class:`InputError` naming the subject, the key and the field.
    """
    meta = to_builtin(sample.meta)
    check_id(meta.get("subject_id"), field="subject_id", view=meta.get("key"))  # the identifier rule, in its words
    check_sample_meta(meta)
    subject, key = meta["subject_id"], meta["key"]

    def bad(msg: str, fld: str) -> InputError:
        return InputError(msg, subject=subject, view=key, field=fld)

    if key != sample_key(subject, meta["view_index"]):
        raise bad(f"key must be '{sample_key(subject, meta['view_index'])}'", "key")
    h, w = int(meta["height"]), int(meta["width"])
    for name, arr, shape, dtype in (("rgb", sample.rgb, (h, w, 3), np.uint8), ("seg", sample.seg, (h, w), np.uint8),
                                    ("conf", sample.conf, (h, w), None), ("ignore", sample.ignore, (h, w), None)):
        arr = np.asarray(arr)
        if arr.shape != shape or (dtype is not None and arr.dtype != dtype):
            want = f"{np.dtype(dtype).name} " if dtype is not None else ""
            raise bad(f"expected {want}{list(shape)}, got {arr.dtype} {list(arr.shape)}", name)
    n_cls = get_label_set(meta["label_set"]).num_classes
    seg = np.asarray(sample.seg)
    if seg.size and ((seg >= n_cls) & (seg != IGNORE_INDEX)).any():
        raise bad(f"class index {int(seg[seg < IGNORE_INDEX].max())} outside label set "
                  f"'{meta['label_set']}' ({n_cls} classes)", "seg")
    conf = np.asarray(sample.conf, dtype=np.float32)
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0):
        raise bad("confidence must be finite and in [0, 1]", "conf")
    if sample.alpha is not None:
        alpha = np.asarray(sample.alpha, dtype=np.float32)
        if alpha.shape != (h, w):
            raise bad(f"expected {[h, w]}, got {alpha.dtype} {list(alpha.shape)}", "alpha")
        if alpha.size and (not np.isfinite(alpha).all() or alpha.min() < 0.0 or alpha.max() > 1.0):
            raise bad("alpha must be finite and in [0, 1]", "alpha")
    return meta


def encode_sample(sample: Sample, rgb_format: str = "jpg", jpeg_quality: int = 95) -> dict[str, bytes]:
    """Encode a sample's members (field name -> bytes) in :func:`member_order`.

    ``jpg|png`` (RGB), ``seg.png`` (palette PNG of class indices), ``conf.png`` (8-bit),
    ``ignore.png`` (0/255), ``alpha.png`` (8-bit, only when the sample has ``alpha``) and ``json``
    (:func:`canonical_json` of the metadata, with ``rgb_format`` set to the format actually
    written). Deterministic for equal inputs.
    """
    order = member_order(rgb_format, alpha=sample.alpha is not None)
    meta = validate_sample(sample)
    meta["rgb_format"] = rgb_format
    conf_q = quantize_unit(sample.conf)
    members = {
        rgb_format: encode_rgb(np.asarray(sample.rgb), "." + rgb_format, jpeg_quality),
        "seg.png": encode_label_png(np.asarray(sample.seg), meta["label_set"]),
        "conf.png": encode_gray_png(conf_q),
        "ignore.png": encode_gray_png(np.where(np.asarray(sample.ignore, dtype=bool), 255, 0).astype(np.uint8)),
        "json": canonical_json(meta),
    }
    if sample.alpha is not None:
        members["alpha.png"] = encode_gray_png(quantize_unit(sample.alpha))
    return {k: members[k] for k in order}



@dataclass(frozen=True)
class EncodedSample:
    """A sample's encoded members plus what the shard record needs from its metadata."""

    key: str
    members: tuple[tuple[str, bytes], ...]  # (field, bytes) in member order
    subject_id: str
    yaw: float
    pitch: float
    label_set: str
    config_hash: str
    facegs_version: str

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.members)


def encode_samples(samples: Iterable[Sample | EncodedSample], rgb_format: str = "jpg",
                   jpeg_quality: int = 95) -> Iterator[EncodedSample]:
    """Stage: encode samples one by one (lazily); raises on a repeated key. Already encoded samples
    (:class:`EncodedSample`, e.g. when re-sharding) pass through unchanged."""
    seen: set[str] = set()
    for s in samples:
        if isinstance(s, EncodedSample):
            if s.key in seen:
                raise InputError("duplicate sample key in one write", subject=s.subject_id, view=s.key, field="key")
            seen.add(s.key)
            yield s
            continue
        members = encode_sample(s, rgb_format, jpeg_quality)
        m = s.meta
        if s.key in seen:
            raise InputError("duplicate sample key in one write", subject=s.subject_id, view=s.key, field="key")
        seen.add(s.key)
        yield EncodedSample(key=s.key, members=tuple(members.items()), subject_id=s.subject_id,
                            yaw=float(m["yaw"]), pitch=float(m["pitch"]), label_set=str(m["label_set"]),
                            config_hash=str(m["config_hash"]), facegs_version=str(m["facegs_version"]))
