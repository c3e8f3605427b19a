"""The listeners behind a PROXY-protocol balancer, in process on loopback: a small forwarder here plays
HAProxy (connects from 127.0.0.1, the listed address, and prepends a header naming the real client).

DICOM TLS works with the header before the handshake; the pending-connection limit per host counts the
client the header names, not the balancer; a listed address that sends no header is closed after the
handshake deadline; the HL7 listener reads the header too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from minipacs.core.model import AssociationRecord
from minipacs.hl7.mllp import MLLPServer, frame
from minipacs.net.dul import Timeouts
from minipacs.net.proxy_protocol import V2_SIGNATURE, ProxySources
from minipacs.net.tls import client_context, server_context
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP
from tests.net.test_association import SERVER_AE
from tests.net.test_limits import closed_within, echo_from, silent
from tests.tls_certs import Certificates, make_pki

pytestmark = pytest.mark.interop


def v1_header(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    return f"PROXY TCP4 {client[0]} {server[0]} {client[1]} {server[1]}\r\n".encode()


def v2_header(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    block = socket.inet_aton(client[0]) + socket.inet_aton(server[0]) + struct.pack("!HH", client[1], server[1])
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block)) + block


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def balancer(backend: int, version: int = 2) -> AsyncIterator[int]:
    """A TCP forwarder on 127.0.0.1 that sends a PROXY header (``version``) first, as HAProxy send-proxy[-v2]."""
    tasks: set[asyncio.Future[Any]] = set()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend, local_addr=("127.0.0.1", 0))
        make = v2_header if version == 2 else v1_header
        up_writer.write(make(client, ("127.0.0.1", backend)))
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        tasks.add(both)
        with contextlib.suppress(asyncio.CancelledError):
            await both

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@asynccontextmanager
async def listener(records: list[AssociationRecord], **options: Any) -> AsyncIterator[DicomServer]:
    async def keep(record: AssociationRecord) -> None:
        records.append(record)

    server = DicomServer(
        SERVER_AE,
        [VerificationSCP()],
        host="127.0.0.1",
        port=0,
        max_pdu_send=0,
        timeouts=Timeouts(acse=30.0, dimse=5.0, idle=30.0),
        association_logger=keep,
        proxy_sources=ProxySources(["127.0.0.1"]),
        **options,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=0.5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_behind_the_balancer_and_the_client_in_the_log(pki: Certificates) -> None:
    """The PROXY header comes before the TLS handshake; both versions; the record names the client."""
    server_tls = server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca))
    client_tls = client_context(str(pki.ca))
    records: list[AssociationRecord] = []

    async def run() -> None:
        async with listener(records, tls_port=0, tls_context=server_tls) as server:
            async with (
                balancer(server.tls_port, 2) as v2,
                balancer(server.tls_port, 1) as v1,
                balancer(server.port) as plain,
            ):
                assert await echo_from(v2, "127.0.0.2", client_tls) == 0
                assert await echo_from(v1, "127.0.0.3", client_tls) == 0
                assert await echo_from(plain, "127.0.0.4") == 0
            await server.close(grace=1.0)

    asyncio.run(run())
    seen = sorted((r.peer_host, r.tls or "", r.accepted) for r in records)
    assert [(host, accepted) for host, _tls, accepted in seen] == [
        ("127.0.0.2", True),
        ("127.0.0.3", True),
        ("127.0.0.4", True),
    ], records
    assert seen[0][1].startswith("TLS") and seen[1][1].startswith("TLS") and seen[2][1] == "", seen


def test_pending_limit_per_host_counts_the_client_not_the_balancer() -> None:
    """max_pending_per_host = 2: two silent clients from 127.0.0.2 fill 127.0.0.2's share; a third from it
    is closed at once; clients from other addresses through the same balancer still associate."""
    records: list[AssociationRecord] = []

    async def run() -> None:
        async with listener(records, max_pending_per_host=2, max_pending_connections=10) as server:
            async with balancer(server.port) as port:
                crowd = [await silent(port, "127.0.0.2") for _ in range(2)]
                await asyncio.sleep(0.3)
                extra, extra_w = await silent(port, "127.0.0.2")
                assert await closed_within(extra, 5.0)
                extra_w.close()
                for n in range(3, 6):  # 3 clients > max_pending_per_host, all through one balancer address
                    assert await echo_from(port, f"127.0.0.{n}") == 0
                assert not any(r.at_eof() for r, _w in crowd)
                for _r, w in crowd:
                    w.close()

    asyncio.run(run())
    assert {r.peer_host for r in records if r.accepted} == {"127.0.0.3", "127.0.0.4", "127.0.0.5"}


def test_a_listed_address_without_a_header_is_closed_after_the_handshake_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def run() -> None:
        async with listener([], handshake_timeout=0.5) as server:
            reader, writer = await silent(server.port, "127.0.0.1")
            writer.write(b"PROXY TCP4 ")  # a header begun and never finished
            assert await closed_within(reader, 5.0)
            writer.close()
            assert await echo_from(server.port, "127.0.0.2") == 0  # not listed: no header expected

    asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if "no valid PROXY header" in r.getMessage()]
    assert len(lines) == 1 and "no complete PROXY header within the handshake deadline (0.5s)" in lines[0], lines


def test_hl7_listener_reads_the_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    got: list[bytes] = []

    async def handler(message: bytes) -> bytes:
        got.append(message)
        return b"MSH|^~\\&|ACK"

    async def run() -> None:
        mllp = MLLPServer(
            handler, host="127.0.0.1", port=0, peer_resolver=ProxySources(["127.0.0.1"]).stream_resolver(2.0)
        )
        await mllp.start()
        try:
            async with balancer(mllp.port, 1) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                writer.write(b"junk\x1c\r")  # bytes outside a frame: logged with the peer
                await writer.drain()
                deadline = time.monotonic() + 10
                while not any("outside an MLLP frame" in r.getMessage() for r in caplog.records):
                    assert time.monotonic() < deadline, "the stray bytes were never logged"
                    await asyncio.sleep(0.05)
                writer.write(frame("MSH|^~\\&|A"))
                assert (await reader.readuntil(b"\x1c\r")).startswith(b"\x0bMSH|^~\\&|ACK")
                writer.close()
            # straight from the listed address, no header: closed, the message never handled
            reader, writer = await asyncio.open_connection("127.0.0.1", mllp.port)
            writer.write(frame("MSH|^~\\&|B"))
            assert await reader.read() == b""
            writer.close()
        finally:
            await mllp.close()

    asyncio.run(run())
    assert got == [b"MSH|^~\\&|A"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("127.0.0.2" in m and "outside an MLLP frame" in m for m in messages), messages
    assert any("HL7 connection from 127.0.0.1:" in m and "did not start with a PROXY header" in m for m in messages)


@pytest.mark.parametrize(
    ("header", "quiet"),
    [
        (b"PROXY UNKNOWN\r\n", True),  # proxy-protocol.txt 2.1: a health check's
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 {port}\r\n", True),  # HAProxy's check-send-proxy: names us
        (b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 11112\r\n", False),  # a client via the balancer's frontend
    ],
)
def test_the_balancers_own_connection_without_an_associate_rq_is_not_an_association(
    caplog: pytest.LogCaptureFixture, header: bytes, quiet: bool
) -> None:
    """HAProxy's `check check-send-proxy` (version 1) sends a header naming its own address and ours,
    then closes: not an association, nothing in the association log (as for version 2 LOCAL). A client
    that connects and leaves without an A-ASSOCIATE-RQ is still logged."""
    caplog.set_level(logging.INFO, logger="minipacs")
    records: list[AssociationRecord] = []

    async def run() -> None:
        async with listener(records) as server:
            reader, writer = await silent(server.port, "127.0.0.1")
            writer.write(header.replace(b"{port}", str(server.port).encode()))
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.3)
            assert await echo_from(server.port, "127.0.0.2") == 0  # and the listener goes on

    asyncio.run(run())
    said = [r.getMessage() for r in caplog.records if "no A-ASSOCIATE-RQ" in r.getMessage()]
    assert (said == []) is quiet, said
    assert (len([r for r in records if not r.calling_aet]) == 0) is quiet, records
