"""PostgreSQL for tests: a fresh schema per test. In CI (CI=true) an unreachable server FAILS."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """An index URL whose search_path is a new, empty schema; the schema is dropped after."""
    base = os.environ.get("MINIPACS_TEST_POSTGRES_URL", DEFAULT_URL)
    engine = create_engine(base)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except (OperationalError, ImportError) as exc:
        engine.dispose()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required in CI but {base} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {base} is unreachable: {exc}")
    try:
        yield f"{base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
