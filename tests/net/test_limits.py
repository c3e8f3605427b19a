"""Hostile and careless clients against the listener's limits (issue 8 items 2-4, 6, 16), on
loopback with real sockets: idle associations, connections that never associate, stalled TLS
handshakes, pipelined requests never read, and accept() failing for lack of file descriptors."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from minipacs.net.association import Association, connect
from minipacs.net.dul import KEEPALIVE_IDLE, Timeouts
from minipacs.services.verification import echo
from tests.net.test_association import proposal, serving, settings, wait_until_idle

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
