"""Hostile and careless clients against the listener's limits (issue 8 items 2-4, 6, 16), on
loopback with real sockets: idle associations, connections that never associate, stalled TLS
handshakes, pipelined requests never read, and accept() failing for lack of file descriptors."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from minipacs.config import ConfigError, load_settings
from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.net.association import (
    Association,
    AssociationRejected,
    AssociationSettings,
    Message,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.dul import KEEPALIVE_IDLE, Timeouts
from minipacs.net.pdu import encode_pdu, pdata_pdu_header
from minipacs.net.pdu_items import AsynchronousOperationsWindow
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.net.tls import client_context, server_context
from minipacs.services.base import Service
from minipacs.services.dispatch import Operation, Response
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP, echo
from tests.net.test_association import (
    SERVER_AE,
    proposal,
    serving,
    settings,
    wait_until_idle,
)
from tests.peers import start_server
from tests.tls_certs import Certificates, make_pki

pytestmark = pytest.mark.interop


def test_idle_timeout_applies_after_every_request() -> None:
    """Issue 8 item 2: 32 associations that each did one C-ECHO and went quiet are aborted after
    idle_timeout (not held for ever), and a new client can associate again."""
    timeouts = Timeouts(acse=1.0, dimse=3.0, idle=1.0)

    async def run() -> None:
        async with serving(timeouts=timeouts, max_associations=32) as server:
            quiet: list[Association] = []
            for _ in range(32):
                assoc = await connect("127.0.0.1", server.port, proposal(), settings())
                assert await echo(assoc) == 0
                quiet.append(assoc)
            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(a.wait_closed() for a in quiet)), timeouts.idle + 4)
            assert time.monotonic() - started >= timeouts.idle * 0.5
            assert all("aborted by peer" in a.aborted_reason for a in quiet)
            await wait_until_idle(server)
            fresh = await connect("127.0.0.1", server.port, proposal(), settings())
            assert await echo(fresh) == 0
            await fresh.release()

    asyncio.run(run())


def test_idle_timer_restarts_after_each_response() -> None:
    """An association that keeps working is never idle: echoes spaced just under idle_timeout."""
    timeouts = Timeouts(acse=1.0, dimse=3.0, idle=0.6)

    async def run() -> None:
        async with serving(timeouts=timeouts) as server:
            assoc = await connect("127.0.0.1", server.port, proposal(), settings())
            for _ in range(4):
                assert await echo(assoc) == 0
                await asyncio.sleep(0.35)
            await assoc.release()
            assert assoc.end_reason == "released"

    asyncio.run(run())


def test_tcp_keepalive_on_both_ends() -> None:
    """A peer that vanished without a FIN is found by TCP keepalive, on accepted and outgoing sockets."""

    async def run() -> None:
        async with serving() as server:
            assoc = await connect("127.0.0.1", server.port, proposal(), settings())
            (accepted,) = server.connections
            for sock in (assoc.dul.writer.get_extra_info("socket"), accepted.dul.writer.get_extra_info("socket")):
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
            await assoc.release()

    asyncio.run(run())


# ------------------------------------------------------------ connections that never associate (item 3)
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


@asynccontextmanager
async def listener(**options: Any) -> AsyncIterator[DicomServer]:
    options.setdefault("timeouts", Timeouts(acse=30.0, dimse=5.0, idle=30.0))
    server = DicomServer(SERVER_AE, [VerificationSCP()], host="127.0.0.1", port=0, max_pdu_send=0, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=0.5)


async def silent(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from ``source`` (any 127.x.y.z is ours on Linux) that never says a word."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def echo_from(port: int, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> int:
    assoc = await connect(
        "127.0.0.1",
        port,
        proposal(),
        AssociationSettings(
            ae_title="OURSCU", max_pdu_receive=16384, timeouts=Timeouts(acse=5, dimse=5, idle=5), tls_context=tls
        ),
        local_host=source,
        tls=tls is not None,
        connect_timeout=5,
    )
    status = await echo(assoc)
    await assoc.release()
    return status


def test_silent_connections_hold_no_association_slot_and_are_capped_per_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 8 item 3: silent TCP connections (more than max_associations + the old slack of 8)
    do not keep a real association out; the connection past max_pending_per_host from one address
    is closed at once, logged once with the address (not once per connection)."""
    caplog.set_level(logging.INFO, logger="minipacs")

    async def run() -> None:
        async with listener(max_associations=2, max_pending_connections=20, max_pending_per_host=6) as server:
            crowd = [await silent(server.port, f"127.0.0.{2 + i // 6}") for i in range(12)]
            await asyncio.sleep(0.2)
            assert all(not r.at_eof() for r, _w in crowd)
            # the 7th and 8th from 127.0.0.2: closed at once
            for _ in range(2):
                extra, extra_w = await silent(server.port, "127.0.0.2")
                assert await closed_within(extra, 1.0)
                extra_w.close()
            # two real associations (max_associations) are still possible from elsewhere
            first = await connect("127.0.0.1", server.port, proposal(), settings())
            assert await echo_from(server.port, "127.0.0.9") == 0
            assert await echo(first) == 0
            await first.release()
            for _r, w in crowd:
                w.close()

    asyncio.run(run())
    refusals = [r.getMessage() for r in caplog.records if "closed at once" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "127.0.0.2" in refusals[0] and "max_pending_per_host = 6" in refusals[0]


def test_one_address_holds_at_most_its_share_of_the_associations(caplog: pytest.LogCaptureFixture) -> None:
    """max_associations_per_host: a peer that opens associations and leaves them idle fills its own
    share only. Its next one is rejected (transient, local limit exceeded, PS3.8 Table 9-21) with the
    address and the limit in the log; another address still gets in, and a slot freed at the first
    address can be taken again. Up to the limit, nothing is refused."""
    caplog.set_level(logging.INFO, logger="minipacs")

    async def open_from(port: int, source: str) -> Association:
        return await connect("127.0.0.1", port, proposal(), settings(), local_host=source)

    async def run() -> None:
        async with listener(max_associations=4, max_associations_per_host=3) as server:
            idle = [await open_from(server.port, "127.0.0.2") for _ in range(3)]  # at the limit: accepted
            with pytest.raises(AssociationRejected) as info:
                await open_from(server.port, "127.0.0.2")
            rj = info.value.rj
            assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
            assert await echo_from(server.port, "127.0.0.3") == 0  # the 4th slot, from elsewhere
            await idle[0].release()
            await asyncio.sleep(0.1)
            again = await open_from(server.port, "127.0.0.2")
            assert await echo(again) == 0
            for assoc in [*idle[1:], again]:
                assert await echo(assoc) == 0, "the open associations are unaffected"
                await assoc.release()

    asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if "] association rejected:" in r.getMessage()]
    assert len(said) == 1, said
    assert "from 127.0.0.2" in said[0] and "(max_associations_per_host) is 3" in said[0]


def test_serve_takes_max_associations_per_host_and_refuses_a_negative_one(tmp_path: Path) -> None:
    """The setting reaches the real ``minipacs serve`` (MINIPACS_MAX_ASSOCIATIONS_PER_HOST=1: a second
    association from the same address is rejected, one from another address is not); a negative value
    is a ConfigError at start."""
    server = start_server(tmp_path, env={"MINIPACS_MAX_ASSOCIATIONS_PER_HOST": "1"})

    async def run() -> None:
        first = await connect("127.0.0.1", server.port, proposal(called="MINIPACS"), settings(), local_host="127.0.0.2")
        try:
            with pytest.raises(AssociationRejected):
                await connect("127.0.0.1", server.port, proposal(called="MINIPACS"), settings(), local_host="127.0.0.2")
            other = await connect(
                "127.0.0.1", server.port, proposal(called="MINIPACS"), settings(), local_host="127.0.0.3"
            )
            assert await echo(other) == 0
            await other.release()
        finally:
            await first.release()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="max_associations_per_host"):
        load_settings(None, env={"MINIPACS_DATA_DIR": str(tmp_path / "d"), "MINIPACS_MAX_ASSOCIATIONS_PER_HOST": "-1"})


def test_no_cap_per_address_when_it_is_zero() -> None:
    """max_associations_per_host = 0 (behind a load balancer without the PROXY protocol, every client
    has its address): one address may take every slot."""

    async def run() -> None:
        async with listener(max_associations=3, max_associations_per_host=0) as server:
            held = [
                await connect("127.0.0.1", server.port, proposal(), settings(), local_host="127.0.0.2")
                for _ in range(3)
            ]
            for assoc in held:
                assert await echo(assoc) == 0
                await assoc.release()

    asyncio.run(run())


def test_the_total_pending_cap() -> None:
    async def run() -> None:
        async with listener(max_pending_connections=4, max_pending_per_host=2) as server:
            crowd = [await silent(server.port, f"127.0.0.{2 + i // 2}") for i in range(4)]
            extra, extra_w = await silent(server.port, "127.0.0.20")
            assert await closed_within(extra, 1.0)
            extra_w.close()
            crowd[0][1].close()  # one leaves: room for one more
            await asyncio.sleep(0.2)
            assert await echo_from(server.port) == 0
            for _r, w in crowd[1:]:
                w.close()

    asyncio.run(run())


def test_a_connection_without_a_complete_associate_rq_is_closed_after_handshake_timeout() -> None:
    async def run() -> None:
        async with listener(handshake_timeout=1.0) as server:
            reader, writer = await silent(server.port, "127.0.0.1")
            writer.write(b"\x01\x00\x00\x00\x01\x00")  # an A-ASSOCIATE-RQ header, then nothing
            started = time.monotonic()
            assert await closed_within(reader, 5.0)
            assert 0.8 <= time.monotonic() - started < 4.0
            writer.close()
            assert await echo_from(server.port) == 0

    asyncio.run(run())


def test_stalled_tls_handshakes_block_neither_listener(tmp_path: Path, pki: Certificates) -> None:
    """40 stalled TLS handshakes (from 5 addresses) leave the plain port and the TLS port usable,
    and each is closed after handshake_timeout."""
    server_tls = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    client_tls = client_context(str(pki.ca))

    async def run() -> None:
        async with listener(max_associations=4, tls_port=0, tls_context=server_tls, handshake_timeout=1.5) as server:
            stalled = [await silent(server.tls_port, f"127.0.0.{2 + i // 8}") for i in range(40)]
            started = time.monotonic()
            assert await echo_from(server.port) == 0
            assert await echo_from(server.tls_port, "127.0.0.1", client_tls) == 0
            closed = await asyncio.gather(*(closed_within(r, 5.0) for r, _w in stalled))
            assert all(closed) and 1.0 <= time.monotonic() - started < 5.0
            for _r, w in stalled:
                w.close()

    asyncio.run(run())


# ------------------------------------------------------------ requests pipelined past the window (item 4)
def echo_rq(message_id: int) -> bytes:
    cmd = Command.make("C-ECHO-RQ", MessageID=message_id, AffectedSOPClassUID=VERIFICATION_SOP_CLASS).encode()
    return pdata_pdu_header(1, True, True, len(cmd)) + cmd


async def associate_raw(
    port: int, async_ops: AsynchronousOperationsWindow | None = None, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a peer that reads nothing, for real
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    rq = build_rq("RAW", SERVER_AE, [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LITTLE_ENDIAN])], settings("RAW"))
    rq.user_information.async_ops = async_ops
    writer.write(encode_pdu(rq))
    header = await asyncio.wait_for(reader.readexactly(6), 3)
    await reader.readexactly(struct.unpack(">xxL", header)[0])
    assert header[0] == 0x02, "A-ASSOCIATE-AC"
    return reader, writer


def test_pipelined_requests_never_read_keep_memory_flat(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 8 item 4: 50,000 C-ECHO-RQ pipelined by a peer that reads nothing. With no window
    proposed (1 outstanding) the server holds at most one more request, stops reading, aborts the
    peer after dimse_timeout of not reading, and logs ONE INFO line for what it left unanswered."""
    caplog.set_level(logging.DEBUG, logger="minipacs")
    timeouts = Timeouts(acse=1.0, dimse=1.5, idle=30.0)
    count = 50_000

    async def run() -> Association:
        async with serving(timeouts=timeouts) as server:
            _reader, writer = await associate_raw(server.port, rcvbuf=4096)
            (assoc,) = server.connections
            # small kernel buffers, so that the few MB of responses cannot all hide in them
            assoc.dul.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            flood = b"".join(echo_rq(i % 0xFFFF + 1) for i in range(count))
            writer.write(flood)
            sent = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(1.0)
            assert assoc.window == 1 and assoc.most_outstanding == 1
            assert len(assoc._tasks) <= 2 and len(assoc._held) <= 1  # (one may be finishing)
            assert assoc.dul._write_buffer_size() < 1024 * 1024
            assert assoc.dul.bytes_received < len(flood) // 2, "reading stopped"
            await asyncio.wait_for(assoc.wait_closed(), timeouts.dimse + 3)
            await wait_until_idle(server)
            sent.cancel()
            writer.transport.abort()
            return assoc

    assoc = asyncio.run(run())
    assert "has not read our data for 1.5s" in assoc.end_reason
    lines = [r for r in caplog.records if "not answered" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]
    assert f"ended with {assoc.unanswered} request(s) not answered" in lines[0].getMessage()
    assert 1 <= assoc.unanswered <= 2
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_peer_that_closes_with_requests_pending_gets_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def run() -> None:
        async with serving(timeouts=Timeouts(acse=1.0, dimse=10.0, idle=30.0)) as server:
            _reader, writer = await associate_raw(server.port, rcvbuf=4096)
            (assoc,) = server.connections
            assoc.dul.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            writer.write(b"".join(echo_rq(i % 0xFFFF + 1) for i in range(20_000)))
            await asyncio.sleep(1.0)
            assert assoc.most_outstanding == 1
            writer.transport.abort()  # gone, with requests in flight
            await wait_until_idle(server, 5)

    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if "not answered" in r.getMessage()]
    assert len(lines) == 1 and "request(s) not answered" in lines[0]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


class SlowEcho(Service):
    """C-ECHO that takes 0.3 s, counting how many run at once."""

    name = "slow-echo"

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return VerificationSCP().supported_contexts()

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-ECHO-RQ": Operation(self.c_echo, access="echo")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> None:
        return None

    async def c_echo(self, assoc: Association, message: Message) -> Response:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.3)
        self.running -= 1
        return await VerificationSCP().c_echo(assoc, message)


@pytest.mark.parametrize(
    ("proposed", "answered", "concurrent"),
    [
        (None, None, 1),
        (AsynchronousOperationsWindow(3, 5), AsynchronousOperationsWindow(3, 1), 3),
        (AsynchronousOperationsWindow(0, 0), AsynchronousOperationsWindow(4, 1), 4),  # unlimited: ours
        (AsynchronousOperationsWindow(9, 1), AsynchronousOperationsWindow(4, 1), 4),
    ],
    ids=["none proposed", "3", "unlimited", "more than ours"],
)
def test_the_asynchronous_operations_window_is_negotiated_and_honoured(
    proposed: AsynchronousOperationsWindow | None,
    answered: AsynchronousOperationsWindow | None,
    concurrent: int,
) -> None:
    """PS3.7 D.3.3.3: the AC answers a proposed window (ours: max_async_operations = 4), and no
    more requests than the window run at once, however many the peer sends."""
    slow = SlowEcho()

    async def run() -> None:
        server = DicomServer(
            SERVER_AE,
            [slow],
            host="127.0.0.1",
            port=0,
            max_async_operations=4,
            timeouts=Timeouts(acse=2.0, dimse=5.0, idle=10.0),
        )
        await server.start()
        try:
            rq = build_rq("RAW", SERVER_AE, [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LITTLE_ENDIAN])], settings("RAW"))
            rq.user_information.async_ops = proposed
            assoc = await connect("127.0.0.1", server.port, rq, settings("RAW"))
            assert assoc.ac is not None and assoc.ac.user_information.async_ops == answered
            ctx = assoc.context_for(VERIFICATION_SOP_CLASS)
            assert ctx is not None

            async def one() -> int:
                cmd = Command.make(
                    "C-ECHO-RQ", MessageID=assoc.next_message_id(), AffectedSOPClassUID=VERIFICATION_SOP_CLASS
                )
                return [int(m.command["Status"]) async for m in assoc.request(ctx.context_id, cmd)][-1]

            assert await asyncio.gather(*(one() for _ in range(8))) == [0] * 8
            await assoc.release()
        finally:
            await server.close(grace=0.5)

    asyncio.run(run())
    assert slow.most == concurrent


# ------------------------------------------------------------ accept() without file descriptors (item 6)
EMFILE_SERVER = """
import asyncio, logging, os, resource, sys, time
from minipacs.net.dul import Timeouts
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")

async def main() -> None:
    server = DicomServer("MINIPACS", [VerificationSCP()], host="127.0.0.1", port=0,
                         timeouts=Timeouts(acse=30, dimse=5, idle=30), handshake_timeout=30)
    await server.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 2, hard))
    print("PORT", server.port, flush=True)
    loop = asyncio.get_running_loop()
    started = time.process_time()
    await loop.run_in_executor(None, sys.stdin.readline)  # phase 1: flooded
    print("CPU", time.process_time() - started, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # phase 2: an echo
    await server.close(grace=0.5)

asyncio.run(main())
"""


def test_accept_backs_off_when_out_of_file_descriptors() -> None:
    """Issue 8 item 6: accept() failing with EMFILE neither spins nor logs per attempt: one line
    per back-off, one when accepting works again, and the listener serves again afterwards."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-c", EMFILE_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        while not line.startswith("PORT"):
            assert line, "the server did not start"
            line = proc.stdout.readline()
        port = int(line.split()[1])

        async def flood() -> list[socket.socket]:
            crowd = []
            for _ in range(8):  # two fit; the others wait in the backlog while accept() fails
                sock = socket.create_connection(("127.0.0.1", port))
                crowd.append(sock)
            await asyncio.sleep(3.0)
            return crowd

        crowd = asyncio.run(flood())
        proc.stdin.write("\n")
        proc.stdin.flush()
        for sock in crowd:
            sock.close()

        async def echo_again() -> int:
            await asyncio.sleep(1.0)  # the server sees the closes; descriptors free up
            return await echo_from(port)

        # the flooding connections are accepted and closed one by one as descriptors free up
        assert asyncio.run(echo_again()) == 0
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.splitlines()
    cpu = [float(line.split()[1]) for line in lines if line.startswith("CPU ")]
    flooded = lines[: next((i for i, line in enumerate(lines) if line.startswith("CPU ")), len(lines))]
    failing = [line for line in flooded if "cannot accept" in line or "out of system resource" in line]
    again = [line for line in lines if "accepting connections again" in line]
    assert len(failing) == 1, out
    assert "Too many open files" in failing[0] and "ulimit -n" in failing[0]
    assert len(again) >= 1, out
    assert cpu and cpu[0] < 1.0, f"the accept loop spun: {cpu} s of CPU in 3 s"


@pytest.mark.parametrize(
    ("value", "valid"), [(8, True), (7, False), (1024, True), (1 << 20, True), ((1 << 20) + 1, False)]
)
def test_max_pdu_peer_min_is_validated(tmp_path: Path, value: int, valid: bool) -> None:
    """8 (a PDV header and 2 bytes: the least that can be honoured) to 1 MiB."""
    from minipacs.config import Settings

    if valid:
        Settings(data_dir=tmp_path, max_pdu_peer_min=value).validate()
    else:
        with pytest.raises(ConfigError, match="max_pdu_peer_min"):
            Settings(data_dir=tmp_path, max_pdu_peer_min=value).validate()
