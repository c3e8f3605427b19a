"""SQL of the AE registry (the ``nodes`` table), on a Connection the caller owns.

Rows go in and out as plain mappings keyed by column name; ``core/nodes.py``
turns them into ``Node`` values. Writes run in the archive's writer transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.index.schema import Node

_NODES: Final = cast(Table, Node.__table__)

#: Columns a caller sets (the rest: id, created_at, updated_at are ours).
NODE_FIELDS: Final = ("ae_title", "host", "port", "description", "permissions", "tls")

# Dialects whose INSERT can skip a row that violates a unique constraint, so
# several minipacs nodes seeding the same config at once do not collide.
_INSERT_IGNORING: Final[Mapping[str, Callable[[Mapping[str, Any]], Any]]] = {
    "sqlite": lambda v: sqlite.insert(_NODES).values(**v).on_conflict_do_nothing(index_elements=["ae_title", "host"]),
    "postgresql": lambda v: (
        postgresql.insert(_NODES).values(**v).on_conflict_do_nothing(index_elements=["ae_title", "host"])
    ),
}


def list_nodes(conn: Connection) -> list[dict[str, Any]]:
    """Every node, ordered by AE title, host, port (for display only: never a choice)."""
    rows = conn.execute(select(_NODES).order_by(_NODES.c.ae_title, _NODES.c.host, _NODES.c.port)).mappings()
    return [dict(row) for row in rows]


def nodes_titled(conn: Connection, ae_title: str) -> list[dict[str, Any]]:
    """Nodes whose AE title is exactly ``ae_title``."""
    rows = conn.execute(
        select(_NODES).where(_NODES.c.ae_title == ae_title).order_by(_NODES.c.host, _NODES.c.port)
    ).mappings()
    return [dict(row) for row in rows]


def upsert_node(conn: Connection, values: Mapping[str, Any], now: dt.datetime) -> tuple[dict[str, Any], bool]:
    """Insert the node, or update the one with the same (ae_title, host).

    Returns the stored row and whether it was created (False: updated or unchanged).
    """
    fields = {name: values[name] for name in NODE_FIELDS}
    key = (_NODES.c.ae_title == fields["ae_title"], _NODES.c.host == fields["host"])
    existing = conn.execute(select(_NODES.c.id).where(*key)).first()
    created = False
    if existing is None:
        result = conn.execute(_INSERT_IGNORING[conn.dialect.name]({**fields, "created_at": now, "updated_at": now}))
        created = result.rowcount == 1
    if not created:
        current = conn.execute(select(_NODES).where(*key)).mappings().one()
        if any(current[name] != value for name, value in fields.items()):
            conn.execute(update(_NODES).where(_NODES.c.id == current["id"]).values(**fields, updated_at=now))
    return dict(conn.execute(select(_NODES).where(*key)).mappings().one()), created


def node_by_id(conn: Connection, pk: int) -> dict[str, Any] | None:
    row = conn.execute(select(_NODES).where(_NODES.c.id == pk)).mappings().first()
    return dict(row) if row is not None else None


def update_node(conn: Connection, pk: int, values: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Set the fields of node ``pk`` (the caller checked that it exists and that (ae_title, host) stays unique)."""
    conn.execute(update(_NODES).where(_NODES.c.id == pk).values(**{n: values[n] for n in NODE_FIELDS}, updated_at=now))
    return dict(conn.execute(select(_NODES).where(_NODES.c.id == pk)).mappings().one())


def delete_nodes(conn: Connection, ae_title: str, host: str | None = None) -> int:
    """Delete the nodes titled ``ae_title`` (only the one on ``host`` if given); how many."""
    statement = delete(_NODES).where(_NODES.c.ae_title == ae_title)
    if host is not None:
        statement = statement.where(_NODES.c.host == host)
    return int(conn.execute(statement).rowcount)


__all__ = ["NODE_FIELDS", "delete_nodes", "list_nodes", "node_by_id", "nodes_titled", "update_node", "upsert_node"]
