"""Identifiers and relative paths that come from outside: one rule, checked once, at the edge.

Every identifier that becomes part of a file name or a WebDataset key -- a subject id, a view id,
a shard prefix, a checkpoint name in a report -- follows one rule (:data:`ID_PATTERN`,
``docs/conventions.md``):

- 1 to :data:`ID_MAX_LEN` (128) characters from ``A-Z a-z 0-9 _ -``;
- the first character is a letter, a digit or ``_`` (never ``-``: it would read as a command-line
  option);
- so no dots (WebDataset splits a member name at the first dot), no slashes, no ``..``, no spaces.

The JSON schemas (``schemas/*.json``) carry the same pattern; a test checks that they
agree with :data:`ID_PATTERN`.

Paths named by a manifest are relative to their subject directory and stay inside it
(:func:`relative_path_problem` for the text, :func:`resolve_inside` for the file system, which also
follows symbolic links) unless the user opts in (``allow_external_paths``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from facegs.core.errors import InputError

ID_MAX_LEN = 128


ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$"


_ID_RE = re.compile(ID_PATTERN)


_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid identifier (None when it is)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > ID_MAX_LEN:
        return f"is {len(value)} characters long, at most {ID_MAX_LEN} are allowed"
    if _ID_RE.match(value):
        return None
    bad = sorted(set("".join(_NOT_ID_CHARS.findall(value))))
    if bad:
        return f"contains {''.join(bad)!r}; only A-Z a-z 0-9 _ - are allowed"
    return "must start with a letter, a digit or '_'"


def is_valid_id(value: Any) -> bool:
    return id_problem(value) is None


def check_id(value: Any, *, what: str = "subject id", field: str | None = None, subject: str | None = None,
             view: str | None = None, path: str | None = None) -> str:
    """``value`` if it is a valid identifier; otherwise an :class:`InputError` naming ``what``."""
    why = id_problem(value)
    if why is not None:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:77] + "...")
        raise InputError(f"{what} {shown} {why} (identifier rule: docs/conventions.md)", subject=subject, view=view,
                         field=field, path=path)
    return value


def safe_id(name: str) -> str:
    """A valid identifier made from any text: itself when valid, else a sanitised form plus 8 hex
    digits of the text's sha256 (distinct texts stay distinct). Used to name records of inputs whose
    own id is unusable (a failure record of ``../../x`` lands at ``failures/x-1a2b3c4d.json``)."""
    if is_valid_id(name):
        return name
    base = _NOT_ID_CHARS.sub("_", str(name)).strip("_-")[: ID_MAX_LEN - 9] or "subject"
    if not _ID_RE.match(base):
        base = "_" + base[: ID_MAX_LEN - 10]
    return f"{base}-{hashlib.sha256(str(name).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def relative_path_problem(rel: Any) -> str | None:
    """Why ``rel`` is not a plain relative path that stays below its base directory (None if it is).

    Refused: non-strings, empty paths, NUL bytes, absolute paths, drive letters, backslashes, URLs,
    and any ``..`` component (even ``a/../b``: a manifest never needs one).
    """
    if not isinstance(rel, str):
        return f"must be a string, got {type(rel).__name__}"
    if not rel or "\x00" in rel:
        return "is empty or holds a NUL byte"
    if "://" in rel:
        return "is a URL; paths are relative to the subject directory"
    if rel.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", rel) or "\\" in rel:
        return "is absolute (or has a backslash or drive letter); paths are relative to the subject directory"
    if ".." in PurePosixPath(rel).parts:
        return "has a '..' component; paths must stay inside the subject directory"
    return None


def resolve_inside(base: str | os.PathLike, rel: str, *, allow_outside: bool = False, what: str = "path",
                   **ctx: Any) -> Path:
    """``base / rel`` after checking that it stays inside ``base``, symbolic links followed.

    Raises :class:`InputError` (``ctx``: subject, view, field) for a path that climbs out, is
    absolute, or resolves outside ``base`` through a link. With ``allow_outside`` (the user's
    explicit opt-in) any path is returned as given (absolute, or relative to ``base``).
    """
    base = Path(base)
    if allow_outside:
        p = Path(rel)
        return p if p.is_absolute() else base / p
    why = relative_path_problem(rel)
    if why is not None:
        raise InputError(f"{what} {rel!r} {why} (pass --allow-external-paths to read it anyway)", **ctx)
    p = base / rel
    real_base = os.path.realpath(base)
    real = os.path.realpath(p)
    if os.path.commonpath([real_base, real]) != real_base:
        raise InputError(f"{what} {rel!r} resolves to {real}, outside the subject directory (a symbolic link?); "
                         "pass --allow-external-paths to read it anyway", **ctx)
    return p


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``: part K of a job split into N (see :func:`part_of`)."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--part must be K/N with integers 1 <= K <= N (e.g. 2/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--part {text!r}: K/N needs 1 <= K <= N")
    return k, n


def part_of(subject_id: str, n: int) -> int:
    """The part (1..n) that ``subject_id`` belongs to when a job is split into ``n``: a stable hash of
    the id (sha256, not Python's salted ``hash()``), so every run and every machine agrees; parts are
    disjoint and together cover every subject, and subjects sharing an id land in the same part."""
    return int(hashlib.sha256(subject_id.encode("utf-8", "surrogatepass")).hexdigest()[:16], 16) % n + 1


def in_part(subject_id: str, part: tuple[int, int] | None) -> bool:
    """Whether ``subject_id`` belongs to ``part`` (``(K, N)``; None = the whole job)."""
    return part is None or part_of(subject_id, part[1]) == part[0]
