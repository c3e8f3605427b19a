"""A bounded pool for the expensive work behind a request: rendering and transcoding pixel data.

Rendering a 4096x4096 image holds some 200 MB while it runs; ten at once held 1.95 GB.
So at most ``max_concurrent_renders`` such jobs run at a time, in threads of their own
(the shared default executor stays free for the index and the files), and at most
``render_queue`` more wait for a turn. A request beyond that is refused at once with
503 Service Unavailable and ``Retry-After`` (RFC 9110 §15.6.4, §10.2.3): the client
comes back, instead of every client waiting behind a queue that only grows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from minipacs.web.errors import HttpError

log = logging.getLogger("minipacs.web.workers")

T = TypeVar("T")

#: Seconds a refused client is told to wait (Retry-After).
RETRY_AFTER: Final = 2
#: At most one "pool full" warning in this many seconds (a flood must not flood the log).
LOG_EVERY: Final = 10.0


class Busy(HttpError):
    """503: the pool and its queue are full."""

    def __init__(self, what: str, running: int, queue: int) -> None:
        super().__init__(
            503,
            "busy",
            f"the server is already {what} {running} image(s) with {queue} waiting "
            f"(max_concurrent_renders, render_queue); try again in {RETRY_AFTER} seconds",
            headers={"Retry-After": str(RETRY_AFTER)},
        )


class RenderPool:
    """``await pool.run(fn, *args)``: ``fn`` in one of ``workers`` threads, or Busy (503) when
    ``workers + queue`` jobs are already admitted."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.queue = workers, queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minipacs-render")
        self._admitted = 0
        self._lock = threading.Lock()
        self._last_warning = 0.0

    @property
    def admitted(self) -> int:
        """Jobs running or waiting."""
        return self._admitted

    def check(self, what: str = "rendering") -> None:
        """Busy (503) if a job would be refused now; nothing counted."""
        self.admit(what)
        self._release()

    def admit(self, what: str = "rendering") -> None:
        """Count one job in, or raise Busy (503)."""
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                now = time.monotonic()
                if now - self._last_warning >= LOG_EVERY:
                    self._last_warning = now
                    log.warning(
                        "HTTP 503: %d render/transcode jobs running or waiting (max_concurrent_renders %d, "
                        "render_queue %d); refusing more",
                        self._admitted,
                        self.workers,
                        self.queue,
                    )
                raise Busy(what, self.workers, self.queue)
            self._admitted += 1

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: object, what: str = "rendering") -> T:
        self.admit(what)
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # counted out when the work ends, not when the client leaves: a cancelled request
        # cancels a job still waiting, but one already running holds its thread to the end
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the pool from a thread that is not the event loop's, waiting for a turn (no 503:
        the response that needs it is already under way). Blocking."""
        with self._lock:
            self._admitted += 1
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["RETRY_AFTER", "Busy", "RenderPool"]
