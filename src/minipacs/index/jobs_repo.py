"""SQL of the job queue (the ``jobs`` table), on a Connection the caller owns.

core/jobs.py decides; these functions only read and write rows, as plain mappings keyed by
column name. Writes run in the archive's writer transaction. The functions that pick rows
for a runner lock them with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
minipacs processes on one index never claim the same job; SQLite has no row locks (the
dialect drops the clause) and needs none: its writer transaction (``BEGIN IMMEDIATE``) already
excludes every other writer until it commits.

Lanes: a job with a ``lane`` is claimable only when no older job (smaller id) of its lane is queued
or running (:func:`_lane_clear`). A running job blocks its lane whichever node runs it, and a
claim on another node at the same moment reads the head of the lane as queued or as running, both
of which block: two jobs of one lane never run at once, and they start in the order of their ids.
A finished job (done, failed, cancelled) no longer blocks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Table, and_, delete, exists, func, insert, or_, select, update

from minipacs.index.schema import JobRecord

_JOBS: Final = cast(Table, JobRecord.__table__)

#: Columns a caller may set (id is ours).
JOB_FIELDS: Final = tuple(c.name for c in _JOBS.columns if c.name != "id")
#: The states in which a job holds its lane (core/jobs.py JobState: not finished).
UNFINISHED: Final = ("queued", "running")


def _lane_clear() -> ColumnElement[bool]:
    """A job that has no lane, or whose lane has no older job queued or running (module docstring)."""
    earlier = _JOBS.alias("earlier")
    blocked = exists().where(earlier.c.lane == _JOBS.c.lane, earlier.c.id < _JOBS.c.id, earlier.c.state.in_(UNFINISHED))
    return or_(_JOBS.c.lane == "", ~blocked)


def _due(kinds: Collection[str], now: dt.datetime) -> ColumnElement[bool]:
    """Queued jobs of ``kinds`` due by ``now`` that their lane lets run."""
    return and_(_JOBS.c.state == "queued", _JOBS.c.next_try_at <= now, _JOBS.c.kind.in_(list(kinds)), _lane_clear())


def insert_job(conn: Connection, values: Mapping[str, Any]) -> dict[str, Any]:
    """Insert one job; the stored row."""
    pk = conn.execute(insert(_JOBS).values(**values).returning(_JOBS.c.id)).scalar_one()
    return dict(conn.execute(select(_JOBS).where(_JOBS.c.id == pk)).mappings().one())


def job_by_id(conn: Connection, pk: int, *, lock: bool = False) -> dict[str, Any] | None:
    """One job; ``lock``: hold its row until the (writer's) transaction ends."""
    statement = select(_JOBS).where(_JOBS.c.id == pk)
    if lock:
        statement = statement.with_for_update()
    row = conn.execute(statement).mappings().first()
    return dict(row) if row is not None else None


def list_jobs(
    conn: Connection,
    *,
    states: Collection[str] = (),
    kinds: Collection[str] = (),
    before: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Jobs newest first (by id); only ``states``/``kinds`` when given; ids below ``before`` (paging)."""
    statement = select(_JOBS).order_by(_JOBS.c.id.desc()).limit(limit)
    if states:
        statement = statement.where(_JOBS.c.state.in_(list(states)))
    if kinds:
        statement = statement.where(_JOBS.c.kind.in_(list(kinds)))
    if before is not None:
        statement = statement.where(_JOBS.c.id < before)
    return [dict(row) for row in conn.execute(statement).mappings()]


def count_by_state(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(_JOBS.c.state, func.count()).group_by(_JOBS.c.state)).all()
    return {state: int(count) for state, count in rows}


def update_job(
    conn: Connection,
    pk: int,
    values: Mapping[str, Any],
    *,
    runner: str | None = None,
    state: str | None = None,
) -> int:
    """Set ``values`` on job ``pk`` if it is still run by ``runner`` / in ``state`` (when given); rows changed."""
    statement = update(_JOBS).where(_JOBS.c.id == pk).values(**values)
    if runner is not None:
        statement = statement.where(_JOBS.c.runner == runner)
    if state is not None:
        statement = statement.where(_JOBS.c.state == state)
    return int(conn.execute(statement).rowcount)


def report(conn: Connection, pk: int, runner: str, values: Mapping[str, Any]) -> bool | None:
    """A running job's progress and heartbeat; whether someone asked it to stop (None: the row is
    no longer this runner's running job, e.g. another node took it over as stale)."""
    changed = update_job(conn, pk, values, runner=runner, state="running")
    if not changed:
        return None
    return bool(conn.execute(select(_JOBS.c.cancel_requested).where(_JOBS.c.id == pk)).scalar_one())


def cancel_requested(conn: Connection, pk: int, runner: str) -> bool | None:
    """Read-only twin of :func:`report` (no heartbeat): the cancel flag, None if not ours any more."""
    row = conn.execute(
        select(_JOBS.c.cancel_requested).where(_JOBS.c.id == pk, _JOBS.c.runner == runner, _JOBS.c.state == "running")
    ).first()
    return None if row is None else bool(row[0])


def claim(conn: Connection, kinds: Collection[str], runner: str, now: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Take up to ``limit`` queued jobs of ``kinds`` that are due, oldest due first, for ``runner``:
    each becomes running, one more attempt. Rows another transaction holds are skipped, and so is a
    job whose lane has an older one queued or running (the module docstring)."""
    if limit < 1 or not kinds:
        return []
    ids = list(
        conn.execute(
            select(_JOBS.c.id)
            .where(_due(kinds, now))
            .order_by(_JOBS.c.next_try_at, _JOBS.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return []
    conn.execute(
        update(_JOBS)
        .where(_JOBS.c.id.in_(ids), _JOBS.c.state == "queued")
        .values(
            state="running",
            runner=runner,
            attempts=_JOBS.c.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
        )
    )
    rows = conn.execute(select(_JOBS).where(_JOBS.c.id.in_(ids)).order_by(_JOBS.c.next_try_at, _JOBS.c.id))
    return [dict(row) for row in rows.mappings()]


def orphans(
    conn: Connection,
    *,
    runners: Collection[str] = (),
    runner_prefix: str | None = None,
    silent_since: dt.datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Running jobs whose runner is gone, locked for the caller (others skipped): run by one of
    ``runners``, or by a runner whose name starts with ``runner_prefix``, or silent (no heartbeat)
    since ``silent_since``. The caller decides which of them really are orphans."""
    alternatives: list[ColumnElement[bool]] = []
    if runners:
        alternatives.append(_JOBS.c.runner.in_(list(runners)))
    if runner_prefix is not None:
        alternatives.append(_JOBS.c.runner.startswith(runner_prefix, autoescape=True))
    if silent_since is not None:
        alternatives.append(or_(_JOBS.c.heartbeat_at.is_(None), _JOBS.c.heartbeat_at < silent_since))
    if not alternatives:
        return []
    rows = conn.execute(
        select(_JOBS)
        .where(and_(_JOBS.c.state == "running", or_(*alternatives)))
        .order_by(_JOBS.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).mappings()
    return [dict(row) for row in rows]


def due(conn: Connection, kinds: Collection[str], now: dt.datetime) -> int:
    """How many queued jobs of ``kinds`` are due and free to run (a cheap read before a claiming write)."""
    if not kinds:
        return 0
    return int(conn.execute(select(func.count()).select_from(_JOBS).where(_due(kinds, now))).scalar_one())


def lane_tail(conn: Connection, lane: str) -> dict[str, Any] | None:
    """The newest job of ``lane`` that is queued or running (None: the lane is free)."""
    row = (
        conn.execute(
            select(_JOBS)
            .where(_JOBS.c.lane == lane, _JOBS.c.state.in_(UNFINISHED))
            .order_by(_JOBS.c.id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def next_due(conn: Connection, kinds: Collection[str]) -> dt.datetime | None:
    """When the earliest queued job of ``kinds`` is due (None: none queued)."""
    if not kinds:
        return None
    found: dt.datetime | None = conn.execute(
        select(_JOBS.c.next_try_at)
        .where(_JOBS.c.state == "queued", _JOBS.c.kind.in_(list(kinds)))
        .order_by(_JOBS.c.next_try_at)
        .limit(1)
    ).scalar()
    return found


def silent_running(conn: Connection, silent_since: dt.datetime) -> int:
    """How many running jobs have given no sign of life since ``silent_since``."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(_JOBS)
            .where(
                _JOBS.c.state == "running",
                or_(_JOBS.c.heartbeat_at.is_(None), _JOBS.c.heartbeat_at < silent_since),
            )
        ).scalar_one()
    )


def delete_finished(conn: Connection, finished_before: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` finished jobs (done, failed, cancelled) that ended before ``finished_before``."""
    ids = list(
        conn.execute(
            select(_JOBS.c.id)
            .where(_JOBS.c.state.in_(["done", "failed", "cancelled"]), _JOBS.c.finished_at < finished_before)
            .order_by(_JOBS.c.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    return int(conn.execute(delete(_JOBS).where(_JOBS.c.id.in_(ids))).rowcount)


__all__ = [
    "JOB_FIELDS",
    "UNFINISHED",
    "cancel_requested",
    "claim",
    "count_by_state",
    "delete_finished",
    "due",
    "insert_job",
    "job_by_id",
    "lane_tail",
    "list_jobs",
    "next_due",
    "orphans",
    "report",
    "silent_running",
    "update_job",
]
