"""Instances that arrive under a Patient ID a merge took away (an HL7 A40, a REST, CLI or UI merge).

A modality that fetched its worklist before the merge, or the late series of an emergency patient first
registered under a temporary ID, sends images under the prior Patient ID after the merge: they make a new
patient of that ID, the split the merge had undone (IHE PIR: the Image Manager should keep the
merge; dcm4chee-arc tracks merged patients for this). The ``merged_patient_arrivals`` setting says what
minipacs then does:

- ``warn`` (the default): one WARNING per such new patient, naming its Patient ID, the patient it was
  merged into and by which correction, and the merge to apply (``POST /api/patients/merge``). Nothing
  moves by itself: a temporary ID a site recycles for another person must not join the survivor's
  record without a person looking.
- ``merge``: the new patient is merged into the survivor at once, by the same correction a user would
  make (its files rewritten, routed copies re-sent), for sites whose prior IDs are never reused. Its
  actor says why.
- ``off``: nothing.

Merges are read from the corrections log (``corrections`` rows of operation ``merge`` that did not
fail): a chain is followed (A into B, then B into C: A's arrivals go to C), and a later merge into a
prior ID makes it a survivor again (no longer watched). The changes journal's NewPatient rows are
looked at every WATCH_SECONDS from a cursor kept in the index (``watch_cursors``, :data:`CURSOR`): a
server goes on after a stop from where it was, so what arrived while it was stopped (a ``minipacs
import``, another node) is looked at too, unless the journal's retention pruned it first; the first
run starts at the journal's end. The nodes sharing an index share the cursor, and each claims the rows
it reads by moving the cursor from the value it read before handling them: each arrival is handled
once, by one node (claimed then handled: a node that dies in between has warned about nothing). The
journal is read as core/changes.py ``read_changes`` reads it, stopping before a recent gap in its
sequence (on a PostgreSQL index shared by nodes, a row whose transaction commits after a later one's).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Final

from minipacs.core.changes import MAX_LIMIT, ChangeType, read_changes
from minipacs.core.errors import ArchiveError
from minipacs.index import corrections_repo, journal_repo

if TYPE_CHECKING:
    from minipacs.core.archive import Archive
    from minipacs.core.corrections import Corrections
    from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)

MODES: Final = ("warn", "merge", "off")
#: Seconds between two looks at the journal's new patients.
WATCH_SECONDS: Final = 2.0
#: Most pages of the journal (core/changes.py MAX_LIMIT rows each) read per look.
PAGES: Final = 20
#: The watcher's cursor in the changes journal (index/journal_repo.py ``watch_cursor``), one for the index.
CURSOR: Final = "merged-arrivals"
#: Longest chain of merges followed (A into B into C ...): longer is a loop, or a log no one keeps.
MAX_HOPS: Final = 32


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def survivors(merges: list[tuple[int, str, str]]) -> dict[str, tuple[str, int]]:
    """Prior Patient ID -> (the patient it ends in, the id of the correction that merged it), from the
    merges in the order they were made."""
    into: dict[str, tuple[str, int]] = {}
    for pk, prior, target in merges:
        into[prior] = (target, pk)
        into.pop(target, None)  # merged into: a survivor again
    out: dict[str, tuple[str, int]] = {}
    for prior, (target, pk) in into.items():
        seen = {prior}
        while target in into and target not in seen and len(seen) < MAX_HOPS:
            seen.add(target)
            target = into[target][0]
        if target != prior:
            out[prior] = (target, pk)
    return out


class MergedArrivals:
    """Watches the journal for new patients whose Patient ID a merge took away; serve starts it."""

    def __init__(self, archive: Archive, corrections: Corrections, mode: str = "warn") -> None:
        if mode not in MODES:
            raise ValueError(f"merged_patient_arrivals must be one of {', '.join(MODES)}")
        self.archive, self.corrections, self.mode = archive, corrections, mode
        self._task: asyncio.Task[None] | None = None
        #: New patients found under a merged-away ID, and those merged again (tests and the curious).
        self.found = 0
        self.merged = 0

    async def start(self) -> None:
        if self.mode == "off":
            return

        def first(conn: IndexConnection) -> None:  # a first run starts at the journal's end, not its history
            if journal_repo.watch_cursor(conn, CURSOR) is None:
                journal_repo.claim_watch_range(conn, CURSOR, None, journal_repo.last_seq(conn), _now())

        await self.archive.write(first)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="minipacs-merged-arrivals")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                await self.look()
            except Exception:  # the index away for a moment: look again later
                log.warning("could not look for patients arriving under a merged-away ID", exc_info=True)

    async def look(self) -> int:
        """Handle the new patients since the last look; how many were under a merged-away ID."""

        def new(conn: IndexConnection) -> tuple[int | None, int, list[tuple[int, str, str]]]:
            since = journal_repo.watch_cursor(conn, CURSOR)
            last, rows = since or 0, []
            # read_changes stops before a gap a transaction still in flight may fill (several nodes on a
            # PostgreSQL index: a lower seq may become visible after a higher one), so nothing is passed
            for _ in range(PAGES):
                found, upto, done = read_changes(conn, last, MAX_LIMIT)
                rows += [(c.seq, c.uid, c.node) for c in found if c.type == ChangeType.NEW_PATIENT.value]
                if upto <= last:
                    break
                last = upto
                if done:
                    break
            return since, last, rows

        since, last, rows = await self.archive.read(new)  # a read: most looks find nothing, and write nothing
        if last == (since or 0):
            return 0
        # claimed before they are handled: another node that read the same rows finds the cursor moved
        claimed = await self.archive.write(
            lambda conn: journal_repo.claim_watch_range(conn, CURSOR, since, last, _now())
        )
        if not claimed or not rows:
            return 0
        ids = {patient_id for _seq, patient_id, _node in rows if patient_id}
        if not ids:
            return 0
        into = survivors(await self.archive.read(corrections_repo.patient_merges))
        found = 0
        for prior in sorted(ids & into.keys()):
            target, correction = into[prior]
            found += 1
            self.found += 1
            await self._arrived(prior, target, correction)
        return found

    async def _arrived(self, prior: str, target: str, correction: int) -> None:
        if self.mode == "warn":
            log.warning(
                "instances arrived under patient ID %r, which correction %d merged into patient %r: they are "
                "a new patient %r now. If it is the same person, merge it again (POST /api/patients/merge "
                '{"source": %r, "target": %r}); merged_patient_arrivals = "merge" does it by itself',
                prior,
                correction,
                target,
                prior,
                prior,
                target,
            )
            return
        actor = (
            f"minipacs: arrivals under patient ID {prior[:64]!r}, "
            f"merged into {target[:64]!r} by correction {correction}"
        )
        try:
            result = await self.corrections.merge(prior, target, actor)
        except ArchiveError as exc:  # e.g. deleted or merged meanwhile
            log.warning("could not merge the new patient %r into %r again: %s", prior, target, exc)
            return
        self.merged += 1
        done = f"as job {result.job}" if result.job is not None else f"{result.instances} file(s) rewritten"
        log.info("new patient %r merged into %r again (correction %s, %s)", prior, target, result.id, done)


__all__ = ["MODES", "WATCH_SECONDS", "MergedArrivals", "survivors"]
