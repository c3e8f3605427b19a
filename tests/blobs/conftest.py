from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.s3server import CREDENTIALS, S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, for the whole session; AWS_* credentials set."""
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
