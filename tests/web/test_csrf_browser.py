"""Issue 8 item 8 in a real headless Chromium: a page of another origin cannot change the archive.

The attack of the issue: the administrator is logged in (a session cookie, or Basic
credentials the browser cached); a page on another origin -- here a second loopback
server on another port, which Chromium counts as the same *site*, so even a
SameSite=Strict cookie goes along -- posts a form with ``enctype="text/plain"`` whose
body is JSON registering a node with get/move rights, and tries ``fetch`` calls that
delete a study, upload a file and log in. Nothing of it may change the archive; the
UI itself keeps working (tests/web/test_ui_browser.py).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, sync_playwright
from pydicom.uid import generate_uid

from tests.peers import ServerProcess, free_port, missing_peer
from tests.web.test_ui_browser import (  # noqa: F401
    ADMIN,
    CHROMIUM,
    CHROMIUM_ARGS,
    basic,
    gradient_ct,
    login,
    server,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

FORM_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" action="{base}/api/nodes" enctype="text/plain">
<input name='{{"ae_title":"EVIL","host":"10.6.6.6","port":104,"description":"' value='"}}'>
</form>
<script>document.getElementById("f").submit();</script>
</body></html>"""

FETCH_PAGE = """<!doctype html><html><body><script>
const base = "{base}";
async function attempt(what, call) {{
  try {{ const r = await call(); return what + ":" + r.status; }} catch (e) {{ return what + ":blocked"; }}
}}
(async function () {{
  const node = JSON.stringify({{ae_title: "EVIL2", host: "10.6.6.6", port: 104}});
  const form = new FormData();
  form.append("file", new Blob(["not dicom"], {{type: "application/dicom"}}), "x.dcm");
  const results = [
    await attempt("nodes", () => fetch(base + "/api/nodes", {{method: "POST", mode: "no-cors",
        credentials: "include", headers: {{"Content-Type": "text/plain"}}, body: node}})),
    await attempt("delete", () => fetch(base + "/api/studies/{study}", {{method: "DELETE",
        credentials: "include"}})),
    await attempt("upload", () => fetch(base + "/api/instances", {{method: "POST", mode: "no-cors",
        credentials: "include", body: form}})),
    await attempt("login", () => fetch(base + "/ui/login", {{method: "POST", mode: "no-cors",
        credentials: "include", headers: {{"Content-Type": "application/x-www-form-urlencoded"}},
        body: "name={admin}&password=guess"}})),
  ];
  document.title = "done " + results.join(" ");
}})();
</script></body></html>"""


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on another loopback port serving the files of a folder."""
    folder = tmp_path / "attacker"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


def attack(context: BrowserContext, site: str, folder: Path, base: str, study: str) -> str:
    (folder / "form.html").write_text(FORM_PAGE.format(base=base))
    (folder / "fetch.html").write_text(FETCH_PAGE.format(base=base, study=study, admin=ADMIN[0]))
    page = context.new_page()
    with page.expect_navigation(url=f"{base}/api/nodes"):
        page.goto(f"{site}/form.html")
    assert '"cross_site_request"' in page.content(), page.content()  # what the forged form got back
    page.goto(f"{site}/fetch.html")
    page.wait_for_function("() => document.title.startsWith('done')", timeout=20000)
    return page.title()


def assert_unchanged(base: str, study: str) -> None:
    nodes = httpx.get(f"{base}/api/nodes", headers=basic(ADMIN)).json()
    assert [n["ae_title"] for n in nodes] == [], nodes
    assert httpx.get(f"{base}/api/studies/{study}", headers=basic(ADMIN)).status_code == 200
    assert len(httpx.get(f"{base}/api/instances", headers=basic(ADMIN)).json()) == 1


def launch(p: object) -> Browser:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    browser: Browser = p.chromium.launch(
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,  # type: ignore[attr-defined]
        headless=True,
    )
    return browser


def stored_study(tmp_path: Path, base: str) -> str:
    study = generate_uid()
    path = tmp_path / "one.dcm"
    gradient_ct(path, study, generate_uid(), 1)
    r = httpx.post(f"{base}/api/instances", content=path.read_bytes(), headers=basic(ADMIN))
    assert r.status_code == 200, r.text
    return study


def test_another_origin_cannot_act_with_the_admins_session(
    tmp_path: Path, server: tuple[ServerProcess, str], attacker: tuple[str, Path]
) -> None:
    srv, base = server
    site, folder = attacker
    study = stored_study(tmp_path, base)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context()
            page = context.new_page()
            login(page, base, ADMIN)
            assert any(
                c["name"] == "minipacs_session" and c["sameSite"] == "Strict" and c["httpOnly"]
                for c in context.cookies()
            )
            title = attack(context, site, folder, base, study)
            # the no-cors answers are opaque (status 0); the DELETE never passed its preflight
            assert "delete:blocked" in title, title
            # and the session still works on our own pages: the admin was not logged out or locked out
            page.goto(f"{base}/ui/nodes")
            assert page.locator("body").get_attribute("data-role") == "admin"
        finally:
            browser.close()
    assert_unchanged(base, study)
    log = srv.log_text()
    assert "refused: this request was started by another site (Sec-Fetch-Site: same-site)" in log, log[-3000:]


def test_another_origin_cannot_act_with_cached_basic_credentials(
    tmp_path: Path, server: tuple[ServerProcess, str], attacker: tuple[str, Path]
) -> None:
    """Playwright's http_credentials answer every Basic challenge, as a browser that cached them does."""
    _srv, base = server
    site, folder = attacker
    study = stored_study(tmp_path, base)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(http_credentials={"username": ADMIN[0], "password": ADMIN[1]})
            page = context.new_page()
            page.goto(f"{base}/api/studies")  # the credentials are in use
            assert page.url.endswith("/api/studies") and study in page.content()
            attack(context, site, folder, base, study)
        finally:
            browser.close()
    assert_unchanged(base, study)
