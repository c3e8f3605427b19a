from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import ServerProcess, start_server
from tests.s3server import CREDENTIALS, S3Server, start_s3_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `minipacs serve` subprocess on a free loopback port."""
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server (tests/s3server.py) on a free loopback port, for the whole session; AWS_*
    credentials set. Shared by tests/blobs and tests/scaleout; started only when a test asks for it."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield from start_s3_server(tmp_path_factory.mktemp("s3"))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
