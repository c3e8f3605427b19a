"""`/ohif/`: the OHIF viewer (npm package ``@ohif/app``), served from the folder `minipacs ohif install` filled.

OHIF's published ``dist/`` is built for the site root (``PUBLIC_URL="/"``, webpack public path "/"); the
installer rewrites it (`rebase`) so that its assets, its router and its webpack chunks live under ``/ohif/``.
``app-config.js`` comes from the install folder (written by the installer: the DICOMweb data source is
this server's ``/dicom-web``).
Any other path that is not a file gets index.html (OHIF is a single-page app: /ohif/viewer?..., /ohif/local).
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send

from minipacs.config import Settings
from minipacs.web.byteranges import RangedFileResponse, RangedStaticFiles

PREFIX = "/ohif/"
CONFIG_NAME = "app-config.js"
#: where the built viewer sits inside the install folder (the npm tarball, unpacked)
DIST = Path("package") / "dist"


def install_dir(settings: Settings) -> Path:
    return Path(settings.ohif_dir) if settings.ohif_dir else settings.data_dir / "ohif"


def dist_dir(folder: Path) -> Path | None:
    dist = folder / DIST
    return dist if (dist / "index.html").is_file() else None


WEBPACK_ROOT = '__webpack_require__.p = "/";'
#: a root-relative ``url(/x)`` in a style sheet (OHIF's fonts: ``url(/a34f….woff2)``), not ``//host`` or /ohif/
_CSS_ROOT_URL = re.compile(r"""url\((['"]?)/(?!/|ohif/)""")


def rebase_css(text: str) -> str:
    """A style sheet built for "/" -> its ``url(/…)`` under /ohif/ (else the browser asks the site root: 404)."""
    return _CSS_ROOT_URL.sub(lambda m: f"url({m.group(1)}{PREFIX}", text)


def rebase(dist: Path) -> int:
    """A dist/ built for "/" -> served under /ohif/: index.html's links and every bundle's webpack public path.

    Returns how many files were changed (0 when already done)."""
    changed = 0
    index = dist / "index.html"
    html = index.read_text(encoding="utf-8")
    new = re.sub(r'((?:src|href)=")/(?!/|ohif/)', r"\1" + PREFIX, html)
    new = new.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}"')
    if new != html:
        index.write_text(new, encoding="utf-8")
        changed += 1
    for script in dist.glob("*.js"):
        text = script.read_text(encoding="utf-8", errors="surrogateescape")
        if WEBPACK_ROOT in text:
            script.write_text(
                text.replace(WEBPACK_ROOT, f'__webpack_require__.p = "{PREFIX}";'),
                encoding="utf-8",
                errors="surrogateescape",
            )
            changed += 1
    for sheet in dist.glob("*.css"):
        text = sheet.read_text(encoding="utf-8", errors="surrogateescape")
        new = rebase_css(text)
        if new != text:
            sheet.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


NOT_INSTALLED = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>OHIF viewer not installed</title>
<link rel="stylesheet" href="/ui/static/app.css"></head><body><main>
<h1>The OHIF viewer is not installed</h1>
<p>minipacs serves the OHIF viewer at <code>/ohif/</code> once it is installed (needs <code>npm</code>; about 50 MB
download). Install it with</p><pre>minipacs ohif install</pre>
<p>(or <code>minipacs ohif install --dir FOLDER</code> and set <code>ohif_dir = "FOLDER"</code> in the config),
then reload this page. Looked in: <code>{folder}</code>.</p>
<p><a href="/ui/">Back to the studies</a></p></main></body></html>"""


class OhifApp:
    """ASGI app mounted at /ohif: StaticFiles(html=True) over dist/, our app-config.js, SPA fallback."""

    def __init__(self, settings: Settings) -> None:
        self.folder = install_dir(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dist = dist_dir(self.folder)
        path = scope.get("path", "")
        rel = path[len("/ohif") :].lstrip("/") if path.startswith("/ohif") else path.lstrip("/")
        response: Response
        if dist is None:
            from html import escape

            response = HTMLResponse(NOT_INSTALLED.format(folder=escape(str(self.folder.resolve()))), status_code=404)
        elif rel in ("", "index.html"):
            response = self.index(dist)
        elif rel.endswith(".css") and "/" not in rel and (dist / rel).is_file():
            # an install rebased before style sheets were: their font URLs still point at the site root
            css = rebase_css((dist / rel).read_text(encoding="utf-8", errors="surrogateescape"))
            response = Response(css.encode("utf-8", "surrogateescape"), media_type="text/css")
        elif rel == CONFIG_NAME and (self.folder / CONFIG_NAME).is_file():
            response = RangedFileResponse(
                self.folder / CONFIG_NAME, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
            )
        else:
            static = RangedStaticFiles(directory=dist, html=True)
            try:
                await static(scope, receive, send)
                return
            except HTTPException as exc:
                if exc.status_code != 404 or Request(scope).method not in ("GET", "HEAD"):
                    raise
            response = self.index(dist)
        await response(scope, receive, send)

    @staticmethod
    def index(dist: Path) -> Response:
        return RangedFileResponse(dist / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


__all__ = ["OhifApp", "dist_dir", "install_dir", "rebase"]
