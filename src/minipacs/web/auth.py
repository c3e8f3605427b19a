"""Access control for every HTTP route: who is asking (Basic, Bearer or a UI session), and may they.

Each route declares the permission it needs (web/routing.py); :func:`authorize`
checks it before the endpoint runs. With no users and no tokens configured
everything is open; bootstrap refuses that unless HTTP listens on loopback only.
Wrong credentials: 401; a role without the permission: 403. Both are logged with
the client address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple, get_args
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import Receive, Scope, Send

from minipacs.config import Settings
from minipacs.core.audit import Action, ActorKind, Outcome
from minipacs.core.users import (
    ROLE_PERMISSIONS,
    SCRYPT_N,
    SCRYPT_R,
    ProvenPasswords,
    Role,
    User,
    hash_password,
    hash_token,
    verify_password,
)
from minipacs.web.errors import error_response
from minipacs.web.sessions import COOKIE, Session, SessionStore
from minipacs.web.throttle import LoginThrottle

log = logging.getLogger("minipacs.web.auth")


def loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LockedOut(Exception):
    """Too many failed logins from this address or for this user name (web/throttle.py)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"too many failed logins from this address or for this user name; try again in {math.ceil(seconds)} seconds"
        )
        self.seconds = math.ceil(seconds)


def _cost(users: Sequence[User]) -> dict[str, int]:
    """scrypt parameters of the first user's hash (the dummy must cost what a real check costs)."""
    try:
        _, n, r, p, _, _ = users[0].password_hash.split("$")
        return {"n": int(n), "r": int(r), "p": int(p)}
    except (IndexError, ValueError):
        return {}


def _weak(user: User) -> bool:
    """A hash cheaper than what `minipacs users hash-password` makes (core/users.py SCRYPT_*)."""
    cost = _cost([user])
    return not cost or cost["n"] * cost["r"] < SCRYPT_N * SCRYPT_R


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        for user in settings.users:
            if _weak(user):
                log.warning(
                    "user %r: the password hash is cheaper to guess than the default (scrypt n=%d, r=%d): if the "
                    "config file leaks, it falls sooner; make a new one with `minipacs users hash-password`",
                    user.name,
                    SCRYPT_N,
                    SCRYPT_R,
                )
        self.users = {user.name: user for user in settings.users}
        self.tokens = {token.token_hash: token for token in settings.tokens}
        self.passwords = ProvenPasswords()
        self.throttle = LoginThrottle(settings.login_attempts, settings.login_lockout_seconds)
        self._key = secrets.token_bytes(16)
        # an unknown name is checked against this, so that it costs what a known one costs: the
        # answer's timing must not tell which names exist
        self._dummy = hash_password(secrets.token_urlsafe(16), **_cost(settings.users)) if settings.users else ""

    @property
    def open(self) -> bool:
        return not self.users and not self.tokens

    def shown(self, name: str) -> str:
        """A user name as the log shows it: known names as they are; anything else (a password typed
        into the name field, say) as a keyed fingerprint, never verbatim."""
        if name in self.users:
            return f"user {name!r}"
        return f"an unknown user name (#{self.fingerprint(name)})"

    def audit_name(self, name: str) -> str:
        """The user name as the audit trail keeps it: a configured name as it is; anything else (a password
        typed into the name field, say) only as the log's keyed fingerprint."""
        return name if name in self.users else f"unknown #{self.fingerprint(name)}"

    def fingerprint(self, name: str) -> str:
        """A keyed hash of ``name`` (the key lives as long as the process): tells repeats apart, not the name."""
        return hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()[:8]

    async def check_password(self, name: str, password: str, address: str) -> Role | None:
        """The role of ``name`` if ``password`` is theirs, else None; LockedOut while throttled.
        A password not proven before is hashed in a thread: scrypt must not block the loop
        that also serves every DICOM association. Unknown names cost one scrypt too."""
        locked = self.throttle.locked(address, name)
        if locked:
            raise LockedOut(locked)
        user = self.users.get(name)
        if user is not None and (
            self.passwords.proven(user, password) or await asyncio.to_thread(self.passwords.verify, user, password)
        ):
            self.throttle.succeeded(address, name)
            return user.role
        if user is None:
            await asyncio.to_thread(verify_password, password, self._dummy)
        self.throttle.failed(address, name, self.shown(name))
        return None

    async def role_of(self, authorization: str, address: str = "?") -> Credentials:
        """The role the Authorization header proves, and who (for the log and the audit trail); role
        None: not proven. LockedOut: too many failed logins from ``address`` or for the name.

        Refused Bearer tokens and malformed Basic credentials count as failed logins of the address
        (web/throttle.py) like wrong passwords: they cost a guesser nothing else, and each refusal
        gets an audit row (:func:`authorize`), so without the lockout their number would be unbounded."""
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                self._refused(address)
                return Credentials(None, "malformed Basic credentials", "malformed Basic credentials", "user")
            role = await self.check_password(name, password, address)
            return Credentials(role, name if role is not None else self.shown(name), self.audit_name(name), "user")
        if scheme == "bearer":
            token = self.tokens.get(hash_token(value.strip()))
            if token is not None and not token.expired():
                return Credentials(token.role, f"token {token.name}", token.name, "token")
            self._refused(address)
            if token is not None:
                return Credentials(None, f"the expired token {token.name}", token.name, "token")
            return Credentials(None, "an unknown token", "unknown token", "token")
        return Credentials(None, "no credentials", "", "")

    def _refused(self, address: str) -> None:
        """A failed login of ``address`` with no user name (a token, unreadable credentials); LockedOut
        while the address is locked out."""
        locked = self.throttle.locked(address, None)
        if locked:
            raise LockedOut(locked)
        self.throttle.failed(address, None, f"address {address}")


class Credentials(NamedTuple):
    """What an Authorization header proved (:meth:`Authenticator.role_of`)."""

    role: Role | None  # None: not proven
    who: str  # for the log: never a password, an unknown name only as its fingerprint
    actor: str  # for the audit trail (core/audit.py): a user or token name, "unknown #fingerprint"
    kind: str  # "user" (Basic), "token" (Bearer), "" (none)


#: The login page (web/login.py).
LOGIN_PATH: Final = "/ui/login"

#: What a route may need: "public" needs no credentials; the others are role permissions (core/users.py).
Permission = Literal["public", "read", "write", "admin"]
PERMISSIONS: Final = frozenset(get_args(Permission))


def _audit_refusal(scope: Scope, refused: Credentials, address: str, what: str) -> None:
    """A refused User Authentication (PS3.15 A.5.3, docs/AUDIT.md): outcome 4, never the password."""
    kind = ActorKind.TOKEN if refused.kind == "token" else ActorKind.USER
    detail = f"refused: {what} on {scope['method']} {scope['path'][:200]}"
    scope["app"].state.ctx.archive.audit.record(
        Action.LOGIN,
        actor_kind=kind,
        actor=refused.actor,
        address=address,
        detail=detail,
        outcome=Outcome.MINOR_FAILURE,
    )


def session_of(scope: Scope) -> Session | None:
    """The live UI session whose id the request's cookie carries (web/sessions.py), or None."""
    session_id = Request(scope).cookies.get(COOKIE)
    if not session_id:
        return None
    sessions: SessionStore = scope["app"].state.sessions
    return sessions.get(session_id)


def _header(scope: Scope, name: bytes) -> str:
    headers: Sequence[tuple[bytes, bytes]] = scope.get("headers", [])
    return next((v.decode("latin-1") for k, v in headers if k == name), "")


#: Paths of the UI's pages: a browser asking for one without credentials goes to the login page.
UI_PAGES: Final = ("/ui/", "/ohif")


def _page_navigation(scope: Scope) -> bool:
    path: str = scope["path"]
    if scope["method"] not in ("GET", "HEAD") or not (path == "/" or path.startswith(UI_PAGES)):
        return False
    return _header(scope, b"sec-fetch-dest") == "document" or "text/html" in _header(scope, b"accept")


def login_url(scope: Scope) -> str:
    """The login page, with ``next`` = where the request wanted to go."""
    query = scope.get("query_string", b"").decode("latin-1")
    wanted = scope["path"] + (f"?{query}" if query else "")
    return f"{LOGIN_PATH}?{urlencode({'next': wanted})}"


async def authorize(scope: Scope, receive: Receive, send: Send, needed: Permission) -> bool:
    """True: the request may go on (its role is in ``scope["state"]["role"]``). False: a 401, 403 or 429
    was sent, or (a browser asking for a UI page without credentials) a redirect to the login page.

    An Authorization header (Basic, Bearer) is checked when there is one; otherwise the UI session
    cookie. A session's state-changing requests are guarded against other sites by web/csrf.py."""
    auth: Authenticator = scope["app"].state.auth
    if needed == "public" or auth.open:
        return True
    method, path = scope["method"], scope["path"]
    authorization = _header(scope, b"authorization")
    client = scope.get("client") or ("?", 0)
    session = None if authorization else session_of(scope)
    role: Role | None
    try:
        if session is not None:
            role, who, actor = session.role, session.user, Credentials(session.role, session.user, session.user, "user")
        else:
            actor = proven = await auth.role_of(authorization, client[0])
            role, who = proven.role, proven.who
            if role is None and proven.kind:
                _audit_refusal(scope, proven, client[0], f"HTTP {authorization.split(' ', 1)[0][:16]} credentials")
    except LockedOut as exc:
        log.warning("HTTP 429: %s %s from %s: %s", method, path, client[0], exc)
        if authorization and auth.throttle.first_refusal(client[0], None):  # once a lockout (login.py too)
            refused = Credentials(None, "", "", "token" if authorization.lower().startswith("bearer") else "user")
            _audit_refusal(
                scope,
                refused,
                client[0],
                f"locked out for {exc.seconds} s after too many failed logins (login_attempts); "
                "further attempts refused by this lockout are not recorded",
            )
        response = error_response(429, "too_many_attempts", str(exc))
        response.headers["Retry-After"] = str(exc.seconds)
        await response(scope, receive, send)
        return False
    if role is None:
        if not authorization and _page_navigation(scope):
            await RedirectResponse(login_url(scope), status_code=303)(scope, receive, send)
            return False
        log.warning("HTTP 401: %s %s from %s: %s not accepted", method, path, client[0], who)
        response = error_response(
            401,
            "unauthorized",
            "this needs a user name and password (HTTP Basic), an "
            "API token (Bearer) or a login (the web UI: /ui/login); the ones given were "
            "missing, wrong or expired",
        )
        # a page's own fetch gets no challenge: the browser would pop up its Basic prompt over the UI
        if _header(scope, b"sec-fetch-mode") not in ("cors", "same-origin", "no-cors"):
            response.headers["WWW-Authenticate"] = 'Basic realm="minipacs"'
        await response(scope, receive, send)
        return False
    if needed not in ROLE_PERMISSIONS[role]:
        log.warning("HTTP 403: %s %s from %s: %s (role %s) lacks %r", method, path, client[0], who, role.value, needed)
        await error_response(
            403,
            "forbidden",
            f"{who} has the {role.value} role, which may not do this ({needed} permission needed); ask an admin",
        )(scope, receive, send)
        return False
    state = scope.setdefault("state", {})
    state["role"], state["user"] = role.value, who
    # for the audit trail (web/audit.py): the kind from the credentials, never guessed from the name
    state["actor_kind"], state["actor"] = actor.kind, actor.actor
    return True


__all__ = [
    "LOGIN_PATH",
    "PERMISSIONS",
    "Authenticator",
    "LockedOut",
    "Permission",
    "authorize",
    "login_url",
    "loopback_only",
    "session_of",
]
