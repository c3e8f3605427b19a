"""The Jobs page in a real headless Chromium against `minipacs serve`: a send to a storescp that is
down shows as waiting with its error in words, turns done on its own (live refresh) once storescp
is up; a second one is cancelled and retried with the page's buttons; a viewer sees no buttons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from minipacs.core.users import hash_password
from tests.interop.test_jobs_interop import FAST_JOBS, closed_port, store, storescp, study_files
from tests.peers import ServerProcess, free_port, missing_peer, start_server, wait_for_port
from tests.web.test_ui_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, SHOTS, VIEWER, basic, login

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    config = tmp_path / "minipacs.toml"
    lines = []
    for (name, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
        lines += ["[[users]]", f'name = "{name}"', f'password_hash = "{hash_password(password, n=2**4)}"']
        lines += [f'role = "{role}"', ""]
    config.write_text("\n".join(lines))
    http_port = free_port()
    srv = start_server(
        tmp_path,
        "--config",
        str(config),
        env={**FAST_JOBS, "MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_HTTP_HOST": "127.0.0.1"},
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


def row(page: Page, job_id: int) -> str:
    return f"#jobs tbody tr[data-id='{job_id}']"


def test_jobs_page_live_progress_cancel_retry(tmp_path: Path, server: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = server
    study, files = study_files(tmp_path, 2)
    store(srv, files)
    admin = basic(ADMIN)
    placeholders = [closed_port(), closed_port()]
    ports = [p.getsockname()[1] for p in placeholders]
    nodes = []
    for title, port in zip(("LATER", "NEVER"), ports, strict=True):
        r = httpx.post(f"{base}/api/nodes", headers=admin, json={"ae_title": title, "host": "127.0.0.1", "port": port})
        assert r.status_code == 201, r.text
        nodes.append(r.json()["id"])
    later, never = (
        httpx.post(f"{base}/api/send", headers=admin, json={"node": n, "level": "study", "uids": [study]}).json()["id"]
        for n in nodes
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 800}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            login(page, base, ADMIN)
            page.goto(f"{base}/ui/jobs")
            page.wait_for_function(
                f"() => /cannot send to 'LATER'/.test(document.querySelector(\"{row(page, later)}\").textContent)",
                timeout=30000,
            )
            assert page.locator(f"{row(page, later)} .badge").text_content() in ("queued", "running")
            if SHOTS:
                page.screenshot(path=str(SHOTS / "jobs-waiting.png"), full_page=True)
            # storescp comes up: the row turns done without a reload
            placeholders[0].close()
            with storescp(ports[0], tmp_path / "out"):
                page.wait_for_function(
                    f"() => document.querySelector(\"{row(page, later)} .badge\").textContent === 'done'",
                    timeout=30000,
                )
            assert "2/2" in (page.locator(row(page, later)).text_content() or "")
            # cancel the other with its button, then retry it
            page.click(f"{row(page, never)} button.job-cancel")
            page.wait_for_function(
                f"() => document.querySelector(\"{row(page, never)} .badge\").textContent === 'cancelled'",
                timeout=30000,
            )
            page.click(f"{row(page, never)} button.job-retry")
            page.wait_for_function(
                f'() => /queued|running/.test(document.querySelector("{row(page, never)} .badge").textContent)',
                timeout=30000,
            )
            assert httpx.get(f"{base}/api/jobs/{never}", headers=admin).json()["attempts"] <= 1
            if SHOTS:
                page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)
            assert errors == []
            # a viewer sees the jobs, no buttons
            viewer = browser.new_context().new_page()
            login(viewer, base, VIEWER)
            viewer.goto(f"{base}/ui/jobs")
            viewer.wait_for_selector(row(viewer, later))
            assert viewer.locator("#jobs button").count() == 0
        finally:
            browser.close()
            for placeholder in placeholders:
                placeholder.close()
