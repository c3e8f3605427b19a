"""The correction forms in a real headless Chromium against `minipacs serve` (issue 14): an admin
corrects a patient's name and ID on the patient page and a study's description on the study page;
app.js posts the changed fields, the page comes back with the new values, the files hold them."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import sync_playwright
from pydicom.uid import generate_uid

from tests.dicomgen import make_ct
from tests.peers import ServerProcess, missing_peer
from tests.web.test_ui_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, basic, login, server

pytestmark = [pytest.mark.interop, pytest.mark.slow]
_ = server  # the fixture: `minipacs serve` with an admin and a viewer


def test_browser_corrects_a_patient_and_a_study(tmp_path: Path, server: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    _, base = server
    study, sop = generate_uid(), generate_uid()
    out = io.BytesIO()
    make_ct(study, generate_uid(), sop, patient_name="Wrong^Name", patient_id="TYPO1").save_as(
        out, enforce_file_format=True
    )
    assert httpx.post(f"{base}/api/instances", content=out.getvalue(), headers=basic(ADMIN)).status_code == 200

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            login(page, base, ADMIN)
            page.goto(f"{base}/ui/patient?id=TYPO1")
            page.click("details.correct summary")
            page.fill("form.correct input[name=PatientName]", "Right^Name")
            page.fill("form.correct input[name=PatientID]", "MRN1")
            page.click("form.correct button[type=submit]")
            page.locator("h1", has_text="Patient Right Name").wait_for(timeout=60000)
            assert "id=MRN1" in page.url
            page.goto(f"{base}/ui/studies/{study}")
            page.click("details.correct summary")
            page.fill("form.correct input[name=StudyDescription]", "FIXED IN BROWSER")
            page.click("form.correct button[type=submit]")
            page.locator("h1", has_text="FIXED IN BROWSER").wait_for(timeout=60000)
            assert not errors, errors
            context.close()
        finally:
            browser.close()
    data = httpx.get(f"{base}/api/instances/{sop}/file", headers=basic(ADMIN)).content
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDescription) == ("MRN1", "Right^Name", "FIXED IN BROWSER")
