"""Where subjects come from: a directory (local or fsspec URL) of subject folders, or a list file.

In: a source URL. Out: subject URLs (sorted, de-duplicated), their ids, and a local directory per
subject (the original when local; a download otherwise), with errors that name the user's URL.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from facegs.core.errors import InputError
from facegs.core.ids import is_valid_id, safe_id
from facegs.core.storage import is_local_url, local_path


def list_subject_urls(source: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Subject directories named by ``source``, sorted and de-duplicated.

    ``source`` is a directory (local or fsspec URL) whose sub-directories holding a
    ``subject.json`` are subjects (or that holds ``subject.json`` itself), or a text file with one
    subject directory (path or URL) per line; blank lines and ``#`` comments are ignored.
    """
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    if not fs.exists(path):
        raise InputError("subject list not found", path=source)
    if fs.isfile(path):
        with fs.open(path, "rt") as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
        urls = [ln.rstrip("/") for ln in lines if ln]
        if not urls:
            raise InputError("subject list names no subjects", path=source)
        return list(dict.fromkeys(urls))
    if fs.exists(f"{path.rstrip('/')}/subject.json"):
        return [source.rstrip("/")]
    found = []
    for e in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        if e.get("type") == "directory" and fs.exists(f"{e['name'].rstrip('/')}/subject.json"):
            found.append(proto + e["name"].rstrip("/") if proto and not e["name"].startswith(proto) else e["name"])
    if not found:
        raise InputError("no subject directories (folders with a subject.json) found", path=source)
    return found


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
    fallback = safe_id(subject_dir_name(url))
    try:
        with fsspec.open(url.rstrip("/") + "/subject.json", "rt", **(storage_options or {})) as f:
            d = json.load(f)
    except Exception:  # noqa: BLE001 - any unreadable manifest is the subject's own failure, reported later
        return fallback
    sid = d.get("subject_id") if isinstance(d, dict) else None
    return sid if is_valid_id(sid) else fallback


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
