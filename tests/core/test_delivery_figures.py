"""The receipts' figures for /metrics and the overview page (core/routing.py delivery_counts,
failing_destinations), on SQLite and PostgreSQL: a receipt waiting for a cancelled job counts as
failed, and only receipts changed in the window are failing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from minipacs.core.archive import Archive
from minipacs.core.jobs import JobContext, JobQueue
from minipacs.core.routing import delivery_counts, failing_destinations, receipt_row
from minipacs.index import routing_repo


def test_counts_and_failing_destinations(with_archive: Any) -> None:
    async def body(archive: Archive) -> None:
        queue = JobQueue(archive)

        async def never(job: JobContext) -> str:  # pragma: no cover - never run
            return ""

        queue.register("route", never)
        ok, down, stopped = [(await queue.submit("route", "rule r", {})).id for _ in range(3)]
        rows = [
            receipt_row(ok, "r", "C-STORE", "A", "1.1", "1.1.1", "1.1.1.1"),
            receipt_row(ok, "r", "C-STORE", "A", "1.1", "1.1.1", "1.1.1.2"),
            receipt_row(down, "r", "C-STORE", "B", "1.2", "1.2.1", "1.2.1.1"),
            receipt_row(down, "r", "C-STORE", "B", "1.3", "1.3.1", "1.3.1.1"),
            receipt_row(stopped, "r", "STOW-RS", "http://c/", "1.4", "1.4.1", "1.4.1.1"),
        ]
        await archive.write(lambda c: routing_repo.insert_deliveries(c, rows))
        now = dt.datetime.now(dt.UTC)
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, ok, "sent", "", now))
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, down, "retrying", "refused", now))
        assert sorted(await delivery_counts(archive)) == [
            ("A", "sent", 2),
            ("B", "retrying", 2),
            ("http://c/", "queued", 1),
        ]
        assert [d["destination"] for d in await failing_destinations(archive, now - dt.timedelta(days=1))] == ["B"]
        await queue.cancel(stopped)
        assert ("http://c/", "failed", 1) in await delivery_counts(archive)
        failing = {d["destination"]: d for d in await failing_destinations(archive, now - dt.timedelta(days=1))}
        assert set(failing) == {"B", "http://c/"}
        assert failing["B"]["receipts"] == 2 and failing["B"]["studies"] == 2
        assert failing["B"]["status"] == "retrying" and failing["B"]["reason"] == "refused"
        assert failing["http://c/"]["status"] == "failed"
        assert failing["http://c/"]["reason"] == f"its job {stopped} was cancelled"
        # nothing changed in the window: nothing failing; and the limit holds
        assert await failing_destinations(archive, now + dt.timedelta(seconds=5)) == []
        assert len(await failing_destinations(archive, now - dt.timedelta(days=1), limit=1)) == 1

    with_archive(body)
