"""The grace period of a replaced copy: its file stays ``keep_replaced_seconds`` after the switch.

A stored copy is replaced by another one -- a re-sent copy under duplicate_policy "replace"
(core/archive.py), a corrected copy (core/corrections.py, through the same ingest path) or a
compressed copy (core/compression.py) -- in ONE index transaction that switches the row to the new
copy's own blob key (core/paths.py) and queues the old key in ``blob_removals``
(index/blob_removal_repo.py). A C-MOVE, C-GET or WADO request that listed its instances just before
the switch still opens the old key minutes later (a large study is sent one file at a time), so the
old file must still be there: it is removed only once ``remove_after`` has passed, by
:func:`remove_due`, which every node runs every ``keep_replaced_seconds / 2`` (at most a minute,
at least every half second) through :func:`watch` -- whatever the compression settings are.

A crash can neither orphan nor lose a file: the queue row commits with the switch, or neither does;
the blob is removed before its queue row is dropped (a crash between the two removes it again,
a missing blob is not an error). A queued key that a row names again is never removed, only dropped
from the queue (keys are unique per copy, so this does not happen today; the guard stays).

A deletion is not a replacement: a deleted instance's blobs go right after the delete's commit
(core/delete.py).

The same watch removes, once an hour and first at the start, the old packs that deletions emptied
(blobs/packs.py; ``Archive.sweep_packs_if_due``): the intake log's checkpointer does it too, but an
archive with ``fsync = false`` has none, and an emptied pack would otherwise stay until a deletion in it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Final

from minipacs.blobs.base import BlobError
from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.index import blob_removal_repo

log = logging.getLogger(__name__)

#: Blob removals done per pass (the next pass takes the rest).
REMOVALS_PER_PASS: Final = 1000


async def remove_due(archive: Archive, now: dt.datetime | None = None) -> int:
    """Remove the replaced copies whose grace period is over, as of ``now``; returns how many
    blobs were removed (never one a row names)."""
    moment = now or dt.datetime.now(dt.UTC)
    removed = 0
    while True:
        done, more = await _one_pass(archive, moment)
        removed += done
        if not more:
            return removed


async def _one_pass(archive: Archive, moment: dt.datetime) -> tuple[int, bool]:
    """At most :data:`REMOVALS_PER_PASS` removals: (blobs removed, whether to go on at once)."""
    due = await archive.read(lambda conn: blob_removal_repo.due(conn, moment, REMOVALS_PER_PASS))
    kept = [d.id for d in due if d.in_use]
    for item in due:
        if item.in_use:
            log.warning("the replaced copy %s is named by an instance row again: it is kept", item.blob_key)

    def remove() -> list[int]:
        done: list[int] = []
        for item in due:
            if item.in_use:
                continue
            try:
                archive.blobs.delete(item.blob_key)
            except (OSError, BlobError, ArchiveError) as exc:  # stays queued: tried again next pass
                log.error("the replaced copy %s could not be removed (tried again later): %s", item.blob_key, exc)
            else:
                done.append(item.id)
        return done

    done = await asyncio.to_thread(remove) if len(kept) < len(due) else []
    if done or kept:
        await archive.write(lambda conn: blob_removal_repo.forget(conn, done + kept))
    # a full page all handled: more may be due; a failing store: the rest waits for the next pass
    return len(done), len(due) == REMOVALS_PER_PASS and len(done) + len(kept) == len(due)


async def pending(archive: Archive) -> tuple[int, int]:
    """(copies, bytes) of the replaced copies whose files wait for their removal."""
    return await archive.read(blob_removal_repo.pending)


def pass_interval(keep_replaced_seconds: float) -> float:
    """Seconds between two passes: half the grace period, at least 0.5 s, at most a minute."""
    return min(max(keep_replaced_seconds / 2, 0.5), 60.0)


async def watch(archive: Archive, keep_replaced_seconds: float) -> None:
    """Run :func:`remove_due` every :func:`pass_interval`, and the look for emptied packs when it is due,
    until cancelled (bootstrap starts it on every node)."""
    every = pass_interval(keep_replaced_seconds)
    while True:
        try:
            await remove_due(archive)
        except Exception:  # the loop must survive a bad moment of the index or the store
            log.exception("replaced copies: the removal pass failed; trying again in %.1f s", every)
        if archive.pack_sweep_due:  # once an hour (see the module docstring)
            try:
                await asyncio.to_thread(archive.sweep_packs_if_due)
            except Exception:
                log.exception("the look for emptied packs failed; trying again in an hour")
        await asyncio.sleep(every)


__all__ = ["REMOVALS_PER_PASS", "pass_interval", "pending", "remove_due", "watch"]
