"""index/journal_repo.py watch cursors on SQLite and PostgreSQL: made once, moved only from the value read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from minipacs.index import journal_repo
from minipacs.index.database import create_index_engine, upgrade_schema
from tests.index.pg import postgres_schema_url

NOW = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        upgrade_schema(made)
        yield made
        made.dispose()
    else:
        with postgres_schema_url() as url:
            made = create_index_engine(url)
            upgrade_schema(made)
            yield made
            made.dispose()


def test_a_cursor_is_made_once_and_moves_only_from_what_was_read(engine: Engine) -> None:
    with engine.begin() as conn:
        assert journal_repo.watch_cursor(conn, "w") is None
        assert journal_repo.claim_watch_range(conn, "w", None, 5, NOW) is True
        assert journal_repo.claim_watch_range(conn, "w", None, 9, NOW) is False  # another node made it first
        assert journal_repo.watch_cursor(conn, "w") == 5
        assert journal_repo.claim_watch_range(conn, "w", 5, 12, NOW) is True
        assert journal_repo.claim_watch_range(conn, "w", 5, 20, NOW) is False  # moved since it was read
        assert journal_repo.watch_cursor(conn, "w") == 12
        assert journal_repo.watch_cursor(conn, "other") is None
