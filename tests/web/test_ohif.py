"""/ohif/ without the viewer installed: a 404 page that says how to install it; `rebase` of a dist/."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from minipacs.config import Settings
from minipacs.web.ohif import OhifApp, rebase


class Client:
    """Synchronous GETs against /ohif served from FOLDER (in-process)."""

    def __init__(self, folder: Path) -> None:
        self.app = Starlette(routes=[Mount("/ohif", app=OhifApp(Settings(ohif_dir=str(folder))))])

    def get(self, url: str) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t") as c:
                return await c.get(url)

        return asyncio.run(go())


def client(folder: Path) -> Client:
    return Client(folder)


def test_not_installed_is_a_404_page_saying_how_to_install(tmp_path: Path) -> None:
    r = client(tmp_path / "none").get("/ohif/")
    assert r.status_code == 404
    assert "minipacs ohif install" in r.text


def test_rebased_dist_is_served_with_our_config_and_an_spa_fallback(tmp_path: Path) -> None:
    dist = tmp_path / "package" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text(
        '<script>window.PUBLIC_URL="/"</script><script src="/app.bundle.1.js"></script>'
        '<link href="//cdn.example/x.css">'
    )
    (dist / "app.bundle.1.js").write_text('__webpack_require__.p = "/";')
    (dist / "app-config.js").write_text("// OHIF's own: a public demo server")
    (tmp_path / "app-config.js").write_text("window.config = {qidoRoot: '/dicom-web'};")
    assert rebase(dist) == 2 and rebase(dist) == 0  # idempotent
    c = client(tmp_path)
    index = c.get("/ohif/")
    assert index.status_code == 200
    assert 'PUBLIC_URL="/ohif/"' in index.text and 'src="/ohif/app.bundle.1.js"' in index.text
    assert 'href="//cdn.example/x.css"' in index.text
    assert c.get("/ohif/app.bundle.1.js").text == '__webpack_require__.p = "/ohif/";'
    assert "/dicom-web" in c.get("/ohif/app-config.js").text
    assert c.get("/ohif/viewer?StudyInstanceUIDs=1.2").text == index.text


def test_style_sheet_fonts_are_under_ohif(tmp_path: Path) -> None:
    """Issue 12 item 24: OHIF's CSS asks for ``url(/a34f….woff2)`` at the site root, a 404; rebased and, for an
    install rebased before, rewritten as it is served."""
    dist = tmp_path / "package" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text('<script>window.PUBLIC_URL="/ohif/"</script>')
    sheet = "@font-face{src:url(/f1.woff2) format('woff2'),url('/f2.woff')}a{background:url(//cdn.x/i.png)}"
    (dist / "app.bundle.css").write_text(sheet)
    want = "@font-face{src:url(/ohif/f1.woff2) format('woff2'),url('/ohif/f2.woff')}a{background:url(//cdn.x/i.png)}"
    served = client(tmp_path).get("/ohif/app.bundle.css")  # not yet rebased: rewritten on the way out
    assert served.status_code == 200 and served.text == want and served.headers["content-type"].startswith("text/css")
    assert rebase(dist) == 1 and rebase(dist) == 0
    assert (dist / "app.bundle.css").read_text() == want
    assert client(tmp_path).get("/ohif/app.bundle.css").text == want
