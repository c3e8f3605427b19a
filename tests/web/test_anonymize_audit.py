"""Anonymization over REST writes "anonymized" audit rows naming the caller, whether it runs at once
or as a job (core/anonymize.py, docs/AUDIT.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from minipacs.core.archive import Archive
from tests.web.test_rest_anonymize import OPERATOR, STUDY, VIEWER, run


async def _anonymized(archive: Archive) -> list[dict[str, object]]:
    rows = await archive.audit.query(study_uid=STUDY)
    return [r for r in rows if r["action"] == "anonymized"]


def test_rest_anonymize_is_audited_with_the_caller(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.post(f"/api/studies/{STUDY}/anonymize", headers=OPERATOR)).status_code == 200
        [row] = await _anonymized(archive)
        assert (row["actor_kind"], row["actor"], row["address"]) == ("user", "oli", "127.0.0.1")
        assert row["patient_id"] == "PID-7781" and "2 instance(s) de-identified" in str(row["detail"])
        # the whole patient, original deleted: the row still names the patient and the old study
        answer = await client.post("/api/patients/PID-7781/anonymize", headers=OPERATOR, json={"keep_original": False})
        assert answer.status_code == 200
        rows = await _anonymized(archive)
        assert len(rows) == 2 and rows[0]["patient_id"] == "PID-7781"
        assert "the original deleted" in str(rows[0]["detail"])

    run(tmp_path, body)


def test_a_queued_anonymization_is_audited_with_who_asked(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        answer = await client.post(f"/api/studies/{STUDY}/anonymize", headers=OPERATOR, json={"output": "archive"})
        assert answer.status_code == 202
        for _ in range(600):
            job = (await client.get(answer.json()["href"], headers=VIEWER)).json()
            if job["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "done", job
        [row] = await _anonymized(archive)
        assert (row["actor_kind"], row["actor"], row["address"]) == ("user", "oli", "127.0.0.1")

    run(tmp_path, body, threshold=1)
