"""SQL of auto-routing (core/routing.py): rules made through the API, the marks of waiting triggers,
and the delivery receipts. Rows in and out as plain mappings; writes run in the archive's writer
transaction. Several minipacs nodes share these tables: a mark is routed by the one node whose
conditional UPDATE (or INSERT that skips a duplicate) changes a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, and_, case, delete, func, insert, or_, select, update

from minipacs.index.dialects import insert_of
from minipacs.index.schema import (
    Delivery,
    Instance,
    JobRecord,
    Patient,
    RoutingCursor,
    RoutingMark,
    RoutingRule,
    Series,
    Study,
    StudyCompletion,
    WorklistItem,
)

_RULES: Final = cast(Table, RoutingRule.__table__)
_MARKS: Final = cast(Table, RoutingMark.__table__)
_CURSORS: Final = cast(Table, RoutingCursor.__table__)
_DELIVERIES: Final = cast(Table, Delivery.__table__)
_INS: Final = cast(Table, Instance.__table__)
_SER: Final = cast(Table, Series.__table__)
_STU: Final = cast(Table, Study.__table__)
_PAT: Final = cast(Table, Patient.__table__)
_DONE: Final = cast(Table, StudyCompletion.__table__)
_WL: Final = cast(Table, WorklistItem.__table__)
_JOBS: Final = cast(Table, JobRecord.__table__)

#: Rows a poll reads at most per rule (the rest wait for the next poll).
POLL_LIMIT: Final = 500
_insert: Final = insert_of


# ------------------------------------------------------------------ rules


def rule_rows(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(_RULES).order_by(_RULES.c.name)).mappings()]


def rule_row(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(select(_RULES).where(_RULES.c.name == name)).mappings().first()
    return dict(row) if row is not None else None


def insert_rule(conn: Connection, name: str, definition: str, now: dt.datetime) -> bool:
    """False when a rule of that name is already stored."""
    statement = (
        _insert(conn)(_RULES)
        .values(name=name, definition=definition, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(_RULES.c.id)
    )
    return conn.execute(statement).first() is not None  # rowcount is not reliable here on PostgreSQL


def update_rule(conn: Connection, name: str, definition: str, now: dt.datetime) -> bool:
    statement = update(_RULES).where(_RULES.c.name == name).values(definition=definition, updated_at=now)
    return bool(conn.execute(statement).rowcount)


def delete_rule(conn: Connection, name: str) -> bool:
    removed = bool(conn.execute(delete(_RULES).where(_RULES.c.name == name)).rowcount)
    conn.execute(delete(_MARKS).where(_MARKS.c.rule == name))
    return removed


# ------------------------------------------------------------------ marks


def touch_marks(conn: Connection, marks: Iterable[tuple[str, str, str]], at: dt.datetime) -> None:
    """(rule, key, study): an instance arrived at ``at``; the row is created or its last arrival moved on."""
    # in one (rule, key) order: two nodes touching overlapping marks lock them in the same order
    rows = [{"rule": r, "key": k, "study_instance_uid": s, "last_arrival_at": at} for r, k, s in sorted(set(marks))]
    if not rows:
        return
    statement = _insert(conn)(_MARKS)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["rule", "key"], set_={"last_arrival_at": statement.excluded.last_arrival_at}
        ),
        rows,
    )


def due_marks(conn: Connection, rule: str, quiet_since: dt.datetime) -> list[dict[str, Any]]:
    """Marks of ``rule`` with no arrival since ``quiet_since`` and an arrival not yet routed."""
    statement = (
        select(_MARKS)
        .where(
            _MARKS.c.rule == rule,
            _MARKS.c.last_arrival_at <= quiet_since,
            or_(_MARKS.c.routed_at.is_(None), _MARKS.c.routed_at < _MARKS.c.last_arrival_at),
        )
        .order_by(_MARKS.c.last_arrival_at)
        .limit(POLL_LIMIT)
    )
    return [dict(r) for r in conn.execute(statement).mappings()]


def claim_mark(conn: Connection, pk: int, last_arrival_at: dt.datetime, now: dt.datetime) -> bool:
    """Mark ``pk`` routed now, if nothing arrived since it was read and no other node routed it."""
    statement = (
        update(_MARKS)
        .where(
            _MARKS.c.id == pk,
            _MARKS.c.last_arrival_at == last_arrival_at,
            or_(_MARKS.c.routed_at.is_(None), _MARKS.c.routed_at < _MARKS.c.last_arrival_at),
        )
        .values(routed_at=now)
    )
    return bool(conn.execute(statement).rowcount)


def prune_marks(conn: Connection, routed_before: dt.datetime) -> int:
    """Forget marks routed before ``routed_before`` with nothing arrived since (a later arrival makes a
    new mark, and the receipts still say what was given)."""
    statement = delete(_MARKS).where(
        _MARKS.c.routed_at.is_not(None),
        _MARKS.c.routed_at < routed_before,
        _MARKS.c.last_arrival_at <= _MARKS.c.routed_at,
    )
    return int(conn.execute(statement).rowcount)


def mark_once(conn: Connection, rule: str, key: str, study: str, now: dt.datetime) -> bool:
    """Record that ``rule`` handled event ``key``; False when it (or another node) already had."""
    statement = (
        _insert(conn)(_MARKS)
        .values(rule=rule, key=key, study_instance_uid=study, last_arrival_at=now, routed_at=now)
        .on_conflict_do_nothing(index_elements=["rule", "key"])
        .returning(_MARKS.c.id)
    )
    return conn.execute(statement).first() is not None  # rowcount is not reliable here on PostgreSQL


def marked_keys(conn: Connection, rule: str, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    rows = conn.execute(select(_MARKS.c.key).where(_MARKS.c.rule == rule, _MARKS.c.key.in_(list(keys))))
    return {str(k) for (k,) in rows}


def completions_since(conn: Connection, since: dt.datetime) -> list[str]:
    """Studies marked complete since ``since`` (oldest first)."""
    rows = conn.execute(
        select(_DONE.c.study_instance_uid)
        .where(_DONE.c.completed_at >= since)
        .order_by(_DONE.c.completed_at)
        .limit(POLL_LIMIT)
    )
    return [str(u) for (u,) in rows]


def worklist_since(conn: Connection, since: dt.datetime, statuses: Sequence[str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(_WL.c.id, _WL.c.patient_id, _WL.c.study_instance_uid, _WL.c.accession_number, _WL.c.modality)
        .where(_WL.c.created_at >= since, _WL.c.status.in_(list(statuses)))
        .order_by(_WL.c.id)
        .limit(POLL_LIMIT)
    ).mappings()
    return [dict(r) for r in rows]


# ------------------------------------------------------------------ the arrivals not yet routed


def arrival_cursor(conn: Connection, node: str) -> int | None:
    """The journal ``seq`` up to which ``node``'s arrivals are routed; None: no rule watched them."""
    value = conn.execute(select(_CURSORS.c.seq).where(_CURSORS.c.node == node)).scalar()
    return None if value is None else int(value)


def set_arrival_cursor(conn: Connection, node: str, seq: int, now: dt.datetime) -> None:
    statement = _insert(conn)(_CURSORS).values(node=node, seq=seq, updated_at=now)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["node"], set_={"seq": statement.excluded.seq, "updated_at": statement.excluded.updated_at}
        )
    )


def lowest_cursor(conn: Connection) -> int | None:
    """The lowest arrival cursor of any node: the journal rows after it are still to be routed."""
    value = conn.execute(select(func.min(_CURSORS.c.seq))).scalar()
    return None if value is None else int(value)


def cursor_nodes(conn: Connection) -> list[str]:
    """The nodes whose arrivals a rule watches (each has a cursor)."""
    return [str(n) for n in conn.execute(select(_CURSORS.c.node).order_by(_CURSORS.c.node)).scalars()]


def forget_arrival_cursor(conn: Connection, node: str) -> None:
    conn.execute(delete(_CURSORS).where(_CURSORS.c.node == node))


def arrived_instances(conn: Connection, sops: Sequence[str]) -> list[tuple[str, str, str]]:
    """(study, series, SOP Instance UID) of those of ``sops`` still stored (a deleted one is not)."""
    found: list[tuple[str, str, str]] = []
    for start in range(0, len(sops), 500):
        chunk = list(sops[start : start + 500])
        rows = conn.execute(
            select(_STU.c.study_instance_uid, _SER.c.series_instance_uid, _INS.c.sop_instance_uid)
            .select_from(_INS.join(_SER, _INS.c.series_pk == _SER.c.id).join(_STU, _SER.c.study_pk == _STU.c.id))
            .where(_INS.c.sop_instance_uid.in_(chunk))
        )
        found.extend((str(a), str(b), str(c)) for a, b, c in rows)
    return found


# ------------------------------------------------------------------ instances a rule looks at


def study_instances(
    conn: Connection, study: str, *, series: str | None = None, sops: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The study's instances (or those of one series, or only ``sops``): UIDs, AE titles, patient."""
    statement = (
        select(
            _INS.c.sop_instance_uid,
            _SER.c.series_instance_uid,
            _STU.c.study_instance_uid,
            _INS.c.calling_aet,
            _INS.c.called_aet,
            _PAT.c.patient_id,
        )
        .select_from(_INS.join(_SER, _INS.c.series_pk == _SER.c.id).join(_STU, _SER.c.study_pk == _STU.c.id))
        .join(_PAT, _STU.c.patient_pk == _PAT.c.id)
        .where(_STU.c.study_instance_uid == study)
        .order_by(_INS.c.id)
    )
    if series is not None:
        statement = statement.where(_SER.c.series_instance_uid == series)
    if sops is not None:
        statement = statement.where(_INS.c.sop_instance_uid.in_(list(sops)))
    return [dict(r) for r in conn.execute(statement).mappings()]


# ------------------------------------------------------------------ delivery receipts


def already_routed(conn: Connection, rule: str, destination: str, sops: Sequence[str]) -> set[str]:
    """Of ``sops``, those ``rule`` already gave (or is giving) to ``destination``: a receipt sent, or
    waiting for a job that is neither cancelled nor failed."""
    found: set[str] = set()
    for start in range(0, len(sops), 500):
        chunk = list(sops[start : start + 500])
        rows = conn.execute(
            select(_DELIVERIES.c.sop_instance_uid)
            .select_from(_DELIVERIES.outerjoin(_JOBS, _JOBS.c.id == _DELIVERIES.c.job_id))
            .where(
                _DELIVERIES.c.rule == rule,
                _DELIVERIES.c.destination == destination,
                _DELIVERIES.c.sop_instance_uid.in_(chunk),
                or_(
                    _DELIVERIES.c.status == "sent",
                    and_(
                        _DELIVERIES.c.status != "failed",
                        or_(_JOBS.c.state.is_(None), _JOBS.c.state.not_in(["cancelled", "failed"])),
                    ),
                ),
            )
        )
        found.update(str(s) for (s,) in rows)
    return found


def instance_receipts(conn: Connection, studies: Sequence[str], sops: Sequence[str]) -> list[dict[str, Any]]:
    """The receipts of instances ``sops`` filed under any of ``studies`` (a series moved by a correction
    keeps its receipts under the study it had), C-STORE and STOW-RS ones (a prefetch's C-MOVE names a
    study, not instances): ``rule``, ``method``, ``destination``, ``sop_instance_uid``, ``status`` and
    ``job_state`` (None once the job row is gone). Read by the index on study_instance_uid."""
    if not studies or not sops:
        return []
    found: list[dict[str, Any]] = []
    for start in range(0, len(sops), 500):
        chunk = list(sops[start : start + 500])
        rows = conn.execute(
            select(
                _DELIVERIES.c.rule,
                _DELIVERIES.c.method,
                _DELIVERIES.c.destination,
                _DELIVERIES.c.sop_instance_uid,
                _DELIVERIES.c.status,
                _JOBS.c.state.label("job_state"),
            )
            .select_from(_DELIVERIES.outerjoin(_JOBS, _JOBS.c.id == _DELIVERIES.c.job_id))
            .where(
                _DELIVERIES.c.study_instance_uid.in_(list(studies)),
                _DELIVERIES.c.sop_instance_uid.in_(chunk),
                _DELIVERIES.c.sop_instance_uid != "",
            )
            .order_by(_DELIVERIES.c.id)
        )
        found.extend(dict(r) for r in rows.mappings())
    return found


def insert_deliveries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(_DELIVERIES), [dict(r) for r in rows])


def set_job_deliveries(
    conn: Connection,
    job_id: int,
    status: str,
    reason: str,
    now: dt.datetime,
    *,
    sops: Sequence[str] | None = None,
    unless: str | None = None,
) -> int:
    """Set status and reason of the receipts of ``job_id`` (only ``sops`` when given; not those already
    ``unless``)."""
    statement = update(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id)
    if unless is not None:
        statement = statement.where(_DELIVERIES.c.status != unless)
    values = {"status": status, "reason": reason, "updated_at": now}
    if sops is None:
        return int(conn.execute(statement.values(**values)).rowcount)
    changed = 0
    for start in range(0, len(sops), 500):
        chunk = list(sops[start : start + 500])
        changed += int(
            conn.execute(statement.where(_DELIVERIES.c.sop_instance_uid.in_(chunk)).values(**values)).rowcount
        )
    return changed


def set_study_delivery(conn: Connection, job_id: int, study: str, status: str, reason: str, now: dt.datetime) -> int:
    statement = (
        update(_DELIVERIES)
        .where(_DELIVERIES.c.job_id == job_id, _DELIVERIES.c.study_instance_uid == study)
        .values(status=status, reason=reason, updated_at=now)
    )
    return int(conn.execute(statement).rowcount)


def delete_deliveries(conn: Connection, instances: Mapping[str, Sequence[str]], studies: Sequence[str]) -> int:
    """Forget the receipts of deleted instances (study UID -> SOP Instance UIDs) and every receipt
    of the deleted ``studies`` (study-level ones too); read by the index on study_instance_uid."""
    removed = 0
    for start in range(0, len(studies), 500):
        chunk = list(studies[start : start + 500])
        removed += int(conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.study_instance_uid.in_(chunk))).rowcount)
    gone = set(studies)
    for study, sops in instances.items():
        if study in gone:
            continue
        for start in range(0, len(sops), 500):
            statement = delete(_DELIVERIES).where(
                _DELIVERIES.c.study_instance_uid == study,
                _DELIVERIES.c.sop_instance_uid.in_(list(sops[start : start + 500])),
            )
            removed += int(conn.execute(statement).rowcount)
    return removed


def job_deliveries(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id).order_by(_DELIVERIES.c.id))
    return [dict(r) for r in rows.mappings()]


def study_deliveries(conn: Connection, study: str, limit: int) -> list[dict[str, Any]]:
    """The study's receipts, oldest first, each with its job's state (``job_state``, None once the job
    row is gone) so that a receipt of a cancelled job does not say "queued" for ever."""
    rows = conn.execute(
        select(_DELIVERIES, _JOBS.c.state.label("job_state"))
        .select_from(_DELIVERIES.outerjoin(_JOBS, _JOBS.c.id == _DELIVERIES.c.job_id))
        .where(_DELIVERIES.c.study_instance_uid == study)
        .order_by(_DELIVERIES.c.id)
        .limit(limit)
    )
    return [dict(r) for r in rows.mappings()]


#: Job states that end a receipt still waiting (queued, retrying): it will never be sent by that job.
_DEAD_JOB_STATES: Final = ("cancelled", "failed")


def _effective_status() -> Any:
    """The receipt's status as ``core/routing.receipt_json`` tells it: a receipt still waiting whose job
    was cancelled or failed is "failed" (the job's state is only looked up for waiting receipts)."""
    job = _JOBS.alias("receipt_job")
    dead_job = select(job.c.id).where(job.c.id == _DELIVERIES.c.job_id, job.c.state.in_(_DEAD_JOB_STATES)).exists()
    return case(
        (and_(_DELIVERIES.c.status.in_(["queued", "retrying"]), dead_job), "failed"),
        else_=_DELIVERIES.c.status,
    )


def delivery_counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(destination, status, receipts) over every receipt kept, the status as the study page says it."""
    status = _effective_status().label("status")
    rows = conn.execute(
        select(_DELIVERIES.c.destination, status, func.count()).group_by(_DELIVERIES.c.destination, status)
    )
    return [(str(d), str(s), int(n)) for d, s, n in rows]


def failing_destinations(conn: Connection, since: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Destinations with receipts not delivered (retrying, or failed: given up or their job cancelled)
    changed since ``since``: ``destination``, ``receipts`` (how many), ``studies``, ``updated_at`` and
    ``status``, ``reason``, ``job`` and ``job_state`` of the latest; the most recently changed first,
    at most ``limit``."""
    # A receipt changes only with its job: read those of the jobs still waiting or running, or ended
    # since ``since`` (the jobs table is ~1000 times smaller), through the index on job_id.
    recent_jobs = select(_JOBS.c.id).where(or_(_JOBS.c.state.in_(["queued", "running"]), _JOBS.c.finished_at >= since))
    status = _effective_status()
    failing = and_(
        _DELIVERIES.c.job_id.in_(recent_jobs),
        _DELIVERIES.c.updated_at >= since,
        status.in_(["retrying", "failed"]),
    )
    groups = conn.execute(
        select(
            _DELIVERIES.c.destination,
            func.count().label("receipts"),
            func.count(func.distinct(_DELIVERIES.c.study_instance_uid)).label("studies"),
            func.max(_DELIVERIES.c.updated_at).label("updated_at"),
        )
        .where(failing)
        .group_by(_DELIVERIES.c.destination)
        .order_by(func.max(_DELIVERIES.c.updated_at).desc(), _DELIVERIES.c.destination)
        .limit(limit)
    ).mappings()
    found = []
    for group in [dict(g) for g in groups]:
        latest = conn.execute(
            select(status.label("status"), _DELIVERIES.c.reason, _DELIVERIES.c.job_id, _JOBS.c.state)
            .select_from(_DELIVERIES.outerjoin(_JOBS, _JOBS.c.id == _DELIVERIES.c.job_id))
            .where(failing, _DELIVERIES.c.destination == group["destination"])
            .order_by(_DELIVERIES.c.updated_at.desc(), _DELIVERIES.c.id.desc())
            .limit(1)
        ).one()
        found.append(
            {**group, "status": latest.status, "reason": latest.reason, "job": latest.job_id, "job_state": latest.state}
        )
    return found


__all__ = [
    "POLL_LIMIT",
    "already_routed",
    "arrival_cursor",
    "arrived_instances",
    "claim_mark",
    "completions_since",
    "delete_deliveries",
    "delete_rule",
    "delivery_counts",
    "due_marks",
    "failing_destinations",
    "cursor_nodes",
    "lowest_cursor",
    "forget_arrival_cursor",
    "insert_deliveries",
    "insert_rule",
    "instance_receipts",
    "job_deliveries",
    "mark_once",
    "marked_keys",
    "prune_marks",
    "rule_row",
    "rule_rows",
    "set_arrival_cursor",
    "set_job_deliveries",
    "set_study_delivery",
    "study_deliveries",
    "study_instances",
    "touch_marks",
    "update_rule",
    "worklist_since",
]
