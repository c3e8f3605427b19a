"""Auto-routing: rules (core/rules.py) turned into jobs of the persistent queue, and the delivery receipts.

How each trigger fires (docs/ROUTING.md):

- ``instance``: the router reads what this node stored from the changes journal (core/changes.py:
  its "NewInstance" rows are written in the ingest's own transaction, so nothing is added to the
  C-STORE path and an acknowledged instance always has its row). ``Archive.on_stored`` only wakes
  the router; it waits ``routing_coalesce_seconds`` after the first arrival (so a burst becomes
  one job per study and destination), matches the rule in the index and submits the jobs.
- ``stable``: the same batches move the rule's mark of the study (or series) in the index
  (``routing_marks.last_arrival_at``). Every ``routing_poll_seconds`` each node looks for marks
  quiet for ``stable_seconds`` and not yet routed; the node whose conditional UPDATE sets
  ``routed_at`` routes it, ONCE. An instance arriving later moves the mark again; when it is quiet
  again, only the instances this rule has not yet given to that destination are routed (a receipt
  says so), never the whole study twice.
- After a batch's jobs and marks are written, the node's cursor (``routing_cursors``: the journal
  ``seq`` read up to) moves past it. A crash before that leaves the batch after the cursor: the next
  start reads it again. Routing it again sends nothing twice: ``route`` skips what a receipt says
  the rule gave (or is giving) that destination, and a study whose mark is touched again is routed
  once quiet, only for what was not yet given.
- ``complete``: studies marked complete (MPPS COMPLETED and every referenced instance arrived,
  core/mpps.py) since ``routing_catch_up_seconds`` ago (and since the rule was made, for rules of
  the API): routed once each (a mark per study).
- ``scheduled``: worklist entries created (HL7 ORM, REST, `minipacs worklist add`) in the same
  window, SCHEDULED, matching the rule: one prefetch job each (a mark per entry).

Each delivery is a job of the queue (kind ``route``: C-STORE or STOW-RS of given instances; kind
``prefetch``: C-FIND + C-MOVE of prior studies), so a destination that is down is retried with the
queue's back-off, visible and cancellable from any node. The receipts (table ``deliveries``) are
written with the job, in one transaction, and brought up to date by the job as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataset import Dataset

from minipacs.core.changes import MAX_LIMIT, ChangeType, last_seq, read_changes
from minipacs.core.jobs import JobQueue
from minipacs.core.model import StoreOutcome, StoreStatus
from minipacs.core.query import query
from minipacs.core.rules import Rule, RuleBook, Trigger
from minipacs.core.worklist import SCHEDULED, Worklist, matches
from minipacs.dicom.levels import LEVEL_SPELLINGS, STUDY_ROOT, Level
from minipacs.index import node_claim, routing_repo
from minipacs.index.database import IndexConnection

log = logging.getLogger("minipacs.routing")

ROUTE: Final = "route"
PREFETCH: Final = "prefetch"
#: Most instances in one delivery job (a larger study becomes several jobs).
MAX_PER_JOB: Final = 5000
#: SOP Instance UIDs per matching query (index/matching.py MAX_LIST_VALUES).
_MATCH_CHUNK: Final = 1000
#: Routed marks are kept at least this long (and at least routing_catch_up_seconds), then forgotten.
MARKS_KEPT: Final = dt.timedelta(days=1)
PRUNE_EVERY: Final = dt.timedelta(hours=1)
#: Most receipts one read returns.
MAX_RECEIPTS: Final = 20000


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"  # the job waits for its turn
    SENT = "sent"  # the destination confirmed it (C-STORE success or warning, STOW-RS stored, C-MOVE done)
    RETRYING = "retrying"  # an attempt failed for a passing reason; the queue tries again (reason says why)
    FAILED = "failed"  # given up (reason says why); the job can be retried by hand


#: What each status tells a person (the UI's legend, docs/ROUTING.md).
STATUS_WORDS: Final[Mapping[DeliveryStatus, str]] = {
    DeliveryStatus.QUEUED: "waiting to be sent",
    DeliveryStatus.SENT: "delivered",
    DeliveryStatus.RETRYING: "not delivered yet; it will be tried again",
    DeliveryStatus.FAILED: "not delivered; retry the job once the cause is fixed",
}


@dataclass(frozen=True)
class RoutingSettings:
    """config.py keys routing_* (docs/ROUTING.md)."""

    poll_seconds: float = 1.0
    catch_up_seconds: float = 3600.0
    #: After the first arrival of a burst, wait this long for more before routing it (fewer, larger jobs).
    coalesce_seconds: float = 0.2


#: ``Router._cursor`` when no rule watches arrivals (the index keeps no cursor for this node then).
_UNWATCHED: Final = -1
_NEW_INSTANCE: Final = ChangeType.NEW_INSTANCE.value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def receipt_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One receipt as ``GET /api/studies/{uid}/deliveries`` answers it. A receipt still waiting
    whose job was cancelled (or failed before it ran) says so: "failed", and why."""
    status = next((s for s in DeliveryStatus if s.value == row["status"]), None)
    reason = row["reason"]
    job_state = row.get("job_state")
    if status in (DeliveryStatus.QUEUED, DeliveryStatus.RETRYING) and job_state in ("cancelled", "failed"):
        why = f"its job {row['job_id']} was {job_state}" + ("" if job_state == "cancelled" else " (see the job)")
        status, reason = DeliveryStatus.FAILED, why + (f"; last attempt: {reason}" if reason else "")
    study, series, image = (LEVEL_SPELLINGS[lv].noun for lv in (Level.STUDY, Level.SERIES, Level.IMAGE))
    return {  # the JSON API's nouns (dicom/levels.py)
        study: row["study_instance_uid"],
        series: row["series_instance_uid"],
        image: row["sop_instance_uid"],
        "rule": row["rule"],
        "destination": row["destination"],
        "method": row["method"],
        "status": status.value if status is not None else row["status"],
        "meaning": STATUS_WORDS[status] if status is not None else "",
        "reason": reason,
        "job": row["job_id"],
        "created_at": row["created_at"].isoformat() if row["created_at"] else None,
        "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
    }


async def study_receipts(index: Any, study: str, limit: int = MAX_RECEIPTS) -> list[dict[str, Any]]:
    rows = await index.read(lambda conn: routing_repo.study_deliveries(conn, study, limit))
    return [receipt_json(r) for r in rows]


def summarise(receipts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Receipts grouped by (rule, destination, method): counts per status, latest change and reason."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in receipts:
        key = (r["rule"], r["destination"], r["method"])
        group = groups.setdefault(
            key,
            {"rule": key[0], "destination": key[1], "method": key[2], "counts": {}, "updated_at": "", "reason": ""},
        )
        group["counts"][r["status"]] = group["counts"].get(r["status"], 0) + 1
        if (r["updated_at"] or "") >= group["updated_at"]:
            group["updated_at"] = r["updated_at"] or ""
            if r["reason"]:
                group["reason"] = r["reason"]
    return list(groups.values())


#: Destinations the overview page lists as failing (the most recently failing first).
FAILING_DESTINATIONS: Final = 20


async def delivery_counts(index: Any) -> list[tuple[str, str, int]]:
    """(destination, status, receipts) of every receipt kept (``minipacs_deliveries``, docs/METRICS.md);
    a receipt waiting for a cancelled or failed job counts as failed, as the study page says it."""
    rows: list[tuple[str, str, int]] = await index.read(routing_repo.delivery_counts)
    return rows


async def failing_destinations(
    index: Any, since: dt.datetime, limit: int = FAILING_DESTINATIONS
) -> list[dict[str, Any]]:
    """Destinations with deliveries retrying or failed changed since ``since`` (the overview page):
    how many receipts and studies, and the latest status and reason in words."""
    rows = await index.read(lambda conn: routing_repo.failing_destinations(conn, since, limit))
    found = []
    for row in rows:
        status = DeliveryStatus(row["status"])
        reason = row["reason"]
        if row["job_state"] in ("cancelled", "failed") and row["job"] is not None:
            why = f"its job {row['job']} was {row['job_state']}"
            reason = why + (f"; last attempt: {reason}" if reason else "")
        found.append(
            {
                "destination": row["destination"],
                "receipts": row["receipts"],
                "studies": row["studies"],
                "status": status.value,
                "meaning": STATUS_WORDS[status],
                "reason": reason,
                "job": row["job"],
                "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
            }
        )
    return found


async def record_outcomes(
    index: Any, job_id: int, sent: Sequence[str], failed: Mapping[str, str], *, retrying: bool, note: str = ""
) -> None:
    """A delivery job's attempt ended: ``sent`` delivered (``note``: the receipt's reason, e.g. that a
    de-identified copy went); ``failed`` (SOP -> why) retried or given up."""
    now = _now()
    status = DeliveryStatus.RETRYING if retrying else DeliveryStatus.FAILED

    def run(conn: IndexConnection) -> None:
        if sent:
            routing_repo.set_job_deliveries(conn, job_id, DeliveryStatus.SENT, note, now, sops=list(sent))
        by_reason: dict[str, list[str]] = {}
        for sop, why in failed.items():
            by_reason.setdefault(why, []).append(sop)
        for why, sops in by_reason.items():
            routing_repo.set_job_deliveries(conn, job_id, status, why, now, sops=sops, unless=DeliveryStatus.SENT)

    await index.write(run)


async def set_study_receipt(index: Any, job_id: int, study: str, status: DeliveryStatus, reason: str) -> None:
    """The receipt of a study-level delivery (a prefetch's C-MOVE of one prior study)."""
    now = _now()
    await index.write(lambda conn: routing_repo.set_study_delivery(conn, job_id, study, status, reason, now))


async def job_receipts(index: Any, job_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await index.read(lambda conn: routing_repo.job_deliveries(conn, job_id))
    return rows


async def add_receipts(index: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    await index.write(lambda conn: routing_repo.insert_deliveries(conn, rows))


def receipt_row(
    job_id: int | None, rule: str, method: str, destination: str, study: str, series: str = "", sop: str = ""
) -> dict[str, Any]:
    now = _now()
    return {
        "study_instance_uid": study,
        "series_instance_uid": series,
        "sop_instance_uid": sop,
        "rule": rule,
        "destination": destination,
        "method": method,
        "status": DeliveryStatus.QUEUED.value,
        "reason": "",
        "job_id": job_id,
        "created_at": now,
        "updated_at": now,
    }


async def submit_deliveries(
    jobs: JobQueue,
    rule: Rule,
    method: str,
    destination: str,
    study: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    correction: int | None = None,
) -> list[int]:
    """Queue the delivery of ``rows`` (``sop_instance_uid``, ``series_instance_uid``) of ``study`` to
    ``destination`` by ``rule``: one job per :data:`MAX_PER_JOB` instances, its receipts written with
    it. ``correction``: a re-send of instances that correction rewrote (core/reforward.py)."""
    submitted: list[int] = []
    for chunk in _chunks(rows, MAX_PER_JOB):
        receipts: list[tuple[str, ...]] = [
            (rule.name, method, destination, study, r["series_instance_uid"], r["sop_instance_uid"]) for r in chunk
        ]

        def then(conn: IndexConnection, job_id: int, receipts: list[tuple[str, ...]] = receipts) -> None:
            routing_repo.insert_deliveries(conn, [receipt_row(job_id, *r) for r in receipts])

        params: dict[str, Any] = {
            "rule": rule.name,
            "method": method,
            "destination": destination,
            "study": study,
            "instances": len(chunk),  # which ones: the job's receipts (not here: GET /api/jobs stays small)
        }
        if rule.anonymize is not None:  # the job keeps what the rule said when it was queued
            params["anonymize"] = list(rule.anonymize)
        if correction is not None:
            params["correction"] = correction
        job = await jobs.submit(
            ROUTE,
            f"rule {rule.name}: {len(chunk)} instance(s) of study {study} to {destination} ({method})"
            + (", anonymized" if rule.anonymize is not None else "")
            + (f", again: corrected by correction {correction}" if correction is not None else ""),
            params,
            total=len(chunk),
            then=then,
        )
        submitted.append(job.id)
        log.info("routing: %s", job.description)
    return submitted


def _flat(ds: Dataset) -> Dataset:
    """A worklist entry with its first Scheduled Procedure Step's attributes at the top (Modality...)."""
    flat = Dataset()
    flat.update(ds)
    seq = ds.get("ScheduledProcedureStepSequence")
    if seq:
        for elem in seq[0]:
            if elem.tag not in flat:
                flat.add(elem)
    return flat


class Router:
    """Runs the rules of a :class:`RuleBook` on this node: watches arrivals, polls the waiting triggers,
    submits delivery jobs. Several nodes may run one each on a shared index (module docstring)."""

    def __init__(self, archive: Any, jobs: JobQueue, book: RuleBook, settings: RoutingSettings | None = None) -> None:
        self.archive = archive
        self.jobs = jobs
        self.book = book
        self.settings = settings or RoutingSettings()
        self._arriving = False  # an instance arrived since the last pass (its journal row says which)
        #: The journal ``seq`` up to which this node's arrivals are routed (None: not read yet).
        self._cursor: int | None = None  # _UNWATCHED: no rule watches arrivals
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()  # set by close(): ends the wait for more of a burst at once
        self._watch_arrivals = True  # any instance/stable rule? (refreshed each pass)
        self.passes = 0  # completed passes (tests wait on it)
        self._pruned_at: dt.datetime | None = None

    # ------------------------------------------------------------ the C-STORE side: cheap

    def instance_stored(self, outcome: StoreOutcome) -> None:
        """``Archive.on_stored`` listener: wake the router; no index work here. What arrived is in the
        changes journal already, written with the instance's row: nothing is kept in memory."""
        if outcome.status is StoreStatus.DUPLICATE_KEPT or not self._watch_arrivals:
            return
        self._arriving = True
        self._wake.set()

    # ------------------------------------------------------------ the task

    async def prepare(self) -> None:
        """Before the node serves (bootstrap): open the cursor, so that an instance stored from the first
        association on is routed even if it arrives before the task's first pass."""
        rules = await self.book.all()
        self._watch_arrivals = any(r.when in (Trigger.INSTANCE, Trigger.STABLE) for r in rules)
        if self._watch_arrivals:
            await self._open_cursor()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="minipacs-routing")

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        if self._task is not None:
            self._wake.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            if self._arriving:  # routed now rather than at the next start
                with contextlib.suppress(Exception):
                    await self.run_once(arrivals_only=True)

    async def _loop(self) -> None:
        while not self._closing:
            try:
                await self.run_once()
            except Exception:  # the router must survive a bad moment of the index
                log.exception("routing: a pass failed; trying again in %s s", self.settings.poll_seconds)
            self.passes += 1
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            if self._arriving and not self._closing:  # let the burst go on a little: fewer, larger jobs
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.coalesce_seconds)
            self._wake.clear()

    async def run_once(self, *, arrivals_only: bool = False) -> None:
        rules = await self.book.all()
        self._watch_arrivals = any(r.when in (Trigger.INSTANCE, Trigger.STABLE) for r in rules)
        self._arriving = False  # what arrives from now on is read by the next pass
        try:
            await self._journal(rules)
        except Exception:
            if arrivals_only:
                raise
            # the waiting triggers below go on; the same arrivals are read again at the next pass
            log.exception("routing: what arrived after change %s could not be routed yet", self._cursor)
        if arrivals_only:
            return
        try:
            await self._take_over(rules)
        except Exception:
            log.exception("routing: what a stopped node stored could not be routed yet")
        now = _now()
        await self._prune(now)
        for rule in rules:
            if rule.when is Trigger.STABLE:
                await self._stable(rule, now)
            elif rule.when is Trigger.COMPLETE:
                await self._complete(rule, now)
            elif rule.when is Trigger.SCHEDULED:
                await self._scheduled(rule, now)

    async def _prune(self, now: dt.datetime) -> None:
        """Once an hour: forget marks routed long ago (older than the catch-up window, at least a day):
        a complete/scheduled rule no longer looks that far back, a stable one makes a new mark."""
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        keep = max(self.settings.catch_up_seconds, MARKS_KEPT.total_seconds())
        before = now - dt.timedelta(seconds=keep)
        removed = await self.archive.write(lambda conn: routing_repo.prune_marks(conn, before))
        if removed:
            log.info("routing: %d mark(s) of studies routed before %s forgotten", removed, f"{before:%Y-%m-%d %H:%M}")

    # ------------------------------------------------------------ triggers

    async def _journal(self, rules: Sequence[Rule]) -> None:
        """Route what this node stored after its cursor (the changes journal's NewInstance rows of this
        node), a page at a time, moving the cursor past each page once its jobs and marks are written.
        The first pass after a start is the recovery: what arrived before a crash and was not routed."""
        node = self.archive.settings.node_id
        if not self._watch_arrivals:
            if self._cursor != _UNWATCHED:  # nothing waits; a rule made later starts from its own time
                await self.archive.write(lambda conn: routing_repo.forget_arrival_cursor(conn, node))
                self._cursor = _UNWATCHED
            return
        first = await self._open_cursor()

        def moved(upto: int) -> None:
            self._cursor = upto

        found = await self._route_after(rules, node, first, moved)
        if not self.passes and found:  # the first pass: what the last run (or a crash) left
            log.info("routing: %d instance(s) stored after change %s were not routed yet: routed now", found, first)

    async def _route_after(self, rules: Sequence[Rule], node: str, since: int, moved: Callable[[int], None]) -> int:
        """Route what ``node`` stored after journal ``seq`` ``since``, a page at a time; ``moved(upto)``
        after each page. Returns the instances routed."""
        found = 0
        while True:
            changes, upto, done = await self.archive.read(lambda conn, s=since: read_changes(conn, s, MAX_LIMIT))
            if upto == since:
                break
            sops = [c.uid for c in changes if c.type == _NEW_INSTANCE and c.node == node]
            if sops:
                arrivals = await self.archive.read(lambda conn, u=sops: routing_repo.arrived_instances(conn, u))
                await self._arrived(rules, arrivals, upto, node)
                found += len(arrivals)
            # else: nothing of its in the page (other nodes' rows, deletions...): the cursor moves on in
            # memory and is written with the next page that routes something (re-reading it costs nothing)
            moved(upto)
            since = upto
            if done:
                break
        return found

    async def _take_over(self, rules: Sequence[Rule]) -> None:
        """Route what a stopped node stored and did not route (a node that crashed and never started again,
        or was taken out of the cluster): on a shared index, each other node with a cursor whose claim
        no live process holds (index/node_claim.py) is routed here, under its claim, from its cursor.
        Its claim is held only for the pass: a node starting again waits for it (CLAIM_WAIT)."""
        engine = getattr(self.archive, "shared_index_engine", None)
        if engine is None or not self._watch_arrivals:
            return  # SQLite: one node; or nothing watches arrivals
        me = self.archive.settings.node_id
        for node in await self.archive.read(routing_repo.cursor_nodes):
            if node == me:
                continue
            claim = await asyncio.to_thread(node_claim.hold_if_gone, engine, node)
            if claim is None:
                continue  # alive: it routes its own
            try:
                since = await self.archive.read(lambda conn, n=node: routing_repo.arrival_cursor(conn, n))
                if since is None:
                    continue
                read = [since]
                found = await self._route_after(rules, node, since, read.append)
                if read[-1] != since:  # read up to there: the next pass starts after it
                    await self.archive.write(
                        lambda conn, n=node, s=read[-1]: routing_repo.set_arrival_cursor(conn, n, s, _now())
                    )
                if found:
                    log.info("routing: %d instance(s) that node %r stored and did not route: routed here", found, node)
            finally:
                await asyncio.to_thread(claim.release)

    async def _open_cursor(self) -> int:
        """This node's cursor from the index, or, for the first rule watching arrivals, made at the
        journal's end: what was stored before is not routed (a rule does not route the past)."""
        if self._cursor is not None and self._cursor != _UNWATCHED:
            return self._cursor
        node = self.archive.settings.node_id
        kept: int | None = await self.archive.read(lambda conn: routing_repo.arrival_cursor(conn, node))
        if kept is None:
            kept = await self.archive.read(last_seq)
            await self.archive.write(lambda conn, s=kept: routing_repo.set_arrival_cursor(conn, node, s, _now()))
        self._cursor = kept
        return kept

    async def _arrived(
        self, rules: Sequence[Rule], arrivals: Sequence[tuple[str, str, str]], upto: int, node: str
    ) -> None:
        """Route ``arrivals`` (study, series, SOP) that ``node`` stored; the last write moves its cursor to
        ``upto``."""
        by_study: dict[str, list[str]] = {}
        series_of: dict[str, str] = {}
        for study, series, sop in arrivals:
            by_study.setdefault(study, []).append(sop)
            series_of[series] = study
        marks = [
            (r.name, key, study)
            for r in rules
            if r.when is Trigger.STABLE
            for key, study in (series_of.items() if r.level == "series" else ((s, s) for s in by_study))
        ]
        instance = [r for r in rules if r.when is Trigger.INSTANCE] if by_study else []
        at = _now()

        def touch(conn: IndexConnection) -> None:
            routing_repo.touch_marks(conn, marks, at)
            if not instance:
                routing_repo.set_arrival_cursor(conn, node, upto, at)

        if marks or not instance:
            await self.archive.write(touch)
        if not instance:
            return
        for rule in instance:
            for study, sops in by_study.items():
                await self.route(rule, study, sops=sops)
        # after the jobs: a crash before this routes the page again, which sends nothing twice (route)
        await self.archive.write(lambda conn: routing_repo.set_arrival_cursor(conn, node, upto, _now()))

    async def _stable(self, rule: Rule, now: dt.datetime) -> None:
        quiet_since = now - dt.timedelta(seconds=rule.stable_seconds)
        due = await self.archive.read(lambda conn: routing_repo.due_marks(conn, rule.name, quiet_since))
        for mark in due:
            pk, seen = mark["id"], mark["last_arrival_at"]
            if await self.archive.write(lambda conn, pk=pk, seen=seen: routing_repo.claim_mark(conn, pk, seen, now)):
                series = mark["key"] if rule.level == "series" else None
                await self.route(rule, mark["study_instance_uid"], series=series)

    def _since(self, rule: Rule, now: dt.datetime) -> dt.datetime:
        since = now - dt.timedelta(seconds=self.settings.catch_up_seconds)
        return max(since, rule.created_at) if rule.created_at is not None else since

    async def _complete(self, rule: Rule, now: dt.datetime) -> None:
        since = self._since(rule, now)
        studies = await self.archive.read(lambda conn: routing_repo.completions_since(conn, since))
        done = await self.archive.read(lambda conn: routing_repo.marked_keys(conn, rule.name, studies))
        for study in studies:
            if study in done:
                continue
            if await self.archive.write(lambda conn, s=study: routing_repo.mark_once(conn, rule.name, s, s, now)):
                await self.route(rule, study)

    async def _scheduled(self, rule: Rule, now: dt.datetime) -> None:
        since = self._since(rule, now)
        entries = await self.archive.read(lambda conn: routing_repo.worklist_since(conn, since, [SCHEDULED]))
        keys = [f"worklist:{e['id']}" for e in entries]
        done = await self.archive.read(lambda conn: routing_repo.marked_keys(conn, rule.name, keys))
        worklist = Worklist(self.archive)
        for entry, key in zip(entries, keys, strict=True):
            if key in done:
                continue
            study = str(entry["study_instance_uid"] or "")
            if not await self.archive.write(
                lambda conn, k=key, s=study: routing_repo.mark_once(conn, rule.name, k, s, now)
            ):
                continue
            if rule.match:
                found = await worklist.get(int(entry["id"]))
                if found is None or not matches(rule.keys(), _flat(found.dataset)):
                    continue
            await self.prefetch(
                rule, patient_id=str(entry["patient_id"] or ""), study=study, worklist_id=int(entry["id"])
            )

    # ------------------------------------------------------------ actions

    async def matching(
        self, rule: Rule, study: str, *, series: str | None = None, sops: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The study's instances (of ``series``, among ``sops``) that ``rule`` selects."""
        rows = await self.archive.read(lambda conn: routing_repo.study_instances(conn, study, series=series, sops=sops))
        rows = [r for r in rows if rule.from_ae(r["calling_aet"], r["called_aet"])]
        if not (rule.match or rule.labels) or not rows:
            return rows
        keep: set[str] = set()
        for chunk in _chunks([r["sop_instance_uid"] for r in rows], _MATCH_CHUNK):
            identifier = rule.identifier({"StudyInstanceUID": study, "SOPInstanceUID": "\\".join(chunk)})
            found = query(self.archive, Level.IMAGE, identifier, model=STUDY_ROOT, relational=True, labels=rule.labels)
            async for ds in found:
                keep.add(str(ds.SOPInstanceUID))
        return [r for r in rows if r["sop_instance_uid"] in keep]

    async def route(
        self, rule: Rule, study: str, *, series: str | None = None, sops: Sequence[str] | None = None
    ) -> list[int]:
        """Submit the deliveries of ``rule`` for ``study``: one job per destination (and per
        :data:`MAX_PER_JOB` instances), skipping instances this rule already gave that destination."""
        rows = await self.matching(rule, study, series=series, sops=sops)
        if not rows:
            return []
        submitted: list[int] = []
        for method, destination in rule.destinations():
            uids = [r["sop_instance_uid"] for r in rows]
            given = await self.archive.read(
                lambda conn, d=destination, u=uids: routing_repo.already_routed(conn, rule.name, d, u)
            )
            todo = [r for r in rows if r["sop_instance_uid"] not in given]
            submitted += await submit_deliveries(self.jobs, rule, method, destination, study, todo)
        return submitted

    async def prefetch(self, rule: Rule, *, patient_id: str, study: str, worklist_id: int) -> int | None:
        """Submit the prefetch of ``patient_id``'s prior studies (all but ``study``) for a worklist entry."""
        if not patient_id:
            log.info(
                "routing: rule %s: worklist entry %d has no Patient ID; nothing to prefetch", rule.name, worklist_id
            )
            return None
        job = await self.jobs.submit(
            PREFETCH,
            f"rule {rule.name}: prior studies of patient {patient_id} from {rule.prefetch_from} to {rule.prefetch_to}",
            {
                "rule": rule.name,
                "patient_id": patient_id,
                "exclude": study,
                "from": rule.prefetch_from,
                "to": rule.prefetch_to,
                "worklist": worklist_id,
            },
        )
        log.info("routing: %s", job.description)
        return job.id


__all__ = [
    "MAX_PER_JOB",
    "PREFETCH",
    "ROUTE",
    "STATUS_WORDS",
    "FAILING_DESTINATIONS",
    "DeliveryStatus",
    "Router",
    "RoutingSettings",
    "add_receipts",
    "delivery_counts",
    "failing_destinations",
    "job_receipts",
    "receipt_json",
    "receipt_row",
    "record_outcomes",
    "set_study_receipt",
    "study_receipts",
    "submit_deliveries",
    "summarise",
]
