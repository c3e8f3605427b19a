"""The login page and logout: a UI session instead of the browser's cached Basic credentials.

``GET /ui/login`` shows the form with a CSRF token that is also in a short-lived
``SameSite=Strict`` cookie (a "double submit": another site can make a browser post the
form, but cannot read the cookie to copy its token). ``POST /ui/login`` takes the form
(``application/x-www-form-urlencoded``) or JSON ``{"name", "password"}``, checks the
password like HTTP Basic does (throttled, the same cost for unknown names; web/auth.py)
and sets the session cookie (web/sessions.py), ending the session the browser had: the
form then goes on to ``next``, JSON gets ``{"user", "role", "csrf_token"}``.
``POST /ui/logout`` ends the session.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from minipacs.core.audit import Action, ActorKind, Outcome
from minipacs.web.auth import LOGIN_PATH, Authenticator, LockedOut, session_of
from minipacs.web.errors import HttpError, error_response
from minipacs.web.jsonbody import lone_surrogate
from minipacs.web.pages import render
from minipacs.web.sessions import COOKIE, LOGIN_COOKIE, SessionStore
from minipacs.web.transfer import read_body

log = logging.getLogger("minipacs.web.auth")

#: Largest login or logout body (a name, a password, a token).
MAX_FORM_BYTES: Final = 16 * 1024
#: Seconds the login form's token cookie lives.
FORM_SECONDS: Final = 3600
FORM_TYPE: Final = "application/x-www-form-urlencoded"


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def safe_next(raw: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site (``//evil``, ``/\\evil``)."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw or any(ord(c) < 0x20 for c in raw):
        return "/ui/"
    return raw


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def _page(
    request: Request, status: int = 200, message: str = "", name: str = "", next_url: str | None = None
) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        "Log in",
        status,
        token=token,
        message=message,
        user_name=name,
        next=safe_next(next_url or request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=FORM_SECONDS,
        path=LOGIN_PATH,
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    return response


def _audit(request: Request, action: Action, actor: str, detail: str, outcome: Outcome = Outcome.SUCCESS) -> None:
    """A User Authentication row (PS3.15 A.5.3, docs/AUDIT.md); never the password."""
    request.app.state.ctx.archive.audit.record(
        action,
        actor_kind=ActorKind.USER,
        actor=actor,
        address=request.client.host if request.client else "",
        detail=detail,
        outcome=outcome,
    )


async def login_page(request: Request) -> Response:
    if _auth(request).open:  # no users configured: nobody logs in, everyone on this machine is admin
        return RedirectResponse("/ui/", status_code=303)
    return _page(request)


async def _fields(request: Request) -> tuple[dict[str, str], bool]:
    """The posted fields, and whether they came as a form (else JSON)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await read_body(request, MAX_FORM_BYTES)
    if media == FORM_TYPE:
        try:
            parsed = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "invalid_form", "the login form could not be read") from None
        return {key: values[0] for key, values in parsed.items()}, True
    if media == "application/json":
        try:
            raw: Any = json.loads(body)
        except ValueError:
            raw = None
        if lone_surrogate(raw) is not None:  # "\ud800": no UTF-8 text holds it (RFC 8259 8.2), a 500 later
            raw = None
        if isinstance(raw, dict):
            return {str(k): v for k, v in raw.items() if isinstance(v, str)}, False
        raise HttpError(400, "invalid_json", 'the body must be a JSON object {"name": ..., "password": ...}')
    raise HttpError(415, "unsupported_media_type", f"log in with a form ({FORM_TYPE}) or JSON (application/json)")


async def login(request: Request) -> Response:
    auth = _auth(request)
    if auth.open:
        raise HttpError(404, "no_users", "no users are configured, so there is nobody to log in as")
    fields, form = await _fields(request)
    if form:  # the double submit: the form's token must be the one in our cookie
        cookie, posted = request.cookies.get(LOGIN_COOKIE, ""), fields.get("csrf_token", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), posted.encode()):
            return _page(
                request,
                403,
                "The login form expired or was not sent by this page; log in again.",
                next_url=fields.get("next"),
            )
    name, password = fields.get("name", ""), fields.get("password", "")
    client = request.client.host if request.client else "?"
    response: Response
    try:
        role = await auth.check_password(name, password, client)
    except LockedOut as exc:
        log.warning("login refused from %s: %s", client, exc)
        if auth.throttle.first_refusal(client, name):  # once a lockout: refusing it costs nothing, unbounded
            _audit(
                request,
                Action.LOGIN,
                auth.audit_name(name),
                f"refused: locked out for {exc.seconds} s after too many failed logins (login_attempts); "
                "further attempts refused by this lockout are not recorded",
                Outcome.MINOR_FAILURE,
            )
        if form:
            response = _page(request, 429, f"Not logged in: {exc}.", next_url=fields.get("next"))
        else:
            response = error_response(429, "too_many_attempts", str(exc))
        response.headers["Retry-After"] = str(exc.seconds)
        return response
    if role is None:
        log.warning("login failed from %s: %s", client, auth.shown(name))
        why = "wrong password" if name in auth.users else "unknown user name"
        _audit(request, Action.LOGIN, auth.audit_name(name), f"refused: {why}", Outcome.MINOR_FAILURE)
        wrong = "the user name or password is wrong"
        if form:
            return _page(request, 401, f"Not logged in: {wrong}.", next_url=fields.get("next"))
        return error_response(401, "unauthorized", wrong)
    sessions: SessionStore = request.app.state.sessions
    # the session this browser had (another user's, on a shared workstation) ends here, not only in its
    # cookie jar; the new one gets an id of its own, never one the request named (session fixation)
    sessions.end(request.cookies.get(COOKIE, ""))
    session = sessions.create(name, role)
    log.info("login: %s (role %s) from %s", auth.shown(name), role.value, client)
    _audit(request, Action.LOGIN, name, f"UI login ({'form' if form else 'JSON'}), role {role.value}")
    if form:
        response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
    else:
        response = JSONResponse({"user": name, "role": role.value, "csrf_token": session.csrf})
    response.set_cookie(COOKIE, session.id, path="/", httponly=True, samesite="strict", secure=_https(request))
    return response


async def logout(request: Request) -> Response:
    session = session_of(request.scope)
    if session is not None:
        fields = (await _fields(request))[0] if request.headers.get("content-type") else {}
        posted = fields.get("csrf_token") or request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(posted.encode(), session.csrf.encode()):
            raise HttpError(
                403, "cross_site_request", "the logout was not sent by this server's page; use its Log out button"
            )
        sessions: SessionStore = request.app.state.sessions
        sessions.end(session.id)
        log.info("logout: %s", _auth(request).shown(session.user))
        _audit(request, Action.LOGOUT, session.user, "UI logout")
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def whoami(request: Request) -> Response:
    """Who the request's credentials or session say it is (the login page asks, to skip itself)."""
    state = request.scope.get("state", {})
    return JSONResponse({"user": state.get("user", ""), "role": state.get("role", "admin")})


__all__ = ["login", "login_page", "logout", "safe_next", "whoami"]
