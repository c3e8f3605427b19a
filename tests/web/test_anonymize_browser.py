"""The study page's Anonymize form in a real headless Chromium against `minipacs serve`: ticking an
option and pressing the button stores a new study and opens its page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from minipacs.cli.main import main
from minipacs.core.users import hash_password
from tests.core.test_anonymize import conformant_ct
from tests.peers import free_port, missing_peer, start_server, wait_for_port
from tests.web.test_ui_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, login

pytestmark = [pytest.mark.interop, pytest.mark.slow]
STUDY = "1.2.826.0.1.3680043.10.2.1"


def test_the_anonymize_button(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    source = tmp_path / "src"
    source.mkdir()
    conformant_ct(STUDY, STUDY + ".1", STUDY + ".1.1").save_as(source / "1.dcm", enforce_file_format=True)
    assert main(["import", "--data", str(tmp_path / "data"), "--no-progress", str(source)]) == 0
    capsys.readouterr()
    config = tmp_path / "minipacs.toml"
    config.write_text(
        f'[[users]]\nname = "{ADMIN[0]}"\npassword_hash = "{hash_password(ADMIN[1], n=2**4)}"\nrole = "admin"\n'
    )
    port = free_port()
    srv = start_server(
        tmp_path, "--config", str(config), env={"MINIPACS_HTTP_PORT": str(port), "MINIPACS_HTTP_HOST": "127.0.0.1"}
    )
    try:
        wait_for_port("127.0.0.1", port, proc=srv.proc)
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_context().new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                login(page, base, ADMIN)
                page.goto(f"{base}/ui/studies/{STUDY}")
                page.click("details.anonymize summary")
                page.check("form.anonymize input[value=retain-patient-characteristics]")
                page.click("form.anonymize button[type=submit]")
                page.wait_for_url(re.compile(r"/ui/studies/2\.25\.\d+$"), timeout=60_000)
                assert "ANON" in page.content() and "PID-7781" not in page.content()
                assert not errors, errors
            finally:
                browser.close()
    finally:
        assert srv.stop() == 0, srv.log_text()
