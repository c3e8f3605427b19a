"""A node that stops for good (a crash it never comes back from, or a node taken out of the cluster)
leaves arrivals its router had not yet routed. On a shared PostgreSQL index another node routes them:
each pass it looks at every other node's routing cursor, and routes after it under that node's claim
(index/node_claim.py), which it can take only when no live process holds it. A live node's arrivals are
left to it; a node starting again waits for its claim while another holds it for a pass."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.changes import last_seq
from minipacs.index import node_claim, routing_repo
from tests.core.test_routing_recovery import INSTANCE, queue, route_jobs, router, store
from tests.index.pg import postgres_schema_url

pytestmark = pytest.mark.postgres


async def _cursor(archive: Archive, node: str) -> int | None:
    return await archive.read(lambda conn: routing_repo.arrival_cursor(conn, node))


async def _two_nodes(url: str, tmp: Path) -> tuple[Archive, Archive]:
    a = await open_archive(Settings(data_dir=tmp / "a", index_url=url, node_id="node-a", fsync=False))
    b = await open_archive(Settings(data_dir=tmp / "b", index_url=url, node_id="node-b", fsync=False))
    return a, b


def test_a_gone_nodes_arrivals_are_routed_once_by_another_node(tmp_path: Path) -> None:
    study = str(generate_uid())

    async def main(url: str) -> None:
        a, b = await _two_nodes(url, tmp_path)
        try:
            jobs = queue(a)
            await router(b, queue(b), INSTANCE).run_once()  # node-b watches arrivals: its cursor exists
            await router(a, jobs, INSTANCE).run_once()
            await store(b, tmp_path, study, 3)  # stored on node-b, which then stops for good
            assert await route_jobs(jobs) == []
            await router(a, jobs, INSTANCE).run_once()  # node-a's pass: node-b's claim is free
            assert await route_jobs(jobs) == [3]
            assert await _cursor(a, "node-b") == await a.read(last_seq)
            await router(a, jobs, INSTANCE).run_once()  # routed once
            await router(b, queue(b), INSTANCE).run_once()  # node-b, starting again: nothing left to it
            assert await route_jobs(jobs) == [3]
        finally:
            await a.close()
            await b.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))


def test_a_live_nodes_arrivals_are_left_to_it(tmp_path: Path) -> None:
    study = str(generate_uid())

    async def main(url: str) -> None:
        a, b = await _two_nodes(url, tmp_path)
        claim = await asyncio.to_thread(node_claim.claim_node, url, "node-b")  # node-b serves
        try:
            jobs = queue(a)
            await router(b, queue(b), INSTANCE).run_once()
            before = await _cursor(a, "node-b")
            await store(b, tmp_path, study, 2)
            await router(a, jobs, INSTANCE).run_once()
            assert await route_jobs(jobs) == []  # not node-a's to route
            assert await _cursor(a, "node-b") == before
            await asyncio.to_thread(claim.release)  # node-b stops
            await router(a, jobs, INSTANCE).run_once()
            assert await route_jobs(jobs) == [2]
        finally:
            await asyncio.to_thread(claim.release)
            await a.close()
            await b.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))


def test_a_starting_node_waits_for_its_claim_held_for_a_pass_and_a_live_twin_is_refused() -> None:
    with postgres_schema_url() as url:
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            held = node_claim.hold_if_gone(engine, "node-b")
            assert held is not None
            assert node_claim.hold_if_gone(engine, "node-b") is None  # held: not gone for anyone else
            threading.Timer(0.6, held.release).start()  # the pass ends
            started = time.monotonic()
            claim = node_claim.claim_node(url, "node-b")  # waits for it
            try:
                assert 0.4 < time.monotonic() - started < node_claim.CLAIM_WAIT
                assert node_claim.hold_if_gone(engine, "node-b") is None  # now alive
                with pytest.raises(node_claim.NodeClaimRefused):
                    node_claim._claim_postgresql(url, "node-b", wait=0.5)  # a live twin: refused
            finally:
                claim.release()
            again = node_claim.hold_if_gone(engine, "node-b")  # released: gone again
            assert again is not None
            again.release()
        finally:
            engine.dispose()


def test_sqlite_has_one_node_and_takes_over_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            assert archive.shared_index_engine is None
            jobs = queue(archive)
            await archive.write(lambda conn: routing_repo.set_arrival_cursor(conn, "other", 0, _now()))
            await router(archive, jobs, INSTANCE).run_once()
            assert await _cursor(archive, "other") == 0  # untouched
        finally:
            await archive.close()

    asyncio.run(main())


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def test_a_claim_whose_session_was_cut_is_taken_again() -> None:
    """A PostgreSQL restart (here: the claim's backend terminated) drops the session's advisory lock: the
    node looked gone to the others. ``keep`` takes the claim again on a new session; while another process
    holds it (routing for the node that looked gone), it says so and tries again later."""
    from sqlalchemy import create_engine, text

    with postgres_schema_url() as url:
        engine = create_engine(url)
        claim = node_claim.claim_node(url, "node-k")
        try:
            assert claim.keep() and node_claim.hold_if_gone(engine, "node-k") is None
            assert claim._conn is not None
            backend = claim._conn.execute(text("SELECT pg_backend_pid()")).scalar()
            claim._conn.commit()
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
                admin.commit()
            taker = node_claim.hold_if_gone(engine, "node-k")  # now it looks gone: another node takes it
            assert taker is not None
            assert not claim.keep()  # held elsewhere for that node's pass
            taker.release()
            assert claim.keep()  # taken again on a new session
            assert node_claim.hold_if_gone(engine, "node-k") is None  # alive again for everyone
        finally:
            claim.release()
            engine.dispose()


def test_the_serving_node_looks_at_its_claim_and_says_when_it_is_lost_and_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from minipacs.bootstrap import keep_claim

    answers = iter([True, False, False, True, True])
    looked = asyncio.Event()

    class Claim:
        node_id = "node-k"

        def keep(self) -> bool:
            try:
                return next(answers)
            except StopIteration:
                looked.set()
                return True

    async def main() -> None:
        task = asyncio.ensure_future(keep_claim(Claim(), every=0.001))  # type: ignore[arg-type]
        await asyncio.wait_for(looked.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("INFO", logger="minipacs"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "claim on the index" in r.getMessage()]
    assert said == [
        "node node-k: this node's claim on the index was lost (PostgreSQL restarted or the connection was cut) "
        "and is held elsewhere for now; taking it again every 0.001 s",
        "node node-k: this node's claim on the index is held again",
    ]
