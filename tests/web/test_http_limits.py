"""Issue 8 item 6: the HTTP connection cap, header and body timeouts, the open-file limit.

Against the real server (uvicorn in this process and loop, raw sockets as clients), and
one test against `minipacs serve` whose open-file limit is lowered while HTTP is flooded.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import resource
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.web.limits import raise_fd_limit
from minipacs.web.server import start_http
from tests.peers import dcmtk, free_port, start_server, wait_for_port

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


OPEN: list[asyncio.StreamWriter] = []


def serve(tmp_path: Path, body: Callable[[int], Awaitable[Any]], **settings: Any) -> Any:
    """``await body(port)`` while the HTTP server runs with ``settings``; the test's connections are
    closed at the end."""

    async def main() -> Any:
        config = Settings(data_dir=tmp_path / "data", fsync=False, http_port=free_port(), **settings)
        archive = await open_archive(config)
        http = await start_http(config, archive, None)
        try:
            return await body(http.port)
        finally:
            for writer in OPEN:
                writer.close()
                await asyncio.gather(writer.wait_closed(), return_exceptions=True)
            OPEN.clear()
            await http.close()
            await archive.close()

    return asyncio.run(main())


async def connect(port: int) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    OPEN.append(writer)
    return reader, writer


async def answer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything until the server closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


GET = b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"


async def status_of(port: int, request: bytes = GET) -> bytes:
    reader, writer = await connect(port)
    writer.write(request)
    return await asyncio.wait_for(reader.readline(), 10)


def test_connections_at_http_max_connections(tmp_path: Path) -> None:
    async def body(port: int) -> None:
        held = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.3)  # accepted and counted by the server
        reader, _ = await connect(port)
        refused = await answer(reader)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"Retry-After: 1" in refused and b"http_max_connections" in refused
        held[0][1].close()
        await asyncio.sleep(0.3)
        assert (await status_of(port)).startswith(b"HTTP/1.1 200"), "a freed place is taken again"
        for _, writer in held[1:]:
            writer.close()

    serve(tmp_path, body, http_max_connections=3, http_header_timeout=30.0)


def test_request_head_at_http_header_timeout(tmp_path: Path) -> None:
    async def body(port: int) -> None:
        # a head that arrives in pieces, complete before the timeout: served
        reader, writer = await connect(port)
        for piece in (GET[:10], GET[10:25], GET[25:]):
            writer.write(piece)
            await asyncio.sleep(0.2)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        # silent: closed without a word after the timeout
        reader, writer = await connect(port)
        started = time.monotonic()
        assert await answer(reader) == b""
        assert 0.9 <= time.monotonic() - started < 8
        # half a head: 408 with a sentence
        reader, writer = await connect(port)
        writer.write(GET[:25])
        slow = await answer(reader)
        assert slow.startswith(b"HTTP/1.1 408 ") and b"http_header_timeout" in slow, slow
        # the timer starts again after a response on a kept-alive connection
        reader, writer = await connect(port)
        writer.write(GET)
        await asyncio.sleep(0.3)
        writer.write(GET[:25])
        rest = await answer(reader)
        assert rest.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 408 " in rest, rest[-300:]

    serve(tmp_path, body, http_header_timeout=1.0)


def test_request_body_at_http_body_timeout(tmp_path: Path) -> None:
    head = b"POST /api/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\nContent-Length: 1000\r\n\r\n"

    async def body(port: int) -> None:
        # a body that stops: 408 after the timeout, and the connection is closed
        reader, writer = await connect(port)
        writer.write(head + b"x" * 10)
        started = time.monotonic()
        stalled = await answer(reader)
        assert stalled.startswith(b"HTTP/1.1 408 ") and b"http_body_timeout" in stalled, stalled
        assert 0.9 <= time.monotonic() - started < 8
        # a body that keeps moving (a piece every 0.4 s, 2 s in all) is read to its end
        reader, writer = await connect(port)
        writer.write(head)
        for _ in range(5):
            await asyncio.sleep(0.4)
            writer.write(b"x" * 200)
        done = await asyncio.wait_for(reader.readline(), 10)
        assert done.startswith(b"HTTP/1.1 400"), done  # read whole: not a DICOM file
        writer.close()

    serve(tmp_path, body, http_body_timeout=1.0, http_header_timeout=30.0)


def test_raise_fd_limit_raises_soft_to_hard(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        with caplog.at_level("INFO", logger="minipacs.web"):
            assert raise_fd_limit() == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert f"open-file limit raised from {min(256, hard)} to {hard}" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.interop
def test_an_http_flood_leaves_dicom_accepting(tmp_path: Path) -> None:
    """The issue's case: idle HTTP sockets used up the descriptors and DICOM stopped accepting. With the
    server's open-file limit lowered to 300 and 400 idle HTTP connections, the cap (100) refuses the
    rest at once and a C-ECHO still gets through; the log stays short."""
    http_port = free_port()
    srv = start_server(
        tmp_path,
        env={"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_HTTP_MAX_CONNECTIONS": "100", "MINIPACS_FSYNC": "false"},
    )
    socks: list[socket.socket] = []
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (300, 300))
        for _ in range(400):
            socks.append(socket.create_connection(("127.0.0.1", http_port)))
        time.sleep(1.0)
        refused = 0
        for sock in socks:
            sock.settimeout(0.05)
            try:
                refused += sock.recv(100).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass
        assert refused >= 290, refused
        echo = subprocess.run(
            [dcmtk("echoscu"), "-to", "10", "127.0.0.1", str(srv.port)], capture_output=True, timeout=60, check=False
        )
        assert echo.returncode == 0, echo.stderr
    finally:
        for sock in socks:
            sock.close()
        srv.stop()
    log = srv.log_text()
    assert "Too many open files" not in log and len(log.splitlines()) < 100, log[-3000:]


@pytest.mark.slow
@pytest.mark.interop
def test_out_of_descriptors_the_accept_loop_backs_off_and_recovers(tmp_path: Path) -> None:
    """With a cap above the open-file limit, descriptors do run out: accepting waits and logs once
    (asyncio's own loop logged a traceback per try, thousands a second), and once the idle
    connections time out (http_header_timeout) HTTP and DICOM both accept again."""
    http_port = free_port()
    srv = start_server(
        tmp_path,
        env={
            "MINIPACS_HTTP_PORT": str(http_port),
            "MINIPACS_FSYNC": "false",
            "MINIPACS_HTTP_MAX_CONNECTIONS": "1000",
            "MINIPACS_HTTP_HEADER_TIMEOUT": "2",
        },
    )
    socks: list[socket.socket] = []
    try:
        wait_for_port("127.0.0.1", http_port, proc=srv.proc)
        resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (300, 300))
        for _ in range(400):
            socks.append(socket.create_connection(("127.0.0.1", http_port)))
        time.sleep(4.0)  # the held ones time out; the waiting ones are accepted and time out in turn
        for sock in socks:
            sock.close()
        time.sleep(2.5)
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
            sock.sendall(b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(20).startswith(b"HTTP/1.1 200"), "HTTP accepts again"
        echo = subprocess.run(
            [dcmtk("echoscu"), "-to", "10", "127.0.0.1", str(srv.port)], capture_output=True, timeout=60, check=False
        )
        assert echo.returncode == 0, echo.stderr
    finally:
        for sock in socks:
            sock.close()
        srv.stop()
    log = srv.log_text()
    assert "HTTP cannot accept connections: Too many open files" in log, log[-3000:]
    assert log.count("HTTP cannot accept connections") <= 2 and "socket.accept() out of system resource" not in log


def _keep_alive_round_trips(port: int, count: int) -> list[float]:
    """Seconds per GET /api/stats on ONE kept-alive connection (a blocking client, Nagle on, as curl
    and browsers leave the server's side to decide)."""
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    v for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            times.append(time.perf_counter() - start)
    return times


def test_kept_alive_connections_answer_without_waiting_for_delayed_acks(tmp_path: Path) -> None:
    """Headers and body go out as two writes; without TCP_NODELAY on the accepted socket (asyncio
    leaves it off for a socket whose proto is 0) every request after the first took ~40 ms."""

    async def body(port: int) -> list[float]:
        return await asyncio.to_thread(_keep_alive_round_trips, port, 21)

    times = sorted(serve(tmp_path, body)[1:])  # the first request never waited
    median = times[len(times) // 2]
    assert median < 0.02, f"median {median * 1000:.1f} ms per request on a kept-alive connection"


def _head(size: int, extra: bytes = b"", path: bytes = b"/api/openapi.json") -> bytes:
    """A GET whose head (request line, header fields, blank line; RFC 9112 §2.1) is ``size`` bytes."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"X-Pad: "
    pad = size - len(start) - 4
    assert pad >= 0
    head = start + b"a" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


def _exchange(port: int, data: bytes, piece: int) -> bytes:
    """Send ``data`` in ``piece``-byte writes, as a client that writes its whole request before it reads,
    then read until the server closes (a reset instead of the answer raises ConnectionResetError)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        for start in range(0, len(data), piece):
            sock.sendall(data[start : start + piece])
            time.sleep(0.002)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("piece", [1 << 20, 1000], ids=["one-write", "in-pieces"])
def test_request_head_at_http_max_header_bytes(tmp_path: Path, piece: int) -> None:
    """RFC 6585 §5: a request head over http_max_header_bytes is answered 431, and the connection closed
    only once the client has sent the rest (RFC 9112 §9.6), so the answer is not lost to a reset. uvicorn
    counted only what h11 buffered of a head still incomplete: a head over the limit in one write was
    served, in pieces the connection was reset before the client read the 400. At the limit: served, on a
    kept-alive connection twice."""
    limit = 2048

    async def body(port: int) -> None:
        twice = _head(limit) + _head(limit, b"Connection: close\r\n")
        served = await asyncio.to_thread(_exchange, port, twice, piece)
        assert served.count(b"HTTP/1.1 200 OK") == 2, served[:300]
        for over in (_head(limit + 1), _head(limit + 1, b"Connection: close\r\n") + b"x" * 70000):
            refused = await asyncio.to_thread(_exchange, port, over, piece)
            assert refused.startswith(b"HTTP/1.1 431 "), refused[:300]
            assert b"http_max_header_bytes (2048 bytes)" in refused and refused.count(b"HTTP/1.1") == 1

    serve(tmp_path, body, http_max_header_bytes=limit)


@pytest.mark.parametrize("piece", [1 << 20, 1000], ids=["one-write", "in-pieces"])
def test_a_pipelined_head_is_held_to_http_max_header_bytes(tmp_path: Path, piece: int) -> None:
    """RFC 9112 §9.3.2: a client may send its next requests before the answers. Their heads arrived in the
    read of the first one, or while it was answered, and h11 parsed them whole from its buffer without our
    count: a head of any size up to asyncio's 256 KiB read was served. Now each is counted when its turn
    comes: the earlier requests are answered, then 431; one at the limit after a POST's body is served."""
    limit = 2048

    async def body(port: int) -> None:
        over = _head(limit) + _head(limit) + _head(limit + 1, b"Connection: close\r\n")
        answered = await asyncio.to_thread(_exchange, port, over, piece)
        assert answered.count(b"HTTP/1.1 200 OK") == 2 and answered.count(b"HTTP/1.1") == 3, answered[:300]
        assert b"HTTP/1.1 431 " in answered and b"http_max_header_bytes (2048 bytes)" in answered
        big = await asyncio.to_thread(_exchange, port, _head(limit) + _head(200_000), piece)
        assert big.count(b"HTTP/1.1 200 OK") == 1 and b"HTTP/1.1 431 " in big, big[:300]
        post = b"POST /api/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        post += b"Content-Length: 2\r\n\r\n{}"
        served = await asyncio.to_thread(_exchange, port, post + _head(limit, b"Connection: close\r\n"), piece)
        assert served.count(b"HTTP/1.1") == 2 and served.rfind(b"HTTP/1.1 200 OK") > 0, served[:300]
        refused = await asyncio.to_thread(_exchange, port, post + _head(limit + 1), piece)
        assert refused.count(b"HTTP/1.1") == 2 and b"HTTP/1.1 431 " in refused, refused[:300]

    serve(tmp_path, body, http_max_header_bytes=limit)


def test_a_request_line_over_http_max_header_bytes_is_414(tmp_path: Path) -> None:
    """RFC 9112 §3: a request-target longer than the server will parse is 414 (URI Too Long); the
    request line alone at the limit is still a request line (its header fields then make it a 431)."""
    limit = 2048

    async def body(port: int) -> None:
        for line_size, status in ((limit, b"431"), (limit + 1, b"414")):
            line = b"GET /api/openapi.json?" + b"a" * (line_size - len(b"GET /api/openapi.json? HTTP/1.1\r\n"))
            request = line + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            assert request.index(b"\n") + 1 == line_size
            answer_ = await asyncio.to_thread(_exchange, port, request, 500)
            assert answer_.startswith(b"HTTP/1.1 " + status + b" "), answer_[:300]

    serve(tmp_path, body, http_max_header_bytes=limit)


def test_a_70_kb_head_at_the_default_http_max_header_bytes_is_431_not_a_reset(tmp_path: Path) -> None:
    """The web fuzz's case: a 70 kB header field, sent in 8 kB writes, at the default limit."""

    async def body(port: int) -> None:
        refused = await asyncio.to_thread(_exchange, port, _head(70000), 8192)
        assert refused.startswith(b"HTTP/1.1 431 "), refused[:300]
        assert b"http_max_header_bytes (16384 bytes)" in refused

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("value", "accepted"), [("1023", False), ("1024", True), ("1048576", True), ("1048577", False), ("1e4", False)]
)
def test_http_max_header_bytes_is_validated_at_its_bounds(value: str, accepted: bool) -> None:
    from minipacs.config import ConfigError, load_settings

    env = {"MINIPACS_HTTP_MAX_HEADER_BYTES": value}
    if accepted:
        assert load_settings(env=env).http_max_header_bytes == int(value)
    else:
        with pytest.raises(ConfigError, match="http_max_header_bytes"):
            load_settings(env=env)
    assert load_settings(env={}).http_max_header_bytes == 16384


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


BAD_CHUNK = b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n"


@pytest.mark.parametrize(
    ("later", "status"), [(False, b"400"), (True, b"200")], ids=["before-the-app-answers", "after-it-answered"]
)
def test_a_body_h11_refuses_while_the_app_answers_is_one_log_line(tmp_path: Path, later: bool, status: bytes) -> None:
    """h11 refusing a body (a chunk size ``zz``) while the app still answers the request: uvicorn sent
    its 400, then the app's own response raised LocalProtocolError in h11 ("Exception in ASGI
    application", a traceback); when the app had answered already, uvicorn's 400 raised out of
    data_received (asyncio's "Fatal error: protocol.data_received() call failed", a traceback). Now:
    one response, uvicorn's one warning line, no traceback; the connection is closed."""
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio", "minipacs")]

    async def body(port: int) -> bytes:
        for logger in loggers:  # once uvicorn has configured its loggers (dictConfig drops handlers)
            logger.addHandler(records)
        reader, writer = await connect(port)
        head, bad = BAD_CHUNK
        if later:
            writer.write(head)
            await asyncio.sleep(0.3)  # the app has answered
            writer.write(bad)
        else:
            writer.write(head + bad)
        out = await answer(reader)
        await asyncio.sleep(0.3)  # the app's task has ended
        return out

    try:
        out = serve(tmp_path, body)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert out.startswith(b"HTTP/1.1 " + status + b" ") and out.count(b"HTTP/1.1 ") == 1, out[:300]
    lines = [(r.levelname, r.getMessage().splitlines()[0], r.exc_info is not None) for r in records.records]
    assert lines == [("WARNING", "Invalid HTTP request received.", False)], lines


def _stream_with_a_bad_chunk_midway(port: int, sop: str) -> bytes:
    """GET the instance's file with a chunked body, on a socket with a small receive buffer that reads
    nothing until the bad chunk is sent, so the response is mid-way (the app waits to write) when h11
    refuses the body; then read everything."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(10)
        sock.sendall(
            f"GET /api/instances/{sop}/file HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        time.sleep(0.5)
        sock.sendall(b"zz\r\n")
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
        return received


def _dechunk(content: bytes) -> bytes:
    """A chunked body (RFC 9112 §7.1) without extensions or trailers, whole."""
    out = b""
    while True:
        size_line, _, content = content.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return out
        out, content = out + content[:size], content[size + 2 :]


def test_a_body_h11_refuses_while_the_response_streams_ends_it_whole_then_closes(tmp_path: Path) -> None:
    """The app answers without reading the body and its response is mid-way when h11 refuses the body:
    that response is the answer, sent whole; then the connection is closed (the body cannot be framed,
    so no next request can be read), with uvicorn's one warning line and no traceback."""
    from tests.web.conftest import part10

    sop = "1.2.826.0.1.3680043.10.9.77"
    data = part10(sop_uid=sop, rows=1448, cols=1448)
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio", "minipacs")]

    async def body(port: int) -> bytes:
        reader, writer = await connect(port)
        writer.write(
            b"POST /api/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
            + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        stored = await answer(reader, 60)
        assert stored.startswith(b"HTTP/1.1 200 "), stored[:300]
        for logger in loggers:
            logger.addHandler(records)
        out = await asyncio.to_thread(_stream_with_a_bad_chunk_midway, port, sop)
        await asyncio.sleep(0.3)
        return out

    try:
        out = serve(tmp_path, body)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    head, _, content = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 1, head
    sent, got = (pydicom.dcmread(io.BytesIO(b)) for b in (data, _dechunk(content)))  # whole: parses
    assert got.SOPInstanceUID == sop and got.PixelData == sent.PixelData
    lines = [(r.levelname, r.getMessage().splitlines()[0], r.exc_info is not None) for r in records.records]
    assert lines == [("WARNING", "Invalid HTTP request received.", False)], lines


def test_a_400_for_a_body_h11_refuses_reaches_a_client_still_sending(tmp_path: Path) -> None:
    """A chunked upload whose framing breaks a few bytes in, from a client that goes on sending (1 MB
    more) before it reads: the 400 is sent, then our side shut down and the rest read and dropped
    (RFC 9112 §9.6), as after a 431; uvicorn closed at once, a reset that lost the 400."""
    head = (
        b"POST /api/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n"
    )

    async def body(port: int) -> bytes:
        return await asyncio.to_thread(_exchange, port, head + b"x" * (1 << 20), 16384)

    out = serve(tmp_path, body)
    assert out.startswith(b"HTTP/1.1 400 ") and out.count(b"HTTP/1.1 ") == 1, out[:300]


def _early_answer_then(port: int, rest: bytes) -> bytes:
    """A POST that the app answers without reading its body (405: openapi.json is GET only), the answer
    read, then ``rest``: the body's last bytes and whatever follows on the connection; everything read
    until the server closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"POST /api/openapi.json HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            received += sock.recv(65536)  # the 405, a JSON body
        sock.sendall(rest)
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_head_after_a_body_read_past_an_early_answer_is_held_to_http_max_header_bytes(tmp_path: Path) -> None:
    """A request answered before its body was read (here a 405) keeps its connection: h11 reads the rest of
    the body, and uvicorn then starts the next cycle and parses the next head within the same call, whole
    from h11's buffer, before anything of ours could count it: a head of any size up to asyncio's 256 KiB
    read was served. It is now counted just before h11 parses it (CountedConnection): over the limit, 431;
    at the limit, served."""
    limit = 2048

    async def body(port: int) -> None:
        for size, status in ((limit, b"200 OK"), (limit + 1, b"431 "), (100_000, b"431 ")):
            head = _head(size, b"Connection: close\r\n")
            out = await asyncio.to_thread(_early_answer_then, port, b"67890" + head)
            assert out.startswith(b"HTTP/1.1 405 ") and out.count(b"HTTP/1.1 ") == 2, out[:300]
            assert b"HTTP/1.1 " + status in out, (size, out[:600])

    serve(tmp_path, body, http_max_header_bytes=limit)


UPLOAD = (
    b"POST /api/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\nTransfer-Encoding: chunked\r\n\r\n"
)
NODE = b"POST /api/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _timed_answer(port: int, request: bytes) -> tuple[bytes, float]:
    """Send ``request`` and keep the connection open without sending more: what the server answers before
    it closes, and how long that took."""
    reader, writer = await connect(port)
    writer.write(request)
    started = time.monotonic()
    out = await answer(reader, 15)
    return out, time.monotonic() - started


def test_a_chunk_announced_past_the_body_limit_is_413_at_once(tmp_path: Path) -> None:
    """RFC 9112 §7.1: a chunk's size comes before its data. One that would take the body past what the
    endpoint accepts (max_upload_bytes here, 4096; a JSON body's 1 MiB) is refused as its size line arrives,
    413 (RFC 9110 §15.5.14) naming the limit; it waited for http_body_timeout (a 408), since the endpoint
    only counted the bytes that came. At the limit exactly, the body is read (and refused as no DICOM file,
    a 400). No traceback is logged."""
    limit = 4096
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "asyncio", "minipacs")]
    x2048 = b"800\r\n" + b"x" * 2048 + b"\r\n"

    async def body(port: int) -> None:
        for logger in loggers:
            logger.addHandler(records)
        for sent, announced, received in (
            (b"ffffffffff\r\n", 0xFFFFFFFFFF, 0),
            (b"f" * 20 + b"\r\n", 16**20 - 1, 0),  # the most hex digits h11 reads
            (b"1001\r\n", limit + 1, 0),
            (x2048 + b"801;ext=1\r\n" + b"x" * 100, limit + 1, 2148),
        ):
            out, took = await _timed_answer(port, UPLOAD + sent)
            assert out.startswith(b"HTTP/1.1 413 Content Too Large\r\n") and out.count(b"HTTP/1.1 ") == 1, out[:300]
            assert took < 3, f"{took:.1f} s: waited for the body"
            message = json.loads(out.partition(b"\r\n\r\n")[2])["error"]
            assert message["code"] == "too_large", message
            assert f"would be at least {announced} bytes: {received} bytes in" in message["message"]
            assert "this server accepts at most 4096 (max_upload_bytes)" in message["message"]
        whole = UPLOAD + b"1000\r\n" + b"x" * limit + b"\r\n0\r\n\r\n"  # announced and sent: exactly the limit
        out, _ = await _timed_answer(port, whole.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        assert out.startswith(b"HTTP/1.1 400 ") and b"max_upload_bytes" not in out, out[:400]
        twice = UPLOAD + x2048 + x2048 + b"0\r\n\r\n"
        out, _ = await _timed_answer(port, twice.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        assert out.startswith(b"HTTP/1.1 400 ") and b"max_upload_bytes" not in out, out[:400]
        expecting = UPLOAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1)
        out, _ = await _timed_answer(port, expecting + b"1001\r\n")  # no "100 Continue" after the answer
        assert out.startswith(b"HTTP/1.1 413 ") and out.count(b"HTTP/1.1 ") == 1, out[:300]
        out, took = await _timed_answer(port, NODE + b"100001\r\n{")
        assert out.startswith(b"HTTP/1.1 413 ") and took < 3, out[:300]
        assert b"the JSON body would be at least 1048577 bytes" in out and b"at most 1048576" in out, out
        json_limit = NODE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        out, _ = await _timed_answer(port, json_limit + b"100000\r\n" + b" " * (1 << 20) + b"\r\n0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ") and b"invalid_json" in out, out[:400]  # read: all white space
        await asyncio.sleep(0.3)  # the endpoints' tasks have ended

    try:
        serve(tmp_path, body, max_upload_bytes=limit, http_body_timeout=20.0)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    tracebacks = [r.getMessage() for r in records.records if r.exc_info is not None]
    assert not tracebacks, tracebacks
    staged = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and "staging" in p.parts]
    assert not staged, staged  # the endpoint was told the client left: nothing staged stays


def test_a_413_for_an_announced_chunk_reaches_a_client_still_sending(tmp_path: Path) -> None:
    """A client that announces a chunk past max_upload_bytes and goes on sending (1 MB more) before it
    reads gets the 413, not a reset: our side is shut, the rest read and dropped (RFC 9112 §9.6)."""

    async def body(port: int) -> bytes:
        return await asyncio.to_thread(_exchange, port, UPLOAD + b"ffffffffff\r\n" + b"x" * (1 << 20), 16384)

    out = serve(tmp_path, body, max_upload_bytes=4096)
    assert out.startswith(b"HTTP/1.1 413 ") and out.count(b"HTTP/1.1 ") == 1 and b"max_upload_bytes" in out, out[:300]


@pytest.mark.parametrize(
    "size_line",
    [b"f" * 5000 + b"\r\n", b"0" * 4999 + b"1\r\n", b"f" * 200_000],
    ids=["5000-hex-digits", "5000-digits-of-value-1", "200-kB-unended"],
)
def test_a_chunk_size_line_of_absurd_length_is_400_at_once(tmp_path: Path, size_line: bytes) -> None:
    """h11 reads a chunk size of at most 20 hex digits (2^80 - 1 bytes; any more is past every limit) and
    buffers at most http_max_header_bytes of a line still incomplete: a line of thousands of digits is a
    400 as it arrives, held in no more memory than that bound, not a wait for http_body_timeout."""

    async def body(port: int) -> tuple[bytes, float]:
        return await _timed_answer(port, UPLOAD + size_line)

    out, took = serve(tmp_path, body, max_upload_bytes=4096, http_body_timeout=20.0)
    assert out.startswith(b"HTTP/1.1 400 ") and b"chunked coding" in out, out[:300]
    assert took < 3, f"{took:.1f} s"


def test_counted_connection_tells_what_a_chunk_announces() -> None:
    """CountedConnection reads h11's private count of a chunk's bytes still to come
    (``ChunkedReader._bytes_in_chunk``): this fails if an h11 release renames it, instead of the 413 of
    test_a_chunk_announced_past_the_body_limit_is_413_at_once silently becoming a 408."""
    import h11

    from minipacs.web.limits import CountedConnection

    refuse = False
    conn = CountedConnection(16384, lambda: refuse)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nffff\r\nab")
    events = [conn.next_event() for _ in range(4)]
    assert [type(e) for e in events] == [h11.Request, h11.Data, h11.Data, type(h11.NEED_DATA)], events
    assert (conn.body_bytes, conn.announced) == (5, 3 + 0xFFFF)
    refuse = True
    conn = CountedConnection(16384, lambda: refuse)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.next_event() is h11.NEED_DATA and conn.their_state is h11.IDLE  # refused: not parsed
