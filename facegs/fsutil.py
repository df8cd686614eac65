"""Small filesystem helpers: write whole directories or files atomically, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``final`` only if the block succeeds.

    On an exception the temporary directory is removed and ``final`` is untouched, so readers never
    see a half-written subject. With ``overwrite=True`` an existing ``final`` is replaced (the old
    one is moved aside first and deleted after the swap); otherwise an existing ``final`` raises
    ``FileExistsError`` before any work is done.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite/--overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into_place(tmp, final)


def swap_into_place(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing an existing ``final``.

    The old ``final`` is renamed aside first and deleted only after the new one is in place, so a
    reader sees either the old or the new directory, never a mixture.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
