"""GET /metrics (issue 13, "Seeing it"): the Prometheus text format, counted as work happens.

In process: ingests through REST (a good file twice, a broken one), a QIDO, then the figures.
Against a real `minipacs serve`: /usr/bin/echoscu and /usr/bin/storescu, an association refused for a
wrong called AE title, then the association, DIMSE and ingest figures. The calling-AE label cap at its limit.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from minipacs.bootstrap import open_archive
from minipacs.config import ConfigError, Settings
from minipacs.core.metadata import MetadataStore
from minipacs.core.metrics import OTHER_AE, Metrics, status_class
from minipacs.core.users import ApiToken, Role, hash_token
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.dicomgen import write_ct
from tests.peers import dcmtk, free_port, run, start_server, wait_for_port
from tests.web.conftest import part10


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0x0000, "success"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
        (0xFE00, "cancel"),
        (0x0001, "warning"),
        (0x0107, "warning"),
        (0x0116, "warning"),
        (0xB000, "warning"),
        (0xBFFF, "warning"),
        (0xA700, "failure"),
        (0xC000, "failure"),
        (0x0110, "failure"),
        (0x0124, "failure"),
        (None, "unknown"),
    ],
)
def test_status_classes_follow_ps3_7_annex_c(status: int | None, kind: str) -> None:
    assert status_class(status) == kind


def test_calling_ae_labels_stop_at_the_limit() -> None:
    metrics = Metrics(max_ae_labels=3)
    assert [metrics.ae_label(f" AE{n} ") for n in range(3)] == ["AE0", "AE1", "AE2"]
    assert metrics.ae_label("AE3") == OTHER_AE  # the fourth distinct title
    assert metrics.ae_label("AE1") == "AE1"  # a known one keeps its label
    for n in range(50):
        metrics.association_ended(f"HOSTILE{n}", accepted=False, end_reason="")
    found = samples(metrics.exposition().decode())
    assert value(found, "minipacs_associations_total", calling_ae=OTHER_AE, outcome="rejected") == 50
    with pytest.raises(ValueError, match="at least 1"):
        Metrics(max_ae_labels=0)


@pytest.mark.parametrize(("limit", "ok"), [(0, False), (1, True), (100_000, True), (100_001, False)])
def test_metrics_max_ae_labels_setting_at_its_limits(tmp_path: Path, limit: int, ok: bool) -> None:
    if ok:
        assert Settings(data_dir=tmp_path, metrics_max_ae_labels=limit).validate().metrics_max_ae_labels == limit
    else:
        with pytest.raises(ConfigError, match="metrics_max_ae_labels"):
            Settings(data_dir=tmp_path, metrics_max_ae_labels=limit).validate()


def test_rest_ingests_queries_and_index_figures(tmp_path: Path) -> None:
    good = [part10(study_uid="1.2.3", patient_id="P1"), part10(study_uid="1.2.3")]
    broken = good[0][:-40]  # pixel data cut short: refused by the structural walk

    async def main() -> str:
        config = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)
        metadata.attach()
        context = AppContext(config, archive, metadata)
        archive.metrics = context.metrics  # bootstrap shares one Metrics the same way
        transport = httpx.ASGITransport(app=create_app(context), client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                for data in [*good, broken]:
                    r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
                    assert r.status_code == (400 if data is broken else 200), r.text
                r = await client.get("/dicom-web/studies", params={"PatientID": "P1"})
                assert r.status_code == 200 and len(r.json()) == 1
                r = await client.get("/metrics")
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
                return r.text
        finally:
            await metadata.close()
            await archive.close()

    found = samples(asyncio.run(main()))
    assert value(found, "minipacs_ingested_instances_total", source="rest", outcome="stored") == 2
    # the stored Part 10 files (with our file meta), as the index counts them
    assert value(found, "minipacs_ingested_bytes_total", source="rest") == value(found, "minipacs_storage_bytes")
    assert abs(value(found, "minipacs_storage_bytes") - sum(len(g) for g in good)) < 2 * 400
    assert value(found, "minipacs_ingest_seconds_count", source="rest") == 2
    assert value(found, "minipacs_ingest_failures_total", source="rest", reason="BrokenDataset") == 1
    assert value(found, "minipacs_query_seconds_count", interface="qido") == 1
    assert value(found, "minipacs_storage_instances") == 2
    assert value(found, "minipacs_storage_studies") == 1
    assert value(found, "minipacs_storage_bytes") > 0 and value(found, "minipacs_storage_free_bytes") > 0


def test_metrics_need_the_read_permission(web: Callable[..., Any]) -> None:
    """With users configured, an anonymous scrape is refused; a token (a scraper's bearer) is let in."""
    token = ApiToken("prometheus", hash_token("scrape-token"), Role.VIEWER)

    async def body(client: httpx.AsyncClient, archive: Any) -> tuple[int, int]:
        anonymous = await client.get("/metrics")
        bearer = await client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
        return anonymous.status_code, bearer.status_code

    assert web(body, tokens=(token,)) == (401, 200)


def test_dicom_associations_and_dimse_against_dcmtk(tmp_path: Path) -> None:
    http_port = free_port()
    srv = start_server(
        tmp_path,
        env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false", "MINIPACS_CHECK_CALLED_AET": "true"},
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        files = [write_ct(tmp_path / "in" / f"{n}.dcm") for n in range(3)]
        env = {"TCP_NODELAY": "1"}
        res = run([dcmtk("echoscu"), "-aet", "MODALITY1", "-aec", srv.ae_title, "127.0.0.1", str(srv.port)], env=env)
        assert res.returncode == 0, res.stderr
        res = run(
            [dcmtk("storescu"), "-aet", "MODALITY1", "-aec", srv.ae_title, "127.0.0.1", str(srv.port)]
            + [str(f) for f in files],
            env=env,
        )
        assert res.returncode == 0, res.stderr
        refused = run([dcmtk("echoscu"), "-aet", "MODALITY1", "-aec", "NOT_US", "127.0.0.1", str(srv.port)], env=env)
        assert refused.returncode != 0  # check_called_aet: rejected
        found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(100):  # counted as each association ends, a moment after the peer sees it end
            found = samples(httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=30).text)
            ended = value(found, "minipacs_associations_total", calling_ae="MODALITY1", outcome="released")
            if ended >= 2 and value(found, "minipacs_associations_total", calling_ae="MODALITY1", outcome="rejected"):
                break
            time.sleep(0.1)
    finally:
        srv.stop()
    assert value(found, "minipacs_associations_total", calling_ae="MODALITY1", outcome="released") == 2
    assert value(found, "minipacs_associations_total", calling_ae="MODALITY1", outcome="rejected") == 1
    assert value(found, "minipacs_associations_open") == 0
    assert value(found, "minipacs_dimse_requests_total", request="C-ECHO", status="success") >= 1
    assert value(found, "minipacs_dimse_requests_total", request="C-STORE", status="success") == 3
    assert value(found, "minipacs_dimse_request_seconds_count", request="C-STORE") == 3
    assert value(found, "minipacs_ingested_instances_total", source="dicom", outcome="stored") == 3
    assert (
        value(found, "minipacs_ingested_bytes_total", source="dicom") >= sum(f.stat().st_size for f in files) - 3 * 400
    )
    assert value(found, "minipacs_storage_instances") == 3
    assert value(found, "minipacs_jobs", state="queued") == 0


def test_overview_page_shows_arrivals_storage_and_failing_jobs(tmp_path: Path) -> None:
    """/ leads to the overview; it shows the hour's arrivals, the stored figures, a job waiting to try
    again with its error in words, one that failed for good, and a refused request since the start."""
    from minipacs.core.jobs import JobContext, JobFailed, JobQueue, JobSettings

    async def down(job: JobContext) -> str:
        raise JobFailed("AI_NODE (127.0.0.1:1) refused the connection: is its DICOM service running?", retry=True)

    async def refused(job: JobContext) -> str:
        raise JobFailed("PACS2 rejected the association: calling AE title not recognized")

    async def main() -> str:
        config = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)
        metadata.attach()
        queue = JobQueue(archive, JobSettings(retry_seconds=60, poll_seconds=0.05, progress_seconds=0.05))
        queue.register("send", down)
        queue.register("stow", refused)
        context = AppContext(config, archive, metadata, jobs=queue)
        archive.metrics = context.metrics
        context.metrics.dimse_answered("C-STORE-RQ", 0xA900, 0.01)  # a refusal the server answered
        transport = httpx.ASGITransport(app=create_app(context), client=("127.0.0.1", 5555))
        await queue.start()
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                for data in (part10(study_uid="1.2.3"), part10(study_uid="1.2.3"), part10()):
                    r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
                    assert r.status_code == 200
                waiting = await queue.submit("send", "send study 1.2.3 to AI_NODE", {})
                failed = await queue.submit("stow", "STOW study 1.2.3 to PACS2", {})
                for _ in range(200):
                    w, f = await queue.get(waiting.id), await queue.get(failed.id)
                    if w and f and w.attempts >= 1 and w.state.value == "queued" and f.state.value == "failed":
                        break
                    await asyncio.sleep(0.05)
                r = await client.get("/", follow_redirects=True)
                assert r.status_code == 200
                return r.text
        finally:
            await queue.close()
            await metadata.close()
            await archive.close()

    page = asyncio.run(main())
    arrivals = page.split('id="arrivals"')[1].split("</table>")[0]
    assert "<th>Last hour</th><td>3</td><td>2</td>" in arrivals
    assert "<th>Last 24 hours</th><td>3</td><td>2</td>" in arrivals
    stored = page.split('id="stored">')[1].split("</p>")[0]
    assert re.fullmatch(r"2 studies, 3 instances, [\d.]+ KiB; [\d.,]+ [GT]iB free\.", stored), stored
    failing = page.split('id="failing"')[1].split("</table>")[0]
    assert "refused the connection: is its DICOM service running?" in failing
    assert "rejected the association: calling AE title not recognized" in failing
    assert "next try" in failing  # the one still waiting says when
    refusals = page.split('id="refusals"')[1].split("</table>")[0]
    assert "<td>C-STORE</td><td>0xA900</td><td>1</td>" in refusals
