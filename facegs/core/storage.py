"""Small filesystem helpers: write whole directories or files atomically, never half-written.

File modes: every file written here is created with mode ``0666`` filtered by the process umask
(``0644`` under the usual umask 022), like any file a user creates -- records, markers,
``manifest.parquet``, ``summary.json`` and shards alike, so a team can read a shared dataset.
(``tempfile.mkstemp`` would create ``0600`` files, which then keep that mode after the rename.)
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from facegs.core.errors import InputError

TMP_MARKER = ".tmp-"  # hidden temporary files are named ".{final name}.tmp-{hex}"


def _tmp_name(final_name: str) -> str:
    return f".{final_name}{TMP_MARKER}{uuid.uuid4().hex[:12]}"


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
    """Write ``data`` to ``path`` through a temporary file in the same directory (named
    ``.{name}.tmp-{hex}``, so interrupted writes are recognised as leftovers) and a rename; the
    file gets mode ``0666 & ~umask``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / _tmp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise




def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _has_deferred_commit(fs: fsspec.AbstractFileSystem) -> bool:
    """Filesystems whose ``open(..., autocommit=False)`` files publish only on ``commit()``.

    Verified for s3fs (multipart upload completed on commit, aborted on discard). Others go through
    the staged single-put path.
    """
    return bool({"s3", "s3a"} & set(_protocols(fs))) and type(fs).__module__.startswith("s3fs")


@contextlib.contextmanager
def open_atomic(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at ``path`` only if the block exits without an exception.

    See the module docstring for the per-filesystem mechanism (local temp + ``os.replace``, S3
    multipart commit/abort, otherwise a staged single put). On an exception nothing is published
    and any previous file at ``path`` is left untouched.
    """
    if is_local_fs(fs):
        final = fs._strip_protocol(path)
        parent, name = os.path.split(final)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, _tmp_name(name))
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    elif _has_deferred_commit(fs):
        w = _SmallFirstWriter(fs, path)
        try:
            yield w  # type: ignore[misc]
            w.finish()
        except BaseException:
            w.abort()
            raise
    else:
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024**2) as staged:
            yield staged  # type: ignore[misc]
            staged.seek(0)
            fs.pipe_file(path, staged.read())


SMALL_PUT_BYTES = 8 * 1024**2  # an S3 object up to this size is written with one PUT, larger ones as multipart


class _SmallFirstWriter:
    """A write-only file for S3 (s3fs) that is published only by :meth:`finish`.

    Up to :data:`SMALL_PUT_BYTES` the bytes stay in memory and :meth:`finish` writes them with one
    ``PutObject`` (atomic: the key appears whole; one request instead of the three of a multipart
    upload). Past that, a multipart upload is opened (``autocommit=False``) and the bytes stream
    into it; :meth:`finish` completes it, :meth:`abort` aborts it. A plain ``with fs.open(path,
    "wb")`` would be wrong: its ``__exit__`` closes, and closing commits, so an exception mid-shard
    would publish a truncated object (verified against moto). After ``discard()`` the file is
    marked closed: s3fs leaves it open, and its ``__del__`` -> ``close()`` would start a new
    multipart upload that nobody completes or aborts (also verified).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs, self.path = fs, path
        self.buf: io.BytesIO | None = io.BytesIO()
        self.f: Any = None
        self.nbytes = 0
        self.closed = False

    def tell(self) -> int:
        return self.nbytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to do: bytes are published by :meth:`finish` only."""

    def write(self, b: bytes) -> int:
        self.nbytes += len(b)
        if self.f is not None:
            return self.f.write(b)
        assert self.buf is not None
        if self.buf.tell() + len(b) > SMALL_PUT_BYTES:
            self.f = self.fs.open(self.path, "wb", autocommit=False)
            self.f.write(self.buf.getvalue())
            self.buf = None
            return self.f.write(b)
        return self.buf.write(b)

    def flush(self) -> None:
        """Nothing to do: bytes are published by :meth:`finish` only."""

    def finish(self) -> None:
        self.closed = True
        if self.f is None:
            assert self.buf is not None
            self.fs.pipe_file(self.path, self.buf.getvalue())
            self.buf = None
            return
        self.f.close()  # uploads the last part; the key is still invisible
        self.f.commit()  # completes the multipart upload: the key appears whole

    def abort(self) -> None:
        self.closed = True
        self.buf = None
        if self.f is not None:
            with contextlib.suppress(Exception):
                self.f.discard()  # aborts the multipart upload
            self.f.closed = True


def put_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small file whole (local: temp + rename; elsewhere: one put)."""
    if is_local_fs(fs):
        atomic_write_bytes(fs._strip_protocol(path), data)
    else:
        fs.pipe_file(path, data)


def is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def fetch_local(url: str, scratch: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """A local path for a file given as a path or fsspec URL (downloaded into ``scratch``)."""
    if is_local_url(url):
        p = local_path(url)
        if not p.is_file():
            raise InputError("file not found", path=str(p))
        return p
    dst = scratch / url.rstrip("/").rsplit("/", 1)[-1]
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        dst.write_bytes(f.read())
    return dst
