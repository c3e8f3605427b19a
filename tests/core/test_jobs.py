"""The in-memory job manager: states, counts, history bound, failures, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from minipacs.core.jobs import TRANSITIONS, Job, JobFailed, JobManager, JobState


@pytest.mark.parametrize(("start", "end"), [(s, e) for s in JobState for e in JobState])
def test_transition_table(start: JobState, end: JobState) -> None:
    job = Job("j", "send", "test", state=start)
    if end in TRANSITIONS[start]:
        job.move_to(end)
        assert job.state is end and job.finished == (end in (JobState.DONE, JobState.FAILED))
    else:
        with pytest.raises(RuntimeError):
            job.move_to(end)


def test_done_failed_and_unexpected() -> None:
    async def main() -> None:
        jobs = JobManager()

        async def ok(job: Job) -> str:
            job.total, job.done = 3, 3
            return "all three"

        async def refused(job: Job) -> str:
            raise JobFailed("the peer said no")

        async def broken(job: Job) -> str:
            raise KeyError("bug")

        a, b, c = jobs.submit("send", "a", ok), jobs.submit("send", "b", refused), jobs.submit("send", "c", broken)
        assert a.state is JobState.QUEUED
        for job in (a, b, c):
            await jobs.wait(job.id)
        assert (a.state, a.message, a.to_dict()["done"]) == (JobState.DONE, "all three", 3)
        assert (b.state, b.message) == (JobState.FAILED, "the peer said no")
        assert c.state is JobState.FAILED and "unexpectedly" in c.message
        assert [j.id for j in jobs.list()] == [c.id, b.id, a.id]

    asyncio.run(main())


def test_history_is_bounded_and_keeps_unfinished_jobs() -> None:
    async def main() -> None:
        jobs = JobManager(history=3, concurrency=1)
        release = asyncio.Event()

        async def slow(job: Job) -> str:
            await release.wait()
            return "late"

        async def quick(job: Job) -> str:
            return "quick"

        first = jobs.submit("retrieve", "slow", slow)
        await asyncio.sleep(0)
        queued = [jobs.submit("send", f"q{n}", quick) for n in range(5)]
        assert jobs.get(first.id) is first and all(jobs.get(j.id) is j for j in queued)  # none finished yet
        release.set()
        for job in queued:
            await jobs.wait(job.id)
        assert len(jobs.list()) == 3 and jobs.get(queued[-1].id) is not None and jobs.get(first.id) is None

    asyncio.run(main())


def test_close_fails_running_jobs_saying_why() -> None:
    async def main() -> None:
        jobs = JobManager()

        async def forever(job: Job) -> str:
            await asyncio.Event().wait()
            return "never"

        job = jobs.submit("retrieve", "forever", forever)
        await asyncio.sleep(0.01)
        assert job.state is JobState.RUNNING
        await jobs.close()
        assert job.to_dict()["state"] == "failed" and "shut down" in job.message

    asyncio.run(main())
