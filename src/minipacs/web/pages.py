"""The web UI's templates: Jinja2 with autoescaping, ``url_for`` links, the shared page frame.

Every ``{{ value }}`` in ``templates/`` is HTML-escaped by Jinja2 unless it is
``Markup`` (only ``tojson`` output is), so text from the archive cannot become
markup however a template is written. Links come from ``url_for``, which
percent-encodes each path parameter: a DICOM value such as a Patient ID may hold
``/``, ``&``, ``?``, ``#`` or ``%`` and still round-trips (RFC 3986 §2.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from minipacs.core.users import ROLE_PERMISSIONS, Role
from minipacs.web.auth import session_of

TEMPLATE_DIR: Final = Path(__file__).with_name("templates")

#: navigation bar: (route name, path parameters, label, permission needed to see it)
NAV: Final[tuple[tuple[str, Mapping[str, str], str, str], ...]] = (
    ("ui:overview", {}, "Overview", "read"),
    ("ui:studies", {}, "Studies", "read"),
    ("ui:upload", {}, "Upload", "write"),
    ("ui:worklist", {}, "Worklist", "read"),
    ("ui:nodes", {}, "Nodes", "read"),
    ("ui:remote", {}, "Query/Retrieve", "write"),  # C-FIND/C-MOVE/C-GET of a node: write (rest_nodes.py)
    ("ui:jobs", {}, "Jobs", "read"),
    ("ui:rules", {}, "Rules", "admin"),
    ("ui:storage", {}, "Storage", "read"),
    ("ui:retention", {}, "Retention", "admin"),
    ("ui:log", {}, "Association log", "read"),
    ("ui:diagnostics", {}, "Diagnostics", "admin"),
    ("ui:audit", {}, "Audit", "admin"),
    ("ohif", {"path": "/"}, "OHIF viewer", "read"),
)


def role_of(request: Request) -> Role:
    """The role the route's access check proved; with no users configured (loopback only) everyone is admin."""
    raw = request.scope.get("state", {}).get("role")
    return Role(raw) if raw else Role.ADMIN


def may(request: Request, permission: str) -> bool:
    return permission in ROLE_PERMISSIONS[role_of(request)]


def path_for(request: Request, name: str, query: Mapping[str, object] | None = None, **params: object) -> str:
    """The root-relative URL of the route ``name``, each path parameter percent-encoded (a mount's ``path``
    keeps its slashes); ``query``: a query string from the parameters that are not empty."""
    encoded = {key: quote(str(value), safe="/" if key == "path" else "") for key, value in params.items()}
    url = str(request.app.url_path_for(name, **encoded))
    wanted = {k: str(v) for k, v in (query or {}).items() if v not in (None, "")}
    return f"{url}?{urlencode(wanted)}" if wanted else url


@jinja2.pass_context
def _url_for(
    context: Mapping[str, Any], name: str, /, query: Mapping[str, object] | None = None, **params: object
) -> str:
    return path_for(context["request"], name, query, **params)


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


#: Unicode bidirectional formatting characters (UAX #9 §2: embeddings, overrides, isolates, marks)
BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def isolate(value: object) -> str:
    """Text for a place where markup cannot isolate it (the ``<title>``), as one bidi isolate.

    A value ending in an open U+202E (RIGHT-TO-LEFT OVERRIDE) reversed all that followed it on its
    line: the tab read ``sicapinim · ...``. Its own bidi controls go (a stray U+2069 would close our
    isolate early) and the rest is wrapped in FIRST STRONG ISOLATE ... POP DIRECTIONAL ISOLATE
    (UAX #9 §2.7), so a Hebrew or Arabic name still reads right to left, alone. In the page body
    a value is isolated by its element: a table cell, or ``<bdi>`` inline (app.css)."""
    cleaned = "".join(c for c in text(value) if c not in BIDI_CONTROLS)
    return f"\u2068{cleaned}\u2069" if cleaned else ""


def person(value: object) -> str:
    """A PN value for people: components joined by spaces, the '^' gone."""
    return text(value).replace("^", " ").strip()


class TagRow(NamedTuple):
    depth: int  # sequence nesting: 0 at the top
    tag: str  # (gggg,eeee)
    keyword: str
    vr: str
    value: str


def _json_value(element: Mapping[str, Any]) -> str:
    if "BulkDataURI" in element:
        return "(bulk data)"
    if "InlineBinary" in element:
        return f"(binary, {len(element['InlineBinary']) * 3 // 4} bytes)"
    values = element.get("Value", [])
    shown = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in values]
    joined = "\\".join(shown)
    return joined if len(joined) <= 500 else joined[:500] + "…"


def json_tag_rows(data: Mapping[str, Any], keyword_of: Any, depth: int = 0) -> list[TagRow]:
    """PS3.18 Annex F JSON -> rows of (depth, tag, keyword, VR, value), sequence items after their sequence."""
    rows: list[TagRow] = []
    for tag in sorted(data):
        element = data[tag]
        vr = str(element.get("vr", ""))
        label = f"({tag[:4]},{tag[4:]})" if len(tag) == 8 else tag
        if vr == "SQ":
            items = element.get("Value", [])
            rows.append(TagRow(depth, label, keyword_of(tag), "SQ", f"{len(items)} item(s)"))
            for item in items:
                if isinstance(item, dict):
                    rows.extend(json_tag_rows(item, keyword_of, depth + 1))
            continue
        rows.append(TagRow(depth, label, keyword_of(tag), vr, _json_value(element)))
    return rows


def size(count: int | float | None) -> str:
    """A size in bytes as a person reads it: 980 B, 9.5 KiB, 4.6 MiB, 1.2 GiB, 3.0 TiB (binary units)."""
    value = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def plural(count: int, one: str, many: str) -> str:
    """'1 study', '2 studies', '0 studies'."""
    return f"{count:,} {one if count == 1 else many}"


def _frame(request: Request) -> dict[str, Any]:
    """What base.html needs on every page: the role, and which navigation links it may see."""
    nav = [
        (path_for(request, name, None, **params), label) for name, params, label, needed in NAV if may(request, needed)
    ]
    session = session_of(request.scope)
    return {
        "role": role_of(request).value,
        "can_write": may(request, "write"),
        "can_admin": may(request, "admin"),
        "nav": nav,
        "user": request.scope.get("state", {}).get("user", ""),
        "logged_in": session is not None,
        "csrf_token": session.csrf if session is not None else "",
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,  # every template is HTML
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error, not an empty string
        finalize=lambda value: "" if value is None else value,  # an absent DICOM value shows as nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.globals["url_for"] = _url_for
    env.filters.update(date=date, isolate=isolate, person=person, text=text, size=size, plural=plural)
    return env


templates: Final = Jinja2Templates(env=_environment(), context_processors=[_frame])


def render(request: Request, name: str, title: str, status_code: int = 200, **context: Any) -> Response:
    """The page ``templates/<name>`` with its ``title`` in the shared frame (base.html)."""
    return templates.TemplateResponse(request, name, {"title": title, **context}, status_code=status_code)


__all__ = [
    "NAV",
    "TagRow",
    "BIDI_CONTROLS",
    "date",
    "isolate",
    "json_tag_rows",
    "may",
    "path_for",
    "person",
    "render",
    "role_of",
    "templates",
    "text",
]
