"""The web UI in a real headless Chromium (Debian's, driven by Playwright) against `minipacs serve`.

Upload by the file input -> study list -> viewer canvas has pixels -> send to a
DCMTK storescp registered as a node -> a viewer-role user cannot delete.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, sync_playwright
from pydicom.uid import generate_uid

from minipacs.core.users import hash_password
from tests.dicomgen import make_ct
from tests.peers import ServerProcess, dcmtk, free_port, missing_peer, start_server, wait_for_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN, VIEWER = ("ada", "a-pass"), ("vic", "v-pass")
SHOTS = (
    Path(os.environ.get("MINIPACS_TEST_UI_SCREENSHOTS", "")) if os.environ.get("MINIPACS_TEST_UI_SCREENSHOTS") else None
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def basic(user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}


def login(page: Page, base: str, user: tuple[str, str]) -> None:
    """Log in through the login page (the UI's session cookie, not cached Basic credentials)."""
    page.goto(f"{base}/ui/login")
    page.fill("input[name=name]", user[0])
    page.fill("input[name=password]", user[1])
    with page.expect_navigation():
        page.click("form.login button[type=submit]")
    assert page.locator("body").get_attribute("data-role") is not None, page.content()


def gradient_ct(path: Path, study: str, series: str, number: int) -> None:
    """A 64x64 CT whose pixels form a ramp (so a rendered image is not blank)."""
    ramp = (np.add.outer(np.arange(64), np.arange(64)) * 8 + number * 50).astype("<u2")
    ds = make_ct(
        study,
        series,
        generate_uid(),
        patient_name="Browser^Test",
        patient_id="BR1",
        StudyDescription="UI BROWSER STUDY",
        InstanceNumber=number,
        PixelData=ramp.tobytes(),
        WindowCenter=500,
        WindowWidth=1000,
    )
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    path.write_bytes(out.getvalue())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    config = tmp_path / "minipacs.toml"
    lines = []
    for (name, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        lines += [
            "[[users]]",
            f'name = "{name}"',
            f'password_hash = "{hash_password(password, n=2**4)}"',
            f'role = "{role}"',
            "",
        ]
    config.write_text("\n".join(lines))
    http_port = free_port()
    srv = start_server(
        tmp_path,
        "--config",
        str(config),
        env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false", "MINIPACS_HTTP_HOST": "127.0.0.1"},
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = dcmtk("storescp")
    port, out = free_port(), tmp_path / "scp-out"
    out.mkdir()
    proc = subprocess.Popen(
        [binary, "--aetitle", "UISCP", "-od", str(out), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_browser_upload_view_send_and_roles(
    tmp_path: Path, server: tuple[ServerProcess, str], storescp: tuple[int, Path]
) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = server
    scp_port, scp_out = storescp
    study, series = generate_uid(), generate_uid()
    files = [tmp_path / f"img{n}.dcm" for n in (1, 2)]
    for n, path in enumerate(files, 1):
        gradient_ct(path, study, series, n)
    # the node to send to, registered over REST by the admin
    r = httpx.post(
        f"{base}/api/nodes",
        headers=basic(ADMIN),
        json={"ae_title": "UISCP", "host": "127.0.0.1", "port": scp_port, "description": "storescp"},
    )
    assert r.status_code == 201, r.text

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 800})
            page = context.new_page()
            login(page, base, ADMIN)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # upload through the page (file input; the same code path as a drop)
            page.goto(f"{base}/ui/upload")
            page.set_input_files("#files", [str(f) for f in files])
            page.wait_for_function("() => document.querySelectorAll('#results tbody tr').length === 2", timeout=30000)
            assert page.locator("#progress").evaluate("el => el.value") == 1
            assert page.locator("#results td.ok").count() == 2, page.content()

            # the study list shows it
            page.goto(f"{base}/ui/")
            page.locator("a.study", has_text="UI BROWSER STUDY").wait_for()
            assert "Browser Test" in page.content()
            if SHOTS:
                page.screenshot(path=str(SHOTS / "study-list.png"), full_page=True)

            # the viewer draws non-blank pixels and scrolls
            page.goto(f"{base}/ui/viewer/{study}/{series}")
            page.wait_for_function("() => document.body.dataset.viewerReady === '1'", timeout=30000)
            assert "Browser Test (BR1)" in page.locator("main p").first.inner_text()
            distinct = page.evaluate("""() => {
                const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const seen = new Set();
                for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i]);
                return seen.size; }""")
            assert distinct > 10, distinct
            page.locator("#viewport").focus()
            page.keyboard.press("ArrowDown")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('image 2/2')")
            page.select_option("#preset", "300,1500")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('W 1500 L 300')")
            if SHOTS:
                page.screenshot(path=str(SHOTS / "viewer.png"))

            # the nodes page: echo the storescp node
            page.goto(f"{base}/ui/nodes")
            page.click("button.echo")
            page.wait_for_function(
                "() => /^ok/.test(document.querySelector('.echo-result').textContent)", timeout=30000
            )

            # send the study to storescp through the page
            page.goto(f"{base}/ui/studies/{study}")
            page.select_option("form.send select", label=f"UISCP (127.0.0.1:{scp_port})")
            page.click("form.send button")
            page.wait_for_function(
                "() => /done/.test(document.querySelector('form.send .job').textContent)", timeout=30000
            )
            deadline = time.monotonic() + 20
            while len(list(scp_out.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(list(scp_out.iterdir())) == 2
            assert not errors, errors
            context.close()

            # a viewer sees no delete or upload button, and the API refuses anyway
            context = browser.new_context()
            page = context.new_page()
            login(page, base, VIEWER)
            page.goto(f"{base}/ui/studies/{study}")
            assert page.locator("body").get_attribute("data-role") == "viewer"
            assert page.locator("button[data-delete]").count() == 0
            assert page.locator("a[href='/ui/upload']").count() == 0
            assert page.request.delete(f"{base}/api/studies/{study}").status == 403
            context.close()
        finally:
            browser.close()
    assert httpx.get(f"{base}/api/studies/{study}", headers=basic(ADMIN)).status_code == 200


HOSTILE_PID = 'x/&"<y>#%'


def test_browser_follows_links_of_a_hostile_patient_id_and_deletes_the_patient(
    tmp_path: Path, server: tuple[ServerProcess, str]
) -> None:
    """A Patient ID with URL and HTML syntax, through uvicorn and Chromium: list -> patient -> study ->
    patient -> Delete (the DELETE URL the page wrote) -> back on the list, the patient gone."""
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = server
    path = tmp_path / "hostile.dcm"
    ds = make_ct(
        generate_uid(),
        generate_uid(),
        generate_uid(),
        patient_name="Hostile^Id",
        patient_id=HOSTILE_PID,
        StudyDescription="HOSTILE PID STUDY",
    )
    ds.save_as(path, enforce_file_format=True)
    r = httpx.post(f"{base}/api/instances", content=path.read_bytes(), headers=basic(ADMIN))
    assert r.status_code == 200, r.text

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            login(page, base, ADMIN)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(f"{base}/ui/")
            page.click("text=Hostile Id")
            assert page.locator("h1").inner_text() == "Patient Hostile Id"
            assert HOSTILE_PID in page.locator("dl.tags").inner_text()
            page.click("a.study")
            page.locator("h1", has_text="Study HOSTILE PID STUDY").wait_for()
            page.click("text=Patient")
            page.locator("h1", has_text="Patient Hostile Id").wait_for()
            page.click("button[data-delete]")
            page.wait_for_url(f"{base}/ui/", timeout=30000)
            assert "HOSTILE PID STUDY" not in page.content()
            assert not errors, errors
            context.close()
        finally:
            browser.close()
    assert httpx.get(f"{base}/api/patients", headers=basic(ADMIN)).json() == []
