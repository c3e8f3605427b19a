"""Pruning the changes journal (core/changes.py): rows older than ``changes_retention_days``.

The journal grows by a row per instance stored and deleted (about 150 bytes each, plus its index):
at 25 million instances a year, some 4 GB a year of an index that is otherwise a few hundred bytes per
instance. With ``changes_retention_days`` set, every node removes, once an hour and in batches (so the
writer is never held long), the rows older than that, except:

- the rows a routing cursor has not passed yet (index/routing_repo.py ``lowest_cursor``): a node that
  was down for longer still routes what it stored, from its cursor;
- the newest row, always: SQLite would hand its ``seq`` out again once the table is empty, and a
  reader paging with ``since`` would then never see the new rows.

A reader of ``GET /api/changes`` whose ``since`` is below ``first - 1`` (the answer's ``first``) has
missed pruned rows: it should start again from the index, as after a first start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Final

from minipacs.core.archive import Archive
from minipacs.index import journal_repo, routing_repo

log = logging.getLogger(__name__)

#: Rows removed per writer transaction.
BATCH: Final = 10_000
#: Seconds between two prunings.
EVERY: Final = 3600.0


async def prune(archive: Archive, days: int, now: dt.datetime | None = None) -> int:
    """Remove the journal rows older than ``days`` days that no routing cursor still needs (module
    text); how many. ``days`` 0 or less: none."""
    if days <= 0:
        return 0
    before = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    cursor = await archive.read(routing_repo.lowest_cursor)
    below = None if cursor is None else cursor + 1
    removed = 0
    while True:
        done: int = await archive.write(lambda conn: journal_repo.prune_changes(conn, before, below, BATCH))
        removed += done
        if done < BATCH:
            break
        await asyncio.sleep(0)  # let the C-STORE path's batches in between
    if removed:
        log.info("changes journal: %d row(s) older than %d day(s) pruned", removed, days)
    return removed


async def watch(archive: Archive, days: int, every: float = EVERY) -> None:
    """Prune every ``every`` seconds until cancelled; a failure is logged and tried again next time."""
    while True:
        try:
            await prune(archive, days)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("changes journal: could not prune: %s", exc)
        await asyncio.sleep(every)


__all__ = ["BATCH", "EVERY", "prune", "watch"]
