"""A real S3 endpoint for the object-storage tests: moto's server over HTTP on 127.0.0.1.

The server runs in a subprocess (``python -m moto.server``), started once per session; each test
gets its own bucket and an environment that points the AWS SDK at the server, with made-up
credentials whose secret tests can look for in everything written. Import the fixtures into a
test module with ``from s3 import s3, s3_server  # noqa: F401``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SECRET = "tp-test-secret-Zq8LmW3vX1"  # AWS_SECRET_ACCESS_KEY in tests: must never be written anywhere
ACCESS_KEY = "AKIATUNEPIPETEST0001"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not listen on port {port} within {timeout:g} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server (its log is in the session's temporary folder)."""
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "wb")  # noqa: SIM115 - closed below
    for _attempt in range(3):  # another process may take the free port first
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc)
            break
        except RuntimeError:
            proc.kill()
            proc.wait()
    else:
        raise RuntimeError("could not start moto_server; see its log in pytest's temporary folder")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@dataclass
class S3:
    """One test's bucket on the server, and a plain boto3 client to look inside it."""

    endpoint: str
    bucket: str
    client: Any
    env: dict[str, str]  # what the fixture set in os.environ (to pass on to subprocesses)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/cache"

    def keys(self, prefix: str = "cache/") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def all_bytes(self) -> bytes:
        """Everything stored in the bucket, keys included (to look for secrets)."""
        return b"".join(k.encode() + self.read(k) for k in self.keys(""))


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3:
    """A fresh bucket, and the environment a user sets for S3-compatible storage. This machine's
    working cache (``TUNEPIPE_LOCAL_CACHE``) is ``tmp_path/node-a``."""
    import boto3

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true",  # no credential lookups on a cloud machine's metadata service
           "TUNEPIPE_LOCAL_CACHE": str(tmp_path / "node-a")}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                 "TUNEPIPE_LEASE_TTL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"tp-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=bucket)
    return S3(s3_server, bucket, client, env)
