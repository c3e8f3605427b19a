"""Hostile DICOM values in every page of the UI, in a real headless Chromium (docs/HOSTILE_INPUT.md, web UI).

Any modality on the network controls a patient name, a study or series description, an institution,
its calling AE title. Instances holding markup, script, template syntax, bidi overrides and control
characters are stored over DICOM (pynetdicom, with a hostile calling AE title) and over HTTP; then every
page, and the lists app.js builds (the Query/Retrieve results, the jobs), is opened with the page's CSP
turned off (``bypass_csp``), so that escaping alone must keep the payloads text: no payload may run
(``window.__pwned``, a dialog), add an element, or fail to show as the literal text it is.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.dicomgen import CT_IMAGE_STORAGE, make_ct
from tests.peers import ServerProcess, free_port, start_server, wait_for_port
from tests.web.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: Each payload marks its own success in window.__pwned; all of them must stay text.
PAYLOADS = {
    "PatientName": "<script>window.__pwned='PatientName'</script>",
    "StudyDescription": '"><img src=x onerror="window.__pwned=\'StudyDescription\'">',
    "SeriesDescription": "'><svg onload=window.__pwned='SeriesDescription'>",
    "InstitutionName": "</textarea></script><img src=x onerror=window.__pwned=1>",
    "ReferringPhysicianName": "{{7*7}}${7*7}{% raw %}#{7*7}",
    "AccessionNumber": "javascript:window.__pwned=1",
    "StationName": "\u202eRIGHT\u202c",
    "ProtocolName": "ctl\x01\x1b[31m\x7f",
}
#: A hostile calling AE title (16 characters at most, PS3.5 6.2 AE)
HOSTILE_AE = "<svg onload=x()>"

# Record what a payload could do, before any page script runs
WATCH = """
window.__pwned = undefined;
window.__dialogs = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = function (text) { window.__dialogs.push(String(text)); return false; };
}
"""
# Elements a payload would add: anything with an inline handler, an <svg> or an <img src=x>, a script
# that is not ours.
INJECTED = """() => {
  const found = [];
  for (const el of document.querySelectorAll("*")) {
    for (const attr of el.getAttributeNames()) if (attr.startsWith("on")) found.push(el.outerHTML.slice(0, 120));
  }
  const show = e => found.push(e.outerHTML.slice(0, 120));
  document.querySelectorAll("svg, img[src='x'], iframe, object, embed").forEach(show);
  document.querySelectorAll("script").forEach(s => {
    if (!(s.src && s.src.endsWith("/ui/static/app.js")) && s.type !== "application/json") show(s);
  });
  document.querySelectorAll("a[href]").forEach(a => {
    if (!/^https?:$/.test(new URL(a.href, location.href).protocol)) found.push(a.outerHTML.slice(0, 120));
  });
  return found;
}"""


def hostile_ct(study: str, series: str, sop: str, patient_id: str) -> Any:
    with pydicom_config.disable_value_validation():
        ds = make_ct(study, series, sop, patient_id=patient_id, patient_name=PAYLOADS["PatientName"])
        ds.SpecificCharacterSet = "ISO_IR 192"
        for keyword, value in PAYLOADS.items():
            if keyword != "PatientName":
                setattr(ds, keyword, value)
    return ds


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    http_port = free_port()
    srv = start_server(
        tmp_path,
        env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_FSYNC": "false", "MINIPACS_HTTP_HOST": "127.0.0.1"},
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        yield srv, f"http://127.0.0.1:{http_port}"
    finally:
        srv.stop()


def store_hostile(srv: ServerProcess, base: str) -> dict[str, str]:
    """One study over DICOM from a hostile AE title, one over HTTP; both full of payloads."""
    ids = {"study": generate_uid(), "series": generate_uid(), "sop": generate_uid(), "pid": "PID<b>\"'&"}
    ae = AE(ae_title=HOSTILE_AE)
    ae.add_requested_context(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(hostile_ct(ids["study"], ids["series"], ids["sop"], ids["pid"]))
        assert status.Status == 0, status
    finally:
        assoc.release()
    out = io.BytesIO()
    hostile_ct(generate_uid(), generate_uid(), generate_uid(), "{{7*7}}").save_as(out, enforce_file_format=True)
    r = httpx.post(f"{base}/api/instances", content=out.getvalue(), headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    # very long values without a space (LO is 64 characters; a modality may send more)
    with pydicom_config.disable_value_validation():
        ds = make_ct(generate_uid(), generate_uid(), generate_uid(), patient_id="LONG", patient_name="N" * 600)
        ds.StudyDescription, ds.SeriesDescription, ds.InstitutionName = "D" * 3000, "S" * 3000, "I" * 3000
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    r = httpx.post(f"{base}/api/instances", content=out.getvalue(), headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    ids["long_study"], ids["long_series"] = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    # a worklist entry (HL7 ORM or REST; an HIS controls these values as much as a modality its own)
    sps = {
        "00400001": {"vr": "AE", "Value": ["CT01"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00400002": {"vr": "DA", "Value": ["20240304"]},
        "00400003": {"vr": "TM", "Value": ["1415"]},
        "00400007": {"vr": "LO", "Value": [PAYLOADS["InstitutionName"]]},
    }
    entry = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100020": {"vr": "LO", "Value": [ids["pid"]]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "<script>alert('worklist')</script>"}]},
        "00080050": {"vr": "SH", "Value": ["javascript:x"]},
        "00321060": {"vr": "LO", "Value": [PAYLOADS["SeriesDescription"]]},
        "00400100": {"vr": "SQ", "Value": [sps]},
    }
    r = httpx.post(f"{base}/api/worklist", json=entry)
    assert r.status_code == 201, r.text
    # a node that is the archive itself: its C-FIND answers fill the Query/Retrieve list in app.js
    r = httpx.post(f"{base}/api/nodes", json={"ae_title": srv.ae_title, "host": "127.0.0.1", "port": srv.port})
    assert r.status_code == 201, r.text
    ids["node"] = str(r.json()["id"])
    return ids


def pages(base: str, ids: dict[str, str]) -> list[str]:
    study, series, sop = ids["study"], ids["series"], ids["sop"]
    pid = httpx.QueryParams({"id": ids["pid"]})
    return [
        "/ui/",
        "/ui/overview",
        f"/ui/?{httpx.QueryParams({'name': PAYLOADS['PatientName']})}",
        f"/ui/patient?{pid}",
        f"/ui/studies/{study}",
        f"/ui/studies/{study}/series/{series}",
        f"/ui/studies/{study}/series/{series}/instances/{sop}",
        f"/ui/studies/{study}/series/{series}/instances/{sop}/tags",
        f"/ui/viewer/{study}/{series}",
        "/ui/log",
        "/ui/jobs",
        "/ui/storage",
        "/ui/retention",
        "/ui/diagnostics",
        "/ui/audit",
        "/ui/worklist",
        "/ui/nodes",
        f"/ui/remote?node={ids['node']}",
        "/ui/patient?id=LONG",
        f"/ui/studies/{ids['long_study']}",
        f"/ui/studies/{ids['long_study']}/series/{ids['long_series']}",
        f"/ui/viewer/{ids['long_study']}/{ids['long_series']}",
    ]


def check(page: Page, where: str) -> None:
    assert page.evaluate("window.__pwned") is None, f"{where}: a payload ran"
    assert page.evaluate("window.__dialogs") == [], f"{where}: a payload opened a dialog"
    assert page.evaluate(INJECTED) == [], f"{where}: a payload became markup"
    # a long value wraps: the page never scrolls sideways (it made /ui/ 21,000 pixels wide)
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"{where}: the page is {width[0]} pixels wide in a {width[1]} pixel window"


def test_hostile_values_stay_text_on_every_page(server: tuple[ServerProcess, str]) -> None:
    srv, base = server
    ids = store_hostile(srv, base)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(bypass_csp=True)
            context.add_init_script(WATCH)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            missing = f"/ui/patient?{httpx.QueryParams({'id': PAYLOADS['SeriesDescription']})}"
            for path in [*pages(base, ids), missing]:
                response = page.goto(base + path)
                wanted = 404 if path == missing else 200  # an error page quotes what was asked for
                assert response is not None and response.status == wanted, (path, response and response.status)
                page.wait_for_load_state("networkidle")
                check(page, path)
                if path in (f"/ui/studies/{ids['study']}", f"/ui/patient?{httpx.QueryParams({'id': ids['pid']})}"):
                    text = page.locator("main").inner_text()
                    assert "<script>window.__pwned='PatientName'</script>" in text or path.endswith("series"), path
            # the lists app.js builds: Query/Retrieve (C-FIND of ourselves) at both levels
            for level in ("study", "series"):
                page.goto(f"{base}/ui/remote?node={ids['node']}")
                page.select_option("#remote-query select[name=level]", level)
                page.click("#remote-query button[type=submit]")
                page.wait_for_selector("#remote-results tbody tr")
                check(page, f"remote {level}")
                cells = page.locator("#remote-results").inner_text()
                assert PAYLOADS["StudyDescription"] in cells or PAYLOADS["SeriesDescription"] in cells, cells
            assert errors == [], errors
        finally:
            browser.close()


def test_every_page_sends_a_csp_without_inline_script(server: tuple[ServerProcess, str]) -> None:
    """The second line of defence: no page may run inline script (CSP Level 3 script-src without
    'unsafe-inline'), so a value that ever escaped its escaping would still not run."""
    srv, base = server
    ids = store_hostile(srv, base)
    for path in [*pages(base, ids), "/ui/upload", "/ui/rules"]:
        r = httpx.get(base + path)
        assert r.status_code == 200, path
        policy = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split(";") if d.strip()}
        assert policy["script-src"] == ["'self'"], (path, policy)
        assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"], path
        assert "<script>" not in r.text.replace('<script type="application/json"', ""), path
