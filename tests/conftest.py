from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import ServerProcess, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `minipacs serve` subprocess on a free loopback port."""
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()
