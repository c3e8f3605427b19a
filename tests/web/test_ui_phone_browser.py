"""Every web UI page at phone width (390 px) in headless Chromium (issue 12 item 21).

No page may scroll sideways; the navigation, the buttons and the form fields sit on screen (a wide
table scrolls inside its own box). Screenshots go to MINIPACS_TEST_UI_SCREENSHOTS when it is set,
else to the test's tmp folder. The viewer answers touch: a swipe goes to the next image, a pinch zooms.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
from pydicom.uid import generate_uid

from tests.peers import ServerProcess, missing_peer
from tests.web.test_ui_browser import (
    ADMIN,
    CHROMIUM,
    CHROMIUM_ARGS,
    SHOTS,
    basic,
    gradient_ct,
    login,
    server,  # noqa: F401  (the fixture)
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]
WIDTH = 390

#: what lies outside the viewport: the page's own sideways overflow, and every visible nav link, button,
#: input and select whose box crosses the right edge, unless it is inside a box that scrolls on its own
OFF_SCREEN = """(width) => {
  const out = [];
  const over = document.documentElement.scrollWidth - width;
  if (over > 0) out.push('page scrolls sideways by ' + over + ' px');
  for (const el of document.querySelectorAll('header a, header button, main button, main input, main select, main a')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || el.closest('.scroll, table, [hidden]')) continue;
    if (box.right > width + 1 || box.left < -1) {
      out.push(el.outerHTML.slice(0, 80) + ' at ' + box.left + '-' + box.right);
    }
  }
  return out;
}"""


def check(page: Page, url: str, shots: Path, name: str) -> None:
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
    problems = page.evaluate(OFF_SCREEN, WIDTH)
    assert not problems, f"{name} ({url}): {problems}"


def test_every_page_fits_a_phone(tmp_path: Path, server: tuple[ServerProcess, str]) -> None:
    if not CHROMIUM.exists():
        missing_peer("Chromium (/usr/bin/chromium)", "apt-get install chromium")
    srv, base = server
    study, series = generate_uid(), generate_uid()
    sops = []
    for n in (1, 2, 3):
        path = tmp_path / f"img{n}.dcm"
        gradient_ct(path, study, series, n)
        r = httpx.post(f"{base}/api/instances", content=path.read_bytes(), headers=basic(ADMIN))
        assert r.status_code == 200, r.text
        sops.append(r.json()["results"][0]["SOPInstanceUID"])
    r = httpx.post(
        f"{base}/api/nodes",
        headers=basic(ADMIN),
        json={"ae_title": "A_RATHER_LONG_AE", "host": "very-long-host-name.radiology.example.org", "port": 11112},
    )
    assert r.status_code == 201, r.text
    shots = SHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    instance = f"/ui/studies/{study}/series/{series}/instances/{sops[0]}"
    pages = {
        "studies": "/ui/",
        "studies-empty": "/ui/?description=nothing-matches",
        "patient": "/ui/patient?id=BR1",
        "study": f"/ui/studies/{study}",
        "series": f"/ui/studies/{study}/series/{series}",
        "instance": instance,
        "tags": f"{instance}/tags",
        "viewer": f"/ui/viewer/{study}/{series}",
        "upload": "/ui/upload",
        "worklist": "/ui/worklist",
        "nodes": "/ui/nodes",
        "remote": "/ui/remote",
        "log": "/ui/log",
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                viewport={"width": WIDTH, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            page = context.new_page()
            check(page, f"{base}/ui/login", shots, "login")
            login(page, base, ADMIN)
            for name, path in pages.items():
                check(page, base + path, shots, name)

            # the viewer on a touch screen: a swipe left is the next image, a pinch zooms
            page.goto(f"{base}/ui/viewer/{study}/{series}")
            page.wait_for_function("() => window.minipacsViewer && !window.minipacsViewer.state.loading")
            assert page.evaluate("window.minipacsViewer.state.index") == 0
            box = page.locator("#viewport").bounding_box()
            assert box is not None
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.evaluate(SWIPE, [x + 100, x - 100, y])
            page.wait_for_function("() => window.minipacsViewer.state.index === 1")
            page.evaluate(PINCH, [x, y, 20, 80])
            assert page.evaluate("window.minipacsViewer.state.zoom") > 2.5
        finally:
            browser.close()


#: touches dispatched as the browser does for a finger (Chromium's Touch/TouchEvent constructors)
SWIPE = """([x0, x1, y]) => {
  const el = document.getElementById('viewport');
  const t = (x) => new Touch({identifier: 1, target: el, clientX: x, clientY: y});
  const send = (type, now, changed) => el.dispatchEvent(
    new TouchEvent(type, {touches: now, changedTouches: changed, cancelable: true, bubbles: true}));
  send('touchstart', [t(x0)], [t(x0)]);
  send('touchmove', [t(x1)], [t(x1)]);
  send('touchend', [], [t(x1)]);
}"""
PINCH = """([x, y, d0, d1]) => {
  const el = document.getElementById('viewport');
  const pair = (d) => [new Touch({identifier: 1, target: el, clientX: x - d, clientY: y}),
                       new Touch({identifier: 2, target: el, clientX: x + d, clientY: y})];
  const send = (type, now, changed) => el.dispatchEvent(
    new TouchEvent(type, {touches: now, changedTouches: changed, cancelable: true, bubbles: true}));
  send('touchstart', pair(d0), pair(d0));
  send('touchmove', pair(d1), pair(d1));
  send('touchend', [], pair(d1));
}"""
