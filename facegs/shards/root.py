"""A dataset root (fsspec filesystem + path) and the per-shard records that commit its shards.

Layout: ``root/shards/{prefix}-{index:06d}.tar``, ``root/records/{prefix}-{index:06d}.json`` (one row of
:data:`facegs.shards.schema.SHARD_MANIFEST_SCHEMA`, written after the shard is visible),
``root/manifest.parquet``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np

from facegs.core.hashing import canonical_json
from facegs.core.storage import put_bytes_atomic
from facegs.shards.encode import EncodedSample
from facegs.shards.schema import (
    SHARD_MANIFEST_SCHEMA,
    pose_histogram,
)

SHARDS_DIR = "shards"


RECORDS_DIR = "records"


DATASET_MANIFEST = "manifest.parquet"


Verify = Literal["none", "size", "sha256"]


@dataclass(frozen=True)
class ShardRecord:
    """One row of :data:`SHARD_MANIFEST_SCHEMA`: the commit marker of one shard."""

    shard: str  # path relative to the dataset root, e.g. "shards/s1-000000.tar"
    shard_index: int
    num_samples: int
    num_bytes: int
    sha256: str
    subjects: tuple[str, ...]
    keys: tuple[str, ...]
    yaw_hist: tuple[int, ...]
    pitch_hist: tuple[int, ...]
    label_set: str
    config_hash: str
    facegs_version: str

    @property
    def name(self) -> str:
        """File name of the shard (``{prefix}-{index:06d}.tar``)."""
        return self.shard.rsplit("/", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardRecord:
        names = [f.name for f in dataclasses.fields(cls)]
        if set(d) != set(names) or names != SHARD_MANIFEST_SCHEMA.names:
            raise ValueError(f"shard record fields {sorted(d)} differ from {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def make_record(rel: str, index: int, encoded: list[EncodedSample], nbytes: int, sha: str) -> ShardRecord:
    yh, ph = pose_histogram(np.array([e.yaw for e in encoded]), np.array([e.pitch for e in encoded]))
    return ShardRecord(shard=rel, shard_index=index, num_samples=len(encoded), num_bytes=nbytes, sha256=sha,
                       subjects=tuple(sorted({e.subject_id for e in encoded})), keys=tuple(e.key for e in encoded),
                       yaw_hist=tuple(yh), pitch_hist=tuple(ph), label_set=encoded[0].label_set,
                       config_hash=encoded[0].config_hash, facegs_version=encoded[0].facegs_version)


@dataclass(frozen=True)
class DatasetRoot:
    """An fsspec filesystem plus the dataset root path inside it."""

    fs: fsspec.AbstractFileSystem
    path: str

    @classmethod
    def open(cls, root_url: str | DatasetRoot, storage_options: dict[str, Any] | None = None) -> DatasetRoot:
        if isinstance(root_url, DatasetRoot):
            return root_url
        fs, path = fsspec.core.url_to_fs(root_url, **(storage_options or {}))
        return cls(fs, path.rstrip("/"))

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def shard_path(self, name: str) -> str:
        return self.join(SHARDS_DIR, name)

    def record_path(self, name: str) -> str:
        return self.join(RECORDS_DIR, record_name(name))

    def relative(self, path: str) -> str:
        p = self.fs._strip_protocol(path)
        base = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        if not p.startswith(base):
            raise ValueError(f"{path} is not under the dataset root {self.path}")
        return p[len(base):]

    def list_dir(self, sub: str) -> list[dict[str, Any]]:
        """Details of the files directly in ``root/sub`` (fresh listing; [] if absent)."""
        d = self.join(sub)
        self.fs.invalidate_cache(d)
        try:
            entries = self.fs.ls(d, detail=True)
        except FileNotFoundError:
            return []
        return [e for e in entries if e.get("type") == "file"]


def record_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".json" if shard.endswith(".tar") else shard + ".json"


def write_record(root: DatasetRoot, record: ShardRecord) -> None:
    """Write a shard's record JSON (the commit marker) after the shard is visible."""
    put_bytes_atomic(root.fs, root.record_path(record.name), canonical_json(record.as_dict()))
