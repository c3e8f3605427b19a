"""HTTP users and API tokens: who they are, their role, and how their secrets are hashed.

Passwords are hashed with scrypt (hashlib, RFC 7914) in the self-describing form
``scrypt$N$r$p$<salt b64>$<hash b64>``; API tokens are random strings stored as
their SHA-256 (``sha256$<hex>``): they carry enough entropy not to need a slow hash.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: scrypt cost parameters for new hashes (n=2**14, r=8, p=1: ~16 MiB, ~50 ms).
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
#: ``dicom_user_identity``: does a DICOM association's User Identity item have to name one of these
#: users? ignore: never checked; optional: checked when sent; required: must be sent and right.
DICOM_IDENTITY_MODES: Final = ("ignore", "optional", "required")


class Role(str, enum.Enum):
    """admin: everything; operator: also upload, send, retrieve, delete; viewer: read only."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


# What each role may do: "read" (GET), "write" (upload, send, retrieve, delete), "admin" (nodes, users).
ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[str]]] = {
    Role.ADMIN: frozenset({"read", "write", "admin"}),
    Role.OPERATOR: frozenset({"read", "write"}),
    Role.VIEWER: frozenset({"read"}),
}


class InvalidUser(ValueError):
    """A [[users]] or [[tokens]] entry cannot be used; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: Role


@dataclass(frozen=True)
class ApiToken:
    name: str
    token_hash: str  # "sha256$<hex>"
    role: Role
    #: refused from this moment on (UTC); None: until it is removed from the config file
    expires: dt.datetime | None = None

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires is not None and (now or dt.datetime.now(dt.UTC)) >= self.expires


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024)
    enc = base64.b64encode
    return f"scrypt${n}${r}${p}${enc(salt).decode()}${enc(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches the ``hash_password`` result ``stored``; False for any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=128 * 1024 * 1024,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class ProvenPasswords:
    """:func:`verify_password` with a memory, shared by HTTP Basic and DICOM user identity.

    A password proven once is remembered as an HMAC under a key that lives only in this
    process, so scrypt (~50 ms) runs once per user rather than once per request or
    association. :meth:`proven` is the cheap lookup; :meth:`verify` hashes (run it off the
    event loop) and remembers a success.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._proven: dict[str, bytes] = {}

    def _mac(self, user: User, password: str) -> bytes:
        return hmac.new(self._key, user.password_hash.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def proven(self, user: User, password: str) -> bool:
        known = self._proven.get(user.name)
        return known is not None and hmac.compare_digest(known, self._mac(user, password))

    def verify(self, user: User, password: str) -> bool:
        if self.proven(user, password):
            return True
        if not verify_password(password, user.password_hash):
            return False
        self._proven[user.name] = self._mac(user, password)
        return True


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh API token and its hash for the config file."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def _role(value: Any, what: str) -> Role:
    try:
        return Role(str(value).lower())
    except ValueError:
        raise InvalidUser(f"{what}: role {value!r} is not one of admin, operator, viewer") from None


def user_from_mapping(table: Mapping[str, Any]) -> User:
    name = str(table.get("name", "")).strip()
    password_hash = str(table.get("password_hash", ""))
    if not name:
        raise InvalidUser("a user needs a name")
    if not password_hash.startswith("scrypt$"):
        raise InvalidUser(f"user {name!r}: password_hash must come from `minipacs users hash-password`")
    return User(name, password_hash, _role(table.get("role", "viewer"), f"user {name!r}"))


def _expires(value: Any, what: str) -> dt.datetime | None:
    """``expires`` of a token: a TOML date (the token is refused from 00:00 UTC that day), a date-time
    (without an offset: UTC), or the same as ISO 8601 text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip()) if "T" in value.upper() else dt.date.fromisoformat(value)
        except ValueError:
            raise InvalidUser(f"{what}: expires {value!r} is not a date (2027-06-30) or date-time") from None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise InvalidUser(f"{what}: expires {value!r} is not a date (2027-06-30) or date-time")


def token_from_mapping(table: Mapping[str, Any]) -> ApiToken:
    name = str(table.get("name", "")).strip() or "token"
    token_hash = str(table.get("token_hash", ""))
    if not token_hash.startswith("sha256$"):
        raise InvalidUser(f"token {name!r}: token_hash must come from `minipacs users new-token`")
    what = f"token {name!r}"
    return ApiToken(name, token_hash, _role(table.get("role", "viewer"), what), _expires(table.get("expires"), what))


__all__ = [
    "DICOM_IDENTITY_MODES",
    "ApiToken",
    "InvalidUser",
    "ProvenPasswords",
    "ROLE_PERMISSIONS",
    "Role",
    "User",
    "hash_password",
    "hash_token",
    "new_token",
    "token_from_mapping",
    "user_from_mapping",
    "verify_password",
]
