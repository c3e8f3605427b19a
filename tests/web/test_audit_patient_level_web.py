"""A REST search of patients is a patient-level query ("queried") even when it names nobody; a QIDO-RS
search naming nobody is not; WADO-RS is "viewed" (C-MOVE/C-GET are "retrieved":
tests/services/test_audit_dicom.py, tests/services/test_audit_patient_level.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.audit import EVERY_PATIENT
from tests.web.conftest import part10
from tests.web.test_audit_web import ADMIN, VIEWER
from tests.web.test_auth import TOKENS, USERS


def test_rest_patient_search_is_queried_and_wado_is_viewed(web: Callable[..., Any]) -> None:
    study = generate_uid()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=study, series_uid=generate_uid(), sop_uid=generate_uid(), patient_id="PAT-W"),
            headers={"Content-Type": "application/dicom", **ADMIN},
        )
        assert r.status_code == 200
        assert (await client.get("/api/patients", headers=VIEWER)).status_code == 200
        dates = {"StudyDate": "20240131"}
        assert (await client.get("/dicom-web/studies", params=dates, headers=VIEWER)).status_code == 200
        assert (await client.get(f"/dicom-web/studies/{study}", headers=VIEWER)).status_code == 200
        rows = (await client.get("/api/audit", params={"user": "vic"}, headers=ADMIN)).json()
        got = sorted((r["action"], r["study_uid"], r["detail"]) for r in rows)
        assert got == [("queried", "", f"REST search PATIENT: {EVERY_PATIENT}"), ("viewed", study, "WADO-RS")]

    web(body, users=USERS, tokens=TOKENS)
