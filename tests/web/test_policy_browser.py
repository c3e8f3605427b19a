"""The Rules, Storage, Retention and Overview pages in a real headless Chromium against `minipacs serve`:
a rule created with the Rules page's form is listed and deleted with its button; a study is
compressed with the Storage page's form (the job followed to done, the disk saved shown); the
Retention page's dry run lists the study and "Run now" deletes it through a retention job; the
Overview's "Back up now" makes a backup in backup_dir, then shown as the last one."""

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

CONFIG = """retention_interval_seconds = 0
backup_dir = "{backup}"
backup_interval_seconds = 0

[[users]]
name = "{name}"
password_hash = "{hash}"
role = "admin"

[[retention]]
name = "no-room"
max_storage_bytes = 0
protect_label = ""

[[compression]]
name = "mr-jls"
syntax = "jpeg-ls-lossless"
match = {{ Modality = "MR" }}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    config = tmp_path / "minipacs.toml"
    backup = tmp_path / "backup"
    config.write_text(CONFIG.format(name=ADMIN[0], hash=hash_password(ADMIN[1], n=2**4), backup=backup))
    http_port = free_port()
    srv = start_server(tmp_path, "--config", str(config), env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


def test_rules_storage_and_retention_pages(served: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    _, base = served
    admin = basic(ADMIN)
    study = str(generate_uid())
    r = httpx.post(f"{base}/api/instances", content=part10(study_uid=study), headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    node = {"ae_title": "AI_NODE", "host": "127.0.0.1", "port": free_port()}
    assert httpx.post(f"{base}/api/nodes", headers=admin, json=node, timeout=30).status_code == 201
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: dialog.accept())  # the Delete button asks first
            login(page, base, ADMIN)

            # Rules: create with the form, see it listed, delete it
            page.goto(f"{base}/ui/rules")
            page.fill(
                "#add-rule textarea[name=rule]", '{"name": "ui-rule", "when": "instance", "send_to": ["AI_NODE"]}'
            )
            with page.expect_navigation():
                page.click("#add-rule button[type=submit]")
            assert page.locator("#rules tr[data-rule='ui-rule'] td").nth(1).text_content() == "instance"
            listed = httpx.get(f"{base}/api/rules", headers=admin, timeout=30).json()
            assert "ui-rule" in str(listed)
            with page.expect_navigation():
                page.click("button.remove-rule[data-rule='ui-rule']")
            assert page.locator("tr[data-rule='ui-rule']").count() == 0
            assert "ui-rule" not in str(httpx.get(f"{base}/api/rules", headers=admin, timeout=30).json())

            # Storage: compress the study now, follow the job to its end
            page.click("nav >> text=Storage")
            assert "mr-jls" in (page.locator("#compression-policies").text_content() or "")
            page.fill("#compress-study input[name=study]", study)
            page.select_option("#compress-study select[name=syntax]", "jpeg-ls-lossless")
            page.click("#compress-study button[type=submit]")
            page.wait_for_function(
                "() => /^(done|failed|cancelled)/.test(document.querySelector('#compress-study .job').textContent)",
                timeout=60000,
            )
            assert (page.locator("#compress-study .job").text_content() or "").startswith("done")
            figures = httpx.get(f"{base}/api/storage", headers=admin, timeout=30).json()
            assert figures["compressed"] == 1 and figures["saved_bytes"] > 0, figures
            page.reload()
            assert "1 instance(s) compressed" in (page.locator("#storage-figures").text_content() or "")

            # Retention: the dry run lists the study; Run now deletes it
            page.click("nav >> text=Retention")
            assert page.locator("#retention-rules tr[data-rule='no-room']").count() == 1
            assert study in (page.locator("#retention-preview").text_content() or "")
            page.click("#retention-run button[type=submit]")
            page.wait_for_function(
                "() => /^(done|failed|cancelled)/.test(document.querySelector('#retention-run .job').textContent)",
                timeout=60000,
            )
            assert (page.locator("#retention-run .job").text_content() or "").startswith("done")
            assert httpx.get(f"{base}/api/studies", headers=admin, timeout=30).json() == []
            page.reload()
            assert "Nothing would be deleted now." in (page.text_content("body") or "")
            assert errors == []
        finally:
            browser.close()


def test_overview_backs_up_now(served: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = served
    admin = basic(ADMIN)
    r = httpx.post(f"{base}/api/instances", content=part10(study_uid=str(generate_uid())), headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            login(page, base, ADMIN)
            page.goto(f"{base}/ui/overview")
            assert "No backup has succeeded" in (page.text_content("body") or "")
            page.click("#backup-run button[type=submit]")
            page.wait_for_function(
                "() => /^(done|failed|cancelled)/.test(document.querySelector('#backup-run .job').textContent)",
                timeout=60000,
            )
            assert (page.locator("#backup-run .job").text_content() or "").startswith("done")
            page.reload()
            assert "backup of 1 instance(s)" in (page.locator("#last-backup").text_content() or "")
            assert errors == []
        finally:
            browser.close()
    backup = srv.data_dir.parent / "backup"
    assert (backup / "index.sqlite3").exists() and len(list((backup / "storage").rglob("*.dcm"))) == 1
