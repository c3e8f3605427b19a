"""Security headers on every HTTP answer (an ASGI middleware around the whole app).

- ``Content-Security-Policy`` (CSP Level 3): the UI and API allow scripts, styles and
  images from this origin only and no inline script; OHIF's built bundle needs inline
  script, eval and WebAssembly, so ``/ohif/`` has its own, looser policy. Both forbid
  framing (``frame-ancestors 'none'``, plus ``X-Frame-Options: DENY`` for old browsers).
- ``X-Content-Type-Options: nosniff``: a DICOM file or JSON answer is never run as script.
- ``Referrer-Policy: same-origin``: URLs carry UIDs and Patient IDs; they are not sent to
  other sites (``no-referrer`` would also make Chromium send ``Origin: null`` with our own forms).
- ``Cross-Origin-Resource-Policy: same-origin``: another site cannot embed our images or
  answers with <img> or <script> using the browser's credentials.
- ``Cache-Control: no-store`` on everything but the UI's static files and OHIF's: pages,
  REST and DICOMweb answers carry patient data and stay out of caches (RFC 9111 §5.2.2.5).
  An answer that set its own Cache-Control keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minipacs.core.media import safe_name

#: Longest download name we offer (before the suffix); a Patient ID is at most 64 characters.
DOWNLOAD_NAME_MAX: Final = 64

#: The UI and the API: this origin only, no inline script, no plugins, no framing.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: OHIF (a webpack build): inline bootstrap script, eval, WebAssembly codecs, blob workers.
OHIF_CSP: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
ALWAYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
)
#: Paths whose answers are program files, not patient data: they may be cached.
CACHEABLE: Final = ("/ui/static/", "/ohif/")


def headers_for(path: str) -> dict[str, str]:
    out = dict(ALWAYS)
    out["Content-Security-Policy"] = OHIF_CSP if path == "/ohif" or path.startswith("/ohif/") else CSP
    return out


def attachment(name: str, suffix: str, fallback: str) -> str:
    """``Content-Disposition`` for a download whose name comes from the archive (a Patient ID a modality chose).

    RFC 6266 §4.3: ``filename`` is a quoted ASCII fallback (every other character, ``"`` and ``\\``
    become ``_``), ``filename*`` the name in UTF-8 (RFC 8187 §3.2). Both are one path component
    without control, bidi or path characters (``core/media.safe_name``; a U+202E would show
    ``exe.jpg`` for ``gpj.exe``). The name used to go into the header as it was: a ``"`` ended it
    early and a character outside Latin-1 (a Chinese Patient ID) made every download a 500.
    """
    cleaned = "".join(c if c.isprintable() else "_" for c in safe_name(name, fallback, DOWNLOAD_NAME_MAX)) + suffix
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in cleaned)
    if ascii_name == cleaned:
        return f'attachment; filename="{ascii_name}"'
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        added = headers_for(path)
        cacheable = path.startswith(CACHEABLE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    headers.setdefault(name, value)
                if not cacheable:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["CSP", "DOWNLOAD_NAME_MAX", "OHIF_CSP", "SecurityHeaders", "attachment", "headers_for"]
