"""Corrections re-forward: the instances a correction rewrote go again to the destinations auto-routing
had delivered them to (docs/ROUTING.md "Corrections").

core/corrections.py calls :func:`resend_corrected` (through ``Corrections.resend``, wired by bootstrap
and the web edge with :func:`correction_resender`) once the files are rewritten. The delivery receipts
(core/routing.py) say which instance went where by which rule; the re-sends are "route" jobs of the
same rule and destination, queued with their receipts like any delivery, and retried the same way.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from minipacs.core.jobs import JobQueue
from minipacs.core.routing import ROUTE, DeliveryStatus, submit_deliveries
from minipacs.core.rules import OnCorrection, Rule, RuleBook
from minipacs.index import routing_repo

log = logging.getLogger("minipacs.routing")


#: Job states whose receipts may stand for a copy the destination holds: done, or sending now (it may
#: have read the file before the correction rewrote it).
_SENDING: Final = "running"
#: A receipt still waiting for a job in this state sends the stored file when the job runs: the corrected one.
_WAITING_JOB: Final = "queued"


def corrected_deliveries(receipts: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[str]]:
    """(rule, method, destination) -> SOP Instance UIDs whose copy there may hold the values a correction
    changed: a receipt "sent", or of a job running now; less those a receipt still waits to send (its
    job, queued, reads the corrected file when it runs). A delivery that failed, or was cancelled, gave
    the destination nothing: nothing is sent again (retrying its job by hand sends the corrected file)."""
    given: dict[tuple[str, str, str], set[str]] = {}
    waiting: dict[tuple[str, str, str], set[str]] = {}
    for r in receipts:
        key = (str(r["rule"]), str(r["method"]), str(r["destination"]))
        sop, job_state = str(r["sop_instance_uid"]), r["job_state"]
        if r["status"] == DeliveryStatus.SENT or job_state == _SENDING:
            given.setdefault(key, set()).add(sop)
        elif r["status"] in (DeliveryStatus.QUEUED, DeliveryStatus.RETRYING) and job_state == _WAITING_JOB:
            waiting.setdefault(key, set()).add(sop)
    out: dict[tuple[str, str, str], list[str]] = {}
    for key, sops in given.items():
        left = sorted(sops - waiting.get(key, set()))
        if left:
            out[key] = left
    return out


async def resend_corrected(
    archive: Any, jobs: JobQueue, book: RuleBook, correction: int, sops: Sequence[str], studies: Sequence[str]
) -> list[int]:
    """After correction ``correction`` rewrote instances ``sops`` (filed under ``studies``: the ones they
    are in now and, for a series moved, the one they were in), queue them again, as "route" jobs, to
    every destination a rule delivered them to, unless the rule says ``on_correction = "ignore"``
    (docs/ROUTING.md "Corrections"). The destination receives the corrected instance under the same SOP
    Instance UID, as a modality re-sending a corrected image would. Skipped, with a log line: a rule
    that no longer exists or no longer names that destination. Returns the jobs queued."""
    if not sops:
        return []
    receipts = await archive.read(lambda conn: routing_repo.instance_receipts(conn, studies, sops))
    wanted = corrected_deliveries(receipts)
    if not wanted:
        return []
    rules = {r.name: r for r in await book.all()}
    todo: dict[tuple[Rule, str, str], list[str]] = {}
    for (name, method, destination), uids in wanted.items():
        rule = rules.get(name)
        if rule is None:
            log.info(
                "routing: correction %d: rule %s, which sent %d of its instance(s) to %s, no longer exists; "
                "not sent again",
                correction,
                name,
                len(uids),
                destination,
            )
        elif rule.on_correction is OnCorrection.IGNORE:
            log.info(
                "routing: correction %d: rule %s says on_correction = ignore; %s keeps what it has",
                correction,
                name,
                destination,
            )
        elif (method, destination) not in rule.destinations():
            log.info(
                "routing: correction %d: rule %s no longer sends to %s (%s); not sent again",
                correction,
                name,
                destination,
                method,
            )
        else:
            todo[(rule, method, destination)] = uids
    if not todo:
        return []
    every = sorted({u for uids in todo.values() for u in uids})
    found = await archive.read(lambda conn: routing_repo.arrived_instances(conn, every))
    where = {sop: (study, series) for study, series, sop in found}  # deleted meanwhile: not there
    submitted: list[int] = []
    for (rule, method, destination), uids in todo.items():
        by_study: dict[str, list[dict[str, str]]] = {}
        for sop in uids:
            if sop in where:
                study, series = where[sop]
                by_study.setdefault(study, []).append({"sop_instance_uid": sop, "series_instance_uid": series})
        for study, rows in by_study.items():
            submitted += await submit_deliveries(jobs, rule, method, destination, study, rows, correction=correction)
    return submitted


def correction_resender(
    archive: Any, jobs: JobQueue | None, book: RuleBook
) -> Callable[[int, Sequence[str], Sequence[str]], Awaitable[list[int]]] | None:
    """:func:`resend_corrected` bound to ``archive``, ``jobs`` and ``book``, for core/corrections.py's
    ``resend``; None when ``jobs`` cannot run "route" jobs (nothing would ever send them)."""
    if jobs is None or ROUTE not in jobs.kinds:
        return None
    return functools.partial(resend_corrected, archive, jobs, book)


__all__ = ["correction_resender", "corrected_deliveries", "resend_corrected"]
