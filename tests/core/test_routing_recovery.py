"""The router reads arrivals from the changes journal after its cursor (core/routing.py): what was
stored while no pass ran, or before a crash, is routed at the next pass; a page routed again (a
crash after its jobs, before its cursor) sends nothing twice; a rule that starts watching arrivals
starts from its own time. On SQLite and PostgreSQL (the ``with_archive`` fixture). The crash itself,
with kill -9 of ``minipacs serve``: tests/interop/test_routing_crash.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.changes import last_seq
from minipacs.core.jobs import JobContext, JobQueue
from minipacs.core.model import Origin
from minipacs.core.routing import ROUTE, Router, RoutingSettings
from minipacs.core.rules import RuleBook, rule_from_mapping
from minipacs.index import routing_repo
from tests.dicomgen import write_ct

INSTANCE = {"name": "each", "when": "instance", "send_to": ["DEST"]}
STABLE = {"name": "quiet", "when": "stable", "stable_seconds": 0.2, "send_to": ["DEST"]}


async def store(archive: Archive, tmp: Path, study: str, n: int, *, start: int = 0) -> None:
    series = str(generate_uid())
    for i in range(start, start + n):
        path = write_ct(tmp / f"{study[-10:]}-{i}.dcm", study_uid=study, series_uid=series, InstanceNumber=i + 1)
        await archive.import_file(path, Origin("dicom", calling_aet="CT01", called_aet="MINIPACS"))


async def route_jobs(jobs: JobQueue) -> list[int]:
    """The number of instances of each route job, oldest first (the queue is not started: they wait)."""
    return [j.total for j in sorted(await jobs.list(kinds=(ROUTE,)), key=lambda j: j.id)]


def queue(archive: Archive) -> JobQueue:
    """A job queue that knows the kind "route" and is not started: the router's jobs wait in it."""
    jobs = JobQueue(archive)

    async def never(job: JobContext) -> str:  # pragma: no cover - the queue does not run
        return ""

    jobs.register(ROUTE, never)
    return jobs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def router(archive: Archive, jobs: JobQueue, *rules: dict[str, Any]) -> Router:
    """A router as a (re)started server makes it: nothing in memory, everything from the index."""
    return Router(archive, jobs, RuleBook(archive, [rule_from_mapping(r) for r in rules]), RoutingSettings())


async def cursor(archive: Archive) -> int | None:
    node = archive.settings.node_id
    return await archive.read(lambda conn: routing_repo.arrival_cursor(conn, node))


def test_arrivals_not_yet_routed_are_routed_by_the_next_router_once(with_archive: Any, tmp_path: Path) -> None:
    study = str(generate_uid())

    async def body(archive: Archive) -> None:
        jobs = queue(archive)
        first = router(archive, jobs, INSTANCE)
        await first.run_once()  # the first rule watching arrivals: the cursor starts at the journal's end
        assert await cursor(archive) == await archive.read(last_seq)
        before = await cursor(archive)
        await store(archive, tmp_path, study, 3)  # ... and this router never routes them (a kill)
        assert await route_jobs(jobs) == []
        await router(archive, jobs, INSTANCE).run_once()  # the next start
        assert await route_jobs(jobs) == [3]
        assert await cursor(archive) == await archive.read(last_seq)
        # a crash after the jobs, before the cursor moved: the page is routed again, nothing twice
        await archive.write(
            lambda conn: routing_repo.set_arrival_cursor(conn, archive.settings.node_id, before, _now())
        )
        await router(archive, jobs, INSTANCE).run_once()
        assert await route_jobs(jobs) == [3]
        await store(archive, tmp_path, study, 1, start=3)
        again = router(archive, jobs, INSTANCE)
        await again.run_once()
        assert await route_jobs(jobs) == [3, 1]

    with_archive(body, fsync=False)


def test_a_stable_study_recovered_waits_to_be_quiet_and_goes_once(with_archive: Any, tmp_path: Path) -> None:
    study = str(generate_uid())

    async def body(archive: Archive) -> None:
        jobs = queue(archive)
        await router(archive, jobs, STABLE).run_once()
        before = await cursor(archive)
        await store(archive, tmp_path, study, 2)
        second = router(archive, jobs, STABLE)
        await second.run_once()  # recovered: the study's mark is touched now, not routed yet
        assert await route_jobs(jobs) == []
        await asyncio.sleep(0.3)
        await second.run_once()
        assert await route_jobs(jobs) == [2]
        await archive.write(
            lambda conn: routing_repo.set_arrival_cursor(conn, archive.settings.node_id, before, _now())
        )
        third = router(archive, jobs, STABLE)
        await third.run_once()
        await asyncio.sleep(0.3)
        await third.run_once()  # quiet again: only what the rule has not yet given, here nothing
        assert await route_jobs(jobs) == [2]

    with_archive(body, fsync=False)


def test_a_rule_that_starts_watching_arrivals_starts_from_its_own_time(with_archive: Any, tmp_path: Path) -> None:
    study = str(generate_uid())

    async def body(archive: Archive) -> None:
        jobs = queue(archive)
        node = archive.settings.node_id
        await archive.write(lambda conn: routing_repo.set_arrival_cursor(conn, node, 0, _now()))
        watching = Router(archive, jobs, RuleBook(archive))  # rules of the API only: none yet
        await watching.run_once()
        assert await cursor(archive) is None  # no rule watches arrivals: nothing is kept for later
        await store(archive, tmp_path, study, 2)
        definition = json.dumps(rule_from_mapping(INSTANCE).to_dict())
        await archive.write(lambda conn: routing_repo.insert_rule(conn, "each", definition, _now()))
        await watching.run_once()
        assert await route_jobs(jobs) == []  # stored before the rule existed
        await store(archive, tmp_path, study, 1, start=2)
        await watching.run_once()
        assert await route_jobs(jobs) == [1]

    with_archive(body, fsync=False)
