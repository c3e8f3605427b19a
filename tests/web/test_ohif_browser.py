"""The OHIF viewer (`minipacs ohif install`) in Debian's headless Chromium, served by `minipacs serve` at /ohif/.

A file stored by C-STORE (`minipacs store`) shows up in OHIF's study list, which OHIF fills by QIDO-RS
from our /dicom-web. The install folder comes from MINIPACS_OHIF_DIR (.ci/run installs it there).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright
from pydicom.uid import generate_uid

from minipacs.web.ohif import dist_dir
from tests.dicomgen import make_ct
from tests.peers import (
    ServerProcess,
    free_port,
    minipacs_cmd,
    missing_peer,
    run,
    start_server,
    wait_for_port,
)
from tests.web.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.interop, pytest.mark.slow]

INSTALL = "minipacs ohif install --dir DIR; export MINIPACS_OHIF_DIR=DIR"


def ohif_dir() -> Path:
    folder = os.environ.get("MINIPACS_OHIF_DIR", "")
    if not folder or dist_dir(Path(folder)) is None:
        missing_peer("The OHIF viewer (MINIPACS_OHIF_DIR)", INSTALL)
    return Path(folder)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    folder = ohif_dir()
    http_port = free_port()
    srv = start_server(
        tmp_path,
        env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false", "MINIPACS_OHIF_DIR": str(folder)},
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


def test_ohif_lists_a_study_stored_by_c_store(tmp_path: Path, server: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = server
    path = tmp_path / "ohif.dcm"
    study_uid = generate_uid()
    make_ct(
        study_uid,
        generate_uid(),
        generate_uid(),
        patient_name="Ohif^Olga",
        patient_id="OHIF1",
        StudyDescription="OHIF STUDY",
    ).save_as(path, enforce_file_format=True)
    # issue 12 item 13: a study with no Modality (ModalitiesInStudy without a value) emptied OHIF's whole list
    no_modality = tmp_path / "no-modality.dcm"
    make_ct(
        generate_uid(),
        generate_uid(),
        generate_uid(),
        patient_name="Blank^Bert",
        patient_id="OHIF2",
        StudyDescription="NO MODALITY STUDY",
        Modality="",
    ).save_as(no_modality, enforce_file_format=True)
    store = minipacs_cmd("store", "--no-progress", "-aec", srv.ae_title, "127.0.0.1", str(srv.port))
    done = run([*store, str(path), str(no_modality)])
    assert done.returncode == 0, done.stdout + done.stderr

    # served by minipacs: the rewritten index page, our app-config.js, a bundle
    index = httpx.get(f"{base}/ohif/")
    assert index.status_code == 200 and 'window.PUBLIC_URL="/ohif/"' in index.text
    config = httpx.get(f"{base}/ohif/app-config.js")
    assert "/dicom-web" in config.text and "supportsFuzzyMatching: false" in config.text
    assert httpx.get(f"{base}/ohif/some/spa/route").text == index.text

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            qido: list[str] = []
            errors: list[str] = []
            missing: list[str] = []
            page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: qido.append(r.url) if "/dicom-web/studies" in r.url else None)
            page.goto(f"{base}/ohif/")
            page.get_by_text("OHIF STUDY").first.wait_for(timeout=60000)
            text = page.locator("body").inner_text()
            assert "Ohif, Olga" in text, text[:2000]  # OHIF's way of writing Ohif^Olga
            page.get_by_text("NO MODALITY STUDY").first.wait_for(timeout=10000)
            assert "Blank, Bert" in page.locator("body").inner_text()
            assert not [e for e in errors if "length" in e], errors

            # the study page's "Open in OHIF" link opens that study in the viewer (issue 12 item 24)
            study_page = httpx.get(f"{base}/ui/studies/{study_uid}")
            link = re.search(r'<a class="ohif" href="([^"]+)">Open in OHIF</a>', study_page.text)
            assert link is not None, study_page.text
            wado: list[str] = []
            page.on("request", lambda r: wado.append(r.url) if f"/studies/{study_uid}/" in r.url else None)
            page.goto(base + html.unescape(link.group(1)))
            page.wait_for_function("() => document.querySelectorAll('canvas').length > 0", timeout=60000)
            page.wait_for_timeout(2000)
            assert any("/series" in url or "/metadata" in url for url in wado), wado
            assert not missing, missing  # nothing OHIF asks for is missing, fonts included
            assert any(url.startswith(f"{base}/dicom-web/studies") for url in qido), qido
        finally:
            browser.close()
