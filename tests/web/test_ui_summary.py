"""The UI home summary (core/summary.py): studies arrived in the last hour and day, jobs waiting,
running and failed; and GET /metrics without a collector (only `serve` collects)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
from pydicom.uid import generate_uid
from sqlalchemy import update

from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue
from minipacs.core.summary import home_summary
from minipacs.index.schema import Study
from tests.web.conftest import part10


def test_summary_on_the_home_page(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        page = (await client.get("/ui/")).text
        assert "<b>0</b> studies in the last hour" in page and "0 waiting" in page
        studies = [generate_uid() for _ in range(3)]
        for study in studies:
            assert (await client.post("/api/instances", content=part10(study_uid=study))).status_code == 200
        when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        await archive.write(
            lambda conn: conn.execute(
                update(Study).where(Study.study_instance_uid == studies[0]).values(updated_at=when)
            )
        )
        queue = JobQueue(archive)

        async def never(job: Any) -> str:
            return "not run"

        queue.register("test", never)
        await queue.submit("test", "waits", {})
        summary = await home_summary(archive)
        assert summary.arrived == (("last hour", 2), ("last 24 hours", 3))
        assert (summary.waiting, summary.running, summary.failed) == (1, 0, 0)
        page = (await client.get("/ui/")).text
        assert "<b>2</b> studies in the last hour, <b>3</b> studies in the last 24 hours" in page
        assert "1 waiting</a>" in page and "/ui/jobs?state=failed" in page

    web(body)


def test_metrics_without_a_collector(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/metrics")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_metrics"

    web(body)
