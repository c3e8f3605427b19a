"""SQL of the UI home summary (core/summary.py): studies that received instances since given times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, select

from minipacs.index.schema import Study


def studies_received_since(conn: Connection, since: Sequence[dt.datetime]) -> list[int]:
    """For each time of ``since``: the studies whose last instance arrived at or after it.

    One scan of ``studies`` (``updated_at`` is not indexed: an index would cost every ingest an
    index update, for a figure the UI reads)."""
    if not since:
        return []
    oldest = min(since)
    stamps = [
        stamp
        for (stamp,) in conn.execute(select(Study.updated_at).where(Study.updated_at >= oldest)).all()
        if stamp is not None
    ]
    return [sum(1 for stamp in stamps if stamp >= moment) for moment in since]


__all__ = ["studies_received_since"]
