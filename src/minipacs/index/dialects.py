"""The INSERT of the index's dialect: SQLite's and PostgreSQL's both have ON CONFLICT (DO NOTHING, DO
UPDATE), which SQLAlchemy's generic ``insert`` does not."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

_DIALECT_INSERT: Final[Mapping[str, Callable[..., Any]]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_of(conn: Connection) -> Callable[..., Any]:
    """``insert`` of ``conn``'s dialect (``insert_of(conn)(table).values(...).on_conflict_do_nothing()``)."""
    return _DIALECT_INSERT[conn.dialect.name]


__all__ = ["insert_of"]
