"""The reader's stages: each a small generator over samples, composable, testable without a tar.

``iter_shard_members`` -> :func:`group_by_key` (both checked against the shard's manifest row by
:func:`facegs.shards.integrity.iter_verified_samples`) -> (:func:`select_abs_yaw`) -> :func:`shuffle`
-> :func:`decode_samples` -> :func:`random_hflip` -> :func:`remap_labels`; plus the shard splitting
of ranks and loader workers (:func:`split_shards`, :func:`per_worker_count`).

Per sample, always (:func:`decode_sample`): the JSON ``key`` and ``subject_id`` agree with the
  member key, yaw/pitch/roll are finite, the label values lie in the label set, every image's
  header is checked against the metadata's size and the member pixel cap
  (:data:`DEFAULT_MAX_MEMBER_PIXELS`) before it is decoded.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np

from facegs.core.errors import InputError
from facegs.core.imageio import (
    ImageHeader,
    check_pixels,
    decode_gray_png,
    decode_label_png,
    decode_rgb,
    dequantize_unit,
    read_header,
)
from facegs.core.labels import IGNORE_INDEX, get_label_set, mapping_lut
from facegs.shards.schema import OPTIONAL_FIELDS, RGB_FIELDS, SAMPLE_FIELDS, sample_key
from facegs.shards.tarsafe import DEFAULT_MAX_MEMBER_BYTES, iter_tar_members

log = logging.getLogger(__name__)


RawSample = dict[str, Any]  # "__key__", "__shard__", and field -> bytes


Decoded = dict[str, Any]


DEFAULT_MAX_MEMBER_PIXELS = 4096 * 4096  # a shard image is a training sample, never near this


KNOWN_FIELDS = tuple(sorted((*RGB_FIELDS, *SAMPLE_FIELDS, *OPTIONAL_FIELDS), key=len, reverse=True))  # longest first


def iter_shard_members(fs: fsspec.AbstractFileSystem, path: str, shard: str,
                       max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[tuple[str, bytes]]:
    """Yield checked ``(member name, bytes)`` of one shard opened through fsspec (not verified
    against the manifest: :func:`iter_verified_samples` does that)."""
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError("shard does not exist", path=shard) from None
    with f:
        yield from iter_tar_members(f, shard, max_member_bytes)


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/key.seg.png"`` -> ``("dir/key", "seg.png")``: the key ends at the first dot of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def group_by_key(members: Iterable[tuple[str, bytes]], shard: str) -> Iterator[RawSample]:
    """Stage: group consecutive members sharing a key into raw samples (field -> bytes).

    Raises :class:`InputError` naming the shard for a field repeated within a sample, a key that
    reappears after its run ended (WebDataset needs a sample's members to be adjacent), and a key
    with a dot (named whole: ``a.b_00000.seg.png`` is key ``a.b_00000``, not ``a``).
    """
    cur: RawSample | None = None
    seen: set[str] = set()
    for name, data in members:
        key, fld = split_member_name(name)
        if not fld:
            raise InputError(f"member {name!r} has no field extension", path=shard)
        if fld not in KNOWN_FIELDS:
            whole = next((name[: -len(f) - 1] for f in KNOWN_FIELDS if name.endswith("." + f)), None)
            if whole is not None:
                raise InputError(f"sample key {whole!r} (member {name!r}) has a dot; keys follow the identifier "
                                 "rule (docs/conventions.md)", view=whole, path=shard)
        if cur is None or key != cur["__key__"]:
            if cur is not None:
                seen.add(cur["__key__"])
                yield cur
            if key in seen:
                raise InputError(f"members of sample '{key}' are not adjacent in the tar", path=shard)
            cur = {"__key__": key, "__shard__": shard}
        if fld in cur:
            raise InputError(f"sample '{key}' has field '{fld}' twice", path=shard)
        cur[fld] = data
    if cur is not None:
        yield cur


def shuffle(samples: Iterable[Any], bufsize: int, rng: np.random.Generator, initial: int | None = None) -> Iterator[Any]:
    """Stage: buffer shuffle. Fills ``initial`` (default ``bufsize``) items, then yields a random
    buffered item for each new one; drains the buffer in random order at the end. ``bufsize <= 1``
    passes items through."""
    if bufsize <= 1:
        yield from samples
        return
    initial = bufsize if initial is None else max(1, min(initial, bufsize))
    buf: list[Any] = []
    for s in samples:
        buf.append(s)
        if len(buf) < initial:
            continue
        i = int(rng.integers(len(buf)))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()
    while buf:
        i = int(rng.integers(len(buf)))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (NaN and infinities are not JSON)")


def _image_header(data: bytes, where: str, w: int, h: int, max_pixels: int, key: str, fld: str,
                  shard: str) -> ImageHeader:
    """Check a member image's header (size, pixel cap) before it is decoded; returns it."""
    try:
        hdr = read_header(data, where)
        check_pixels(hdr, where, max_pixels, "shard image")
    except InputError as e:
        raise InputError(e.message, view=key, field=fld, path=shard) from None
    if (hdr.width, hdr.height) != (w, h):
        raise InputError(f"image is {hdr.width}x{hdr.height} but the metadata says {w}x{h}", view=key, field=fld,
                         path=shard)
    return hdr


def check_meta(meta: Any, key: str, shard: str) -> tuple[int, int]:
    """The metadata checks a reader makes on every sample; returns (width, height).

    The JSON must be an object whose ``key`` is the member key, whose ``subject_id`` and
    ``view_index`` make that key (:func:`facegs.shards.schema.sample_key`), with a known label set,
    finite yaw/pitch/roll and a positive integer width and height.
    """
    def bad(msg: str, fld: str) -> InputError:
        return InputError(msg, view=key, field=f"json.{fld}", path=shard)

    if not isinstance(meta, dict):
        raise bad(f"metadata must be a JSON object, got {type(meta).__name__}", "<root>")
    if meta.get("key") != key:
        raise bad(f"metadata key {meta.get('key')!r} differs from the member key {key!r}", "key")
    try:
        want = sample_key(meta.get("subject_id"), meta.get("view_index"))  # type: ignore[arg-type]
    except (InputError, TypeError, ValueError) as e:
        raise bad(f"subject_id / view_index do not make a sample key: {e}", "subject_id") from None
    if want != key:
        raise bad(f"subject_id {meta.get('subject_id')!r} and view_index {meta.get('view_index')!r} make key "
                  f"{want!r}, not the member key {key!r}", "subject_id")
    for angle in ("yaw", "pitch", "roll"):
        v = meta.get(angle)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{angle} must be a finite number of degrees, got {v!r}", angle)
    try:
        get_label_set(meta.get("label_set"))
    except (KeyError, TypeError, ValueError):
        raise bad(f"unknown label set {meta.get('label_set')!r}", "label_set") from None
    w, h = meta.get("width"), meta.get("height")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (w, h)):
        raise bad(f"width and height must be positive integers, got {w!r} x {h!r}", "width")
    return int(w), int(h)


def decode_sample(raw: RawSample, max_pixels: int = DEFAULT_MAX_MEMBER_PIXELS) -> Decoded:
    """Decode one raw sample (see the module docstring for the output dict).

    Raises :class:`InputError` naming the shard, key and field for a missing or corrupt member,
    metadata that disagrees with the key (:func:`check_meta`), an image over ``max_pixels`` or of
    another size than the metadata says, and label values outside the label set.
    """
    key, shard = raw["__key__"], raw.get("__shard__", "<stream>")
    where = f"{shard}:{key}"
    rgb_fields = [f for f in RGB_FIELDS if f in raw]
    missing = [f for f in ("seg.png", "conf.png", "ignore.png", "json") if f not in raw]
    if len(rgb_fields) != 1 or missing:
        fld = "jpg|png" if len(rgb_fields) != 1 else missing[0]
        raise InputError(f"sample has fields {sorted(k for k in raw if not k.startswith('__'))}; "
                         f"needs exactly one of jpg/png and seg.png, conf.png, ignore.png, json",
                         view=key, field=fld, path=shard)
    try:
        meta = json.loads(raw["json"], parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"metadata is not JSON: {e}", view=key, field="json", path=shard) from None
    w, h = check_meta(meta, key, shard)
    images = [rgb_fields[0], "seg.png", "conf.png", "ignore.png"] + (["alpha.png"] if "alpha.png" in raw else [])
    hdr = {fld: _image_header(raw[fld], f"{where}.{fld}", w, h, max_pixels, key, fld, shard) for fld in images}
    rf = rgb_fields[0]
    out = {
        "__key__": key,
        "__shard__": shard,
        "rgb": decode_rgb(raw[rf], f"{where}.{rf}", max_pixels=max_pixels, header=hdr[rf]),
        "seg": decode_label_png(raw["seg.png"], f"{where}.seg.png", header=hdr["seg.png"]),
        "conf": dequantize_unit(decode_gray_png(raw["conf.png"], f"{where}.conf.png", header=hdr["conf.png"])),
        "ignore": decode_gray_png(raw["ignore.png"], f"{where}.ignore.png", header=hdr["ignore.png"]) >= 128,
        "alpha": (dequantize_unit(decode_gray_png(raw["alpha.png"], f"{where}.alpha.png", header=hdr["alpha.png"]))
                  if "alpha.png" in raw else None),
        "meta": meta,
        "hflip": False,
    }
    for fld in ("rgb", "seg", "conf", "ignore", "alpha"):
        if out[fld] is not None and out[fld].shape[:2] != (h, w):
            raise InputError(f"{fld} is {list(out[fld].shape)}, the metadata says {[h, w]}", view=key, field=fld,
                             path=shard)
    n_cls = get_label_set(meta["label_set"]).num_classes
    seg = out["seg"]
    if seg.size and int(seg.max()) >= n_cls:
        bad = np.unique(seg[(seg >= n_cls) & (seg != IGNORE_INDEX)])
        if bad.size:
            raise InputError(f"label values {bad.tolist()[:8]} are outside label set '{meta['label_set']}' "
                             f"(0..{n_cls - 1}, {IGNORE_INDEX} = ignore)", view=key, field="seg.png", path=shard)
    return out


def select_abs_yaw(raws: Iterable[RawSample], lo: float, hi: float,
                   max_rejected_in_a_row: int = 100_000) -> Iterator[RawSample]:
    """Stage: keep raw samples whose metadata ``yaw`` (degrees) has ``lo <= |yaw| <= hi``; the JSON
    member alone is parsed (images are not decoded). A sample without a parseable ``yaw`` raises, and
    so do ``max_rejected_in_a_row`` rejections in a row (a resampled stream with no sample in range
    would otherwise never end)."""
    rejected = 0
    for r in raws:
        try:
            yaw = float(json.loads(r["json"])["yaw"])
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"cannot read yaw from the metadata for pose selection: {e!r}", view=r.get("__key__"),
                             field="json", path=r.get("__shard__")) from None
        if lo <= abs(yaw) <= hi:
            rejected = 0
            yield r
        else:
            rejected += 1
            if rejected >= max_rejected_in_a_row:
                raise InputError(f"{rejected} samples in a row have |yaw| outside [{lo:g}, {hi:g}] degrees",
                                 path=r.get("__shard__"), field="abs_yaw_range")


def decode_samples(raws: Iterable[RawSample], max_pixels: int = DEFAULT_MAX_MEMBER_PIXELS,
                   skip_bad: bool = False) -> Iterator[Decoded]:
    """Stage: :func:`decode_sample` over raw samples; ``skip_bad`` logs and drops a sample that fails
    its checks instead of raising."""
    for r in raws:
        try:
            yield decode_sample(r, max_pixels)
        except InputError as e:
            if not skip_bad:
                raise
            log.warning("skipping sample %s: %s", r.get("__key__"), e)


def hflip_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata of the horizontally mirrored image (see the module docstring)."""
    m = dict(meta)
    m["yaw"] = -float(meta["yaw"])
    m["roll"] = -float(meta["roll"])
    if "K" in meta:
        K = [list(map(float, row)) for row in meta["K"]]
        K[0][2] = float(meta["width"]) - K[0][2]
        K[0][1] = -K[0][1]
        m["K"] = K
    if "world_to_camera" in meta:
        m["world_to_camera"] = (np.diag([-1.0, 1.0, 1.0, 1.0]) @ np.asarray(meta["world_to_camera"], float)).tolist()
    return m


def hflip_sample(sample: Decoded) -> Decoded:
    """Mirror a decoded sample left-right, swapping left/right classes of its label set."""
    lut = get_label_set(sample["meta"]["label_set"]).flip_lut()
    out = dict(sample)
    out["rgb"] = np.ascontiguousarray(sample["rgb"][:, ::-1])
    out["seg"] = lut[sample["seg"][:, ::-1]]
    out["conf"] = np.ascontiguousarray(sample["conf"][:, ::-1])
    out["ignore"] = np.ascontiguousarray(sample["ignore"][:, ::-1])
    if sample.get("alpha") is not None:
        out["alpha"] = np.ascontiguousarray(sample["alpha"][:, ::-1])
    out["meta"] = hflip_meta(sample["meta"])
    out["hflip"] = not sample.get("hflip", False)
    return out


def random_hflip(samples: Iterable[Decoded], prob: float, rng: np.random.Generator) -> Iterator[Decoded]:
    """Stage: mirror each sample with probability ``prob`` (one draw per sample, always made)."""
    for s in samples:
        flip = bool(rng.random() < prob)
        yield hflip_sample(s) if flip else s


def remap_sample(sample: Decoded, target: str) -> Decoded:
    """Map ``seg`` to the ``target`` label set with :func:`facegs.core.labels.mapping_lut`."""
    src = sample["meta"]["label_set"]
    dst = get_label_set(target)
    if src == dst.name:
        return sample
    out = dict(sample)
    out["seg"] = mapping_lut(src, dst)[sample["seg"]]
    out["meta"] = dict(sample["meta"], label_set=dst.name, label_set_version=dst.version)
    return out


def remap_labels(samples: Iterable[Decoded], target: str | None) -> Iterator[Decoded]:
    """Stage: :func:`remap_sample` to ``target`` (no-op when ``target`` is None)."""
    for s in samples:
        yield s if target is None else remap_sample(s, target)


def split_shards(shards: Sequence[str], rank: int, world_size: int, worker: int = 0,
                 num_workers: int = 1) -> list[str]:
    """Shards of reader ``rank * num_workers + worker`` out of ``world_size * num_workers`` (strided)."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    return list(shards[rank * num_workers + worker:: world_size * num_workers])


def per_worker_count(n: int, worker: int, num_workers: int) -> int:
    """Share of ``n`` samples for one of ``num_workers`` workers (shares sum to ``n``)."""
    return n // num_workers + (1 if worker < n % num_workers else 0)
