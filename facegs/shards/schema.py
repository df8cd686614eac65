"""The shard formats the whole pipeline speaks: WebDataset samples and the Parquet shard manifest.

A shard is a tar file ``{prefix}-{index:06d}.tar`` of samples. A sample is the members sharing
one key (no dots; WebDataset splits at the first dot): ``{subject_id}_{view_index:05d}``.

Members of a sample (:data:`SAMPLE_FIELDS`):
- ``jpg`` or ``png``: RGB image.
- ``seg.png``: palette PNG, uint8 class indices in the sample's ``label_set`` (255 = ignore).
- ``conf.png``: 8-bit grayscale per-pixel confidence (value / 255).
- ``ignore.png``: 8-bit grayscale, 255 where the pixel must be excluded from the loss.
- ``alpha.png`` (optional, :data:`OPTIONAL_FIELDS`): 8-bit grayscale coverage of the rendered
  subject (value / 255; renders only). The RGB of a render is premultiplied over black, so
  ``rgb + (1 - alpha) * background`` puts the subject over any background.
- ``json``: metadata, schema ``schemas/shard_sample.schema.json`` (pose, camera, label set,
  fit metrics, config hash).

After a shard closes, a per-shard record (one row of :data:`SHARD_MANIFEST_SCHEMA`, as JSON) marks
it committed; the merged Parquet manifest of all committed shards is what readers trust.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa

import facegs
from facegs.core.errors import InputError
from facegs.core.ids import check_id
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.schemas import load_json_schema

SCHEMA_VERSION = 1
RGB_FIELDS = ("jpg", "png")
SAMPLE_FIELDS = ("seg.png", "conf.png", "ignore.png", "json")
OPTIONAL_FIELDS = ("alpha.png",)  # written before ``json`` when present

# Pose histogram bins of the shard manifest (degrees, head-relative; facegs.core.cameras conventions).
YAW_EDGES = np.arange(-90.0, 90.0 + 1e-9, 15.0)  # 12 bins
PITCH_EDGES = np.arange(-45.0, 45.0 + 1e-9, 15.0)  # 6 bins


def sample_key(subject_id: str, view_index: int) -> str:
    """WebDataset key of a sample: ``{subject_id}_{view_index:05d}``; the subject id follows the
    identifier rule (:func:`facegs.core.ids.check_id`, :class:`InputError` otherwise), so the key
    never holds a dot or a slash."""
    check_id(subject_id, field="subject_id")
    if isinstance(view_index, bool) or not isinstance(view_index, (int, np.integer)) or view_index < 0:
        raise InputError(f"view index must be a non-negative integer, got {view_index!r}", subject=subject_id,
                         field="view_index")
    return f"{subject_id}_{int(view_index):05d}"


def sample_meta(subject_id: str, view_index: int, *, source: str, width: int, height: int,
                pose: tuple[float, float, float], K: np.ndarray, world_to_camera: np.ndarray,
                world_from_head: np.ndarray | None, rgb_format: str, config_hash: str,
                fit_metrics: dict[str, Any] | None = None, label_set: str = CANONICAL,
                unobserved_fraction: float | None = None) -> dict[str, Any]:
    """The ``json`` member of a sample (``schemas/shard_sample.schema.json``, version
    :data:`SCHEMA_VERSION`): built here only, for renders (``source="render"``, with the subject's
    ``fit_metrics``) and capture views (``source="capture"``). ``pose`` = (yaw, pitch, roll) degrees
    in the head frame, rounded to 6 decimals; ``K`` [3, 3], ``world_to_camera`` [4, 4] (OpenCV),
    ``world_from_head`` [4, 4] or None. ``unobserved_fraction`` (renders): the share of the sample's
    labelled foreground whose surface no capture view saw (:mod:`facegs.render.observed`)."""
    ls = get_label_set(label_set)
    yaw, pitch, roll = (round(float(a), 6) for a in pose)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "key": sample_key(subject_id, view_index), "subject_id": subject_id,
        "view_index": int(view_index), "source": source, "width": int(width), "height": int(height),
        "yaw": yaw, "pitch": pitch, "roll": roll, "K": np.asarray(K, np.float64).tolist(),
        "world_to_camera": np.asarray(world_to_camera, np.float64).tolist(),
        "world_from_head": None if world_from_head is None else np.asarray(world_from_head, np.float64).tolist(),
        "label_set": ls.name, "label_set_version": ls.version, "rgb_format": rgb_format,
        "config_hash": config_hash, "facegs_version": facegs.__version__,
    }
    if fit_metrics is not None:
        meta["fit_metrics"] = fit_metrics
    if unobserved_fraction is not None:
        meta["unobserved_fraction"] = round(float(unobserved_fraction), 6)
    return meta


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{int(index):06d}.tar"


def check_sample_meta(meta: dict[str, Any]) -> None:
    """Validate a sample's ``json`` member; raise :class:`InputError` naming the key and field."""
    v = jsonschema.Draft202012Validator(load_json_schema("shard_sample.schema.json"))
    err = next(iter(sorted(v.iter_errors(meta), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        fld = ".".join(str(p) for p in err.absolute_path) or "<root>"
        raise InputError(f"sample metadata violates the schema: {err.message}", view=meta.get("key"), field=fld,
                         subject=meta.get("subject_id"))


def pose_histogram(yaws: np.ndarray, pitches: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of samples per yaw bin and per pitch bin (values beyond the edges are clipped in)."""
    y = np.clip(np.asarray(yaws, dtype=np.float64), YAW_EDGES[0], YAW_EDGES[-1])
    p = np.clip(np.asarray(pitches, dtype=np.float64), PITCH_EDGES[0], PITCH_EDGES[-1])
    hy, _ = np.histogram(y, bins=YAW_EDGES)
    hp, _ = np.histogram(p, bins=PITCH_EDGES)
    return hy.astype(int).tolist(), hp.astype(int).tolist()


SHARD_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),  # path relative to the dataset root
        pa.field("shard_index", pa.int64(), nullable=False),
        pa.field("num_samples", pa.int64(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("subjects", pa.list_(pa.string()), nullable=False),
        pa.field("keys", pa.list_(pa.string()), nullable=False),
        pa.field("yaw_hist", pa.list_(pa.int64(), len(YAW_EDGES) - 1), nullable=False),
        pa.field("pitch_hist", pa.list_(pa.int64(), len(PITCH_EDGES) - 1), nullable=False),
        pa.field("label_set", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("facegs_version", pa.string(), nullable=False),
    ],
    metadata={
        "facegs.schema": "shard_manifest",
        "facegs.schema_version": str(SCHEMA_VERSION),
        "facegs.yaw_edges": ",".join(f"{e:g}" for e in YAW_EDGES),
        "facegs.pitch_edges": ",".join(f"{e:g}" for e in PITCH_EDGES),
    },
)


def shard_record_table(records: list[dict[str, Any]]) -> pa.Table:
    """Build the merged manifest table from per-shard records (validated by the Arrow schema)."""
    return pa.Table.from_pylist(sorted(records, key=lambda r: r["shard_index"]), schema=SHARD_MANIFEST_SCHEMA)
