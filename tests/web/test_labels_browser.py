"""Study labels in a real headless Chromium against `minipacs serve`: add a label on the study page
(the page's form, the session's CSRF token), see it in the study list and filter by it, remove it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright
from pydicom.uid import generate_uid

from minipacs.core.users import hash_password
from tests.peers import ServerProcess, free_port, missing_peer, start_server, wait_for_port
from tests.web.conftest import part10
from tests.web.test_ui_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, basic, login

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    config = tmp_path / "minipacs.toml"
    config.write_text(
        f'[[users]]\nname = "{ADMIN[0]}"\npassword_hash = "{hash_password(ADMIN[1], n=2**4)}"\nrole = "admin"\n'
    )
    http_port = free_port()
    srv = start_server(tmp_path, "--config", str(config), env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


def test_add_filter_and_remove_a_label(served: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    _, base = served
    study = generate_uid()
    r = httpx.post(f"{base}/api/instances", content=part10(study_uid=study), headers=basic(ADMIN), timeout=30)
    assert r.status_code == 200, r.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            login(page, base, ADMIN)
            page.goto(f"{base}/ui/studies/{study}")
            page.fill("form.add-label input[name=label]", "teaching")
            with page.expect_navigation():
                page.click("form.add-label button[type=submit]")
            assert page.locator(".labels .badge.label").first.text_content().startswith("teaching")  # type: ignore[union-attr]
            page.goto(f"{base}/ui/?labels=teaching")
            assert page.locator("td.labels a.badge.label").text_content() == "teaching"
            page.goto(f"{base}/ui/?labels=other")
            assert page.locator("td.labels").count() == 0
            page.goto(f"{base}/ui/studies/{study}")
            with page.expect_navigation():
                page.click("button[data-label-remove]")
            assert page.locator(".labels .badge.label").count() == 0
            assert httpx.get(f"{base}/api/studies/{study}/labels", headers=basic(ADMIN)).json() == []
            assert errors == []
        finally:
            browser.close()
