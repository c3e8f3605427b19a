"""Routes that carry what they need: the permission, checked before the endpoint runs, and a summary.

Every route of the app is an :class:`Endpoint` (one method) or a :class:`GuardedMount`
(an ASGI app such as the static files or OHIF), or a plain ``Mount`` grouping such
routes; :func:`declared` walks them and refuses anything else, so a route cannot
be added without saying who may use it. The OpenAPI document (web/openapi.py) is
built from the same walk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from minipacs.core.audit import Action
from minipacs.web import csrf
from minipacs.web.auth import PERMISSIONS, Permission, authorize, session_of
from minipacs.web.errors import error_response

log = logging.getLogger("minipacs.web.auth")
_CONVERTOR: Final = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*):[a-zA-Z_][a-zA-Z0-9_]*\}")


class UndeclaredRoute(TypeError):
    """A route that does not declare its permission (a plain Route, or a Mount of an app)."""


def _check(permission: str, summary: str, what: str) -> None:
    if permission not in PERMISSIONS:
        raise ValueError(f"{what}: permission {permission!r} is not one of {', '.join(sorted(PERMISSIONS))}")
    if not summary.strip():
        raise ValueError(f"{what}: a route needs a one-line summary (it goes into the OpenAPI document)")


class Endpoint(Route):
    """One method on one path, with the permission it needs and a summary (PS3.18 cites go in the summary)."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        method: str,
        permission: Permission,
        summary: str,
        *,
        name: str | None = None,
        form_checks_csrf: bool = False,
        audits: str = "",
    ) -> None:
        _check(permission, summary, f"{method} {path}")
        if audits:
            Action(audits)  # ValueError for a verb core/audit.py does not know
        super().__init__(path, endpoint, methods=[method], name=name)
        self.method = method.upper()
        self.permission: Permission = permission
        self.summary = summary
        #: a form endpoint (login, logout) that checks a CSRF token of its own (web/csrf.py rule 3)
        self.form_checks_csrf = form_checks_csrf
        #: an audit action (core/audit.py Action value) recorded after each successful (2xx) request:
        #: the configuration changes (web/audit.py record_change)
        self.audits = audits

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a method this route does not have is Starlette's 405, whoever asks
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)
        elif await refuse_cross_site(scope, receive, send, self.form_checks_csrf) and await authorize(
            scope, receive, send, self.permission
        ):
            if not self.audits:
                await super().handle(scope, receive, send)
                return
            from minipacs.web.audit import ResponseTap, record_change

            tap = ResponseTap(send)
            await super().handle(scope, receive, tap.send)
            if 200 <= tap.status < 300:
                record_change(scope, self.audits, tap.status, tap.body())


async def refuse_cross_site(scope: Scope, receive: Receive, send: Send, form_checks_csrf: bool = False) -> bool:
    """True: the request may go on; False: it changes something and another site may have sent it (403
    sent, logged). Checked before the credentials: a forged request costs no password check."""
    session = session_of(scope)
    why = csrf.refusal(scope, session.csrf if session else None, form_checks_csrf)
    if why is None:
        return True
    client = scope.get("client") or ("?", 0)
    log.warning("HTTP 403: %s %s from %s refused: %s", scope["method"], scope["path"], client[0], why)
    await error_response(403, "cross_site_request", why)(scope, receive, send)
    return False


class GuardedMount(Mount):
    """An ASGI app under a path prefix (static files, OHIF), with the permission every request to it needs."""

    def __init__(
        self, path: str, app: ASGIApp, permission: Permission, summary: str, *, name: str | None = None
    ) -> None:
        _check(permission, summary, f"mount {path}")
        super().__init__(path, app=app, name=name)
        self.permission: Permission = permission
        self.summary = summary

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await refuse_cross_site(scope, receive, send) and await authorize(scope, receive, send, self.permission):
            await super().handle(scope, receive, send)


def declared(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Endpoint | GuardedMount]]:
    """Every route with its full path (``{name:convertor}`` written ``{name}``), in matching order;
    UndeclaredRoute for a route that does not declare its permission."""
    for route in routes:
        if isinstance(route, Endpoint | GuardedMount):
            yield prefix + _CONVERTOR.sub(r"{\1}", route.path), route
        elif isinstance(route, Mount) and route.routes:
            yield from declared(route.routes, prefix + route.path)
        else:
            where = prefix + str(getattr(route, "path", ""))
            raise UndeclaredRoute(
                f"the route {where or repr(route)} ({type(route).__name__}) declares no permission: "
                "write it as routing.Endpoint or routing.GuardedMount"
            )


__all__ = ["Endpoint", "GuardedMount", "UndeclaredRoute", "declared", "refuse_cross_site"]
