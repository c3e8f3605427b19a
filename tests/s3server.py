"""A real S3 server on loopback for the tests: moto's standalone server (``moto[server]``).

Started once per test session by the ``s3_server`` fixture of tests/conftest.py (used by tests/blobs
and tests/scaleout). It is a test dependency (pyproject [test] extras, installed by .ci/run): when it
is missing the tests FAIL, never skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import free_port

#: What boto3 in the tests and in `minipacs serve` children sign with (moto accepts any).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "minipacs-test",
    "AWS_SECRET_ACCESS_KEY": "minipacs-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    _client: Any = None

    def client(self) -> Any:
        """One boto3 client for the session (closed with the server: no socket left to the GC)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
        return self._client

    def new_bucket(self) -> str:
        name = "minipacs-" + uuid.uuid4().hex[:20]
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "archive") -> dict[str, str]:
        """The environment of a `minipacs serve` storing in ``s3://bucket/prefix`` on this server."""
        return {
            **CREDENTIALS,
            "MINIPACS_STORAGE": f"s3://{bucket}/{prefix}",
            "MINIPACS_S3_ENDPOINT": self.endpoint,
            "MINIPACS_S3_REGION": "us-east-1",
        }


def start_s3_server(tmp: Path, timeout: float = 60.0) -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401 - only to fail with a sentence rather than a timeout
    except ImportError as exc:
        raise RuntimeError(
            "moto[server] is not installed: the S3 tests need it (pip install 'moto[server]'; .ci/run installs "
            "the [test] extras)"
        ) from exc
    port = free_port()
    log_path = tmp / "moto.log"
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CREDENTIALS},
        )
    server = S3Server(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:  # poll until it answers HTTP (a bare open port may not serve yet)
            if proc.poll() is not None:
                raise RuntimeError("the moto S3 server exited at start:\n" + log_path.read_text(errors="replace"))
            try:
                urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the moto S3 server did not answer within {timeout:.0f} s:\n"
                        + log_path.read_text(errors="replace")
                    ) from None
                time.sleep(0.1)
        yield server
    finally:
        if server._client is not None:
            server._client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
