"""The checks a factory run makes before any subject is fitted, each failure one line.

In: the run's subject source, output root, dataset config and fsspec storage options. Out: nothing,
or a :class:`PreflightError` (one line; ``python -m ray_jobs.build_dataset`` exits 2) -- before a
single subject is fitted, and with nothing left behind:

1. the subject source exists and names at least one subject (a list file with a non-comment line,
   a directory holding ``subject.json``, or one sub-directory that does; the listing stops at the
   first subject found);
2. with ``labels=parser:CKPT`` the checkpoint is readable and loads (``weights_only``, on the CPU);
3. the output root is writable: parents are created as needed, a probe file is written and
   deleted, and the directories the probe created are removed again;
4. object storage answers: missing credentials, an unreachable endpoint, a missing bucket or a
   refused request become one line naming the URL (not a botocore traceback); S3 is asked with
   short timeouts and one attempt, so an unreachable endpoint fails in seconds, not minutes.

Per-subject problems (a ``subject.json`` that is ``[]``, an id like ``../../x``) are never the
run's: :func:`facegs.factory.sources.subject_id_of` and the subject's own processing report them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec

from facegs.core.errors import InputError
from facegs.core.storage import fetch_local, is_local_url, local_path
from facegs.factory.config import FactoryConfig
from facegs.factory.sources import iter_list_file
from facegs.parser.checkpoint import load_parser
from facegs.shards.listing import iter_subdirs, key_exists

PROBE_PREFIX = ".facegs-preflight-"


S3_PROTOCOLS = ("s3", "s3a")


FAST_S3 = {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 1, "mode": "standard"}}


class PreflightError(ValueError):
    """A factory run cannot start: the message is one line naming the URL and what is wrong."""


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def _fs(url: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``url`` for the checks; S3 gets short timeouts and a single attempt."""
    so = dict(storage_options or {})
    if _protocol(url) in S3_PROTOCOLS:
        so["config_kwargs"] = {**FAST_S3, **so.get("config_kwargs", {})}
        so["skip_instance_cache"] = True
    return fsspec.core.url_to_fs(url, **so)


def _endpoint(storage_options: dict[str, Any] | None) -> str:
    so = storage_options or {}
    return str(so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")
               or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint")


def describe(e: BaseException, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """One line for a storage error: what is wrong with ``url``, never a traceback."""
    name = type(e).__name__
    code = ""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        code = str((resp.get("Error") or {}).get("Code", ""))
    text = str(e).splitlines()[0] if str(e) else name
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (f"{url}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                "key/secret in --storage-options)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerDisconnectedError") or "Could not connect to the endpoint" in text:
        return f"{url}: cannot reach the storage endpoint {_endpoint(storage_options)} ({name})"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken") or any(
            c in text for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")):
        return f"{url}: the S3 credentials were refused ({code or text})"
    if code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"{url}: the bucket does not exist"
    if isinstance(e, PermissionError) or code in ("AccessDenied", "403"):
        return f"{url}: permission denied ({text})"
    if isinstance(e, NotADirectoryError):
        return f"{url}: a parent of it is a regular file, not a directory"
    if isinstance(e, FileNotFoundError):
        return f"{url}: does not exist"
    if isinstance(e, OSError) and e.strerror:
        return f"{url}: {e.strerror}"
    return f"{url}: {name}: {text}"


def check_subject_source(source: str, storage_options: dict[str, Any] | None = None) -> None:
    """The subject source exists and names at least one subject (stops at the first one)."""
    try:
        fs, path = _fs(source, storage_options)
        if not fs.exists(path):
            raise PreflightError(f"subject source {source}: does not exist")
        if fs.isfile(path):
            try:
                next(iter_list_file(fs, path, source))  # the first entry only: a list may hold millions
                return
            except StopIteration:
                raise PreflightError(f"subject list {source}: names no subjects (only blank lines and # comments)"
                                     ) from None
            except InputError as e:
                raise PreflightError(f"subject list: {e}") from None
        base = path.rstrip("/")
        if key_exists(fs, f"{base}/subject.json"):
            return
        for d in iter_subdirs(fs, base):  # streamed; stops at the first subject
            if key_exists(fs, f"{d.rstrip('/')}/subject.json"):
                return
    except PreflightError:
        raise
    except Exception as e:  # noqa: BLE001 - any storage error becomes one line
        raise PreflightError(f"subject source {describe(e, source, storage_options)}") from None
    raise PreflightError(f"subject source {source}: no subject directories (folders with a subject.json) found")


def check_parser(ckpt: str, storage_options: dict[str, Any] | None = None) -> None:
    """The parser checkpoint is readable and loads (``weights_only``, CPU)."""
    with tempfile.TemporaryDirectory(prefix="facegs-preflight-") as tmp:
        try:
            local = fetch_local(ckpt, Path(tmp), storage_options) if not is_local_url(ckpt) else local_path(ckpt)
            if not local.is_file():
                raise FileNotFoundError(str(local))
        except Exception as e:  # noqa: BLE001
            raise PreflightError(f"parser checkpoint {describe(e, ckpt, storage_options)}") from None
        try:
            load_parser(local, device="cpu")
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line, not a traceback
            first = str(e).splitlines()[0][:300] if str(e) else ""
            raise PreflightError(f"parser checkpoint {ckpt}: cannot be loaded ({type(e).__name__}: {first})") from None


def _check_local_root(url: str) -> None:
    root = local_path(url).absolute()
    if root.exists() and not root.is_dir():
        raise PreflightError(f"output root {url}: is a regular file, not a directory")
    created: list[Path] = []
    probe = None
    try:
        missing = []
        p = root
        while not p.exists():
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            raise PreflightError(f"output root {url}: {p} is a regular file, not a directory")
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        probe = root / f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(b"probe")
        probe.unlink()
        probe = None
    except PreflightError:
        raise
    except OSError as e:
        why = "not writable" if isinstance(e, PermissionError) else "cannot be written"
        raise PreflightError(f"output root {url}: {why} ({e.strerror or type(e).__name__})") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink()
        for d in reversed(created):  # nothing left behind: the run creates them again when it writes
            with contextlib.suppress(OSError):
                d.rmdir()


def check_output_root(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """The output root can be written: a probe file is written and deleted (see the module docstring)."""
    if is_local_url(url):
        _check_local_root(url)
        return
    try:
        fs, path = _fs(url, storage_options)
        probe = f"{path.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
        fs.pipe_file(probe, b"probe")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - any storage error becomes one line
        raise PreflightError(f"output root {describe(e, url, storage_options)}") from None


def preflight(subjects: str, out: str, factory: FactoryConfig, storage_options: dict[str, Any] | None = None) -> None:
    """Every check of the module docstring, in order; raises :class:`PreflightError` on the first
    failure. Read-only checks come first, so a failing run writes nothing."""
    check_subject_source(subjects, storage_options)
    if factory.label_source == "parser":
        check_parser(factory.label_arg, storage_options)
    check_output_root(out, storage_options)
