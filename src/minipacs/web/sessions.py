"""Web UI sessions: a random id in an HttpOnly, SameSite=Strict cookie, the rest kept in memory.

A browser that cached HTTP Basic credentials sends them with any request, whichever site
made it; a ``SameSite=Strict`` cookie (RFC 6265bis §5.4.7) is not sent on requests another
site starts, so the UI logs in through a page (``/ui/login``) and uses the cookie instead.
Each session also has a CSRF token: the pages carry it and app.js sends it as
``X-CSRF-Token`` (web/csrf.py). Sessions live in this process's memory: a restart logs
everyone out. A session unused for ``session_idle_timeout`` seconds ends; at most
``max_sessions`` exist (the least recently used goes first).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from minipacs.core.users import Role

log = logging.getLogger("minipacs.web.auth")

#: The session cookie, and the one that carries the login form's CSRF token before there is a session.
COOKIE: Final = "minipacs_session"
LOGIN_COOKIE: Final = "minipacs_login"


@dataclass
class Session:
    id: str
    user: str
    role: Role
    csrf: str
    seen: float


class SessionStore:
    def __init__(self, idle_timeout: float, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout, self.max_sessions, self._clock = idle_timeout, max_sessions, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, role: Role) -> Session:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            _, oldest = self._sessions.popitem(last=False)
            log.warning("session of %r ended: %d sessions exist (max_sessions)", oldest.user, self.max_sessions)
        session = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), self._clock())
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id (now seen), or None."""
        session = self._sessions.get(session_id)
        if session is None or not hmac.compare_digest(session.id, session_id):
            return None
        now = self._clock()
        if now - session.seen > self.idle_timeout:
            del self._sessions[session_id]
            return None
        session.seen = now
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self._clock()
        while self._sessions:
            first = next(iter(self._sessions.values()))
            if now - first.seen <= self.idle_timeout:
                return
            del self._sessions[first.id]


__all__ = ["COOKIE", "LOGIN_COOKIE", "Session", "SessionStore"]
