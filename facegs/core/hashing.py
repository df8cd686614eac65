"""Reproducible bytes and hashes: canonical JSON, sha256 of files and URLs, seeds derived from names.

``canonical_json`` (sorted keys, fixed separators, ASCII, no NaN) is what shard metadata, records,
markers and the config hash are made of, so equal inputs give equal bytes; ``derive_seed`` turns a
tuple of ints and strings into a 63-bit seed (the same on every machine and Python version).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import numpy as np


def to_builtin(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tensors (anything with ``tolist``) and tuples inside ``obj`` to
    plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # np.ndarray, torch.Tensor
        return to_builtin(obj.tolist())
    return obj


def canonical_json(obj: Any) -> bytes:
    """Reproducible JSON bytes: sorted keys, fixed separators, ASCII, no NaN/Inf."""
    return json.dumps(to_builtin(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256_of(fs: fsspec.AbstractFileSystem, path: str, block: int = 8 * 1024**2) -> str:
    """sha256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of a local file or fsspec URL."""
    h = hashlib.sha256()
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        while chunk := f.read(8 * 1024**2):
            h.update(chunk)
    return h.hexdigest()


def derive_seed(*parts: int | str | float | bytes) -> int:
    """A stable 63-bit seed from ``parts`` (e.g. ``(global_seed, subject_id, view_id)``).

    SHA-256 over the typed, length-prefixed parts: ``derive_seed(1, "a")`` differs from
    ``derive_seed("1", "a")`` and from ``derive_seed(1, "a", "")``; numpy integers hash like ints.
    """
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (bool, np.bool_)):
            raise TypeError("derive_seed does not accept booleans")
        if isinstance(p, (int, np.integer)):
            b = f"i:{int(p)}".encode()
        elif isinstance(p, (float, np.floating)):
            b = f"f:{float(p)!r}".encode()
        elif isinstance(p, str):
            b = b"s:" + p.encode("utf-8")
        elif isinstance(p, bytes):
            b = b"b:" + p
        else:
            raise TypeError(f"derive_seed takes int, float, str or bytes parts, got {type(p).__name__}")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)
