"""The server acknowledges every PDU at once (TCP_QUICKACK), so that a peer with Nagle's
algorithm on (pynetdicom by default, DCMTK without TCP_NODELAY=1) does not wait for Linux's
delayed ACK (~40 ms) before it may send the second PDU of a request.

The client here is a blocking raw socket in a thread, Nagle on, sending each C-ECHO-RQ as two
P-DATA-TF PDUs (the command in two fragments, PS3.8 §9.3.5 / Annex E.2) with two writes:
the second write leaves only once the first is acknowledged. Without the re-armed QUICKACK the
server, which has nothing to send after the first fragment, delays that ACK and every round trip
takes ~40 ms or more; with it, about a millisecond."""

from __future__ import annotations

import asyncio
import socket
import ssl
import statistics
import struct
import sys
import time

import pytest

from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.net.association import build_rq
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.pdu import encode_pdu, pdata_pdu_header
from minipacs.net.tls import client_context, server_context
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP
from tests.net.test_association import SERVER_AE, settings
from tests.tls_certs import Certificates, make_pki

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or not hasattr(socket, "TCP_QUICKACK"),
        reason="delayed ACK timing and TCP_QUICKACK are Linux's",
    ),
]

ROUNDS = 30
#: Linux delays an ACK by at least TCP_DELACK_MIN (40 ms); a prompt ACK makes a loopback round trip ~1 ms.
MEDIAN_LIMIT = 0.020


def two_pdu_echo_rq(message_id: int) -> tuple[bytes, bytes]:
    cmd = Command.make("C-ECHO-RQ", MessageID=message_id, AffectedSOPClassUID=VERIFICATION_SOP_CLASS).encode()
    cut = len(cmd) // 2
    first = pdata_pdu_header(1, True, False, cut) + cmd[:cut]
    last = pdata_pdu_header(1, True, True, len(cmd) - cut) + cmd[cut:]
    return first, last


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return buf

    kind, length = struct.unpack(">BxL", exactly(6))
    return kind, exactly(length)


def nagle_client(port: int, rounds: int, tls: ssl.SSLContext | None = None) -> list[float]:
    """Associate, then ``rounds`` two-PDU C-ECHOs, each timed; Nagle stays on (the default)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0, "Nagle on, as pynetdicom leaves it"
    sock: socket.socket = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
    try:
        rq = build_rq("NAGLE", SERVER_AE, [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LITTLE_ENDIAN])], settings("NAGLE"))
        sock.sendall(encode_pdu(rq))
        assert recv_pdu(sock)[0] == 0x02, "A-ASSOCIATE-AC"
        times = []
        for i in range(rounds):
            first, last = two_pdu_echo_rq(i + 1)
            started = time.perf_counter()
            sock.sendall(first)
            sock.sendall(last)
            kind, body = recv_pdu(sock)
            times.append(time.perf_counter() - started)
            assert kind == 0x04, "P-DATA-TF (the C-ECHO-RSP)"
            assert body[5] & 0x03 == 0x03, "a last command fragment"
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert recv_pdu(sock)[0] == 0x06, "A-RELEASE-RP"
        return times
    finally:
        sock.close()


def round_trips(tls_server: ssl.SSLContext | None = None, tls_client: ssl.SSLContext | None = None) -> list[float]:
    async def run() -> list[float]:
        options = {"tls_port": 0, "tls_context": tls_server} if tls_server is not None else {}
        server = DicomServer(
            SERVER_AE,
            [VerificationSCP()],
            host="127.0.0.1",
            port=0,
            max_pdu_send=0,
            timeouts=Timeouts(acse=10.0, dimse=10.0, idle=30.0),
            **options,
        )
        await server.start()
        try:
            port = server.tls_port if tls_server is not None else server.port
            return await asyncio.to_thread(nagle_client, port, ROUNDS, tls_client)
        finally:
            await server.close(grace=1.0)

    return asyncio.run(run())


def test_a_nagle_client_is_not_held_by_a_delayed_ack() -> None:
    times = round_trips()
    median = statistics.median(times)
    assert median < MEDIAN_LIMIT, f"median round trip {median * 1000:.1f} ms (all: {[round(t * 1000) for t in times]})"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_same_over_tls(pki: Certificates) -> None:
    times = round_trips(
        server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca)), client_context(str(pki.ca))
    )
    median = statistics.median(times)
    assert median < MEDIAN_LIMIT, f"median round trip {median * 1000:.1f} ms (all: {[round(t * 1000) for t in times]})"
