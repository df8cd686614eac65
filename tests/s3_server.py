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
