"""Retention: delete what has expired, keep storage under a quota (issue 13, "Storage policy").

Rules come from the configuration (``[[retention]]`` tables, docs/RETENTION.md). Each rule says
which studies it may delete and when:

- ``match``: DICOM matching (PS3.4 C.2.2.2) on indexed attributes, by the ONE query engine at the
  STUDY level (patient and study attributes, ModalitiesInStudy, ...); no match: every study.
- ``labels``: the study must carry every one of these labels (core/labels.py), the same filter of
  the query engine as the ``labels=`` query parameter; none: any study.
- ``older_than_days`` with ``by``: "arrival" (the study's last instance arrived that long ago) or
  "study_date" (its Study Date is that old; a study without a Study Date is never old by it).
- ``max_storage_bytes``: while the archive holds more than this (the sum of the stored instance
  files, as indexed), the oldest matching studies go first (oldest by ``by``; without a Study Date,
  by arrival), until it is under.
- A study with a delivery still waiting (a routing receipt queued or retrying, core/routing.py) is
  never deleted: it has not reached its destination yet, and deleting it would lose what a
  forward-then-purge node was to forward (a destination down for a week, a quota rule on). It is
  spared until the delivery is sent, or given up (failed, cancelled). Checked in the plan and again
  in the deletion's transaction.
- ``protect_label`` (default "keep"): a study carrying that label (core/labels.py) is never deleted
  by the rule. The label is checked again in the deletion's own transaction (core/delete.py
  ``guard``), so a label put on after the plan still protects; a study that received instances
  after the plan is spared too (the next run sees it anew).

A run plans (:func:`plan`: nothing changes; the dry run), then deletes study by study through
core/delete.py, each deletion journaled (changes journal) with the reason ``retention:<rule>``. The
rules run in their order; a study goes once, for the first rule that selects it. At most
``max_deletions`` studies go in one run (the next run goes on). Runs are jobs of the persistent
queue (kind "retention", :func:`register_retention_job`): submitted every ``interval`` seconds,
by ``POST /api/retention/run`` or ``minipacs retention``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from minipacs.core.archive import Archive
from minipacs.core.delete import Spared, delete_resource
from minipacs.core.errors import ArchiveError, NotFound
from minipacs.core.jobs import JobContext, JobFailed, JobQueue, every
from minipacs.core.labels import InvalidLabel, rule_labels, validate_label
from minipacs.core.query import prepare_query, run_query
from minipacs.dicom.levels import STUDY_ROOT, Level
from minipacs.index import retention_repo, routing_repo, stats_repo
from minipacs.index.database import IndexConnection
from minipacs.index.retention_repo import StudyFacts

log = logging.getLogger(__name__)

#: The job kind of a retention run.
KIND: Final = "retention"
#: What ``by`` may say: how a study's age is told.
BY: Final = ("arrival", "study_date")
By = Literal["arrival", "study_date"]
DEFAULT_PROTECT_LABEL: Final = "keep"
#: Keys a rule table may have.
RULE_KEYS: Final = frozenset({"name", "older_than_days", "by", "max_storage_bytes", "match", "protect_label", "labels"})
#: Deleted studies listed in a job's details (the counts are always complete).
MAX_LISTED: Final = 200
#: Largest older_than_days (a hundred years, as [[compression]]): beyond it, no study is ever old enough.
MAX_OLDER_THAN_DAYS: Final = 36500
#: The reason written in the changes journal for a deletion by a rule.
REASON_PREFIX: Final = "retention:"
_DAY: Final = dt.timedelta(days=1)


class InvalidRetentionRule(ArchiveError, ValueError):
    """A ``[[retention]]`` table that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class RetentionRule:
    name: str
    older_than_days: float | None = None
    by: By = "arrival"
    max_storage_bytes: int | None = None
    match: Mapping[str, str] = field(default_factory=dict)
    protect_label: str = DEFAULT_PROTECT_LABEL
    #: Labels (core/labels.py) a study must carry, every one, for the rule to delete it; () any study.
    labels: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return REASON_PREFIX + self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "older_than_days": self.older_than_days,
            "by": self.by,
            "max_storage_bytes": self.max_storage_bytes,
            "match": dict(self.match),
            "protect_label": self.protect_label,
            "labels": list(self.labels),
        }


def match_identifier(match: Mapping[str, str]) -> Dataset:
    """A STUDY-level C-FIND identifier: the match keys and StudyInstanceUID (universal)."""
    ds = Dataset()
    for keyword, value in {**match, "StudyInstanceUID": match.get("StudyInstanceUID", "")}.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise InvalidRetentionRule(f"match key {keyword[:64]!r} is not a DICOM keyword (e.g. ModalitiesInStudy)")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise InvalidRetentionRule(f"match key {keyword} is a sequence; retention matches plain attributes")
        ds[tag] = DataElement(tag, vr, value or None, validation_mode=pydicom.config.IGNORE)
    ds.QueryRetrieveLevel = Level.STUDY.value
    return ds


def rule_from_mapping(table: Mapping[str, Any]) -> RetentionRule:
    """A ``[[retention]]`` table -> a rule; InvalidRetentionRule naming the bad key."""
    unknown = sorted(set(table) - RULE_KEYS)
    if unknown:
        raise InvalidRetentionRule(f"unknown key {unknown[0]!r}; a rule has {', '.join(sorted(RULE_KEYS))}")
    name = table.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise InvalidRetentionRule("name must be 1 to 64 printable characters (it names the rule in the journal)")
    days = table.get("older_than_days")
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= MAX_OLDER_THAN_DAYS
    ):  # inf and nan fail the range too (a timedelta of them raises at every run)
        raise InvalidRetentionRule(
            f"rule {name!r}: older_than_days must be a positive number of days, at most {MAX_OLDER_THAN_DAYS}"
        )
    by = table.get("by", "arrival")
    if by not in BY:
        raise InvalidRetentionRule(f"rule {name!r}: by must be one of {', '.join(BY)}, not {by!r}")
    quota = table.get("max_storage_bytes")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
        raise InvalidRetentionRule(f"rule {name!r}: max_storage_bytes must be a whole number of bytes, 0 or more")
    if days is None and quota is None:
        raise InvalidRetentionRule(f"rule {name!r} deletes nothing: give older_than_days, max_storage_bytes or both")
    match = table.get("match", {})
    if not isinstance(match, Mapping) or not all(isinstance(v, str) for v in match.values()):
        raise InvalidRetentionRule(f'rule {name!r}: match must be a table of keyword = "value" (DICOM matching)')
    protect = table.get("protect_label", DEFAULT_PROTECT_LABEL)
    if not isinstance(protect, str):
        raise InvalidRetentionRule(f'rule {name!r}: protect_label must be a label, or "" for none')
    if protect:
        try:
            validate_label(protect)
        except InvalidLabel as exc:
            raise InvalidRetentionRule(f"rule {name!r}: protect_label: {exc}") from None
    try:
        labels = rule_labels(table.get("labels", []))
    except InvalidLabel as exc:
        raise InvalidRetentionRule(f"rule {name!r}: {exc}") from None
    if protect and protect in labels:
        raise InvalidRetentionRule(
            f"rule {name!r}: labels names {protect!r}, its protect_label: it would never delete anything; "
            "drop one of them"
        )
    rule = RetentionRule(name, float(days) if days is not None else None, by, quota, dict(match), protect, labels)
    prepared = prepare_query(match_identifier(rule.match), STUDY_ROOT, level=Level.STUDY, relational=True)
    if prepared.unsupported:
        raise InvalidRetentionRule(
            f"rule {name!r}: match key(s) {', '.join(prepared.unsupported)} cannot be matched at the study level; "
            'use study or patient attributes (ModalitiesInStudy = "CT" rather than Modality)'
        )
    return rule


def check_rules(rules: Sequence[RetentionRule]) -> None:
    names = [rule.name for rule in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidRetentionRule(f"retention rule name {twice[0]!r} is used twice; names must differ")


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Candidate:
    """A study a rule would delete, and why."""

    study: str
    rule: str
    why: str
    bytes: int
    study_date: dt.date | None
    last_arrival: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "rule": self.rule,
            "why": self.why,
            "bytes": self.bytes,
            "study_date": self.study_date.isoformat() if self.study_date else None,
            "last_arrival": self.last_arrival.isoformat(),
        }


@dataclass
class Plan:
    """What a run would delete (in order), the storage before and after, the protected studies spared."""

    candidates: list[Candidate]
    storage_bytes: int
    spared: dict[str, int]  # rule -> studies it would have deleted but for its protecting label
    limited: bool = False  # more would go than max_deletions allows in one run

    @property
    def freed_bytes(self) -> int:
        return sum(c.bytes for c in self.candidates)

    def to_json(self) -> dict[str, Any]:
        return {
            "studies": [c.to_json() for c in self.candidates],
            "count": len(self.candidates),
            "freed_bytes": self.freed_bytes,
            "storage_bytes": self.storage_bytes,
            "storage_bytes_after": self.storage_bytes - self.freed_bytes,
            "protected_spared": self.spared,
            "limited": self.limited,
        }


def _age_key(facts: StudyFacts, by: By) -> tuple[dt.datetime, str]:
    """Oldest first: by Study Date (midnight UTC; without one, its arrival) or by last arrival."""
    if by == "study_date" and facts.study_date is not None:
        stamp = dt.datetime.combine(facts.study_date, dt.time(), dt.UTC)
    else:
        stamp = facts.last_arrival
    return stamp, facts.study_instance_uid


def _expired(facts: StudyFacts, rule: RetentionRule, now: dt.datetime) -> str | None:
    if rule.older_than_days is None:
        return None
    limit = dt.timedelta(days=rule.older_than_days)
    if rule.by == "study_date":
        if facts.study_date is None or now.date() - facts.study_date <= limit:
            return None
        return f"study date {facts.study_date.isoformat()} is older than {rule.older_than_days:g} days"
    if now - facts.last_arrival <= limit:
        return None
    return f"last arrival {facts.last_arrival:%Y-%m-%d %H:%M} UTC is older than {rule.older_than_days:g} days"


#: Routing receipts that still wait for their job (PS3.4 has no word for it: our delivery receipts).
_WAITING: Final = frozenset({"queued", "retrying"})
#: Job states after which a waiting receipt will never be sent by its job.
_ENDED_JOBS: Final = frozenset({"cancelled", "failed"})
#: Receipts of one study read to find the waiting ones (a study of 10,000 instances to 16 destinations).
MAX_RECEIPTS_READ: Final = 200_000


def undelivered(conn: IndexConnection, study: str) -> int:
    """Deliveries of ``study`` still waiting to be sent by a live job (queued or retrying)."""
    rows = routing_repo.study_deliveries(conn, study, MAX_RECEIPTS_READ)
    return sum(
        1 for r in rows if r["status"] in _WAITING and r["job_state"] is not None and r["job_state"] not in _ENDED_JOBS
    )


async def _matching(archive: Archive, rule: RetentionRule) -> list[str] | None:
    """Study Instance UIDs the rule's match and labels select; None: neither (every study)."""
    if not rule.match and not rule.labels:
        return None
    prepared = prepare_query(
        match_identifier(rule.match), STUDY_ROOT, level=Level.STUDY, relational=True, labels=rule.labels
    )
    return [str(ds.StudyInstanceUID) async for ds in run_query(archive, prepared)]


async def plan(
    archive: Archive,
    rules: Sequence[RetentionRule],
    *,
    now: dt.datetime | None = None,
    max_deletions: int = 1000,
) -> Plan:
    """What the rules would delete now, in order; changes nothing (the dry run)."""
    now = now or dt.datetime.now(dt.UTC)
    counts = await archive.read(stats_repo.read_counts)
    storage = int(counts.instance_bytes)
    left = storage
    chosen: dict[str, Candidate] = {}
    spared: dict[str, int] = {}
    waiting: dict[str, bool] = {}

    async def delivering(study: str) -> bool:
        """Whether a routing delivery of ``study`` still waits (read once per plan)."""
        if study not in waiting:
            waiting[study] = await archive.read(functools.partial(undelivered, study=study)) > 0
        return waiting[study]

    for rule in rules:
        only = await _matching(archive, rule)
        facts = await archive.read(
            functools.partial(retention_repo.study_facts, protect_label=rule.protect_label, only=only)
        )
        facts = [f for f in facts if f.study_instance_uid not in chosen]
        protected = {f.study_instance_uid for f in facts if f.protected}
        spared_here: set[str] = set()
        for f in sorted(facts, key=lambda f: _age_key(f, rule.by)):
            why = _expired(f, rule, now)
            if why is None:
                continue
            if f.study_instance_uid in protected or await delivering(f.study_instance_uid):
                spared_here.add(f.study_instance_uid)
                continue
            chosen[f.study_instance_uid] = Candidate(
                f.study_instance_uid, rule.name, why, f.bytes, f.study_date, f.last_arrival
            )
            left -= f.bytes
        if rule.max_storage_bytes is not None and left > rule.max_storage_bytes:
            for f in sorted(facts, key=lambda f: _age_key(f, rule.by)):
                if left <= rule.max_storage_bytes:
                    break
                if f.study_instance_uid in chosen:
                    continue
                if f.study_instance_uid in protected or await delivering(f.study_instance_uid):
                    spared_here.add(f.study_instance_uid)
                    continue
                why = f"storage {left:,} bytes is over the quota of {rule.max_storage_bytes:,}; oldest first"
                chosen[f.study_instance_uid] = Candidate(
                    f.study_instance_uid, rule.name, why, f.bytes, f.study_date, f.last_arrival
                )
                left -= f.bytes
        if spared_here:
            spared[rule.name] = len(spared_here)
    candidates = list(chosen.values())
    return Plan(candidates[:max_deletions], storage, spared, limited=len(candidates) > max_deletions)


# ------------------------------------------------------------------ running


@dataclass
class RunResult:
    deleted: list[Candidate]
    spared: list[tuple[str, str]]  # (study, why) not deleted at the last moment
    plan: Plan

    @property
    def freed_bytes(self) -> int:
        return sum(c.bytes for c in self.deleted)

    def summary(self) -> str:
        said = f"retention deleted {len(self.deleted)} study(ies), {self.freed_bytes:,} bytes"
        if self.spared:
            said += f"; {len(self.spared)} spared at the last moment (labelled, received meanwhile, delivery waiting)"
        if self.plan.limited:
            said += "; more are due: the next run goes on"
        return said


def _guard(candidate: Candidate, rule: RetentionRule) -> Any:
    def guard(conn: IndexConnection) -> str | None:
        facts = retention_repo.study_guard_facts(conn, candidate.study, rule.protect_label)
        if facts is None:
            return None  # gone already: the deletion says NotFound
        arrival, protected = facts
        if protected:
            return f"study {candidate.study} carries the label {rule.protect_label!r} now"
        if arrival > candidate.last_arrival:
            return f"study {candidate.study} received instances after the plan"
        count = undelivered(conn, candidate.study)
        if count:
            return f"study {candidate.study} has {count} routing delivery(ies) still waiting"
        return None

    return guard


async def run(
    archive: Archive,
    rules: Sequence[RetentionRule],
    *,
    now: dt.datetime | None = None,
    max_deletions: int = 1000,
    job: JobContext | None = None,
) -> RunResult:
    """Plan, then delete each planned study (journaled with the reason ``retention:<rule>``)."""
    planned = await plan(archive, rules, now=now, max_deletions=max_deletions)
    by_name = {rule.name: rule for rule in rules}
    result = RunResult([], [], planned)
    if job is not None:
        job.total, job.done, job.failed = len(planned.candidates), 0, 0
    for candidate in planned.candidates:
        rule = by_name[candidate.rule]
        try:
            await delete_resource(archive, "study", candidate.study, reason=rule.reason, guard=_guard(candidate, rule))
        except NotFound:
            continue  # deleted meanwhile, by someone else
        except Spared as exc:
            result.spared.append((candidate.study, str(exc)))
            continue
        result.deleted.append(candidate)
        log.warning(
            "retention rule %r deleted study %s (%s, %d bytes)",
            rule.name,
            candidate.study,
            candidate.why,
            candidate.bytes,
        )
        if job is not None:
            job.done += 1
            job.message = f"deleted {job.done} of {job.total} study(ies)"
            listed = job.details.setdefault("deleted", [])
            if len(listed) < MAX_LISTED:
                listed.append(candidate.to_json())
            job.details["freed_bytes"] = result.freed_bytes
            await job.checkpoint()
    return result


def register_retention_job(
    queue: JobQueue, archive: Archive, rules: Sequence[RetentionRule], max_deletions: int
) -> None:
    """The "retention" kind: ``params`` {"rules": [names] (empty: all)}. Resumed after a restart:
    it plans again, so what was deleted is not deleted twice."""

    async def handler(job: JobContext) -> str:
        wanted = job.params.get("rules") or [rule.name for rule in rules]
        chosen = [rule for rule in rules if rule.name in wanted]
        missing = sorted(set(wanted) - {rule.name for rule in rules})
        if missing:
            raise JobFailed(f"no retention rule {missing[0]!r} in the configuration")
        job.details["rules"] = [rule.name for rule in chosen]
        job.details.setdefault("deleted", [])
        result = await run(archive, chosen, max_deletions=max_deletions, job=job)
        job.details["freed_bytes"] = result.freed_bytes
        job.details["spared"] = [{"study": s, "why": w} for s, w in result.spared[:MAX_LISTED]]
        return result.summary()

    queue.register(KIND, handler, on_restart="resume", max_attempts=3)


async def submit_run(queue: JobQueue, rules: Sequence[str] = ()) -> Any:
    """Queue a retention run (all rules, or those named)."""
    names = ", ".join(rules) if rules else "all rules"
    return await queue.submit(KIND, f"retention run ({names})", {"rules": list(rules)})


async def periodic(queue: JobQueue, interval: float) -> None:
    """Every ``interval`` seconds, queue a retention run unless one is queued or running (on any node)."""
    await every(queue, interval, KIND, lambda: submit_run(queue))


__all__ = [
    "BY",
    "DEFAULT_PROTECT_LABEL",
    "KIND",
    "REASON_PREFIX",
    "Candidate",
    "InvalidRetentionRule",
    "Plan",
    "RetentionRule",
    "RunResult",
    "check_rules",
    "match_identifier",
    "periodic",
    "plan",
    "register_retention_job",
    "rule_from_mapping",
    "run",
    "submit_run",
]
