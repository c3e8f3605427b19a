"""Auto-routing against real peers (issue 13): DCMTK storescp destinations and dcmqrscp for prefetch.

The archive runs in-process (bootstrap.build_app, its job runner and router started, no listener):
instances come in through the ONE ingest path with the calling AE title a modality would give.

- "stable": instances arriving 0.2 s apart with stable_seconds = 1 make ONE job, not one per
  instance; a later arrival routes only the new instance.
- "instance" to a storescp that is down: the receipts say "retrying" with the reason in words; once
  it is started the queue's retry delivers every instance.
- "scheduled": a worklist entry for a patient makes dcmqrscp C-MOVE that patient's prior study (not the
  scheduled one) to a storescp.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.core.model import Origin
from minipacs.core.nodes import Node
from minipacs.core.routing import ROUTE, study_receipts
from minipacs.core.rules import rules_from_tables
from minipacs.core.worklist import Worklist
from minipacs.index import worklist_repo
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url
from tests.peers import dcmtk, free_port, run, start_server, wait_for_port

pytestmark = [pytest.mark.interop]

FAST = {
    "fsync": False,
    "port": 0,
    "http_port": 0,
    "job_retry_seconds": 0.3,
    "job_retry_max_seconds": 0.6,
    "job_max_attempts": 50,
    "job_poll_seconds": 0.1,
    "job_progress_seconds": 0.1,
    "routing_poll_seconds": 0.1,
    "connect_timeout": 2.0,
}


@contextmanager
def storescp(port: int, out: Path, ae_title: str = "DEST") -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-aet", ae_title, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def node(ae_title: str, port: int) -> Node:
    return Node(id=None, ae_title=ae_title, host="127.0.0.1", port=port)


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def running(tmp: Path, rules: list[dict[str, Any]], nodes: tuple[Node, ...], **extra: Any) -> Any:
    """``running(...)(body)``: build the app with ``rules``, start jobs and router, run ``await body(app)``."""
    settings = Settings(data_dir=tmp / "data", nodes=nodes, rules=rules_from_tables(rules), **{**FAST, **extra})

    def go(body: Callable[[App], Awaitable[None]]) -> None:
        async def main() -> None:
            app = await build_app(settings)
            try:
                await app.jobs.start()
                assert app.router is not None
                await app.router.start()
                while not app.router.passes:  # its first pass routes what came before the start, not the body's
                    await asyncio.sleep(0.01)
                await body(app)
            finally:
                await app.close()

        asyncio.run(main())

    return go


def ct(tmp: Path, study: str, series: str, n: int, **kw: Any) -> Path:
    return write_ct(tmp / "src" / f"{study[-12:]}-{n}.dcm", study_uid=study, series_uid=series, InstanceNumber=n, **kw)


async def receive(app: App, path: Path, calling: str = "CT01") -> None:
    await app.archive.import_file(path, Origin("dicom", calling_aet=calling, called_aet="MINIPACS"))


def received(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_file()] if out.exists() else []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_schema_url() as url:
            yield url


def test_stable_study_is_routed_once_then_only_what_came_later(tmp_path: Path, index_url: str) -> None:
    port, out = free_port(), tmp_path / "dest"
    rules = [
        {
            "name": "ct-to-ai",
            "when": "stable",
            "stable_seconds": 1,
            "match": {"Modality": "CT"},
            "calling_aet": "CT*",
            "send_to": ["DEST"],
        }
    ]
    study, series = str(generate_uid()), str(generate_uid())
    other = str(generate_uid())  # from another modality AE: the rule's calling_aet leaves it alone

    async def body(app: App) -> None:
        for n in range(5):
            await receive(app, ct(tmp_path, study, series, n + 1))
            await asyncio.sleep(0.2)  # under stable_seconds: still one burst
        await receive(app, ct(tmp_path, other, str(generate_uid()), 1), calling="MR01")

        async def delivered() -> bool:
            return len(received(out)) >= 5 and all(
                r["status"] == "sent" for r in await study_receipts(app.archive, study)
            )

        await until(delivered, "5 instances delivered")
        jobs = await app.jobs.list(kinds=(ROUTE,))
        assert len(jobs) == 1, [j.description for j in jobs]
        assert jobs[0].total == 5
        receipts = await study_receipts(app.archive, study)
        assert len(receipts) == 5 and {r["destination"] for r in receipts} == {"DEST"}
        assert {r["rule"] for r in receipts} == {"ct-to-ai"} and {r["method"] for r in receipts} == {"C-STORE"}
        await asyncio.sleep(1.2)  # quiet again: nothing more is routed
        assert len(await app.jobs.list(kinds=(ROUTE,))) == 1
        assert await study_receipts(app.archive, other) == []
        # a late instance: routed alone, after its own quiet second
        await receive(app, ct(tmp_path, study, series, 6))
        await until(lambda: _count(app, 2), "a second job")
        await until(lambda: _all_sent(app, study, 6), "6 receipts sent")
        jobs = await app.jobs.list(kinds=(ROUTE,))
        assert sorted(j.total for j in jobs) == [1, 5]
        assert len(received(out)) == 6

    with storescp(port, out):
        running(tmp_path, rules, (node("DEST", port),), index_url=index_url)(body)


async def _count(app: App, n: int) -> bool:
    return len(await app.jobs.list(kinds=(ROUTE,))) >= n


async def _all_sent(app: App, study: str, n: int) -> bool:
    receipts = await study_receipts(app.archive, study)
    return len(receipts) == n and all(r["status"] == "sent" for r in receipts)


def test_destination_down_then_up_is_delivered_by_the_retry(tmp_path: Path) -> None:
    up, down = free_port(), free_port()
    out_up, out_down = tmp_path / "up", tmp_path / "down"
    rules = [{"name": "each", "when": "instance", "send_to": ["UP", "LATE"]}]
    study, series = str(generate_uid()), str(generate_uid())

    async def body(app: App) -> None:
        for n in range(3):
            await receive(app, ct(tmp_path, study, series, n + 1))

        async def retrying() -> list[dict[str, Any]]:
            late = [r for r in await study_receipts(app.archive, study) if r["destination"] == "LATE"]
            return [r for r in late if r["status"] == "retrying"]

        waiting = await until(retrying, "LATE receipts saying retrying")
        assert "cannot send to 'LATE'" in waiting[0]["reason"] and "listening" in waiting[0]["reason"], waiting[0]
        assert "tried again" in waiting[0]["meaning"]
        await until(lambda: _sent_to(app, study, "UP", 3), "3 instances sent to UP")
        with storescp(down, out_down, "LATE"):
            await until(lambda: _sent_to(app, study, "LATE", 3), "3 instances sent to LATE after the retry")
            assert len(received(out_down)) == 3
        jobs = [j for j in await app.jobs.list(kinds=(ROUTE,)) if j.params["destination"] == "LATE"]
        assert jobs and all(j.state.value == "done" for j in jobs)
        assert max(j.attempts for j in jobs) >= 2  # it failed at least once, then went through
        assert len(received(out_up)) == 3

    with storescp(up, out_up, "UP"):
        running(tmp_path, rules, (node("UP", up), node("LATE", down)))(body)


async def _sent_to(app: App, study: str, destination: str, n: int) -> bool:
    receipts = [r for r in await study_receipts(app.archive, study) if r["destination"] == destination]
    return len(receipts) == n and all(r["status"] == "sent" for r in receipts)


def test_worklist_entry_prefetches_priors_from_dcmqrscp(tmp_path: Path) -> None:
    patient = "PAT-PRIOR-1"
    prior, scheduled, unrelated = str(generate_uid()), str(generate_uid()), str(generate_uid())
    files = [ct(tmp_path, prior, str(generate_uid()), n, patient_id=patient) for n in (1, 2)]
    files.append(ct(tmp_path, scheduled, str(generate_uid()), 1, patient_id=patient))
    files.append(ct(tmp_path, unrelated, str(generate_uid()), 1, patient_id="SOMEONE-ELSE"))
    db = tmp_path / "qrdb"
    db.mkdir()
    res = run([dcmtk("dcmqridx"), str(db), *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr
    qr_port, dest_port, out = free_port(), free_port(), tmp_path / "viewer"
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(
        f"NetworkTCPPort = {qr_port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\nviewer = (VIEWER, 127.0.0.1, {dest_port})\nus = (MINIPACS, 127.0.0.1, 1)\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    rules = [
        {
            "name": "priors",
            "when": "scheduled",
            "match": {"Modality": "CT"},
            "prefetch_from": "DCMQR",
            "prefetch_to": "VIEWER",
        }
    ]

    async def body(app: App) -> None:
        ds = Dataset()
        ds.PatientID, ds.PatientName, ds.AccessionNumber = patient, "Prior^Pat", "ACC1"
        ds.StudyInstanceUID = scheduled
        sps = Dataset()
        sps.Modality, sps.ScheduledStationAETitle = "CT", "CT01"
        sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = "20261206", "120000"
        ds.ScheduledProcedureStepSequence = [sps]
        await Worklist(app.archive).add(ds)

        async def moved() -> bool:
            receipts = await study_receipts(app.archive, prior)
            return bool(receipts) and receipts[0]["status"] == "sent"

        try:
            await until(moved, "the prior study moved to VIEWER")
        except AssertionError as exc:
            jobs = [(j.kind, j.state.value, j.message, j.last_error) for j in await app.jobs.list()]
            raise AssertionError(f"{exc}; jobs: {jobs}") from None
        receipts = await study_receipts(app.archive, prior)
        assert receipts[0]["method"] == "C-MOVE" and receipts[0]["destination"] == "VIEWER"
        assert "2 instance(s) moved" in receipts[0]["reason"]
        assert await study_receipts(app.archive, scheduled) == []  # the scheduled study itself is not a prior
        [row] = await app.archive.audit.query(actor="priors")  # the audit trail: the rule retrieved it
        assert (row["action"], row["actor_kind"], row["patient_id"], row["study_uid"]) == (
            "retrieved",
            "rule",
            patient,
            prior,
        )
        await until(lambda: _files(out, 2), "2 files at VIEWER")

    proc = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(cfg), "--disable-host-lookup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", qr_port, proc=proc)
        with storescp(dest_port, out, "VIEWER"):
            running(tmp_path, rules, (node("DCMQR", qr_port),))(body)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _files(out: Path, n: int) -> bool:
    return len(received(out)) >= n


def test_stow_to_another_dicomweb_server(tmp_path: Path) -> None:
    """STOW-RS to a second minipacs (its DICOMweb endpoint); a destination whose port is closed waits
    in "retrying", saying it cannot reach it."""
    http_port, closed = free_port(), free_port()
    (tmp_path / "other").mkdir()
    other = start_server(tmp_path / "other", env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false"})
    rules = [
        {
            "name": "web",
            "when": "instance",
            "stow_to": [f"http://127.0.0.1:{http_port}/dicom-web", f"http://127.0.0.1:{closed}/dicom-web"],
        }
    ]
    study, series = str(generate_uid()), str(generate_uid())

    async def body(app: App) -> None:
        for n in range(2):
            await receive(app, ct(tmp_path, study, series, n + 1))
        base = f"http://127.0.0.1:{http_port}/dicom-web"
        await until(lambda: _sent_to(app, study, base, 2), "2 instances stored by STOW-RS")
        r = httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies/{study}/instances")
        assert r.status_code == 200 and len(r.json()) == 2, r.text

        async def waiting() -> bool:
            late = [r for r in await study_receipts(app.archive, study) if str(closed) in r["destination"]]
            return len(late) == 2 and all(r["status"] == "retrying" and "cannot reach" in r["reason"] for r in late)

        await until(waiting, "the closed destination's receipts saying retrying")

    try:
        wait_for_port("127.0.0.1", http_port, proc=other.proc)
        running(tmp_path, rules, ())(body)
    finally:
        other.stop()


def test_complete_study_is_routed_once(tmp_path: Path, index_url: str) -> None:
    """when = "complete": the study is sent once its completion is recorded (core/mpps.py writes the
    row this test writes; tests/services/test_mpps.py covers how MPPS leads to it), and only once."""
    port, out = free_port(), tmp_path / "dest"
    rules = [{"name": "done", "when": "complete", "match": {"StudyDescription": "CT*"}, "send_to": ["DEST"]}]
    study, series = str(generate_uid()), str(generate_uid())

    async def body(app: App) -> None:
        for n in range(3):
            await receive(app, ct(tmp_path, study, series, n + 1))
        await asyncio.sleep(0.5)
        assert await study_receipts(app.archive, study) == []  # not complete yet: nothing sent
        await app.archive.write(lambda conn: worklist_repo.mark_study_complete(conn, study, "1.2.3.4"))
        await until(lambda: _sent_to(app, study, "DEST", 3), "the complete study sent")
        await asyncio.sleep(0.5)
        assert len(await app.jobs.list(kinds=(ROUTE,))) == 1
        assert len(received(out)) == 3

    with storescp(port, out):
        running(tmp_path, rules, (node("DEST", port),), index_url=index_url)(body)


def test_a_delivery_waiting_for_its_destination_survives_a_restart(tmp_path: Path) -> None:
    """The job and its receipts are rows of the index: after a restart the job runs again and the
    destination, now up, gets every instance; nothing was kept in memory."""
    port, out = free_port(), tmp_path / "dest"
    rules = [{"name": "each", "when": "instance", "send_to": ["DEST"]}]
    study, series = str(generate_uid()), str(generate_uid())
    nodes = (node("DEST", port),)

    async def before(app: App) -> None:
        for n in range(3):
            await receive(app, ct(tmp_path, study, series, n + 1))

        async def retrying() -> bool:
            receipts = await study_receipts(app.archive, study)
            return len(receipts) == 3 and all(r["status"] == "retrying" for r in receipts)

        await until(retrying, "3 receipts retrying while DEST is down")

    async def after(app: App) -> None:
        await until(lambda: _sent_to(app, study, "DEST", 3), "3 instances sent after the restart")

        async def one_job_done() -> bool:  # the job ends just after its receipts say "sent"
            jobs = await app.jobs.list(kinds=(ROUTE,))
            assert len(jobs) == 1, jobs
            return jobs[0].state.value == "done"

        await until(one_job_done, "the one route job done")

    running(tmp_path, rules, nodes)(before)
    with storescp(port, out):
        running(tmp_path, rules, nodes)(after)
    assert len(received(out)) == 3
