"""Routing deliveries seen at a glance (issue 13, "Seeing it"): ``minipacs_deliveries`` in /metrics,
by destination and status, bounded; "Failing destinations" on the overview page. In process, with
receipts written as the delivery jobs write them (core/routing.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.jobs import JobContext, JobQueue
from minipacs.core.metadata import MetadataStore
from minipacs.core.metrics import OTHER_AE, Metrics
from minipacs.core.routing import receipt_row
from minipacs.index import routing_repo
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.test_metrics import samples, value


def test_delivery_destinations_stop_at_the_limit() -> None:
    metrics = Metrics(max_ae_labels=2)
    metrics.set_deliveries([("A", "sent", 5), ("B", "sent", 9), ("C", "failed", 1), ("D", "failed", 2)])
    found = samples(metrics.exposition().decode())
    # the two destinations with the most receipts keep their names; the others add up under (other)
    assert value(found, "minipacs_deliveries", destination="B", status="sent") == 9
    assert value(found, "minipacs_deliveries", destination="A", status="sent") == 5
    assert value(found, "minipacs_deliveries", destination=OTHER_AE, status="failed") == 3
    assert {labels for (name, labels) in found if name == "minipacs_deliveries"} == {
        (("destination", "A"), ("status", "sent")),
        (("destination", "B"), ("status", "sent")),
        (("destination", OTHER_AE), ("status", "failed")),
    }


def test_metrics_and_overview_show_deliveries_by_destination(tmp_path: Path) -> None:
    study, other_study, series = str(generate_uid()), str(generate_uid()), str(generate_uid())
    why = "cannot send to 'AI_NODE' at 127.0.0.1:11119: <connection refused>"

    async def main() -> tuple[str, str, str, int]:
        settings = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        app = create_app(AppContext(settings, archive, metadata))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                before = await client.get("/ui/overview")
                queue = JobQueue(archive)

                async def never(job: JobContext) -> str:  # pragma: no cover - cancelled before it runs
                    return ""

                queue.register("route", never)
                cancelled = await queue.submit("route", "rule r: 2 instances", {})
                j7, j8, j9 = [(await queue.submit("route", "rule r", {})).id for _ in range(3)]
                sops = [str(generate_uid()) for _ in range(8)]
                rows = [
                    *(receipt_row(j7, "r", "C-STORE", "AI_NODE", study, series, s) for s in sops[:4]),
                    *(receipt_row(cancelled.id, "r", "C-STORE", "PACS2", other_study, series, s) for s in sops[4:6]),
                    receipt_row(j8, "r", "STOW-RS", "https://old.example/dicom-web", study, series, sops[6]),
                    receipt_row(j9, "r", "C-STORE", "AI_NODE", other_study, series, sops[7]),
                ]
                await archive.write(lambda conn: routing_repo.insert_deliveries(conn, rows))
                now = dt.datetime.now(dt.UTC)
                await archive.write(lambda c: routing_repo.set_job_deliveries(c, j7, "sent", "", now, sops=sops[:3]))
                await archive.write(
                    lambda c: routing_repo.set_job_deliveries(c, j7, "retrying", why, now, sops=sops[3:4])
                )
                await archive.write(lambda c: routing_repo.set_job_deliveries(c, j9, "failed", "refused: 0xA700", now))
                await queue.cancel(cancelled.id)
                # failed two days ago: history, not "failing" any more
                old = now - dt.timedelta(days=2)
                await archive.write(lambda c: routing_repo.set_job_deliveries(c, j8, "failed", "gone", old))
                scrape = await client.get("/metrics")
                assert scrape.status_code == 200
                page = await client.get("/ui/overview")
                assert page.status_code == 200 and before.status_code == 200
                return before.text, scrape.text, page.text, cancelled.id
        finally:
            await metadata.close()
            await archive.close()

    before, scrape, page, cancelled = asyncio.run(main())
    assert "No routing delivery is retrying or failed in the last day." in before
    found = samples(scrape)
    assert value(found, "minipacs_deliveries", destination="AI_NODE", status="sent") == 3
    assert value(found, "minipacs_deliveries", destination="AI_NODE", status="retrying") == 1
    assert value(found, "minipacs_deliveries", destination="AI_NODE", status="failed") == 1
    # still "queued" in the table, but their job was cancelled: failed, as the study page says
    assert value(found, "minipacs_deliveries", destination="PACS2", status="failed") == 2
    assert value(found, "minipacs_deliveries", destination="PACS2", status="queued") == 0
    assert value(found, "minipacs_deliveries", destination="https://old.example/dicom-web", status="failed") == 1

    section = page.split("<h2>Failing destinations</h2>", 1)[1].split("<h2>", 1)[0]
    assert 'id="failing-destinations"' in section
    ai_row = next(r for r in section.split("<tr") if "<td>AI_NODE</td>" in r)
    # AI_NODE: 2 not delivered (1 retrying, 1 failed) of 2 studies; the latest one's reason, escaped
    assert "2 instance(s) of 2 studies" in ai_row
    assert "refused: 0xA700" in ai_row and "not delivered; retry the job" in ai_row  # the latest: j9's
    assert "<connection refused>" not in page
    pacs2 = next(r for r in section.split("<tr") if "<td>PACS2</td>" in r)
    assert "2 instance(s) of 1 study" in pacs2 and f"its job {cancelled} was cancelled" in pacs2
    assert "old.example" not in section  # failed two days ago
