"""REST and the Jobs page for the persistent queue, in process: list with filters, read, cancel,
retry, roles, errors, and the page's rows (escaped) and controls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.jobs import JobContext, JobFailed, JobQueue, JobSettings
from minipacs.core.metadata import MetadataStore
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.test_rest_nodes import USERS, auth

VIEWER, OPERATOR = auth("vic", "v-pass"), auth("oli", "o-pass")
HOSTILE = '"><script>alert(1)</script>'

Body = Callable[[httpx.AsyncClient, JobQueue], Awaitable[None]]


def run(tmp: Path, body: Body, *, runner: bool = True) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp / "data", fsync=False, users=USERS)
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        queue = JobQueue(archive, JobSettings(runner="web-test", poll_seconds=0.05, progress_seconds=0.05))
        release = asyncio.Event()

        async def hold(job: JobContext) -> str:
            job.total = 2
            job.done = 1
            await release.wait()
            return "released"

        async def refuse(job: JobContext) -> str:
            raise JobFailed(f"refused {job.params['why']}")

        queue.register("hold", hold)
        queue.register("refuse", refuse)
        if runner:
            await queue.start()
        transport = httpx.ASGITransport(
            app=create_app(AppContext(settings, archive, metadata, jobs=queue)), client=("127.0.0.1", 5555)
        )
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, queue)
        finally:
            release.set()
            await queue.close()
            await archive.close()

    asyncio.run(main())


def test_list_read_cancel_retry(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, queue: JobQueue) -> None:
        refused = await queue.submit("refuse", "refused job", {"why": "politely"})
        held = await queue.submit("hold", "held job", {})
        failed = await queue.wait(refused.id, timeout=10)
        assert failed.message == "refused politely"
        for _ in range(200):
            running = (await client.get(f"/api/jobs/{held.id}", headers=VIEWER)).json()
            if running["state"] == "running" and running["done"] == 1:
                break
            await asyncio.sleep(0.02)
        assert (running["state"], running["done"], running["total"], running["runner"]) == ("running", 1, 2, "web-test")
        listed = (await client.get("/api/jobs", headers=VIEWER)).json()
        assert [j["id"] for j in listed] == [held.id, refused.id]
        r = await client.get("/api/jobs", params={"state": ["failed"], "kind": "refuse"}, headers=VIEWER)
        assert [j["id"] for j in r.json()] == [refused.id]
        assert (await client.get("/api/jobs", params={"limit": 1}, headers=VIEWER)).json()[0]["id"] == held.id
        assert (await client.get("/api/jobs", params={"before": held.id}, headers=VIEWER)).json()[0]["id"] == refused.id
        for bad in ({"state": "sleeping"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"before": "-1"}):
            r = await client.get("/api/jobs", params=bad, headers=VIEWER)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter", bad
        # a viewer may look, not change
        for action in ("cancel", "retry"):
            r = await client.post(f"/api/jobs/{held.id}/{action}", headers=VIEWER)
            assert r.status_code == 403
        r = await client.post(f"/api/jobs/{refused.id}/cancel", headers=OPERATOR)
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_conflict"
        assert "already failed" in r.json()["error"]["message"]
        r = await client.post(f"/api/jobs/{held.id}/cancel", headers=OPERATOR)
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        stopped = await queue.wait(held.id, timeout=10)
        assert stopped.state.value == "cancelled"
        r = await client.post(f"/api/jobs/{held.id}/retry", headers=OPERATOR)
        assert r.status_code == 202 and r.json()["state"] == "queued"
        assert r.headers["location"] == f"/api/jobs/{held.id}"
        r = await client.post(f"/api/jobs/{refused.id}/retry", headers=OPERATOR)
        assert r.status_code == 202
        again = await queue.wait(refused.id, timeout=10)
        assert again.state.value == "failed" and again.attempts == 1
        for missing in ("999999", "abc", "1" * 30):
            r = await client.get(f"/api/jobs/{missing}", headers=VIEWER)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", missing
            r = await client.post(f"/api/jobs/{missing}/cancel", headers=OPERATOR)
            assert r.status_code == 404

    run(tmp_path, body)


def test_jobs_page_rows_controls_and_escaping(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, queue: JobQueue) -> None:
        r = await client.get("/ui/jobs", headers=VIEWER)
        assert r.status_code == 200 and "No jobs." in r.text and 'href="/ui/jobs"' in r.text
        await queue.submit("refuse", HOSTILE, {"why": HOSTILE})
        page = (await client.get("/ui/jobs", headers=OPERATOR)).text
        assert HOSTILE not in page and "&lt;script&gt;" in page
        assert 'class="badge queued"' in page and 'class="job-cancel"' in page
        assert 'class="job-retry"' not in page  # queued, never tried: nothing to retry yet
        viewer_page = (await client.get("/ui/jobs", headers=VIEWER)).text
        assert 'class="job-cancel"' not in viewer_page
        filtered = (await client.get("/ui/jobs", params={"state": "done"}, headers=VIEWER)).text
        assert "No jobs in state done." in filtered and 'data-state="done"' in filtered

    run(tmp_path, body, runner=False)


def test_without_a_queue_the_endpoints_say_so(tmp_path: Path) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(settings)
        transport = httpx.ASGITransport(
            app=create_app(AppContext(settings, archive, MetadataStore(archive))), client=("127.0.0.1", 5555)
        )
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                r = await client.get("/api/jobs")
                assert r.status_code == 503 and r.json()["error"]["code"] == "no_jobs"
                assert "not available" in (await client.get("/ui/jobs")).text
        finally:
            await archive.close()

    asyncio.run(main())
