"""HTTP connection limits: how many connections, how long a request's head and body may take.

1,100 idle sockets once exhausted the process's file descriptors, and with them the
DICOM listener too. So, under uvicorn's h11 protocol (RFC 9112):

- at most ``http_max_connections`` connections are open at once; one more is answered
  ``503 Service Unavailable`` with ``Retry-After`` and closed as it is accepted, so its
  descriptor comes straight back (the refusals are logged at most once per ``LOG_EVERY`` s);
- a connection must deliver a complete request head within ``http_header_timeout``
  seconds of opening, or of the previous response (slow-header "slowloris" clients):
  a silent one is closed, a half-sent head gets ``408 Request Timeout``;
- while an endpoint reads a request body, ``http_body_timeout`` seconds without a byte
  end it with ``408`` (a body that trickles keeps its connection only while it moves;
  the connection cap bounds how many can);
- a request head (request line, header fields and the blank line, RFC 9112 §2.1) of more than
  ``http_max_header_bytes`` is answered ``431 Request Header Fields Too Large`` (RFC 6585 §5), or
  ``414 URI Too Long`` (RFC 9112 §3) when the request line alone is longer, counted as it arrives:
  h11 only bounds what it buffers of a head still incomplete, so a long head arriving in one read was
  served, and uvicorn answered the bound with a 400 and closed at once, a reset that lost the 400.
  We close the way RFC 9112 §9.6 asks: our side first, then what the client still sends is read
  and dropped for at most ``http_header_timeout`` seconds, so the client reads its answer.
  Every head is counted, the first of a connection or a later one: a head h11 holds whole in its buffer
  (pipelined, RFC 9112 §9.3.2: sent with or during the previous request, or after the body of a request
  answered before its body was read) is counted just before h11 parses it (:class:`CountedConnection`);
- a head or body h11 cannot read gets its 400 (uvicorn's ``send_400_response``) the same way, and
  never a second response: uvicorn's 400 after an endpoint began its answer, or the endpoint's answer
  after uvicorn's 400, raised in h11 and logged a traceback. h11 reads a chunk-size line of at most 20
  hex digits and buffers at most ``http_max_header_bytes`` of one still incomplete, so a line of
  thousands of digits is such a 400 at once, whatever it costs the client to send;
- a chunked body (RFC 9112 §7.1) announces each chunk's size before its data: once the endpoint has
  declared its body limit (:func:`refuse_declared_length`: ``max_upload_bytes``, a JSON body's), a chunk
  that would take the body past it is answered ``413 Content Too Large`` (RFC 9110 §15.5.14) as its size
  line arrives, naming the limit, the same way as the 431. The endpoint counted the bytes as they came,
  so a chunk of ``ffffffffff`` bytes followed by nothing waited for ``http_body_timeout`` (a 408).

We accept connections ourselves (:class:`HttpListener`) and hand them to uvicorn: asyncio's
own accept loop (``loop.create_server``), when descriptors run out, goes on calling
accept() up to ``backlog`` times in the same tick (uvicorn's backlog is 2048), logging a
traceback for each and scheduling as many retries -- thousands of lines a second, the
issue's 407 MB log. Ours checks the cap before it hands a connection on, and on EMFILE or
ENFILE waits (10 ms, doubling to 1 s) and logs once per ``LOG_EVERY`` seconds.
:func:`raise_fd_limit` raises the soft RLIMIT_NOFILE to the hard one at start.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import h11
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from minipacs.config import Settings
from minipacs.web.errors import HttpError
from minipacs.web.search import MAX_DIGITS, ascii_digits

log = logging.getLogger("minipacs.web")

#: At most one log line about refused or timed-out connections in this many seconds.
LOG_EVERY: Final = 10.0
#: Seconds a refused client is told to wait.
RETRY_AFTER: Final = 1
#: The blank line that ends a request head, as h11 finds it (h11/_receivebuffer.py): CRLF CRLF,
#: or with bare LFs.
BLANK_LINE: Final = re.compile(rb"\n\r?\n")


def _raw_response(status: str, message: str, retry_after: int | None = None, code: str | None = None) -> bytes:
    code = code or status.split(" ", 1)[1].lower().replace(" ", "_")
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


#: The ASGI scope extension (``scope["extensions"]``, ASGI HTTP spec "Extensions") under which the connection
#: gives an endpoint the :class:`BodyWatch` of its request, as ``{"watch": BodyWatch}``.
BODY_LIMIT_EXTENSION: Final = "minipacs.body_limit"


@dataclass(frozen=True)
class BodyLimit:
    """An endpoint's limit on a request body, with the words of its 413: ``what`` the body is, ``fix`` what
    the limit is and what to do (as :func:`refuse_declared_length` takes them)."""

    limit: int
    what: str
    fix: str


class BodyWatch:
    """One request's body as its connection sees it ahead of the endpoint. The endpoint declares its limit
    here (:func:`refuse_declared_length` does); the connection then checks each chunk size as it arrives,
    and ``check`` right away, since the first ones may have come with the request head."""

    def __init__(self, check: Callable[[BodyWatch], None]) -> None:
        self.limit: BodyLimit | None = None
        self._check = check

    def declare(self, limit: BodyLimit) -> None:
        self.limit = limit
        self._check(self)


class CountedConnection(h11.Connection):
    """h11's server side, telling :func:`guarded_protocol` two things uvicorn's loop over its events hides:

    - ``before_head()`` is asked just before h11 parses a request head (both sides IDLE); True means the
      head is refused, and h11 parses nothing (NEED_DATA). uvicorn parses the next pipelined head within
      one ``handle_events`` call when a request answered before its body was read ends, so a check before
      or after that call missed it;
    - :attr:`announced`: the bytes of the current request body h11 has passed on, plus those the chunk it
      is reading still promises (RFC 9112 §7.1: chunk-size line, then the data). That count is h11's
      ``ChunkedReader._bytes_in_chunk`` (private; a test holds h11 to it)."""

    def __init__(self, max_incomplete_event_size: int, before_head: Callable[[], bool]) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        self.before_head = before_head
        self.body_bytes = 0  #: of the current request, passed on in Data events

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.their_state is h11.IDLE and self.our_state is h11.IDLE and self.before_head():
            return h11.NEED_DATA
        event = super().next_event()
        if isinstance(event, h11.Request):
            self.body_bytes = 0
        elif isinstance(event, h11.Data):
            self.body_bytes += len(event.data)
        return event

    @property
    def announced(self) -> int:
        return self.body_bytes + int(getattr(self._reader, "_bytes_in_chunk", 0))


@dataclass
class ConnectionGuard:
    """The limits of one HTTP server, and when it last said it used them."""

    max_connections: int
    header_timeout: float
    max_header_bytes: int = 16 * 1024
    refused: int = 0
    timed_out: int = 0
    too_large: int = 0
    body_too_large: int = 0
    _last_log: float = field(default=0.0, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> ConnectionGuard:
        return cls(settings.http_max_connections, settings.http_header_timeout, settings.http_max_header_bytes)

    def note(self) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning(
                "HTTP: %d connection(s) refused at http_max_connections = %d, %d closed for sending no "
                "complete request head within http_header_timeout = %g s, %d request head(s) refused over "
                "http_max_header_bytes = %d, %d chunked body(ies) refused for a chunk past the endpoint's limit "
                "(this is logged at most every %g s)",
                self.refused,
                self.max_connections,
                self.timed_out,
                self.header_timeout,
                self.too_large,
                self.max_header_bytes,
                self.body_too_large,
                LOG_EVERY,
            )

    @property
    def refusal(self) -> bytes:
        return _raw_response(
            "503 Service Unavailable",
            f"this server already has {self.max_connections} HTTP "
            "connections open (http_max_connections); try again shortly",
            RETRY_AFTER,
        )

    def head_too_large(self, line_only: bool) -> bytes:
        limit = f"http_max_header_bytes ({self.max_header_bytes} bytes)"
        if line_only:
            return _raw_response(
                "414 URI Too Long",
                f"the request line is longer than {limit}; put the query in fewer or shorter parameters",
            )
        return _raw_response(
            "431 Request Header Fields Too Large",
            f"the request head (request line and header fields) is larger than {limit}; "
            "send fewer or shorter header fields (cookies, tokens)",
        )

    @staticmethod
    def chunk_too_large(limit: BodyLimit, announced: int, received: int) -> bytes:
        return _raw_response(
            "413 Content Too Large",
            f"{limit.what} would be at least {announced} bytes: {received} bytes in, a chunk announces "
            f"{announced - received} more (chunked coding, RFC 9112 §7.1); {limit.fix}",
            code="too_large",
        )

    @property
    def bad_request(self) -> bytes:
        return _raw_response(
            "400 Bad Request",
            "the request's head, or the framing of its body (Content-Length, chunked coding), cannot be read "
            "(RFC 9112)",
        )

    @property
    def too_slow(self) -> bytes:
        return _raw_response(
            "408 Request Timeout",
            f"the request head did not arrive within {self.header_timeout:g} seconds (http_header_timeout)",
        )


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``guard``'s header timeout (``Config(http=...)``)."""

    class GuardedH11Protocol(H11Protocol):
        conn: CountedConnection
        _header_timer: asyncio.TimerHandle | None = None
        #: the request head being received: its bytes so far, whether its request line is complete within
        #: the limit, and the last bytes of the previous read (the blank line ending the head may straddle
        #: two reads)
        _head_bytes = 0
        _line_fits = False
        _head_tail = b""
        #: refused: what the client still sends is dropped until it closes or this timer closes
        _linger: asyncio.TimerHandle | None = None
        #: h11 holds bytes not yet counted: they came after a counted head (a body, a pipelined request) or
        #: while a request was answered; the next head is counted from h11's buffer before h11 parses it
        _uncounted = False
        #: the request whose body is watched, and its watch (:class:`BodyWatch`)
        _watched: RequestResponseCycle | None = None
        _watch: BodyWatch | None = None

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.conn = CountedConnection(guard.max_header_bytes, self._head_ready)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            if self._linger is not None:
                self._linger.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._linger is not None or self.conn.their_state is h11.ERROR:
                return  # refused: read and dropped (RFC 9112 §9.6); h11 would refuse each read again
            if self.conn.their_state is not h11.IDLE:
                self._uncounted = True  # a body, or the next request's head (pipelining, RFC 9112 §9.3.2)
            elif not self._uncounted and self._head_too_large(data):
                return
            super().data_received(data)  # with bytes uncounted, handle_events counts h11's whole buffer

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer when h11 refuses what the client sent (uvicorn has logged one warning).
            h11 takes a response only while ours has not begun. Then the app, if it still runs, must not
            answer too: its response raised LocalProtocolError in h11, a logged traceback, so it is told
            the client left. Once ours has begun (the app answered without reading the body), that one
            is the answer, and uvicorn's 400 raised out of data_received, a logged traceback: the
            connection is closed when our response is complete."""
            # uvicorn's 400 closed at once: a client still sending (an upload) got a reset, not the 400
            if not self._answer_instead(guard.bad_request):
                cycle = self.cycle
                if cycle is not None and not cycle.response_complete:
                    cycle.keep_alive = False
                else:
                    self.transport.close()

        def _answer_instead(self, response: bytes) -> bool:
            """Answer ``response`` in the app's place, then linger, if no answer has begun (h11 takes a
            response only then); the app, if it still runs, is told the client left: its send() is a
            no-op, its receive() http.disconnect. False when an answer has begun."""
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return False
            self._answer_and_linger(response)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
                # Expect: 100-continue: its receive() wrote "100 Continue" after our answer, after write_eof,
                # a RuntimeError in the app (a 500 and a traceback)
                cycle.waiting_for_100_continue = False
            return True

        def _head_too_large(self, data: bytes) -> bool:
            """Count ``data`` into the request head; at more than the limit, answer 431 (or 414) and
            linger. The head ends at the first blank line, found as h11 finds it."""
            seen = self._head_tail + data
            end = BLANK_LINE.search(seen)
            size = self._head_bytes + (end.end() if end else len(seen)) - len(self._head_tail)
            line_end = -1 if self._line_fits else seen.find(b"\n")
            if line_end >= 0:
                self._line_fits = self._head_bytes + line_end + 1 - len(self._head_tail) <= guard.max_header_bytes
            if size > guard.max_header_bytes:
                self._refuse_head(line_only=not self._line_fits)
                return True
            if end is not None:  # complete: the next head is counted from its first byte
                self._head_bytes, self._line_fits, self._head_tail = 0, False, b""
                self._uncounted = self._uncounted or end.end() < len(seen)
            else:
                self._head_bytes, self._head_tail = size, seen[-2:]
            return False

        def _refuse_head(self, *, line_only: bool) -> None:
            guard.too_large += 1
            guard.note()
            self._answer_and_linger(guard.head_too_large(line_only))

        def _answer_and_linger(self, response: bytes) -> None:
            """Send ``response`` (it says Connection: close), shut our side, and read and drop what the
            client still sends until it closes (RFC 9112 §9.6): closing with its bytes unread would
            reset the connection, and the client, still writing, would never read the answer."""
            self._cancel_header_timer()
            self.transport.write(response)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            # the client closes when it has read the answer (eof_received closes ours); one that does
            # not is closed after http_header_timeout, as a client that sends no head at all
            self._linger = self.loop.call_later(guard.header_timeout, self.transport.close)

        def _head_ready(self) -> bool:
            """h11 is about to parse a request head (:class:`CountedConnection`): True refuses it. A head
            whose bytes arrived uncounted (with or during the previous request) is counted now from h11's
            buffer: h11 would parse one that is whole there however large it is (it bounds incomplete ones
            only)."""
            if self._linger is not None:
                return True
            if not self._uncounted:
                return False
            self._uncounted = False
            self._head_bytes, self._line_fits, self._head_tail = 0, False, b""
            return self._head_too_large(self.conn.trailing_data[0])

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request head has arrived
                self._cancel_header_timer()
            cycle = self.cycle
            if cycle is not None and cycle is not self._watched:
                # a new request: its endpoint's task was created in super().handle_events() and runs once
                # this callback returns, so it finds the watch in its scope
                self._watched, self._watch = cycle, BodyWatch(self._check_body)
                extension: dict[object, object] = {"watch": self._watch}
                cycle.scope.setdefault("extensions", {})[BODY_LIMIT_EXTENSION] = extension
            if self._watch is not None:
                self._check_body(self._watch)

        def _check_body(self, watch: BodyWatch) -> None:
            """413 at once when the chunk h11 is reading would take the body past the endpoint's limit."""
            limit = watch.limit
            if limit is None or watch is not self._watch or self._linger is not None:
                return
            if self.conn.their_state is not h11.SEND_BODY or self.conn.announced <= limit.limit:
                return
            guard.body_too_large += 1
            guard.note()
            response = guard.chunk_too_large(limit, self.conn.announced, self.conn.body_bytes)
            if not self._answer_instead(response) and self.cycle is not None:
                self.cycle.keep_alive = False  # the endpoint answers (it counts the bytes too); then close

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(guard.header_timeout, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            guard.timed_out += 1
            guard.note()
            if self.conn.trailing_data[0]:  # part of a head: say why
                self.transport.write(guard.too_slow)
            self.transport.close()

    return GuardedH11Protocol


#: accept() errors that mean "out of descriptors or memory for now": wait, then try again
EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: first and longest wait after such an error (seconds)
BACKOFF_FIRST: Final = 0.01
BACKOFF_MOST: Final = 1.0


class HttpListener:
    """Accepts HTTP connections on ``sock`` and hands them to ``protocol_factory`` (uvicorn's), at
    most ``guard.max_connections`` open at once (``open_count()`` says how many are)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        open_count: Callable[[], int],
        guard: ConnectionGuard,
    ) -> None:
        self.sock, self.factory, self.open_count, self.guard = sock, protocol_factory, open_count, guard
        self.exhausted = 0
        self._task: asyncio.Task[None] | None = None
        self._last_log = 0.0

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(), name="minipacs-http-accept")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_FIRST
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    raise
                self._note_exhausted(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MOST)
                continue
            delay = BACKOFF_FIRST
            if self.open_count() >= self.guard.max_connections:
                self._refuse(conn)
                continue
            try:
                # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and an
                # accepted socket of socket.create_server has proto 0: without this, a response
                # written as headers then body waits for the client's delayed ACK (~40 ms) on
                # every request of a kept-alive connection after the first.
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.connect_accepted_socket(self.factory, conn)
            except OSError:
                conn.close()

    def _refuse(self, conn: socket.socket) -> None:
        self.guard.refused += 1
        self.guard.note()
        try:
            conn.setblocking(False)
            conn.send(self.guard.refusal)  # a few hundred bytes: the socket buffer takes them
        except OSError:
            pass
        conn.close()

    def _note_exhausted(self, exc: OSError) -> None:
        self.exhausted += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.error(
                "HTTP cannot accept connections: %s (%d time(s)); waiting up to %g s between tries; "
                "raise the open-file limit or lower http_max_connections (logged at most every %g s)",
                exc.strerror,
                self.exhausted,
                BACKOFF_MOST,
                LOG_EVERY,
            )


class BodyTimeout(HttpError):
    """408: the request body stopped arriving."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            "request_timeout",
            f"the request body stopped arriving: nothing for {seconds:g} "
            "seconds (http_body_timeout); nothing was stored",
            headers={"Connection": "close"},
        )


class BodyTimeoutMiddleware:
    """ASGI middleware: a ``receive()`` for request body that waits more than ``timeout`` raises BodyTimeout.
    Once the body is complete, ``receive()`` (which then waits for the client to leave) is left alone."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise BodyTimeout(self.timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


def refuse_declared_length(request: Request, limit: int, what: str, fix: str) -> None:
    """Refuse a request whose Content-Length declares more than ``limit`` bytes of body, before a byte
    of it is read: HttpError 413 naming ``what`` (the body) and ``fix`` (what the limit is, what to do).

    RFC 9110 §8.6: Content-Length = 1*DIGIT. A value that is not (a sign, a superscript digit, which
    ``str.isdigit`` takes and ``int()`` refuses, a list) is invalid framing: 400 (RFC 9112 §6.3). A
    value of more than :data:`MAX_DIGITS` digits is larger than any limit: refused without ``int()``,
    which raises ValueError beyond 4300 digits (that was a 500). No Content-Length: the caller counts, and
    the connection (:class:`BodyWatch`, when the server is ours) answers 413 as soon as a chunk of a chunked
    body announces more than ``limit`` in all, without waiting for its bytes."""
    extension = request.scope.get("extensions", {}).get(BODY_LIMIT_EXTENSION, {})
    watch = extension.get("watch") if isinstance(extension, dict) else None
    if isinstance(watch, BodyWatch):
        watch.declare(BodyLimit(limit, what, fix))
    declared = request.headers.get("content-length")
    if declared is None:
        return
    declared = declared.strip()
    if not (declared.isascii() and declared.isdigit()):
        raise HttpError(
            400,
            "invalid_content_length",
            f"Content-Length {declared[:20]!r} is not a number of bytes (RFC 9110 §8.6: digits only)",
        )
    if not ascii_digits(declared) or int(declared) > limit:
        size = declared if len(declared) <= MAX_DIGITS else f"a {len(declared)}-digit number of"
        raise HttpError(413, "too_large", f"{what} is {size} bytes; {fix}")


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard one (each HTTP connection and DICOM association
    holds one); logged. Returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft, hard
        log.info("open-file limit raised from %d to %d (RLIMIT_NOFILE)", soft, hard)
        soft = hard
    return soft, hard


def check_fd_budget(settings: Settings, soft: int) -> None:
    """Warn when the connection limits could use up the descriptors on their own."""
    wanted = settings.http_max_connections + settings.max_associations + 256  # files, index, logs, ...
    if soft != resource.RLIM_INFINITY and wanted > soft:
        log.warning(
            "http_max_connections (%d) + max_associations (%d) + 256 for files is more than the open-file "
            "limit %d: lower http_max_connections, or raise the limit (ulimit -n, LimitNOFILE= in systemd)",
            settings.http_max_connections,
            settings.max_associations,
            soft,
        )


def uvicorn_options(guard: ConnectionGuard) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments for the limits above."""
    # h11's own bound on a head still incomplete, the same (ours counts first and answers 431 or 414)
    return {"http": guarded_protocol(guard), "h11_max_incomplete_event_size": guard.max_header_bytes}


__all__ = [
    "BODY_LIMIT_EXTENSION",
    "BodyLimit",
    "BodyTimeout",
    "BodyTimeoutMiddleware",
    "BodyWatch",
    "ConnectionGuard",
    "CountedConnection",
    "HttpListener",
    "check_fd_budget",
    "guarded_protocol",
    "raise_fd_limit",
    "refuse_declared_length",
    "uvicorn_options",
]
