"""Pytest fixtures: a real local S3 API server (moto's server mode on loopback) and a fresh bucket.

Import both fixtures into a test module (``from s3_server import s3_fs, s3_server  # noqa: F401``).

- ``s3_server`` (module scope): ``moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)``;
  yields its endpoint URL and stops it afterwards.
- ``s3_fs`` (function scope): fake AWS credentials in the environment, a new bucket created with
  boto3 (region us-east-1, no location constraint: ``s3fs.mkdir`` fails against moto with
  InvalidLocationConstraint), s3fs' instance cache cleared before and after; yields an
  :class:`S3Env`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass
class S3Env:
    fs: Any  # s3fs.S3FileSystem
    client: Any  # boto3 S3 client
    bucket: str
    endpoint_url: str
    storage_options: dict[str, Any]

    def url(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path}".rstrip("/")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_fs(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    for var, val in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                     ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                     ("NO_PROXY", "127.0.0.1,localhost"), ("no_proxy", "127.0.0.1,localhost")):
        monkeypatch.setenv(var, val)
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"facegs-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    opts = {**CREDENTIALS, "endpoint_url": s3_server}
    try:
        yield S3Env(s3fs.S3FileSystem(**opts), client, bucket, s3_server, opts)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


REQUEST_KINDS = ("LIST", "HEAD", "GET", "PUT", "DELETE")


def request_kind(method: str, path: str, query: str) -> str:
    """The kind of an S3 REST request (path-style ``/bucket/key?query``): LIST (a bucket-level GET),
    HEAD, GET, PUT (also POSTs of a multipart upload), DELETE (also a multi-object delete POST)."""
    key = path.lstrip("/").split("/", 1)[1] if "/" in path.lstrip("/") else ""
    if method == "GET":
        return "GET" if key else "LIST"
    if method == "POST":
        return "DELETE" if "delete" in query.split("&") else "PUT"
    return method if method in REQUEST_KINDS else "OTHER"


class CountingMotoServer:
    """moto's S3 server on loopback (``ip:0``), counting the requests it serves by kind: a WSGI
    middleware in front of moto's own app, so what is counted is what arrived over HTTP (no mock of
    the client). ``counts()`` and ``reset()`` are thread-safe."""

    def __init__(self) -> None:
        import logging  # lazy: only the bench and the counting tests start this server
        import threading  # lazy: as above

        from moto.moto_server.werkzeug_app import (  # lazy: moto is a test/bench dependency
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server  # lazy: as above

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys((*REQUEST_KINDS, "OTHER"), 0)
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            kind = request_kind(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                                environ.get("QUERY_STRING", ""))
            with self._lock:
                self._counts[kind] += 1
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            for k in self._counts:
                self._counts[k] = 0

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
