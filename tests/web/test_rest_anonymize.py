"""REST de-identification, in process: POST /api/{level}/{id}/anonymize (archive, job, ZIP), the
roles, the errors, and the admin-only mapping."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pydicom

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.anonymize import ADMINS_ONLY, Anonymizer, register_anonymize_job
from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue, JobSettings
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.core.retrieve import select_instances
from minipacs.web.app import create_app
from minipacs.web.rest_anonymize import MAX_BODY, MAX_MAPPINGS
from minipacs.web.types import AppContext
from tests.core.test_anonymize import KEY, store
from tests.web.test_rest_nodes import USERS, auth

VIEWER, OPERATOR, ADMIN = auth("vic", "v-pass"), auth("oli", "o-pass"), auth("ada", "a-pass")
STUDY = "1.2.826.0.1.3680043.10.5.1"
SERIES = STUDY + ".1"
Body = Callable[[httpx.AsyncClient, Archive], Awaitable[None]]


def run(tmp: Path, body: Body, threshold: int = 200) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp / "data", fsync=False, users=USERS, anonymize_job_threshold=threshold)
        archive = await open_archive(settings)
        await store(archive, tmp, STUDY, SERIES, 2)
        anonymizer = Anonymizer(archive, KEY)
        queue = JobQueue(archive, JobSettings(runner="web-anon", poll_seconds=0.05, progress_seconds=0.05))
        register_anonymize_job(queue, anonymizer)
        await queue.start()
        context = AppContext(settings, archive, MetadataStore(archive), jobs=queue, anonymizer=anonymizer)
        transport = httpx.ASGITransport(app=create_app(context), client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, archive)
        finally:
            await queue.close()
            await archive.close()

    asyncio.run(main())


def test_study_into_the_archive_answers_the_new_uids(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url = f"/api/studies/{STUDY}/anonymize"
        assert (await client.post(url, headers=VIEWER)).status_code == 403
        answer = await client.post(url, headers=OPERATOR, json={"options": ["retain-safe-private"]})
        assert answer.status_code == 200, answer.text
        new = answer.json()
        assert new["study"].startswith("2.25.") and new["instances"] == 2 and new["patient"].startswith("ANON")
        found = await client.get(f"/api/studies/{new['study']}", headers=VIEWER)
        assert found.status_code == 200 and "PID-7781" not in found.text
        # the mapping: admins only
        assert (await client.get("/api/anonymization/mappings", headers=OPERATOR)).status_code == 403
        mapped = await client.get("/api/anonymization/mappings", params={"value": new["study"]}, headers=ADMIN)
        assert mapped.status_code == 200
        assert [m["original"] for m in mapped.json()["mappings"]] == [STUDY]
        patients = await client.get("/api/anonymization/mappings", params={"kind": "patient_id"}, headers=ADMIN)
        assert {(m["original"], m["pseudonym"]) for m in patients.json()["mappings"]} == {("PID-7781", new["patient"])}
        # the patient, by its ID, with the original deleted: the same pseudonymous study
        moved = await client.post("/api/patients/PID-7781/anonymize", headers=OPERATOR, json={"keep_original": False})
        assert moved.status_code == 200 and moved.json()["studies"] == [new["study"]]
        assert moved.json()["original_deleted"] is True
        assert (await client.get(f"/api/studies/{STUDY}", headers=VIEWER)).status_code == 404

    run(tmp_path, body)


def test_zip_output_and_errors(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        answer = await client.post(f"/api/series/{SERIES}/anonymize", headers=OPERATOR, json={"output": "zip"})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(answer.content)) as z:
            assert len(z.namelist()) == 2 and all(b"PID-7781" not in z.read(n) for n in z.namelist())
        assert not list(archive.staging_dir.glob("anonymized-*.zip"))  # the temporary ZIP is gone
        cases = [
            (f"/api/studies/{STUDY}/anonymize", {"options": ["retain-all"]}, 400, "invalid_deid_options"),
            (f"/api/studies/{STUDY}/anonymize", {"output": "cd"}, 400, "invalid_parameter"),
            (f"/api/studies/{STUDY}/anonymize", {"output": "zip", "keep_original": False}, 400, "invalid_parameter"),
            (f"/api/studies/{STUDY}/anonymize", {"options": "retain-uids"}, 400, "invalid_parameter"),
            (f"/api/studies/{STUDY}/anonymize", {"options": ["retain-uids"]}, 400, "invalid_deid_options"),
            (f"/api/studies/{STUDY}/anonymize", {"colour": 1}, 400, "invalid_parameter"),
            (f"/api/studies/{STUDY}/anonymize", ["x"], 400, "invalid_json"),
            ("/api/studies/1.2.3.4.5/anonymize", {}, 404, "not_found"),
            (f"/api/instances/{SERIES}.1/anonymize", {}, 404, "not_found"),
        ]
        for url, payload, status, code in cases:
            failed = await client.post(url, headers=OPERATOR, json=payload)
            assert (failed.status_code, failed.json()["error"]["code"]) == (status, code), (url, failed.text)
        # the limits, at and past them
        padded = b'{"options": []}' + b" " * (MAX_BODY - 15)
        url = f"/api/studies/{STUDY}/anonymize"
        headers = {**OPERATOR, "Content-Type": "application/json"}
        assert (await client.post(url, headers=headers, content=padded)).status_code == 200
        assert (await client.post(url, headers=headers, content=padded + b" ")).status_code == 413
        mappings = "/api/anonymization/mappings"
        assert (await client.get(mappings, params={"limit": MAX_MAPPINGS}, headers=ADMIN)).status_code == 200
        assert (await client.get(mappings, params={"limit": MAX_MAPPINGS + 1}, headers=ADMIN)).status_code == 400

    run(tmp_path, body)


def test_a_structured_report_comes_out_without_its_text(tmp_path: Path) -> None:
    """The stored copy and the ZIP of an anonymized SR: PS3.15 E.1-1 D on Content Sequence, the
    findings text, names and dates of the content tree replaced by dummies (core/deid.py)."""
    from tests.core.test_deid import FINDINGS, REPORT_SECRETS, REPORT_STUDY, report

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        path = tmp_path / "report.dcm"
        report().save_as(path, enforce_file_format=True)
        await archive.import_file(path, Origin("import"))
        answer = await client.post(f"/api/studies/{REPORT_STUDY}/anonymize", headers=OPERATOR)
        assert answer.status_code == 200 and answer.json()["instances"] == 1, answer.text
        (stored,) = await select_instances(archive, "STUDY", {"StudyInstanceUID": answer.json()["study"]})
        with stored.open() as fh:
            outputs = [fh.read()]
        zipped = await client.post(f"/api/studies/{REPORT_STUDY}/anonymize", headers=OPERATOR, json={"output": "zip"})
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as z:
            outputs += [z.read(name) for name in z.namelist()]
        assert len(outputs) == 2 and FINDINGS.encode() in path.read_bytes()
        for data in outputs:
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.ContentSequence[-1].ContentSequence[0].TextValue == "ANONYMIZED"
            for secret in (*REPORT_SECRETS, REPORT_STUDY):
                assert secret.encode() not in data, secret

    run(tmp_path, body)


def test_above_the_threshold_it_is_a_job(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        answer = await client.post(f"/api/studies/{STUDY}/anonymize", headers=OPERATOR)
        assert answer.status_code == 202 and answer.json()["instances"] == 2
        href = answer.json()["href"]
        for _ in range(600):
            job = (await client.get(href, headers=VIEWER)).json()
            if job["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "done", job
        # the admin sees what the job linked: the original study and the new one
        full = (await client.get(href, headers=ADMIN)).json()
        assert full["result"]["study"].startswith("2.25.") and full["by"].startswith("oli")
        assert full["params"]["id"] == STUDY and STUDY in full["description"]
        # a viewer (read permission) or an operator sees the counts, not the link (the mapping is admin-only)
        for who in (VIEWER, OPERATOR):
            for seen in [
                (await client.get(href, headers=who)).json(),
                *(await client.get("/api/jobs", headers=who)).json(),
            ]:
                text = json.dumps(seen)
                assert STUDY not in text and full["result"]["study"] not in text, seen
                assert seen["params"]["id"] == ADMINS_ONLY and seen["result"]["instances"] == 2
            page = await client.get("/ui/jobs", headers=who)
            assert page.status_code == 200 and STUDY not in page.text and ADMINS_ONLY in page.text
        assert STUDY in (await client.get("/ui/jobs", headers=ADMIN)).text

    run(tmp_path, body, threshold=1)


def test_at_the_threshold_it_runs_at_once(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        answer = await client.post(f"/api/studies/{STUDY}/anonymize", headers=OPERATOR)
        assert answer.status_code == 200 and answer.json()["instances"] == 2  # 2 instances, threshold 2

    run(tmp_path, body, threshold=2)


def test_the_study_page_offers_anonymize_to_writers(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        page = await client.get(f"/ui/studies/{STUDY}", headers=OPERATOR)
        assert page.status_code == 200
        assert f'data-api="/api/studies/{STUDY}/anonymize"' in page.text
        assert 'value="retain-long-modified-dates"' in page.text and "Burned-in text" in page.text
        viewer = await client.get(f"/ui/studies/{STUDY}", headers=VIEWER)
        assert viewer.status_code == 200 and "/anonymize" not in viewer.text

    run(tmp_path, body)
