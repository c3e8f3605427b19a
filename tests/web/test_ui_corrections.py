"""The correction forms of the UI (issue 14): on the patient, study and series pages for a role that
may write, posting to the REST endpoints they name (as app.js does); absent for a viewer; a viewer's
POST is refused (403) and changes nothing."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_ui import FAST, USERS, basic

_ = FAST


def _attr(page: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]+)"', page)
    assert found is not None, f"no {name} in the page"
    return html.unescape(found.group(1))


def test_forms_post_to_the_corrections_api(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        admin = basic("ada", "a-pass")
        study, series = generate_uid(), generate_uid()
        data = part10(study_uid=study, series_uid=series, patient_id="P/1")
        assert (await client.post("/api/instances", content=data, headers=admin)).status_code == 200
        page = (await client.get("/ui/patient", params={"id": "P/1"}, headers=admin)).text
        assert 'class="merge"' in page
        modify = _attr(page, "data-modify")
        assert modify.endswith("/api/patients/P%2F1/modify"), modify  # a Patient ID may hold "/"
        rsp = await client.post(modify, json={"changes": {"PatientName": "FIXED^NAME"}}, headers=admin)
        assert rsp.status_code == 200, rsp.text
        page = (await client.get(f"/ui/studies/{study}", headers=admin)).text
        assert "FIXED" in page
        modify = _attr(page, "data-modify")
        rsp = await client.post(modify, json={"changes": {"StudyDescription": "FIXED STUDY"}}, headers=admin)
        assert rsp.status_code == 200
        page = (await client.get(f"/ui/studies/{study}/series/{series}", headers=admin)).text
        move = _attr(page, "data-move")
        assert move.endswith(f"/api/series/{series}/move")
        # a viewer sees no form and may not post
        viewer = basic("vic", "v-pass")
        page = (await client.get(f"/ui/studies/{study}", headers=viewer)).text
        assert "data-modify" not in page and "FIXED STUDY" in page
        rsp = await client.post(modify, json={"changes": {"StudyDescription": "NO"}}, headers=viewer)
        assert rsp.status_code == 403
        log = (await client.get("/api/corrections", headers=viewer)).json()
        assert [row["new_values"] for row in log] == [
            {"StudyDescription": "FIXED STUDY"},
            {"PatientName": "FIXED^NAME"},
        ]
        assert log[0]["actor"].startswith("ada (admin)")

    web(body, users=USERS)
