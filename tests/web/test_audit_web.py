"""The audit trail over HTTP: who viewed, downloaded, exported, queried and deleted; GET /api/audit and
/ui/audit for admins only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_auth import TOKENS, USERS, basic

ADMIN = basic("ada", "a-pass")
VIEWER = basic("vic", "v-pass")
OPERATOR = basic("oli", "o-pass")
TOKEN = {"Authorization": "Bearer tok-123"}


def test_who_did_what_to_which_patient_and_study(web: Callable[..., Any]) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=study, series_uid=series, sop_uid=sop, patient_id="PAT-A"),
            headers={"Content-Type": "application/dicom", **OPERATOR},
        )
        assert r.status_code == 200
        for _ in range(3):  # a viewer's repeated requests: one "viewed" row
            assert (await client.get(f"/dicom-web/studies/{study}/metadata", headers=VIEWER)).status_code == 200
        assert (await client.get(f"/ui/studies/{study}", headers=VIEWER)).status_code == 200
        assert f"/ui/audit?study={study}" in (await client.get(f"/ui/studies/{study}", headers=ADMIN)).text
        assert (await client.get(f"/api/studies/{study}/archive", headers=TOKEN)).status_code == 200
        assert (await client.get(f"/api/series/{series}/media", headers=VIEWER)).status_code == 200
        for params in ({"PatientID": "PAT-A"}, {"StudyDate": "20240131"}):  # the second names no patient
            assert (await client.get("/dicom-web/studies", params=params, headers=VIEWER)).status_code == 200
        assert (await client.delete(f"/api/instances/{sop}", headers=OPERATOR)).status_code == 200

        # admin only
        assert (await client.get("/api/audit", headers=VIEWER)).status_code == 403
        assert (await client.get("/api/audit", headers=OPERATOR)).status_code == 403
        assert (await client.get("/ui/audit", headers=VIEWER)).status_code == 403
        rows = (await client.get("/api/audit", params={"patient": "PAT-A"}, headers=ADMIN)).json()
        got = sorted((r["action"], r["actor_kind"], r["actor"], r["detail"].split(":")[0]) for r in rows)
        assert got == [
            ("deleted", "user", "oli", f"instances {sop}"),
            ("downloaded", "token", "script", f"studies {study}"),
            ("exported", "user", "vic", f"DICOM media of series {series}"),
            ("queried", "user", "vic", "QIDO-RS STUDY"),
            ("viewed", "user", "ada", "study page"),
            ("viewed", "user", "vic", "WADO-RS"),
            ("viewed", "user", "vic", "study page"),
        ]
        assert all(r["address"] == "127.0.0.1" for r in rows)
        assert all(r["study_uid"] in (study, "") for r in rows)
        by_user = (await client.get("/api/audit", params={"user": "script"}, headers=ADMIN)).json()
        assert [r["action"] for r in by_user] == ["downloaded"]
        by_study = (await client.get("/api/audit", params={"study": study, "limit": "2"}, headers=ADMIN)).json()
        assert len(by_study) == 2
        none = await client.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=ADMIN)
        assert none.json() == []
        bad = await client.get("/api/audit", params={"until": "yesterday"}, headers=ADMIN)
        assert bad.status_code == 400 and "ISO 8601" in bad.text
        assert (await client.get("/api/audit", params={"limit": "1001"}, headers=ADMIN)).status_code == 400
        page = await client.get("/ui/audit", params={"patient": "PAT-A"}, headers=ADMIN)
        assert page.status_code == 200 and "study page" in page.text and "script" in page.text
        assert ">Audit<" in page.text  # in the admin's navigation ...
        assert ">Audit<" not in (await client.get("/ui/", headers=VIEWER)).text  # ... not a viewer's
        assert "Audit trail" not in (await client.get(f"/ui/studies/{study}", headers=VIEWER)).text

    web(body, users=USERS, tokens=TOKENS)
