"""Where subjects come from: a directory (local or fsspec URL) of subject folders, or a list file
(text, CSV or Parquet of subject URLs).

In: a source URL. Out: subject URLs (streamed, de-duplicated) with their ids (:func:`iter_subjects`),
and a local directory per subject (the original when local; a download otherwise), with errors that
name the user's URL (and, for a malformed list, the line).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from facegs.core.errors import InputError
from facegs.core.ids import is_valid_id, safe_id
from facegs.core.storage import is_local_url, local_path
from facegs.shards.listing import READ_BATCH, iter_subdirs, key_exists, read_many

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


URL_COLUMNS = ("url", "path", "subject", "subject_url")  # the column of a CSV / Parquet list that names subjects


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_url(url: Any, source: str, where: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InputError(f"{where}: empty subject URL", path=source)
    url = url.strip()
    if _CONTROL.search(url):
        raise InputError(f"{where}: subject URL {url[:80]!r} holds a control character", path=source)
    return url.rstrip("/")


def _url_column(names: list[str], source: str) -> str:
    for c in URL_COLUMNS:
        if c in names:
            return c
    raise InputError(f"subject list has no column named {' or '.join(URL_COLUMNS)} (columns: {names})",
                     path=source)


def iter_list_file(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Iterator[str]:
    """Subject URLs of a list file, read streaming: ``.parquet`` (row group by row group), ``.csv``
    (a header row with a ``url`` column), otherwise text (one per line, ``#`` comments)."""
    low = path.lower()
    if low.endswith(".parquet"):
        with fs.open(path, "rb") as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"subject list is not a readable Parquet file: {e}", path=source) from None
            col = _url_column(pf.schema_arrow.names, source)
            row = 0
            for batch in pf.iter_batches(columns=[col], batch_size=8192):
                for v in batch.column(0).to_pylist():
                    row += 1
                    yield _check_url(v, source, f"row {row} (column {col!r})")
        return
    with fs.open(path, "rt", encoding="utf-8", newline="" if low.endswith(".csv") else None) as f:
        try:
            if low.endswith(".csv"):
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise InputError("subject list (CSV) is empty: it needs a header row with a 'url' column",
                                     path=source)
                col = _url_column([h.strip() for h in header], source)
                i = [h.strip() for h in header].index(col)
                for row in reader:
                    if not row or not "".join(row).strip():
                        continue
                    if len(row) != len(header):
                        raise InputError(f"line {reader.line_num}: {len(row)} fields where the header has "
                                         f"{len(header)}", path=source)
                    yield _check_url(row[i], source, f"line {reader.line_num} (column {col!r})")
                return
            for n, line in enumerate(f, 1):
                text = line.split("#", 1)[0].strip()
                if text:
                    yield _check_url(text, source, f"line {n}")
        except UnicodeDecodeError as e:
            raise InputError(f"subject list is not UTF-8 text: {e}", path=source) from None


def _iter_dirs(fs: fsspec.AbstractFileSystem, path: str, proto: str) -> Iterator[str]:
    """Sub-directories of ``path`` as URLs, streamed (S3: common prefixes, page by page)."""
    for name in iter_subdirs(fs, path):
        yield proto + name if proto and not name.startswith(proto) else name


def _id_from(url: str, data: bytes | BaseException) -> str:
    """:func:`subject_id_of` from the bytes of ``url/subject.json`` (or the error reading it)."""
    fallback = safe_id(subject_dir_name(url))
    if isinstance(data, BaseException):
        return fallback
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return fallback
    sid = d.get("subject_id") if isinstance(d, dict) else None
    return sid if is_valid_id(sid) else fallback


def _resolve_ids(urls: Iterator[str], storage_options: dict[str, Any] | None,
                 skip_missing: bool) -> Iterator[tuple[str, str]]:
    """``(url, id)`` in the order of ``urls``: each ``url/subject.json`` read once, :data:`READ_BATCH`
    at a time, concurrently per filesystem (a list may mix local paths and URLs); ``skip_missing``
    drops a URL without ``subject.json``."""
    chunk: list[str] = []

    def flush() -> Iterator[tuple[str, str]]:
        groups: dict[int, tuple[fsspec.AbstractFileSystem, list[tuple[str, str]]]] = {}
        for u in chunk:
            fs, p = fsspec.core.url_to_fs(u, **(storage_options or {}))
            groups.setdefault(id(fs), (fs, []))[1].append((f"{p.rstrip('/')}/subject.json", u))
        got: dict[str, bytes | BaseException] = {}
        for fs, items in groups.values():
            for (_, data), (_, u) in zip(read_many(fs, [p for p, _ in items], batch=len(items)), items):
                got[u] = data
        for u in chunk:
            if not (skip_missing and isinstance(got[u], FileNotFoundError)):
                yield u, _id_from(u, got[u])
        chunk.clear()

    for u in urls:
        chunk.append(u)
        if len(chunk) >= READ_BATCH:
            yield from flush()
    if chunk:
        yield from flush()


def iter_subjects(source: str, storage_options: dict[str, Any] | None = None) -> Iterator[tuple[str, str]]:
    """``(subject URL, subject id)`` of each subject named by ``source``, streamed, URLs de-duplicated.

    ``source`` is a directory (local or fsspec URL) whose sub-directories holding a
    ``subject.json`` are subjects (or that holds ``subject.json`` itself: one subject), or a list
    file: ``.parquet`` or ``.csv`` with a ``url`` column (or ``path``, ``subject``), otherwise text
    with one subject directory (path or URL) per line (blank lines and ``#`` comments ignored).
    Each ``subject.json`` is read once, in concurrent batches (its id: :func:`subject_id_of`); a
    list names subjects whose ``subject.json`` may be unreadable (they fail when processed), a
    directory's sub-folders without one are not subjects. Raises :class:`InputError` naming the
    file and the line for a malformed list.
    """
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    is_list = key_exists(fs, path)
    if not is_list and not fs.exists(path):
        raise InputError("subject list not found", path=source)
    if is_list:
        seen: set[str] = set()

        def urls() -> Iterator[str]:
            for u in iter_list_file(fs, path, source):
                if u not in seen:
                    seen.add(u)
                    yield u

        candidates: Iterator[str] = urls()
    elif key_exists(fs, f"{path.rstrip('/')}/subject.json"):
        candidates = iter([source.rstrip("/")])
    else:
        candidates = _iter_dirs(fs, path, proto)
    n = 0
    for u, sid in _resolve_ids(candidates, storage_options, skip_missing=not is_list):
        n += 1
        yield u, sid
    if not n:
        raise InputError("subject list names no subjects" if is_list
                         else "no subject directories (folders with a subject.json) found", path=source)


def list_subject_urls(source: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The subject URLs of :func:`iter_subjects` as a list (a directory's in name order)."""
    return [u for u, _ in iter_subjects(source, storage_options)]


def subject_dir_name(url: str) -> str:
    """The subject directory's own name (what a subject is called until its id is known)."""
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def subject_id_of(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The id a subject is scheduled and recorded under; never raises.

    The ``subject_id`` of ``url/subject.json`` when it is a valid id (:mod:`facegs.core.ids`);
    otherwise -- unreadable, not JSON, not an object (``[]``), an id like ``../../x`` or
    ``evil/slash`` -- the directory's name, made a valid id by :func:`facegs.core.ids.safe_id` when
    it is not one. So a bad ``subject.json`` fails that subject alone, when it is processed, and its
    failure record lands inside the dataset root under a safe name.
    """
    try:
        with fsspec.open(url.rstrip("/") + "/subject.json", "rb", **(storage_options or {})) as f:
            data: bytes | BaseException = f.read()
    except Exception as e:  # noqa: BLE001 - any unreadable manifest is the subject's own failure, reported later
        data = e
    return _id_from(url, data)


def stage_subject(url: str, scratch: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """A local directory with the subject: the original (a local path or ``file://`` URL; it is
    only read: labels pass in memory) or a download into ``scratch`` (any other fsspec URL), in a
    folder of the subject directory's own name. Errors raised while working on a download name the
    user's URL when wrapped in :func:`user_paths`."""
    if is_local_url(url):
        return local_path(url)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    dst = scratch / safe_id(subject_dir_name(url))
    dst.mkdir()
    if not fs.exists(path.rstrip("/") + "/subject.json"):
        raise InputError("subject directory has no subject.json", path=url)
    fs.get(path.rstrip("/") + "/", str(dst) + "/", recursive=True)
    return dst


@contextlib.contextmanager
def user_paths(local: Path, url: str) -> Iterator[None]:
    """Re-raise an :class:`InputError` from inside the block with the staged copy's paths (``local``)
    replaced by the user's ``url``: messages cite the user's file, never a temporary folder."""
    try:
        yield
    except InputError as e:
        if str(local).rstrip("/") == url.rstrip("/"):
            raise
        raise e.with_path_prefix(str(local), url) from None
