"""Query/Retrieve and node editing in a real headless Chromium against `minipacs serve`.

Two DCMTK dcmqrscp peers hold the same study: GOODQR knows us as a C-MOVE
destination, BADQR does not. Through the pages: search GOODQR, retrieve the
study by C-MOVE and a series by C-GET with progress and a summary, find the study
in our list; retrieve from BADQR and read why it failed; edit a node's port;
a viewer gets no retrieve controls and the server's 403 sentence.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, sync_playwright
from pydicom.uid import generate_uid

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, free_port, missing_peer, run, wait_for_port
from tests.web.test_ui_browser import (  # noqa: F401
    ADMIN,
    CHROMIUM,
    CHROMIUM_ARGS,
    SHOTS,
    VIEWER,
    basic,
    login,
    server,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

STUDY_DESCRIPTION = "REMOTE CT STUDY"


def start_dcmqrscp(folder: Path, files: list[Path], ae_title: str, hosts: str) -> tuple[subprocess.Popen[bytes], int]:
    """A dcmqrscp holding ``files``; ``hosts`` is its HostTable (the C-MOVE destinations it knows)."""
    db = folder / "db"
    db.mkdir(parents=True)
    res = run([dcmtk("dcmqridx"), str(db), *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr
    port = free_port()
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\n{hosts}HostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{ae_title} {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    proc = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(config), "--disable-host-lookup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    return proc, port


@pytest.fixture
def peers(tmp_path: Path, server: tuple[ServerProcess, str]) -> Iterator[dict[str, object]]:
    """The study's files, and GOODQR / BADQR registered with our server (ids in the dict)."""
    srv, base = server
    study, series = str(generate_uid()), [str(generate_uid()), str(generate_uid())]
    files = [
        write_ct(
            tmp_path / "src" / f"{n}.dcm",
            study_uid=study,
            series_uid=series[n % 2],
            patient_name="Remote^Rita",
            patient_id="RR1",
            InstanceNumber=n + 1,
            StudyDescription=STUDY_DESCRIPTION,
            SeriesNumber=n % 2 + 1,
        )
        for n in range(4)
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        good, good_port = start_dcmqrscp(
            tmp_path / "good", files, "GOODQR", f"us = ({srv.ae_title}, 127.0.0.1, {srv.port})\n"
        )
        procs.append(good)
        bad, bad_port = start_dcmqrscp(tmp_path / "bad", files, "BADQR", "")
        procs.append(bad)
        ids = {}
        for title, port in (("GOODQR", good_port), ("BADQR", bad_port)):
            r = httpx.post(
                f"{base}/api/nodes",
                headers=basic(ADMIN),
                json={"ae_title": title, "host": "127.0.0.1", "port": port, "description": "dcmqrscp"},
            )
            assert r.status_code == 201, r.text
            ids[title] = r.json()["id"]
        yield {"study": study, "series": series, "GOODQR": ids["GOODQR"], "BADQR": ids["BADQR"]}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


# records (summary text, progress value) at every change of the summary
WATCH_PROGRESS = """() => {
    window.progressSeen = [];
    const summary = document.getElementById('retrieve-summary');
    const bar = document.getElementById('retrieve-progress');
    new MutationObserver(() => window.progressSeen.push([summary.textContent, bar.value]))
        .observe(summary, {childList: true, characterData: true, subtree: true});
}"""


def search(page: Page, node_id: object, level: str = "study", **fields: str) -> None:
    page.select_option("#remote-query select[name=node]", str(node_id))
    page.select_option("#remote-query select[name=level]", level)
    page.evaluate("document.getElementById('remote-status').textContent = ''")
    for name, value in fields.items():
        page.fill(f"#remote-query input[name={name}]", value)
    page.click("#remote-query button[type=submit]")
    page.wait_for_function(
        "() => / on /.test(document.getElementById('remote-status').textContent) || "
        "!document.getElementById('message').hidden",
        timeout=30000,
    )


def retrieve(page: Page, method: str) -> str:
    page.select_option("#retrieve select[name=method]", method)
    page.click("#retrieve-button")
    page.wait_for_function(
        "() => /^(Retrieved|Retrieve failed|Not retrieved)/.test("
        "document.getElementById('retrieve-summary').textContent)",
        timeout=60000,
    )
    return page.locator("#retrieve-summary").inner_text()


def test_browser_query_retrieve_edit_and_roles(server: tuple[ServerProcess, str], peers: dict[str, object]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    _srv, base = server
    study = str(peers["study"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            page = context.new_page()
            login(page, base, ADMIN)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # search GOODQR for the patient by part of the name: one study, shown in words
            page.goto(f"{base}/ui/remote")
            search(page, peers["GOODQR"], name="Rita")
            rows = page.locator("#remote-results tbody tr")
            assert rows.count() == 1, page.content()
            assert "Remote Rita" in rows.first.inner_text() and STUDY_DESCRIPTION in rows.first.inner_text()
            assert page.locator("#retrieve-button").is_disabled()
            search(page, peers["GOODQR"], name="", modality="CT", **{"from": "2024-01-01", "to": "2024-12-31"})
            assert rows.count() == 1 and page.locator("#message").is_hidden()
            search(page, peers["GOODQR"], name="Nobody", modality="")
            assert page.locator("#remote-results").is_hidden()
            assert page.locator("#remote-status").inner_text().startswith("0 ")

            # retrieve the study by C-MOVE: a progress bar, then the counts, then it is ours
            search(page, peers["GOODQR"], name="", pid="RR1")
            page.check("#remote-results tbody input.pick")
            page.evaluate(WATCH_PROGRESS)
            answered: list[str] = []

            def first_poll_mid_way(route: Route) -> None:  # a 4-instance move is over before the first poll
                if answered:
                    route.continue_()
                    return
                answered.append(route.request.url)
                route.fulfill(
                    json={"id": "x", "state": "running", "total": 4, "done": 1, "failed": 1, "message": "running"}
                )

            page.route("**/api/jobs/*", first_poll_mid_way)
            summary = retrieve(page, "move")
            page.unroute("**/api/jobs/*")
            assert summary.startswith("Retrieved: 4 completed, 0 with warnings, 0 failed"), summary
            assert page.locator("#retrieve-progress").evaluate("el => el.value") == 1
            seen = page.evaluate("window.progressSeen")
            assert ["2 of 4 instance(s)…", 0.5] in seen and seen[-1][1] == 1, seen
            if SHOTS:
                page.screenshot(path=str(SHOTS / "remote-retrieved.png"), full_page=True)
            page.click("a.retrieved")
            page.wait_for_url(f"**/ui/studies/{study}")
            assert "Remote Rita" in page.content()
            page.goto(f"{base}/ui/")
            page.locator("a.study", has_text=STUDY_DESCRIPTION).wait_for()

            # series level: both series listed with their study; one of them by C-GET
            page.goto(f"{base}/ui/remote?node={peers['GOODQR']}")
            assert page.locator("#remote-query select[name=node]").input_value() == str(peers["GOODQR"])
            search(page, peers["GOODQR"], level="series", pid="RR1")
            rows = page.locator("#remote-results tbody tr")
            assert rows.count() == 2
            numbers = [rows.nth(i).locator("td").nth(4).inner_text() for i in range(2)]  # dcmqrscp: no description
            assert sorted(numbers) == ["1", "2"] and STUDY_DESCRIPTION in rows.first.inner_text()
            rows.nth(numbers.index("2")).locator("input.pick").check()
            summary = retrieve(page, "get")
            assert summary.startswith("Retrieved: 2 completed"), summary

            # BADQR does not know us as a C-MOVE destination: the summary says so in words
            page.goto(f"{base}/ui/remote")
            search(page, peers["BADQR"], pid="RR1")
            page.check("#remote-results thead input")
            summary = retrieve(page, "move")
            assert summary.startswith("Retrieve failed: 0 completed"), summary
            assert "Move Destination unknown" in summary and "must have us registered as 'MINIPACS'" in summary
            assert page.locator("#retrieve-summary.failed").count() == 1
            if SHOTS:
                page.screenshot(path=str(SHOTS / "remote-failed.png"), full_page=True)

            # a role taken away while the page is open: the retrieve button shows the server's 403 sentence
            def as_viewer(route: Route) -> None:
                route.continue_(headers={**route.request.headers, **{k.lower(): v for k, v in basic(VIEWER).items()}})

            page.route("**/api/nodes/*/retrieve", as_viewer)
            summary = retrieve(page, "move")
            assert summary.startswith("Not retrieved: vic has the viewer role, which may not do this"), summary
            page.unroute("**/api/nodes/*/retrieve")

            # edit BADQR's port on the Nodes page; REST sees it, duplicate-title warnings stay
            r = httpx.post(
                f"{base}/api/nodes", headers=basic(ADMIN), json={"ae_title": "GOODQR", "host": "127.0.0.2", "port": 104}
            )
            assert r.status_code == 201, r.text
            page.goto(f"{base}/ui/nodes")
            assert "is used by 2 nodes" in page.locator("ul.warnings").inner_text()
            assert page.locator("#edit-node-section").is_hidden()
            page.click(f"button.edit-node[data-node='{peers['BADQR']}']")
            assert page.locator("#edit-node input[name=ae_title]").input_value() == "BADQR"
            if SHOTS:
                page.screenshot(path=str(SHOTS / "nodes-edit.png"), full_page=True)
            page.fill("#edit-node input[name=port]", "11999")
            page.fill("#edit-node input[name=description]", "moved to 11999")
            with page.expect_navigation():
                page.click("#edit-node button[type=submit]")
            assert "moved to 11999" in page.locator("table.nodes").inner_text()
            assert "is used by 2 nodes" in page.locator("ul.warnings").inner_text()
            nodes = httpx.get(f"{base}/api/nodes", headers=basic(ADMIN)).json()
            edited = next(n for n in nodes if n["id"] == peers["BADQR"])
            assert (edited["ae_title"], edited["port"], edited["description"]) == ("BADQR", 11999, "moved to 11999")
            # a bad edit is refused with the server's sentence, and nothing changes
            page.click(f"button.edit-node[data-node='{peers['BADQR']}']")
            page.evaluate("document.querySelector('#edit-node input[name=ae_title]').removeAttribute('maxlength')")
            page.fill("#edit-node input[name=ae_title]", "THIS TITLE IS FAR TOO LONG")
            page.click("#edit-node button[type=submit]")
            page.wait_for_function("() => !document.getElementById('message').hidden")
            assert "Not saved: " in page.locator("#message").inner_text()
            assert "16 characters" in page.locator("#message").inner_text()
            assert not errors, errors
            context.close()

            # a viewer: the page says why there is no search form and no retrieve controls; the server answers 403
            context = browser.new_context()
            page = context.new_page()
            login(page, base, VIEWER)
            page.goto(f"{base}/ui/remote")
            assert page.locator("#retrieve-button").count() == 0 and page.locator("#remote-query").count() == 0
            assert "Your role may not query or retrieve" in page.locator("body").inner_text()
            r = page.request.post(f"{base}/api/nodes/{peers['GOODQR']}/query", data={"level": "study", "keys": {}})
            assert r.status == 403 and "vic has the viewer role, which may not do this" in r.text()
            r = page.request.post(
                f"{base}/api/nodes/{peers['GOODQR']}/retrieve", data={"level": "study", "uids": [study]}
            )
            assert r.status == 403
            page.goto(f"{base}/ui/nodes")
            assert page.locator("button.edit-node").count() == 0 and page.locator("#edit-node").count() == 0
            assert page.locator("button.echo").count() == 0 and page.locator("a.query").count() == 0
            context.close()
        finally:
            browser.close()
