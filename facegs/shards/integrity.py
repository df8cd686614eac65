"""Reader-side integrity: each shard checked against its manifest row while it streams.

The bytes are hashed (sha256) and counted as they pass and the samples counted; at the shard's end
a different sha256, byte count or sample count raises :class:`facegs.core.errors.InputError` -- a
one-byte corruption, a truncation at a member boundary or inside a header, bytes appended after
the archive. The shard's last sample is held back until the check has passed, so a corrupt shard
yields at most its first ``n - 1`` samples (a reader that must never see them uses
``facegs dataset verify`` first). Hashing costs far less than decoding the images it carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

from facegs.core.errors import InputError
from facegs.shards.stages import RawSample, group_by_key
from facegs.shards.tarsafe import DEFAULT_MAX_MEMBER_BYTES, iter_tar_members


@dataclass(frozen=True)
class ShardExpectation:
    """What a shard's manifest row says about it: the reader checks the stream against it."""

    num_samples: int
    num_bytes: int
    sha256: str


class HashingReader:
    """A read-only file wrapper that counts and sha256-hashes the bytes as they pass."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def read(self, size: int = -1) -> bytes:
        b = self._f.read(size)
        self.sha.update(b)
        self.nbytes += len(b)
        return b

    def drain(self, limit: int, chunk: int = 1 << 20) -> None:
        """Read (and hash) the rest, up to one byte beyond ``limit`` in all (enough to tell)."""
        while self.nbytes <= limit:
            if not self.read(min(chunk, limit + 1 - self.nbytes)):
                return


def iter_verified_samples(fs: fsspec.AbstractFileSystem, path: str, shard: str, expect: ShardExpectation | None,
                          max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[RawSample]:
    """Raw samples of one shard; with ``expect`` (its manifest row) the stream is hashed and counted
    and checked at the shard's end (see the module docstring); ``expect=None`` reads unverified."""
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError("shard does not exist", path=shard) from None
    with f:
        reader = HashingReader(f)
        samples = group_by_key(iter_tar_members(reader, shard, max_member_bytes), shard)  # type: ignore[arg-type]
        if expect is None:
            yield from samples
            return
        held: RawSample | None = None
        n = 0
        try:
            for raw in samples:
                n += 1
                if n > expect.num_samples:
                    raise InputError(f"shard holds more than the {expect.num_samples} samples its manifest row lists",
                                     path=shard)
                if held is not None:
                    yield held
                held = raw
        except InputError as e:
            if type(e) is InputError:  # a truncated shard reads as a corrupt tar: say which it is
                reader.drain(expect.num_bytes)
                if reader.nbytes < expect.num_bytes:
                    raise InputError(f"{e.message}; the shard ends after {reader.nbytes} of the {expect.num_bytes} "
                                     "bytes its manifest row lists (truncated)", path=shard) from None
            raise
        reader.drain(expect.num_bytes)
        problems = []
        if n != expect.num_samples:
            problems.append(f"{n} samples where its manifest row lists {expect.num_samples}")
        if reader.nbytes < expect.num_bytes:
            problems.append(f"{reader.nbytes} bytes where its manifest row lists {expect.num_bytes}")
        elif reader.nbytes > expect.num_bytes:
            problems.append(f"more than the {expect.num_bytes} bytes its manifest row lists")
        elif reader.sha.hexdigest() != expect.sha256:
            problems.append("a sha256 other than its manifest row's")
        if problems:
            raise InputError(f"shard has {' and '.join(problems)}: it is not the shard that was committed "
                             "(corrupted, truncated or replaced); its samples must not be trusted", path=shard)
        if held is not None:
            yield held
