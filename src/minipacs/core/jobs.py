"""Long transfers (send, retrieve) as jobs: run in the background, watched by id.

In memory only: a restart forgets them. The history is bounded (the oldest
finished jobs go first; a job that has not finished is never dropped). Each
job counts what it did (done / failed out of total) and keeps one sentence
for a person. Nothing here speaks a protocol: the work function says how it
went by returning a sentence (done) or raising :class:`JobFailed` (failed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: Which state may follow which; anything else is a programming error.
TRANSITIONS: Final[dict[JobState, frozenset[JobState]]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
}
FINISHED: Final = frozenset({JobState.DONE, JobState.FAILED})


class JobFailed(Exception):
    """Raised by a job's work: it failed, and the message says why and what to do."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Job:
    id: str
    kind: str  # e.g. "send", "retrieve"
    description: str  # what it does, in words
    state: JobState = JobState.QUEUED
    total: int = 0
    done: int = 0
    failed: int = 0
    message: str = "waiting to start"
    created_at: dt.datetime = field(default_factory=_now)
    finished_at: dt.datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def move_to(self, state: JobState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"job {self.id}: {self.state} cannot become {state}")
        self.state = state
        if state in FINISHED:
            self.finished_at = _now()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "description": self.description,
            "state": self.state.value,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "message": self.message,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            **self.details,
        }


Work = Callable[[Job], Awaitable[str]]


class JobManager:
    """Runs jobs as asyncio tasks, at most ``concurrency`` at a time; remembers ``history`` of them."""

    def __init__(self, history: int = 200, concurrency: int = 4) -> None:
        if history < 1 or concurrency < 1:
            raise ValueError("history and concurrency must be at least 1")
        self.history = history
        self._slots = asyncio.Semaphore(concurrency)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, kind: str, description: str, work: Work, total: int = 0) -> Job:
        """Queue ``work`` (an ``async def work(job) -> sentence``); returns the job at once."""
        job = Job(uuid.uuid4().hex[:16], kind, description, total=total)
        self._jobs[job.id] = job
        self._trim()
        self._tasks[job.id] = asyncio.get_running_loop().create_task(self._run(job, work), name=f"job-{job.id}")
        return job

    async def _run(self, job: Job, work: Work) -> None:
        try:
            async with self._slots:
                job.move_to(JobState.RUNNING)
                job.message = "running"
                try:
                    job.message = await work(job)
                except JobFailed as exc:
                    job.message = str(exc)
                    job.move_to(JobState.FAILED)
                except Exception as exc:  # a bug must not vanish into a task nobody awaits
                    log.exception("job %s (%s) failed unexpectedly", job.id, job.description)
                    job.message = f"failed unexpectedly: {exc}; see the server log"
                    job.move_to(JobState.FAILED)
                else:
                    job.move_to(JobState.DONE)
        except asyncio.CancelledError:
            if not job.finished:
                job.message = "stopped: the server shut down"
                job.move_to(JobState.FAILED)
            raise
        finally:
            self._tasks.pop(job.id, None)
            self._trim()

    def _trim(self) -> None:
        excess = len(self._jobs) - self.history
        for job_id in [j.id for j in self._jobs.values() if j.finished][: max(excess, 0)]:
            del self._jobs[job_id]

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        """Newest first."""
        return list(reversed(self._jobs.values()))

    async def wait(self, job_id: str) -> Job | None:
        """The job once finished (for tests and scripts in process)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self._jobs.get(job_id)

    async def close(self) -> None:
        """Stop every running job (they end as failed, saying why)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["FINISHED", "Job", "JobFailed", "JobManager", "JobState", "TRANSITIONS", "Work"]
