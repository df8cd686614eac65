"""Listing and reading many small objects at scale: streamed listings, key probes, batched reads.

A dataset root with a million subjects holds millions of small objects; the run-level passes
(start-up, finalize, orphan detection) must not hold a whole listing's details in memory, must not
list a directory per subject, and must read each object at most once, concurrently where the
filesystem allows it.

- :func:`iter_files`: the files directly in a directory, streamed page by page: on S3 (s3fs) one
  ``ListObjectsV2`` request per 1000 keys, yielded as each page arrives (keys in lexicographic
  order); on local disk ``os.scandir`` (no order); elsewhere ``fs.ls`` (one call).
- :func:`key_exists`: whether one key exists, in one request (on S3 a 1-byte ranged GET: s3fs'
  ``exists``/``info`` follow a missing key's HEAD with a LIST to look for a "directory").
- :func:`read_many`: the bytes of many keys, ``batch`` at a time: ``fs.cat(paths)`` -- concurrent
  requests on async filesystems such as s3fs (one GET per object); errors come back as values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync

from facegs.core.storage import is_local_fs

LIST_PAGE = 1000  # keys per S3 listing page (the S3 maximum)


READ_BATCH = 256  # objects read concurrently by one read_many step


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return type(fs).__module__.startswith("s3fs") and isinstance(fs, AsyncFileSystem)


def _s3_pages(fs: Any, path: str) -> Iterator[list[dict[str, Any]]]:
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": LIST_PAGE}
    while True:
        out = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        yield [{"name": f"{bucket}/{c['Key']}", "size": int(c["Size"]), "mtime": c.get("LastModified"),
                "type": "file"} for c in out.get("Contents", [])]
        if not out.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = out["NextContinuationToken"]


def iter_files(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[dict[str, Any]]:
    """``{"name", "size", "mtime"}`` of each file directly in ``path`` (none if it is absent), streamed."""
    if is_local_fs(fs):
        d = fs._strip_protocol(path)
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            return
        with it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    yield {"name": f"{d.rstrip('/')}/{e.name}", "size": st.st_size, "mtime": st.st_mtime,
                           "type": "file"}
        return
    if _is_s3(fs):
        for page in _s3_pages(fs, path):
            yield from page
        return
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return
    for e in entries:
        if e.get("type") == "file":
            yield {"name": e["name"], "size": int(e.get("size") or 0), "mtime": e.get("mtime", e.get("created")),
                   "type": "file"}


def iter_subdirs(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """Paths of the directories directly in ``path``, streamed (S3: common prefixes, page by page;
    local: in name order -- the names are sorted, nothing else is held)."""
    if is_local_fs(fs):
        d = fs._strip_protocol(path).rstrip("/")
        try:
            names = sorted(e.name for e in os.scandir(d) if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for n in names:
            yield f"{d}/{n}"
        return
    if _is_s3(fs):
        bucket, key, _ = fs.split_path(path)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else "",
                                  "Delimiter": "/", "MaxKeys": LIST_PAGE}
        while True:
            out = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
            for c in out.get("CommonPrefixes", []):
                yield f"{bucket}/{c['Prefix'].rstrip('/')}"
            if not out.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = out["NextContinuationToken"]
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return
    for e in sorted(entries, key=lambda e: e["name"]):
        if e.get("type") == "directory":
            yield e["name"].rstrip("/")


def base_name(path: str) -> str:
    """The last component of a path or key."""
    return path.rsplit("/", 1)[-1]


def key_exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the file ``path`` exists, in one request (see the module docstring)."""
    if is_local_fs(fs):
        return os.path.isfile(fs._strip_protocol(path))
    if _is_s3(fs):
        try:
            fs.cat_file(path, start=0, end=1)
        except FileNotFoundError:
            return False
        return True
    fs.invalidate_cache(path)
    return bool(fs.isfile(path))


def read_many(fs: fsspec.AbstractFileSystem, paths: Iterable[str],
              batch: int = READ_BATCH) -> Iterator[tuple[str, bytes | BaseException]]:
    """``(path, bytes or the exception)`` for each of ``paths``, in their order, ``batch`` at a time
    (concurrently on async filesystems); a missing file gives a ``FileNotFoundError`` value."""
    chunk: list[str] = []

    def flush() -> Iterator[tuple[str, bytes | BaseException]]:
        # a list in: always a dict out. On S3 a range from 0 reads the whole object in one GET (without
        # one, s3fs' cat_file first sends a HEAD for the size)
        got = fs.cat(list(chunk), on_error="return", **({"start": 0} if _is_s3(fs) else {}))
        for p in chunk:
            yield p, got.get(p, got.get(fs._strip_protocol(p), FileNotFoundError(p)))
        chunk.clear()

    for p in paths:
        chunk.append(p)
        if len(chunk) >= batch:
            yield from flush()
    if chunk:
        yield from flush()
