"""Background jobs that survive a restart: one persistent queue, in the index, shared by every node.

Everything that runs in the background (today sends and retrieves; later routing, compression,
retention) is a row of the ``jobs`` table (index/jobs_repo.py), written through the archive's
single writer. The row is the truth: any node (process) sharing the index lists, cancels and
retries any job, and runs the jobs whose kind it has a handler for.

- **A kind** is a name and a handler, ``async def handler(job: JobContext) -> str``, registered
  with :meth:`JobQueue.register`. The handler gets the job's ``params`` (a JSON object given at
  submit: never a closure, so the job can run again after a restart, on any node), counts
  ``total``/``done``/``failed`` as it goes, and returns a sentence (done) or raises
  :class:`JobFailed` (``retry=True``: a passing trouble, such as a peer that is down).
- **Claiming**: a runner takes due queued rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; the
  SQLite writer is alone anyway), at most ``concurrency`` at a time; each claim is one attempt.
  Jobs run in no guaranteed order, except within a **lane**.
- **Lanes**: a job submitted with ``lane="name"`` is not claimed while an older job (smaller id) of
  that lane is queued (also waiting for a retry) or running, on any node sharing the index
  (index/jobs_repo.py ``claim``): the jobs of a lane run one at a time, in submission order. A
  finished job — done, failed (its handler refused, or its server restarted while it ran and its
  kind fails then), cancelled — frees the lane for the next; a retried one takes its place again by
  its id. :meth:`JobQueue.lane_tail` says whether a lane is busy, so a caller can queue behind it
  work it would otherwise do at once (HL7 ADT corrections: hl7/adt.py).
- **Retries**: a retryable failure puts the job back in the queue ``retry_seconds * 2**(n-1)``
  later (at most ``retry_max_seconds``), until ``max_attempts`` attempts; then it fails, with the
  last error in words.
- **Progress and cancel**: every ``progress_seconds`` the runner writes the counts (and a
  heartbeat) if they changed, and reads the cancel flag. Cancelling a queued job ends it at once;
  cancelling a running one sets the flag, and the runner stops it at its next progress report.
- **Restarts**: a running job whose runner is gone — this node's earlier life (same node name),
  a process on this host that no longer exists, or any runner silent for ``stale_seconds`` — is
  resumed (queued again) or failed with the reason :data:`RESTART_REASON`, as its kind says
  (``on_restart``). A resume counts as an attempt, so a job that kills its server each time ends.
  On a clean shutdown the runner itself re-queues (or fails) its running jobs, without charging
  the attempt.

Nothing here speaks a protocol or SQL: the handlers (services/job_kinds.py) do the talking.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from minipacs.core.errors import ArchiveError, NotFound
from minipacs.index import jobs_repo

if TYPE_CHECKING:
    from minipacs.core.nodes import IndexAccess
    from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"  # waiting: to start, or to try again at next_try_at
    RUNNING = "running"
    DONE = "done"  # succeeded
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Which state may follow which; anything else is a programming error.
TRANSITIONS: Final[dict[JobState, frozenset[JobState]]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # QUEUED again: a retry after a passing failure, or resumed after a restart
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),  # retry
    JobState.CANCELLED: frozenset({JobState.QUEUED}),  # retry
}
FINISHED: Final = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
#: What a job running when its server stopped without a clean shutdown says.
RESTART_REASON: Final = "the server restarted while it ran"
SHUTDOWN_REASON: Final = "the server shut down while it ran"
#: Longest kind name (the column's size).
MAX_KIND: Final = 32
#: Longest lane name (the column's size).
MAX_LANE: Final = 64
#: Most jobs one list returns.
MAX_LIST: Final = 1000
#: Finished jobs deleted per pruning pass (the pass repeats each poll until none is left).
PRUNE_BATCH: Final = 1000

OnRestart = Literal["resume", "fail"]


class JobFailed(Exception):
    """Raised by a handler: the job failed, and the message says why and what to do.
    ``retry``: the trouble may pass (a peer down, a broken association): try again later."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class JobCancelled(Exception):
    """Raised by :meth:`JobContext.checkpoint` when someone cancelled the job."""


class JobConflict(ArchiveError):
    """The job is not in a state that allows this (cancel a finished job, retry a running one)."""


class InvalidJob(ArchiveError, ValueError):
    """A job that cannot be queued: unknown kind, parameters that are not a JSON object."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_runner() -> str:
    """This process's node id when no node_name is configured: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class JobSettings:
    """The queue's limits (config.py keys job_*; README "Jobs")."""

    #: This node's name in the ``runner`` column; "" -> host:pid.
    runner: str = ""
    concurrency: int = 4
    max_attempts: int = 5
    retry_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    poll_seconds: float = 2.0
    progress_seconds: float = 1.0
    stale_seconds: float = 60.0
    #: Finished jobs are deleted this many days after they ended; 0 keeps them.
    keep_days: float = 30.0

    @property
    def runner_name(self) -> str:
        return self.runner or default_runner()

    def backoff(self, attempt: int) -> float:
        """Seconds before try ``attempt + 1`` after attempt ``attempt`` (1-based) failed."""
        return float(min(self.retry_seconds * 2 ** max(attempt - 1, 0), self.retry_max_seconds))


@dataclass
class Job:
    """A job as its row says (a snapshot: read it again to see it move)."""

    id: int
    kind: str
    description: str
    params: dict[str, Any]
    state: JobState
    total: int = 0
    done: int = 0
    failed: int = 0
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    max_attempts: int = 1
    next_try_at: dt.datetime | None = None
    last_error: str = ""
    runner: str = ""
    cancel_requested: bool = False
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    lane: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            id=int(row["id"]),
            kind=row["kind"],
            description=row["description"],
            params=_loads(row["params"]),
            state=JobState(row["state"]),
            total=row["total"],
            done=row["done"],
            failed=row["failed"],
            message=row["message"],
            details=_loads(row["details"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            next_try_at=row["next_try_at"],
            last_error=row["last_error"],
            runner=row["runner"],
            cancel_requested=bool(row["cancel_requested"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            heartbeat_at=row["heartbeat_at"],
            lane=row["lane"],
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/jobs/{id}`` and ``minipacs jobs show --json`` (README "Jobs")."""

        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            **self.details,
            "id": self.id,
            "kind": self.kind,
            "description": self.description,
            "state": self.state.value,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "message": self.message,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "next_try_at": iso(self.next_try_at) if self.state is JobState.QUEUED else None,
            "last_error": self.last_error,
            "runner": self.runner,
            "cancel_requested": self.cancel_requested,
            "params": self.params,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "heartbeat_at": iso(self.heartbeat_at),
            "lane": self.lane,
        }


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class JobContext:
    """What a running handler sees: its parameters, and counters it moves as it goes."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self.id = job.id
        self.kind = job.kind
        self.params = job.params
        self.attempt = job.attempts
        self.max_attempts = job.max_attempts
        self.total = job.total
        self.done = 0
        self.failed = 0
        self.message = f"running (attempt {job.attempts} of {job.max_attempts})"
        self.details: dict[str, Any] = dict(job.details)
        self._queue = queue
        self.cancel_seen = False  # someone asked it to stop
        self.lost = False  # the row is not ours any more (another node took it over)
        self.ended = asyncio.Event()  # the handler returned or raised
        self._reported: tuple[Any, ...] | None = None
        self._beat = time.monotonic()

    def _snapshot(self) -> tuple[Any, ...]:
        return (self.total, self.done, self.failed, self.message, json.dumps(self.details, sort_keys=True))

    async def checkpoint(self) -> None:
        """Report progress now; raises :class:`JobCancelled` if the job was cancelled meanwhile."""
        await self._queue._report(self, force=True)
        if self.cancel_seen or self.lost:
            raise JobCancelled("cancelled")


Handler = Callable[[JobContext], Coroutine[Any, Any, str]]


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Handler
    #: After an unclean stop: "resume" (queue it again; for work that may safely run twice)
    #: or "fail" (fail it, saying RESTART_REASON).
    on_restart: OnRestart = "resume"
    #: Attempts before it fails for good; None: the queue's max_attempts.
    max_attempts: int | None = None


@dataclass
class _Running:
    context: JobContext
    task: asyncio.Task[str]


class JobQueue:
    """The persistent queue: submit, read, cancel, retry (any process), and run (``start``)."""

    def __init__(self, archive: IndexAccess, settings: JobSettings | None = None) -> None:
        self.archive = archive
        self.settings = settings or JobSettings()
        self.runner = self.settings.runner_name
        self._kinds: dict[str, JobKind] = {}
        self._running: dict[int, _Running] = {}
        self._executions: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._pruned_at: float | None = None  # monotonic time of the last complete pruning

    # ------------------------------------------------------------ kinds

    def register(
        self, kind: str, handler: Handler, *, on_restart: OnRestart = "resume", max_attempts: int | None = None
    ) -> None:
        if not 1 <= len(kind) <= MAX_KIND or kind in self._kinds:
            raise ValueError(f"job kind {kind!r} is empty, longer than {MAX_KIND} or registered twice")
        if on_restart not in ("resume", "fail"):
            raise ValueError(f"on_restart must be 'resume' or 'fail', not {on_restart!r}")
        self._kinds[kind] = JobKind(kind, handler, on_restart, max_attempts)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    def _on_restart(self, kind: str) -> OnRestart:
        known = self._kinds.get(kind)
        return known.on_restart if known is not None else "resume"

    # ------------------------------------------------------------ any process: submit, read, cancel, retry

    async def submit(
        self,
        kind: str,
        description: str,
        params: Mapping[str, Any],
        *,
        total: int = 0,
        details: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
        then: Callable[[IndexConnection, int], object] | None = None,
        lane: str = "",
        delay_seconds: float = 0.0,
    ) -> Job:
        """Queue a job of a registered ``kind``; it runs on whichever node claims it first.
        ``then(conn, job_id)``: more writes in the same transaction (rows that name the job, such as
        delivery receipts, exist before any runner can claim it). ``lane``: it runs after every job
        submitted before it in that lane has finished (the module docstring). ``delay_seconds``: its
        first attempt is not before then (work that has just failed once, done by the caller)."""
        if kind not in self._kinds:
            raise InvalidJob(f"no job kind {kind[:40]!r}; known: {', '.join(self._kinds) or 'none'}")
        if len(lane) > MAX_LANE:
            raise InvalidJob(f"a lane name has at most {MAX_LANE} characters")
        try:
            encoded = json.dumps(dict(params), sort_keys=True)
            shown = json.dumps(dict(details or {}), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidJob(f"job parameters must be a JSON object: {exc}") from None
        attempts = max_attempts or self._kinds[kind].max_attempts or self.settings.max_attempts
        now = _now()
        values = {
            "kind": kind,
            "description": description,
            "params": encoded,
            "state": JobState.QUEUED.value,
            "total": total,
            "done": 0,
            "failed": 0,
            "message": f"waiting to start after the earlier jobs of lane {lane}" if lane else "waiting to start",
            "details": shown,
            "attempts": 0,
            "max_attempts": attempts,
            "next_try_at": now + dt.timedelta(seconds=max(delay_seconds, 0.0)),
            "last_error": "",
            "runner": "",
            "cancel_requested": False,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
            "lane": lane,
        }

        def insert(conn: IndexConnection) -> dict[str, Any]:
            row = jobs_repo.insert_job(conn, values)
            if then is not None:
                then(conn, int(row["id"]))
            return row

        row = await self.archive.write(insert)
        self._wake.set()
        return Job.from_row(row)

    async def record_finished(
        self,
        kind: str,
        description: str,
        message: str,
        details: Mapping[str, Any],
        *,
        runner: str,
        started: dt.datetime,
    ) -> Job:
        """Record work of ``kind`` that ran outside the queue (a command such as ``minipacs backup`` from
        cron) as a job that is done, so that the overview, /metrics and the jobs list show it as they show
        the queue's own. The kind need not be registered here: nothing ever runs the row (it is done)."""
        if len(runner) > 200:
            raise InvalidJob("a runner name has at most 200 characters")
        try:
            shown = json.dumps(dict(details), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidJob(f"job details must be a JSON object: {exc}") from None
        now = _now()
        values = {
            "kind": kind,
            "description": description,
            "params": json.dumps({"outside_the_queue": True}),
            "state": JobState.DONE.value,
            "total": 0,
            "done": 0,
            "failed": 0,
            "message": message,
            "details": shown,
            "attempts": 1,
            "max_attempts": 1,
            "next_try_at": now,
            "last_error": "",
            "runner": runner,
            "cancel_requested": False,
            "created_at": started,
            "started_at": started,
            "finished_at": now,
            "heartbeat_at": now,
            "lane": "",
        }
        row = await self.archive.write(lambda conn: jobs_repo.insert_job(conn, values))
        return Job.from_row(row)

    async def lane_tail(self, lane: str) -> Job | None:
        """The newest job of ``lane`` still queued or running, on any node (None: the lane is free)."""
        row = await self.archive.read(lambda conn: jobs_repo.lane_tail(conn, lane))
        return Job.from_row(row) if row is not None else None

    async def get(self, job_id: int) -> Job | None:
        row = await self.archive.read(lambda conn: jobs_repo.job_by_id(conn, job_id))
        return Job.from_row(row) if row is not None else None

    async def list(
        self,
        *,
        states: tuple[str, ...] = (),
        kinds: tuple[str, ...] = (),
        before: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Newest first; ``before``: only ids below it (the next page)."""
        unknown = sorted(set(states) - {s.value for s in JobState})
        if unknown:
            raise InvalidJob(f"unknown job state {unknown[0][:20]!r}; use {', '.join(s.value for s in JobState)}")
        if not 1 <= limit <= MAX_LIST:
            raise InvalidJob(f"limit must be 1 to {MAX_LIST}")
        rows = await self.archive.read(
            lambda conn: jobs_repo.list_jobs(conn, states=states, kinds=kinds, before=before, limit=limit)
        )
        return [Job.from_row(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        """Jobs by state (every state present, 0 when none)."""
        found = await self.archive.read(jobs_repo.count_by_state)
        return {s.value: found.get(s.value, 0) for s in JobState}

    async def cancel(self, job_id: int) -> Job:
        """Cancel a queued job now, or ask its runner to stop a running one (it stops at its next
        progress report). Raises NotFound, or JobConflict for a finished job."""

        def run(conn: IndexConnection) -> dict[str, Any] | None:
            row = jobs_repo.job_by_id(conn, job_id, lock=True)
            if row is None:
                return None
            state = JobState(row["state"])
            if state is JobState.QUEUED:
                waited = " while it waited to try again" if row["attempts"] else " before it started"
                values = {"state": JobState.CANCELLED.value, "finished_at": _now(), "message": "cancelled" + waited}
            elif state is JobState.RUNNING:
                values = {
                    "cancel_requested": True,
                    "message": f"cancelling: {row['runner'] or 'its runner'} stops it at its next progress report",
                }
            else:
                raise JobConflict(f"job {job_id} is already {state.value}; there is nothing to cancel")
            jobs_repo.update_job(conn, job_id, values)
            return jobs_repo.job_by_id(conn, job_id)

        row = await self.archive.write(run)
        if row is None:
            raise NotFound(f"no job {job_id}")
        running = self._running.get(job_id)
        if running is not None:  # ours: stop it now rather than at the next report
            running.context.cancel_seen = True
            running.task.cancel()
        return Job.from_row(row)

    async def retry(self, job_id: int) -> Job:
        """Queue a failed or cancelled job again (attempts start over), or try a job waiting
        for its next try now. Raises NotFound, or JobConflict for a running or done job."""

        def run(conn: IndexConnection) -> dict[str, Any] | None:
            row = jobs_repo.job_by_id(conn, job_id, lock=True)
            if row is None:
                return None
            state = JobState(row["state"])
            now = _now()
            if state in (JobState.FAILED, JobState.CANCELLED):
                values: dict[str, Any] = {
                    "state": JobState.QUEUED.value,
                    "attempts": 0,
                    "next_try_at": now,
                    "cancel_requested": False,
                    "done": 0,
                    "failed": 0,
                    "started_at": None,
                    "finished_at": None,
                    "message": f"queued again by a retry (it was {state.value})",
                }
            elif state is JobState.QUEUED:
                values = {"next_try_at": now, "message": "queued: to try again now"}
            else:
                raise JobConflict(
                    f"job {job_id} is {state.value}; only a failed, cancelled or waiting job can be retried"
                )
            jobs_repo.update_job(conn, job_id, values)
            return jobs_repo.job_by_id(conn, job_id)

        row = await self.archive.write(run)
        if row is None:
            raise NotFound(f"no job {job_id}")
        self._wake.set()
        return Job.from_row(row)

    async def wait(self, job_id: int, timeout: float = 60.0, interval: float = 0.05) -> Job:
        """The job once finished (tests, scripts); TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.finished:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s: {job.message}")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------ the runner

    async def start(self) -> None:
        """Recover this node's jobs left running by an earlier life, then run jobs in the background."""
        if self._loop_task is not None:
            return
        recovered = await self._recover(startup=True)
        if recovered:
            log.info("jobs: %d job(s) left running by a stopped server recovered", recovered)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="minipacs-jobs")
        log.info(
            "jobs: runner %s runs %s, %d at a time", self.runner, ", ".join(self._kinds) or "no kinds", self.concurrency
        )

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    async def close(self) -> None:
        """Stop running: each running job is queued again (or failed, as its kind says), its attempt
        not charged; queued jobs stay for the next start or another node."""
        self._closing = True
        if self._loop_task is not None:  # not cancelled: an index call in flight finishes first
            self._wake.set()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for running in list(self._running.values()):
            running.task.cancel()
        await asyncio.gather(*self._executions, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                await self._recover(startup=False)
                await self._claim()
                await self._prune()
            except Exception:  # the runner must survive a bad moment of the index
                log.exception("jobs: the runner's pass failed; trying again in %s s", self.settings.poll_seconds)
            if self._closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def _claim(self) -> None:
        free = self.concurrency - len(self._running)
        kinds = tuple(self._kinds)
        if free <= 0 or not kinds or self._closing:
            return
        now = _now()
        if not await self.archive.read(lambda conn: jobs_repo.due(conn, kinds, now)):
            return
        rows = await self.archive.write(lambda conn: jobs_repo.claim(conn, kinds, self.runner, now, free))
        for row in rows:
            job = Job.from_row(row)
            execution = asyncio.get_running_loop().create_task(self._execute(job), name=f"job-{job.id}")
            self._executions.add(execution)
            execution.add_done_callback(self._executions.discard)

    async def _execute(self, job: Job) -> None:
        kind = self._kinds[job.kind]
        context = JobContext(self, job)
        task = asyncio.get_running_loop().create_task(kind.handler(context), name=f"job-{job.id}-work")
        self._running[job.id] = _Running(context, task)
        watcher = asyncio.get_running_loop().create_task(self._watch(context, task), name=f"job-{job.id}-watch")
        outcome: tuple[str, str, bool]  # (state or "retry"/"shutdown", message, error?)
        try:
            try:
                message = await task
                outcome = (JobState.DONE.value, message, False)
            except (asyncio.CancelledError, JobCancelled):
                if context.lost:
                    outcome = ("lost", "", False)
                elif context.cancel_seen:
                    outcome = (JobState.CANCELLED.value, f"cancelled while it ran, after {context.done} done", False)
                elif self._closing:
                    outcome = ("shutdown", SHUTDOWN_REASON, True)
                else:  # pragma: no cover - nothing else cancels the work
                    outcome = (JobState.FAILED.value, "stopped for an unknown reason; see the server log", True)
            except JobFailed as exc:
                outcome = ("retry" if exc.retry else JobState.FAILED.value, str(exc), True)
            except Exception as exc:  # a bug must not vanish into a task nobody awaits
                log.exception("job %d (%s) failed unexpectedly", job.id, job.description)
                outcome = (JobState.FAILED.value, f"failed unexpectedly: {exc}; see the server log", True)
        finally:
            context.ended.set()  # the watcher finishes the report it may be making, then stops
            await asyncio.gather(watcher, return_exceptions=True)
            self._running.pop(job.id, None)
        if outcome[0] != "lost":
            try:
                await self._finish(context, kind, *outcome)
            except Exception:  # the row stays running; stale recovery takes it over
                log.exception("job %d: could not record how it ended", job.id)
        else:
            log.warning("job %d was taken over by another node while it ran here; its result here is dropped", job.id)
        self._wake.set()  # a slot is free

    async def _finish(self, context: JobContext, kind: JobKind, how: str, message: str, error: bool) -> None:
        settings = self.settings

        def run(conn: IndexConnection) -> int:
            row = jobs_repo.job_by_id(conn, context.id, lock=True)
            if row is None or row["runner"] != self.runner or row["state"] != JobState.RUNNING.value:
                return 0
            now = _now()
            values: dict[str, Any] = {
                "total": context.total,
                "done": context.done,
                "failed": context.failed,
                "details": json.dumps(context.details, sort_keys=True),
                "heartbeat_at": now,
            }
            state = how
            if row["cancel_requested"] and how in ("retry", "shutdown", JobState.FAILED.value):
                state, message_now = JobState.CANCELLED.value, f"cancelled; it had stopped: {message}"
            else:
                message_now = message
            if state == "retry":
                if context.attempt < context.max_attempts:
                    wait = settings.backoff(context.attempt)
                    at = now + dt.timedelta(seconds=wait)
                    values.update(
                        state=JobState.QUEUED.value,
                        next_try_at=at,
                        message=f"attempt {context.attempt} of {context.max_attempts} failed: {message}; "
                        f"next try at {at:%H:%M:%S} UTC",
                    )
                else:
                    state = JobState.FAILED.value
                    message_now = f"{message} (gave up after {context.attempt} attempt(s))"
            elif state == "shutdown":
                if kind.on_restart == "resume":
                    values.update(
                        state=JobState.QUEUED.value,
                        next_try_at=now,
                        attempts=max(context.attempt - 1, 0),  # not its fault: the attempt is given back
                        message=f"queued again: {SHUTDOWN_REASON}",
                    )
                else:
                    state = JobState.FAILED.value
            if state in FINISHED:
                values.update(state=state, finished_at=now, message=message_now)
            if error:
                values["last_error"] = message
            return jobs_repo.update_job(conn, context.id, values, runner=self.runner, state=JobState.RUNNING.value)

        if not await self.archive.write(run):
            log.warning("job %d ended here but its row is no longer ours; left as it is", context.id)

    async def _watch(self, context: JobContext, task: asyncio.Task[str]) -> None:
        """Every progress_seconds: report the counts (when changed, and a heartbeat), read the cancel flag."""
        while not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.ended.wait(), self.settings.progress_seconds)
                return
            try:
                await self._report(context)
            except Exception:  # a missed report is not fatal; the next one may pass
                log.exception("job %d: progress report failed", context.id)
                continue
            if context.cancel_seen or context.lost:
                task.cancel()
                return

    async def _report(self, context: JobContext, *, force: bool = False) -> None:
        snapshot = context._snapshot()
        beat_due = time.monotonic() - context._beat >= self.settings.stale_seconds / 3
        flag: bool | None
        if force or beat_due or snapshot != context._reported:
            values = {
                "total": context.total,
                "done": context.done,
                "failed": context.failed,
                "message": context.message,
                "details": snapshot[-1],
                "heartbeat_at": _now(),
            }
            flag = await self.archive.write(lambda conn: jobs_repo.report(conn, context.id, self.runner, values))
            context._reported, context._beat = snapshot, time.monotonic()
        else:
            flag = await self.archive.read(lambda conn: jobs_repo.cancel_requested(conn, context.id, self.runner))
        if flag is None:
            context.lost = True
        elif flag:
            context.cancel_seen = True

    async def _recover(self, *, startup: bool) -> int:
        """Running jobs whose runner is gone: queued again or failed (module docstring)."""
        settings = self.settings
        host = socket.gethostname()
        now = _now()
        silent_since = now - dt.timedelta(seconds=settings.stale_seconds)
        if not startup and not await self.archive.read(lambda conn: jobs_repo.silent_running(conn, silent_since)):
            return 0
        ours = set(self._running)

        def gone(row: Mapping[str, Any]) -> str | None:
            runner: str = row["runner"]
            if row["id"] in ours:
                return None
            if startup and runner == self.runner:
                return RESTART_REASON
            name, _, pid = runner.rpartition(":")
            if startup and name == host and pid.isdigit() and not _pid_alive(int(pid)):
                return RESTART_REASON
            beat = row["heartbeat_at"]
            if beat is None or beat < silent_since:
                return f"its runner {runner} gave no sign of life for {settings.stale_seconds:g} s (stopped or cut off)"
            return None

        def run(conn: IndexConnection) -> int:
            rows = jobs_repo.orphans(
                conn,
                runners=[self.runner] if startup else [],
                runner_prefix=f"{host}:" if startup else None,
                silent_since=silent_since,
            )
            count = 0
            for row in rows:
                reason = gone(row)
                if reason is None:
                    continue
                count += 1
                values: dict[str, Any] = {"last_error": reason, "heartbeat_at": None}
                if row["cancel_requested"]:
                    values.update(state=JobState.CANCELLED.value, finished_at=now, message=f"cancelled; {reason}")
                elif self._on_restart(row["kind"]) == "fail":
                    values.update(state=JobState.FAILED.value, finished_at=now, message=reason)
                elif row["attempts"] >= row["max_attempts"]:
                    values.update(
                        state=JobState.FAILED.value,
                        finished_at=now,
                        message=f"{reason}; no attempts left ({row['attempts']} of {row['max_attempts']})",
                    )
                else:
                    values.update(state=JobState.QUEUED.value, next_try_at=now, message=f"resumed: {reason}")
                jobs_repo.update_job(conn, row["id"], values, state=JobState.RUNNING.value)
                log.warning("job %d (%s): %s; %s", row["id"], row["description"], reason, values["message"])
            return count

        return await self.archive.write(run)

    async def _prune(self) -> None:
        if self.settings.keep_days <= 0 or (self._pruned_at is not None and time.monotonic() - self._pruned_at < 3600):
            return
        cutoff = _now() - dt.timedelta(days=self.settings.keep_days)
        removed = await self.archive.write(lambda conn: jobs_repo.delete_finished(conn, cutoff, PRUNE_BATCH))
        if removed < PRUNE_BATCH:
            self._pruned_at = time.monotonic()
        if removed:
            log.info("jobs: %d finished job(s) older than %g day(s) deleted", removed, self.settings.keep_days)


async def every(queue: JobQueue, interval: float, kind: str, submit: Callable[[], Awaitable[object]]) -> None:
    """Every ``interval`` seconds, ``submit()`` a job of ``kind`` unless one is queued or running (on any node)."""
    while True:
        await asyncio.sleep(interval)
        try:
            waiting = await queue.list(states=(JobState.QUEUED.value, JobState.RUNNING.value), kinds=(kind,), limit=1)
            if not waiting:
                await submit()
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("%s: could not queue the periodic run: %s", kind, exc)


__all__ = [
    "every",
    "FINISHED",
    "RESTART_REASON",
    "SHUTDOWN_REASON",
    "TRANSITIONS",
    "Handler",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobConflict",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobQueue",
    "JobSettings",
    "JobState",
    "default_runner",
]
