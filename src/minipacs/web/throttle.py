"""Failed logins counted per client address and per user name; too many and both are locked out a while.

``login_attempts`` failures within ``login_lockout_seconds`` lock the address, and (separately)
the user name, for ``login_lockout_seconds``: further attempts are answered 429 Too Many
Requests with Retry-After (RFC 6585 §4) without checking the password, so a guesser gets
neither an answer nor the server's CPU. The lockout is logged once when it starts. A success
clears the counts of its address and name. Unknown names are counted like real ones, so a
lockout does not tell whether a name exists. The tables forget entries older than the window;
scrypt (~50 ms a guess) bounds how fast they can grow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("minipacs.web.auth")


@dataclass
class _Count:
    failures: int
    since: float  # first failure of the window
    locked_until: float = 0.0
    refusal_recorded: bool = False  # the audit trail has a row for this lockout (first_refusal)


class LoginThrottle:
    def __init__(self, attempts: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts, self.window, self._clock = attempts, window, clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._pruned_at = 0

    def locked(self, address: str, user: str | None) -> float:
        """Seconds until attempts from ``address`` (or for ``user``) are taken again; 0: now."""
        now = self._clock()
        left = 0.0
        for key in self._keys(address, user):
            count = self._counts.get(key)
            if count is not None and count.locked_until > now:
                left = max(left, count.locked_until - now)
        return left

    def first_refusal(self, address: str, user: str | None) -> bool:
        """True for the first attempt refused by the current lockout of ``address`` (or of ``user``), then
        False until another lockout starts: the audit trail records a lockout once, not every attempt it
        refuses (refusing costs nothing, so their number is not bounded)."""
        now = self._clock()
        first = False
        for key in self._keys(address, user):
            count = self._counts.get(key)
            if count is not None and count.locked_until > now and not count.refusal_recorded:
                count.refusal_recorded = first = True
        return first

    def failed(self, address: str, user: str | None, shown_user: str) -> None:
        """Count a failure; log when it starts a lockout. ``shown_user``: the name as the log may show it."""
        now = self._clock()
        for key in self._keys(address, user):
            count = self._counts.get(key)
            if count is None or now - count.since > self.window:
                count = self._counts[key] = _Count(0, now)
            count.failures += 1
            if count.failures >= self.attempts and count.locked_until <= now:
                count.locked_until = now + self.window
                count.refusal_recorded = False
                what = f"address {address}" if key[0] == "address" else shown_user
                log.warning(
                    "login lockout: %s had %d failed logins within %g s; refused for %g s "
                    "(login_attempts, login_lockout_seconds)",
                    what,
                    count.failures,
                    self.window,
                    self.window,
                )
        self._prune(now)

    def succeeded(self, address: str, user: str | None) -> None:
        for key in self._keys(address, user):
            count = self._counts.get(key)
            if count is not None and count.locked_until <= self._clock():
                del self._counts[key]

    @staticmethod
    def _keys(address: str, user: str | None) -> list[tuple[str, str]]:
        return [("address", address)] + ([("user", user)] if user is not None else [])

    def _prune(self, now: float) -> None:
        if len(self._counts) < 2 * self._pruned_at + 64:
            return
        for key, count in list(self._counts.items()):
            if now - count.since > self.window and count.locked_until <= now:
                del self._counts[key]
        self._pruned_at = len(self._counts)


__all__ = ["LoginThrottle"]
