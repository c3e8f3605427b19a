"""HTML building blocks for the web UI: escaping, the page frame, tables and formatting.

Everything that comes from the archive passes through :func:`e` (``html.escape``
with quotes) before it reaches a page; the only unescaped strings are the
literals written here and in ``ui.py``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from minipacs.core.users import ROLE_PERMISSIONS, Role

#: navigation bar: (path, label, permission needed to see it)
NAV: Final[tuple[tuple[str, str, str], ...]] = (
    ("/ui/", "Studies", "read"),
    ("/ui/upload", "Upload", "write"),
    ("/ui/worklist", "Worklist", "read"),
    ("/ui/nodes", "Nodes", "read"),
    ("/ui/remote", "Query/Retrieve", "read"),
    ("/ui/log", "Association log", "read"),
    ("/ohif/", "OHIF viewer", "read"),
)


def e(value: object) -> str:
    """Text -> HTML-safe text (also safe inside double- or single-quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def u(value: object) -> str:
    """A path segment, percent-encoded and then HTML-escaped."""
    return e(quote(str(value), safe=""))


def qs(params: Mapping[str, object]) -> str:
    """A query string (HTML-escaped for an href) from the non-empty parameters."""
    return e(urlencode({k: str(v) for k, v in params.items() if v not in (None, "")}))


def json_script(element_id: str, data: object) -> str:
    """Data for the page's script, in a <script type="application/json"> that no value can close."""
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{e(element_id)}">{text}</script>'


def role_of(request: Request) -> Role:
    """The role AuthMiddleware proved; with no users configured (loopback only) everyone is admin."""
    raw = request.scope.get("state", {}).get("role")
    return Role(raw) if raw else Role.ADMIN


def may(request: Request, permission: str) -> bool:
    return permission in ROLE_PERMISSIONS[role_of(request)]


def page(request: Request, title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """The frame every page shares: head, navigation, the role, the body."""
    role = role_of(request)
    nav = "".join(f'<a href="{path}">{label}</a>' for path, label, needed in NAV if may(request, needed))
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · minipacs</title>
<link rel="stylesheet" href="/ui/static/app.css">
</head>
<body data-role="{e(role.value)}" data-can-write="{'1' if may(request, 'write') else ''}"
 data-can-admin="{'1' if may(request, 'admin') else ''}">
<header><span class="brand">minipacs</span><nav>{nav}</nav><span class="role">role: {e(role.value)}</span></header>
<main>
<h1>{e(title)}</h1>
<div id="message" class="message" hidden></div>
{body}
</main>
<script src="/ui/static/app.js"></script>
</body></html>"""
    return HTMLResponse(text, status_code=status_code)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str, css: str = "") -> str:
    """A table; headers are escaped here, cells must already be HTML (built with e())."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f'<table class="{e(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def tag_list(pairs: Iterable[tuple[str, object]]) -> str:
    """Main tags as a definition list."""
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(text(v))}</dd>" for k, v in pairs)
    return f'<dl class="tags">{items}</dl>'


def text(value: object) -> str:
    """A value from a search match as display text."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def date(value: object) -> str:
    """YYYYMMDD -> YYYY-MM-DD (anything else unchanged)."""
    raw = text(value)
    if len(raw) == 8 and raw.isdigit():
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return raw


def person(value: object) -> str:
    """A PN value for people: components joined by spaces, the '^' gone."""
    return text(value).replace("^", " ").strip()


def _json_value(element: Mapping[str, Any]) -> str:
    if "BulkDataURI" in element:
        return "(bulk data)"
    if "InlineBinary" in element:
        return f"(binary, {len(element['InlineBinary']) * 3 // 4} bytes)"
    values = element.get("Value", [])
    shown = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in values]
    joined = "\\".join(shown)
    return joined if len(joined) <= 500 else joined[:500] + "…"


def json_tag_rows(data: Mapping[str, Any], keyword_of: Any, depth: int = 0) -> list[list[str]]:
    """PS3.18 Annex F JSON -> rows of (tag, keyword, VR, value), sequences nested with indent."""
    rows: list[list[str]] = []
    for tag in sorted(data):
        element = data[tag]
        vr = str(element.get("vr", ""))
        indent = f'<span class="indent">{"&gt; " * depth}</span>' if depth else ""
        label = f"({tag[:4]},{tag[4:]})" if len(tag) == 8 else tag
        if vr == "SQ":
            items = element.get("Value", [])
            rows.append([indent + e(label), e(keyword_of(tag)), "SQ", e(f"{len(items)} item(s)")])
            for item in items:
                if isinstance(item, dict):
                    rows.extend(json_tag_rows(item, keyword_of, depth + 1))
            continue
        rows.append([indent + e(label), e(keyword_of(tag)), e(vr), e(_json_value(element))])
    return rows


__all__ = ["NAV", "date", "e", "json_script", "json_tag_rows", "may", "page", "person", "qs", "role_of", "table",
           "tag_list", "text", "u"]
