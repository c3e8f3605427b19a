"""The persistent job queue (core/jobs.py), on SQLite and PostgreSQL: run, retry with back-off,
cancel, recovery after a restart, a clean shutdown, pruning, and two runners on one index."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from minipacs.core.archive import Archive
from minipacs.core.errors import NotFound
from minipacs.core.jobs import (
    FINISHED,
    RESTART_REASON,
    SHUTDOWN_REASON,
    TRANSITIONS,
    InvalidJob,
    JobCancelled,
    JobConflict,
    JobContext,
    JobFailed,
    JobQueue,
    JobSettings,
    JobState,
)
from minipacs.index import jobs_repo
from tests.core.conftest import ArchiveRunner

FAST = JobSettings(
    runner="node-a",
    poll_seconds=0.05,
    progress_seconds=0.05,
    stale_seconds=1.0,
    retry_seconds=0.1,
    retry_max_seconds=0.25,
    max_attempts=4,
)


def settings(**changes: Any) -> JobSettings:
    values = {f: getattr(FAST, f) for f in FAST.__dataclass_fields__}
    return JobSettings(**{**values, **changes})


def test_transitions_end_in_finished_states() -> None:
    assert FINISHED == {JobState.DONE, JobState.FAILED, JobState.CANCELLED}
    assert TRANSITIONS[JobState.DONE] == frozenset()
    assert JobState.QUEUED in TRANSITIONS[JobState.FAILED] and JobState.QUEUED in TRANSITIONS[JobState.CANCELLED]


def test_backoff_doubles_up_to_the_limit() -> None:
    s = JobSettings(retry_seconds=30, retry_max_seconds=100)
    assert [s.backoff(n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_run_to_done_with_params_and_progress(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        queue = JobQueue(archive, FAST)
        seen: list[dict[str, Any]] = []

        async def count(job: JobContext) -> str:
            seen.append(job.params)
            job.total = job.params["n"]
            for _ in range(job.total):
                job.done += 1
                await job.checkpoint()
            job.details["extra"] = "kept"
            return f"counted to {job.done}"

        queue.register("count", count)
        with pytest.raises(InvalidJob):
            await queue.submit("nope", "unknown kind", {})
        with pytest.raises(InvalidJob):
            await queue.submit("count", "not JSON", {"when": object()})
        job = await queue.submit("count", "count to 3", {"n": 3}, details={"node": {"id": 1}})
        assert job.state is JobState.QUEUED and job.to_dict()["message"] == "waiting to start"
        await queue.start()
        try:
            done = await queue.wait(job.id, timeout=10)
        finally:
            await queue.close()
        assert seen == [{"n": 3}]
        data = done.to_dict()
        assert (data["state"], data["done"], data["total"], data["message"]) == ("done", 3, 3, "counted to 3")
        assert data["extra"] == "kept" and data["node"] == {"id": 1} and data["runner"] == "node-a"
        assert data["attempts"] == 1 and data["finished_at"] and data["params"] == {"n": 3}
        assert [j.id for j in await queue.list()] == [job.id]
        assert (await queue.counts())["done"] == 1

    with_archive(body)


def test_retry_with_backoff_then_success_and_then_give_up(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        queue = JobQueue(archive, FAST)
        tries: dict[str, list[float]] = {"flaky": [], "down": [], "refused": []}

        async def flaky(job: JobContext) -> str:
            tries[job.params["name"]].append(asyncio.get_running_loop().time())
            if job.params["name"] == "refused":
                raise JobFailed("the peer said no")
            if job.params["name"] == "down" or job.attempt < 3:
                raise JobFailed(f"cannot connect (attempt {job.attempt})", retry=True)
            return "at last"

        queue.register("flaky", flaky)
        a = await queue.submit("flaky", "a", {"name": "flaky"})
        b = await queue.submit("flaky", "b", {"name": "down"})
        c = await queue.submit("flaky", "c", {"name": "refused"})
        await queue.start()
        try:
            waiting = await queue.get(a.id)
            for _ in range(100):  # see it waiting between tries
                waiting = await queue.get(a.id)
                if waiting and waiting.state is JobState.QUEUED and waiting.attempts == 1:
                    break
                await asyncio.sleep(0.01)
            assert waiting is not None and waiting.last_error == "cannot connect (attempt 1)"
            assert "next try at" in waiting.message and waiting.to_dict()["next_try_at"]
            a_done, b_done, c_done = [await queue.wait(j.id, timeout=20) for j in (a, b, c)]
        finally:
            await queue.close()
        assert (a_done.state, a_done.attempts, a_done.message) == (JobState.DONE, 3, "at last")
        gaps = [later - earlier for earlier, later in zip(tries["flaky"], tries["flaky"][1:], strict=False)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s, then doubled
        assert b_done.state is JobState.FAILED and b_done.attempts == 4 == len(tries["down"])
        assert "gave up after 4 attempt(s)" in b_done.message and b_done.last_error == "cannot connect (attempt 4)"
        assert c_done.state is JobState.FAILED and c_done.attempts == 1 and c_done.message == "the peer said no"

    with_archive(body)


def test_cancel_queued_and_running_then_retry(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        # two queues on one index: "web" only submits and cancels, "node-a" runs; a cancel through
        # another node is seen by the runner at its next progress report
        runner = JobQueue(archive, settings(concurrency=1))
        other = JobQueue(archive, settings(runner="web"))
        started = asyncio.Event()

        async def slow(job: JobContext) -> str:
            started.set()
            job.total = 1000
            while job.done < job.total:
                job.done += 1
                await asyncio.sleep(0.01)
            return "finished"

        for q in (runner, other):
            q.register("slow", slow)
        first = await other.submit("slow", "first", {})
        second = await other.submit("slow", "second", {})
        await runner.start()
        try:
            await asyncio.wait_for(started.wait(), 10)
            cancelled = await other.cancel(second.id)  # still queued (concurrency 1): at once
            assert cancelled.state is JobState.CANCELLED and "before it started" in cancelled.message
            asking = await other.cancel(first.id)
            assert asking.state is JobState.RUNNING and asking.cancel_requested and "cancelling" in asking.message
            stopped = await runner.wait(first.id, timeout=10)
            assert stopped.state is JobState.CANCELLED and 0 < stopped.done < 1000
            assert "cancelled while it ran" in stopped.message
            with pytest.raises(JobConflict):
                await other.cancel(first.id)
            with pytest.raises(NotFound):
                await other.cancel(999999)
            again = await other.retry(first.id)
            assert again.state is JobState.QUEUED and again.attempts == 0 and not again.cancel_requested
            finished = await runner.wait(first.id, timeout=30)
            assert finished.state is JobState.DONE and finished.done == 1000 and finished.attempts == 1
            with pytest.raises(JobConflict):
                await other.retry(first.id)  # done: nothing to retry
        finally:
            await runner.close()

    with_archive(body)


async def _leave_running(archive: Archive, queue: JobQueue, kind: str, runner: str, **params: Any) -> int:
    """A job as a server that died while running it leaves it: claimed, running, by ``runner``."""
    job = await queue.submit(kind, f"{kind} left running", params)
    now = dt.datetime.now(dt.UTC)
    rows = await archive.write(lambda conn: jobs_repo.claim(conn, [kind], runner, now, 10))
    assert [r["id"] for r in rows] == [job.id] and rows[0]["attempts"] == 1
    return job.id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_restart_resumes_or_fails_as_the_kind_says(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        runs: list[int] = []

        async def work(job: JobContext) -> str:
            runs.append(job.id)
            return "ran again"

        def queue_for(runner: str) -> JobQueue:
            q = JobQueue(archive, settings(runner=runner, stale_seconds=600))
            q.register("idempotent", work, on_restart="resume")
            q.register("once-only", work, on_restart="fail")
            return q

        before = queue_for("node-a")
        host = socket.gethostname()
        resumed = await _leave_running(archive, before, "idempotent", "node-a")
        failed = await _leave_running(archive, before, "once-only", "node-a")
        dead = await _leave_running(archive, before, "idempotent", f"{host}:{_dead_pid()}")
        alive = await _leave_running(archive, before, "idempotent", f"{host}:{os.getppid()}")  # a live process
        elsewhere = await _leave_running(archive, before, "idempotent", "node-b")
        after = queue_for("node-a")  # the same node, restarted
        await after.start()
        try:
            r, f, d = [await after.wait(i, timeout=10) for i in (resumed, failed, dead)]
            await asyncio.sleep(0.3)
            still = [await after.get(i) for i in (alive, elsewhere)]
        finally:
            await after.close()
        assert (r.state, r.attempts, r.message, r.last_error) == (JobState.DONE, 2, "ran again", RESTART_REASON)
        assert (f.state, f.message, f.last_error) == (JobState.FAILED, RESTART_REASON, RESTART_REASON)
        assert d.state is JobState.DONE and d.last_error == RESTART_REASON
        assert sorted(runs) == sorted([resumed, dead])
        assert [j.state if j else None for j in still] == [JobState.RUNNING, JobState.RUNNING]

    with_archive(body)


def test_a_silent_runner_is_taken_over_and_the_last_attempt_fails(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        async def work(job: JobContext) -> str:
            return "taken over"

        q = JobQueue(archive, settings(runner="node-a", stale_seconds=0.5))
        q.register("idempotent", work)
        taken = await _leave_running(archive, q, "idempotent", "node-b")
        spent = await q.submit("idempotent", "no attempts left", {}, max_attempts=1)
        now = dt.datetime.now(dt.UTC)
        await archive.write(lambda conn: jobs_repo.claim(conn, ["idempotent"], "node-b", now, 10))
        await q.start()
        try:
            t, s = await q.wait(taken, timeout=10), await q.wait(spent.id, timeout=10)
        finally:
            await q.close()
        assert t.state is JobState.DONE and t.runner == "node-a" and "node-b gave no sign of life" in t.last_error
        assert s.state is JobState.FAILED and "no attempts left (1 of 1)" in s.message

    with_archive(body)


def test_clean_shutdown_requeues_without_charging_the_attempt(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        started = asyncio.Event()

        async def forever(job: JobContext) -> str:
            started.set()
            await asyncio.sleep(3600)
            return "never"

        q = JobQueue(archive, FAST)
        q.register("forever", forever)
        q.register("fragile", forever, on_restart="fail")
        job = await q.submit("forever", "waits", {})
        await q.start()
        await asyncio.wait_for(started.wait(), 10)
        await q.close()
        after = await q.get(job.id)
        assert after is not None and after.state is JobState.QUEUED and after.attempts == 0
        assert after.message == f"queued again: {SHUTDOWN_REASON}"
        started.clear()
        q2 = JobQueue(archive, FAST)
        q2.register("forever", forever)
        q2.register("fragile", forever, on_restart="fail")
        await q2.cancel(job.id)
        fragile = await q2.submit("fragile", "fails at shutdown", {})
        await q2.start()
        await asyncio.wait_for(started.wait(), 10)
        await q2.close()
        gone = await q2.get(fragile.id)
        assert gone is not None and gone.state is JobState.FAILED and gone.message == SHUTDOWN_REASON

    with_archive(body)


def test_checkpoint_raises_when_cancelled(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        caught: list[str] = []
        started = asyncio.Event()

        async def careful(job: JobContext) -> str:
            started.set()
            while True:
                try:
                    await job.checkpoint()
                except JobCancelled:
                    caught.append("seen")
                    raise
                await asyncio.sleep(0.01)

        q = JobQueue(archive, settings(progress_seconds=30, stale_seconds=100))  # only the checkpoint reports
        q.register("careful", careful)
        other = JobQueue(archive, settings(runner="web"))
        other.register("careful", careful)
        job = await q.submit("careful", "checks", {})
        await q.start()
        try:
            await asyncio.wait_for(started.wait(), 10)
            await other.cancel(job.id)
            ended = await q.wait(job.id, timeout=10)
        finally:
            await q.close()
        assert ended.state is JobState.CANCELLED and caught == ["seen"]

    with_archive(body)


def test_prune_deletes_old_finished_jobs_only(with_archive: ArchiveRunner) -> None:
    async def body(archive: Archive) -> None:
        async def quick(job: JobContext) -> str:
            return "ok"

        q = JobQueue(archive, settings(keep_days=1))
        q.register("quick", quick)
        old, recent, waiting = [await q.submit("quick", n, {}) for n in ("old", "recent", "waiting")]
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1, minutes=1)
        just_now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(minutes=1)
        for job, at in ((old, long_ago), (recent, just_now)):
            await archive.write(
                lambda conn, j=job, t=at: jobs_repo.update_job(conn, j.id, {"state": "done", "finished_at": t})
            )
        await q._prune()
        assert [j.id for j in await q.list()] == [waiting.id, recent.id]

    with_archive(body)


def test_two_runners_never_claim_the_same_job(with_archive: ArchiveRunner, index_url: str) -> None:
    """Two archives (two writers, as two processes have) on one index claim at the same time."""

    async def body(archive: Archive) -> None:
        from minipacs.bootstrap import open_archive
        from minipacs.config import Settings

        second = await open_archive(Settings(data_dir=archive.settings.data_dir, index_url=index_url))
        try:
            q = JobQueue(archive, FAST)

            async def noop(job: JobContext) -> str:
                return ""

            q.register("noop", noop)
            for n in range(60):
                await q.submit("noop", f"job {n}", {})
            now = dt.datetime.now(dt.UTC)

            async def claim_all(on: Archive, runner: str) -> list[int]:
                got: list[int] = []
                while True:
                    rows = await on.write(lambda conn: jobs_repo.claim(conn, ["noop"], runner, now, 3))
                    if not rows:
                        return got
                    got += [r["id"] for r in rows]

            a, b = await asyncio.gather(claim_all(archive, "a"), claim_all(second, "b"))
            assert len(a) + len(b) == 60 and not set(a) & set(b)
            rows = await archive.read(lambda conn: jobs_repo.list_jobs(conn, limit=100))
            assert {r["attempts"] for r in rows} == {1} and {r["state"] for r in rows} == {"running"}
        finally:
            await second.close()

    with_archive(body)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("job_concurrency", 64, 65),
        ("job_concurrency", 1, 0),
        ("job_max_attempts", 100, 101),
        ("job_max_attempts", 1, 0),
        ("job_retry_seconds", 0.001, 0),
        ("job_poll_seconds", 0.001, 0),
        ("job_keep_days", 0, -1),
        ("node_id", "n" * 64, "n" * 65),
        ("node_id", "node-a.site_1", "bad name"),
        ("node_id", "node-a", "bad/name"),
        ("node_name", "n" * 64, "n" * 65),
    ],
)
def test_job_settings_limits(key: str, good: Any, bad: Any) -> None:
    from minipacs.config import ConfigError, Settings

    Settings(**{key: good}).validate()
    with pytest.raises(ConfigError, match=key):
        Settings(**{key: bad}).validate()


def test_job_settings_relations() -> None:
    from minipacs.config import ConfigError, Settings

    Settings(job_retry_seconds=10, job_retry_max_seconds=10, job_progress_seconds=1, job_stale_seconds=3).validate()
    with pytest.raises(ConfigError, match="job_retry_max_seconds"):
        Settings(job_retry_seconds=10, job_retry_max_seconds=9).validate()
    with pytest.raises(ConfigError, match="job_stale_seconds"):
        Settings(job_progress_seconds=1, job_stale_seconds=2.9).validate()


def test_a_lane_runs_its_jobs_one_at_a_time_in_submission_order(with_archive: ArchiveRunner) -> None:
    """Lanes (core/jobs.py): with room for four at once, the jobs of lane "x" still run one after the
    other, oldest first, while a job of no lane and one of another lane run beside them."""

    async def body(archive: Archive) -> None:
        events: list[tuple[str, int]] = []

        async def step(job: JobContext) -> str:
            events.append(("start", job.id))
            await asyncio.sleep(0.05)
            events.append(("end", job.id))
            return "ok"

        q = JobQueue(archive, settings(concurrency=4))
        q.register("step", step)
        with pytest.raises(InvalidJob, match="lane"):
            await q.submit("step", "lane too long", {}, lane="x" * 65)
        lane = [(await q.submit("step", f"x{n}", {}, lane="x")).id for n in range(4)]
        free = await q.submit("step", "no lane", {})
        other = await q.submit("step", "y", {}, lane="y")
        tail = await q.lane_tail("x")
        assert tail is not None and tail.id == lane[-1] and tail.lane == "x" and tail.to_dict()["lane"] == "x"
        await q.start()
        try:
            for job_id in [*lane, free.id, other.id]:
                assert (await q.wait(job_id, timeout=20)).state is JobState.DONE
        finally:
            await q.close()
        in_lane = [e for e in events if e[1] in lane]
        assert in_lane == [(what, job_id) for job_id in lane for what in ("start", "end")]
        # the free job and the other lane did not wait for lane "x"
        assert events.index(("start", free.id)) < events.index(("end", lane[0]))
        assert events.index(("start", other.id)) < events.index(("end", lane[0]))
        assert await q.lane_tail("x") is None

    with_archive(body)


def test_a_lane_job_running_on_another_node_blocks_the_lane_here(with_archive: ArchiveRunner) -> None:
    """The lane holds across nodes: node-b's running job (alive: it is not silent) keeps node-a from the
    next job of the lane until it ends; then node-a runs it."""

    async def body(archive: Archive) -> None:
        ran: list[int] = []

        async def work(job: JobContext) -> str:
            ran.append(job.id)
            return "ok"

        q = JobQueue(archive, settings(stale_seconds=600))
        q.register("ordered", work)
        first = await q.submit("ordered", "first", {}, lane="adt")
        now = dt.datetime.now(dt.UTC)
        claimed = await archive.write(lambda conn: jobs_repo.claim(conn, ["ordered"], "node-b", now, 10))
        assert [r["id"] for r in claimed] == [first.id]
        second = await q.submit("ordered", "second", {}, lane="adt")
        assert await archive.write(lambda conn: jobs_repo.claim(conn, ["ordered"], "node-c", now, 10)) == []
        await q.start()
        try:
            await asyncio.sleep(0.3)
            waiting = await q.get(second.id)
            assert waiting is not None and waiting.state is JobState.QUEUED and ran == []
            done = {"state": "done", "finished_at": dt.datetime.now(dt.UTC), "message": "done on node-b"}
            await archive.write(lambda conn: jobs_repo.update_job(conn, first.id, done, runner="node-b"))
            after = await q.wait(second.id, timeout=10)
        finally:
            await q.close()
        assert after.state is JobState.DONE and after.runner == "node-a" and ran == [second.id]

    with_archive(body)


def test_a_failed_or_interrupted_lane_job_does_not_block_its_lane(with_archive: ArchiveRunner) -> None:
    """A lane job that fails, or that its server left running when it died (kind on_restart="fail"), is
    finished: the lane goes on with the next job, after a restart too."""

    async def body(archive: Archive) -> None:
        ran: list[int] = []

        async def work(job: JobContext) -> str:
            ran.append(job.id)
            if job.params.get("refuse"):
                raise JobFailed("refused when it ran")
            return "ok"

        def queue() -> JobQueue:
            q = JobQueue(archive, settings(stale_seconds=600))
            q.register("ordered", work, on_restart="fail", max_attempts=1)
            return q

        before = queue()
        cut = await before.submit("ordered", "left running by a crash", {}, lane="adt")
        now = dt.datetime.now(dt.UTC)
        await archive.write(lambda conn: jobs_repo.claim(conn, ["ordered"], "node-a", now, 10))
        refused = await before.submit("ordered", "refused", {"refuse": True}, lane="adt")
        last = await before.submit("ordered", "last", {}, lane="adt")
        after = queue()  # node-a starts again
        await after.start()
        try:
            c, r, d = [await after.wait(j.id, timeout=10) for j in (cut, refused, last)]
        finally:
            await after.close()
        assert (c.state, c.message) == (JobState.FAILED, RESTART_REASON)
        assert (r.state, r.message) == (JobState.FAILED, "refused when it ran")
        assert d.state is JobState.DONE and ran == [refused.id, last.id]

    with_archive(body)


def test_two_runners_claim_only_the_head_of_each_lane(with_archive: ArchiveRunner, index_url: str) -> None:
    """Two archives (two processes) claiming at once: of two lanes of ten jobs each, exactly the oldest
    job of each lane is taken; the rest wait for them."""

    async def body(archive: Archive) -> None:
        from minipacs.bootstrap import open_archive
        from minipacs.config import Settings

        second = await open_archive(Settings(data_dir=archive.settings.data_dir, index_url=index_url))
        try:
            q = JobQueue(archive, FAST)

            async def noop(job: JobContext) -> str:
                return ""

            q.register("noop", noop)
            heads = []
            for lane in ("x", "y"):
                ids = [(await q.submit("noop", f"{lane}{n}", {}, lane=lane)).id for n in range(10)]
                heads.append(ids[0])
            now = dt.datetime.now(dt.UTC)

            async def claim_all(on: Archive, runner: str) -> list[int]:
                got: list[int] = []
                for _ in range(5):
                    got += [r["id"] for r in await on.write(lambda c: jobs_repo.claim(c, ["noop"], runner, now, 3))]
                return got

            a, b = await asyncio.gather(claim_all(archive, "a"), claim_all(second, "b"))
            assert sorted(a + b) == heads
            assert await archive.read(lambda conn: jobs_repo.due(conn, ["noop"], now)) == 0
        finally:
            await second.close()

    with_archive(body)
