"""The audit trail at the HTTP edge: who the request's caller is (core/audit.py ``ActorKind``), the
admin-only ``GET /api/audit`` and the ``/ui/audit`` page."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import Message, Scope, Send

from minipacs.core.audit import MAX_LIMIT, Action, ActorKind, patient_query, row_json
from minipacs.web.errors import HttpError
from minipacs.web.pages import render
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits

#: Rows the UI page shows.
PAGE_SIZE: Final = 200


def actor_of(request: Request) -> tuple[ActorKind, str, str]:
    """(kind, actor, address) of the caller web/auth.py proved: a user, a token, or (no users
    configured) an unnamed HTTP caller."""
    state = request.scope.get("state", {})
    user = str(state.get("user") or "")
    address = request.client.host if request.client else ""
    if not user:
        return ActorKind.HTTP, "", address
    if state.get("actor_kind") in ("user", "token"):  # web/auth.py: from the credentials
        return ActorKind(state["actor_kind"]), str(state.get("actor", "")), address
    return ActorKind.USER, user, address


def record(request: Request, action: Action, *, patient_id: str = "", study_uid: str = "", detail: str = "") -> None:
    """Note that the caller of ``request`` did ``action`` (written off the request path, core/audit.py)."""
    kind, actor, address = actor_of(request)
    request.app.state.ctx.archive.audit.record(
        action,
        actor_kind=kind,
        actor=actor,
        address=address,
        patient_id=patient_id,
        study_uid=study_uid,
        detail=detail,
    )


#: Bytes of a configuration change's response kept for its audit row (the node or rule as it became).
CHANGE_BODY_BYTES: Final = 1500


class ResponseTap:
    """Wraps an ASGI ``send``: passes every message on, and keeps the status and the body's first bytes."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body" and len(self._body) < CHANGE_BODY_BYTES:
            self._body += bytes(message.get("body", b""))[: CHANGE_BODY_BYTES - len(self._body)]
        await self._send(message)

    def body(self) -> str:
        return self._body.decode("utf-8", "replace")


def record_change(scope: Scope, action: str, status: int, body: str) -> None:
    """A configuration change went through (web/routing.py ``Endpoint(audits=...)``): who, from where,
    ``METHOD path -> status`` and what the response said it became (PS3.15 A.5.3.11 Security Alert)."""
    request = Request(scope)
    detail = f"{scope['method']} {scope['path']} -> {status}" + (f": {body}" if body else "")
    kind, actor, address = actor_of(request)
    request.app.state.ctx.archive.audit.record(
        Action(action), actor_kind=kind, actor=actor, address=address, detail=detail
    )


#: QIDO-RS lets a key be spelled as its tag (PS3.18 §8.3.4.1): the tags of core/audit.py PATIENT_KEYS
_PATIENT_TAGS: Final = {"00100020": "PatientID", "00100010": "PatientName", "00100030": "PatientBirthDate"}


def record_query(request: Request, what: str, level: str = "") -> None:
    """A "queried" row when the request's query string looks for a patient, or searches at ``level``
    PATIENT (core/audit.py patient_query)."""
    keys = {_PATIENT_TAGS.get(k.upper(), k): v for k, v in request.query_params.items()}
    asked = patient_query(keys, level=level)
    if asked is not None:
        record(request, Action.QUERIED, patient_id=asked[0], detail=f"{what}: {asked[1]}")


def _time(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        value = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):  # 9999-12-31T23:59-14:00 is past year 9999 in UTC
        raise HttpError(
            400,
            "invalid_time",
            f"{name}={raw[:40]!r} is not an ISO 8601 date or time in years 1 to 9999 UTC (2026-12-06T10:00:00Z)",
        ) from None
    return value


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not ascii_digits(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise HttpError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


#: The text filters of the audit query, and the longest value each can match (core/audit.py cuts to these).
FILTERS: Final = {"patient": 64, "study": 64, "user": 128}


def _filters(request: Request) -> dict[str, str]:
    """The text filters, refused (400) when longer than any stored value or holding a control character
    (a NUL: PostgreSQL refuses it in a query)."""
    out = {}
    for name, longest in FILTERS.items():
        value = request.query_params.get(name, "")
        if len(value) > longest or not value.isprintable():
            raise HttpError(
                400,
                "invalid_parameter",
                f"{name} must be at most {longest} printable characters (no control characters)",
            )
        out[name] = value
    return out


async def _rows(request: Request, default_limit: int) -> list[dict[str, Any]]:
    q = _filters(request)
    rows: list[dict[str, Any]] = await request.app.state.ctx.archive.audit.query(
        patient_id=q.get("patient", ""),
        study_uid=q.get("study", ""),
        actor=q.get("user", ""),
        since=_time(request, "since"),
        until=_time(request, "until"),
        limit=_limit(request, default_limit),
    )
    return [row_json(r) for r in rows]


def _record_read(request: Request) -> None:
    """An Audit Log Used row, recorded after the read (it is not in its own answer); folded like "viewed":
    the same caller with the same filters within a minute adds no row."""
    query = request.url.query
    record(request, Action.AUDIT_READ, detail=request.url.path + (f"?{query}" if query else ""))


async def audit_api(request: Request) -> Response:
    rows = await _rows(request, 100)
    _record_read(request)
    return JSONResponse(rows)


async def audit_page(request: Request) -> Response:
    q = request.query_params
    rows = await _rows(request, PAGE_SIZE)
    _record_read(request)
    return render(
        request,
        "audit.html",
        "Audit trail",
        rows=rows,
        patient=q.get("patient", ""),
        study=q.get("study", ""),
        user=q.get("user", ""),
        since=q.get("since", ""),
        until=q.get("until", ""),
    )


def api_routes() -> list[BaseRoute]:
    """Mounted under /api."""
    return [
        Endpoint(
            "/audit",
            audit_api,
            "GET",
            "admin",
            "The audit trail, newest first: ?patient=&study=&user=&since=&until= (ISO 8601) &limit= (max 1000)",
        )
    ]


def ui_routes() -> list[BaseRoute]:
    """Mounted under /ui."""
    return [Endpoint("/audit", audit_page, "GET", "admin", "Page: the audit trail (admin)", name="audit")]


__all__ = ["actor_of", "api_routes", "record", "record_query", "ui_routes"]
