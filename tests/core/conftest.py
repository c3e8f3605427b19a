"""Archive fixtures: every archive test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from tests.index.pg import postgres_schema_url

T = TypeVar("T")
ArchiveRunner = Callable[..., Any]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_schema_url() as url:
            yield url


@pytest.fixture
def with_archive(tmp_path: Path, index_url: str) -> Callable[..., Any]:
    """``with_archive(body, **settings)`` runs ``await body(archive)`` on a fresh archive."""

    def run(body: Callable[[Archive], Awaitable[T]], **settings: Any) -> T:
        async def main() -> T:
            archive = await open_archive(Settings(data_dir=tmp_path / "data", index_url=index_url, **settings))
            try:
                return await body(archive)
            finally:
                await archive.close()

        return asyncio.run(main())

    return run
