"""Hostile and careless clients against the listener's limits (issue 8 items 2-4, 6, 16), on
loopback with real sockets: idle associations, connections that never associate, stalled TLS
handshakes, pipelined requests never read, and accept() failing for lack of file descriptors."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from minipacs.net.association import Association, AssociationSettings, connect
from minipacs.net.dul import KEEPALIVE_IDLE, Timeouts
from minipacs.net.tls import client_context, server_context
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP, echo
from tests.net.test_association import SERVER_AE, proposal, serving, settings, wait_until_idle
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
    assoc = await connect("127.0.0.1", port, proposal(), AssociationSettings(
        ae_title="OURSCU", max_pdu_receive=16384, timeouts=Timeouts(acse=5, dimse=5, idle=5), tls_context=tls),
        local_host=source, tls=tls is not None, connect_timeout=5)
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
