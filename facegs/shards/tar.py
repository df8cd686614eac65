"""Reproducible tar writing: USTAR, mtime 0, uid/gid 0, empty names, mode 0444, members in order,
sha256 and size computed as the bytes pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from collections.abc import Iterable
from typing import BinaryIO

from facegs.shards.encode import EncodedSample

TAR_MTIME = 0  # fixed member mtime: byte-reproducible tars


TAR_MODE = 0o444


class _HashingWriter:
    """Forwards writes to ``f`` while counting bytes and updating a sha256."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.nbytes += len(b)
        self._f.write(b)
        return len(b)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = TAR_MTIME
    ti.mode = TAR_MODE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def write_tar(f: BinaryIO, samples: Iterable[EncodedSample]) -> tuple[list[EncodedSample], int, str]:
    """Write samples as a reproducible USTAR tar to ``f``.

    Returns (the samples' summaries without their bytes, tar size in bytes, sha256 hex of the tar).
    """
    hw = _HashingWriter(f)
    written = []
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.USTAR_FORMAT) as tf:  # type: ignore[call-overload]
        for e in samples:
            for fld, data in e.members:
                tf.addfile(_tarinfo(f"{e.key}.{fld}", len(data)), io.BytesIO(data))
            written.append(dataclasses.replace(e, members=()))  # keep what the record needs, drop the bytes
    return written, hw.nbytes, hw.sha.hexdigest()
