"""Access control for every HTTP route: who is asking (Basic or Bearer), and may they.

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
import ipaddress
import logging
from collections.abc import Sequence
from typing import Final, Literal, get_args

from starlette.types import Receive, Scope, Send

from minipacs.config import Settings
from minipacs.core.users import ROLE_PERMISSIONS, ProvenPasswords, Role, hash_token
from minipacs.web.errors import error_response

log = logging.getLogger("minipacs.web.auth")


def loopback_only(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.users = {user.name: user for user in settings.users}
        self.tokens = {token.token_hash: token for token in settings.tokens}
        self.passwords = ProvenPasswords()

    @property
    def open(self) -> bool:
        return not self.users and not self.tokens

    async def role_of(self, authorization: str) -> tuple[Role | None, str]:
        """The role the Authorization header proves, and who (for the log); None: not proven.
        A password not proven before is hashed in a thread: scrypt must not block the loop
        that also serves every DICOM association."""
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None, "malformed Basic credentials"
            user = self.users.get(name)
            if user is not None and (self.passwords.proven(user, password)
                                     or await asyncio.to_thread(self.passwords.verify, user, password)):
                return user.role, name
            return None, f"user {name[:40]!r}"
        if scheme == "bearer":
            token = self.tokens.get(hash_token(value.strip()))
            if token is not None:
                return token.role, f"token {token.name}"
            return None, "an unknown token"
        return None, "no credentials"


#: What a route may need: "public" needs no credentials; the others are role permissions (core/users.py).
Permission = Literal["public", "read", "write", "admin"]
PERMISSIONS: Final = frozenset(get_args(Permission))


async def authorize(scope: Scope, receive: Receive, send: Send, needed: Permission) -> bool:
    """True: the request may go on (its role is in ``scope["state"]["role"]``). False: a 401 or 403 was sent."""
    auth: Authenticator = scope["app"].state.auth
    if needed == "public" or auth.open:
        return True
    method, path = scope["method"], scope["path"]
    headers: Sequence[tuple[bytes, bytes]] = scope.get("headers", [])
    authorization = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), "")
    client = scope.get("client") or ("?", 0)
    role, who = await auth.role_of(authorization)
    if role is None:
        log.warning("HTTP 401: %s %s from %s: %s not accepted", method, path, client[0], who)
        response = error_response(401, "unauthorized", "this needs a user name and password (HTTP Basic) or an "
                                  "API token (Bearer); the ones given were missing or wrong")
        response.headers["WWW-Authenticate"] = 'Basic realm="minipacs"'
        await response(scope, receive, send)
        return False
    if needed not in ROLE_PERMISSIONS[role]:
        log.warning("HTTP 403: %s %s from %s: %s (role %s) lacks %r", method, path, client[0], who,
                    role.value, needed)
        await error_response(403, "forbidden", f"{who} has the {role.value} role, which may not do this "
                             f"({needed} permission needed); ask an admin")(scope, receive, send)
        return False
    scope.setdefault("state", {})["role"] = role.value
    return True


__all__ = ["PERMISSIONS", "Authenticator", "Permission", "authorize", "loopback_only"]
