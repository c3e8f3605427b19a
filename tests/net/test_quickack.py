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
import functools
import socket
import ssl
import statistics
import struct
import sys
import time

import pytest

from minipacs.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.net.association import Association, AssociationSettings, _Incoming, build_rq
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts, UpperLayer
from minipacs.net.pdu import encode_pdu, pdata_pdu_header
from minipacs.net.presentation import NegotiatedContext
from minipacs.net.tls import client_context, server_context
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP
from tests.net.test_association import SERVER_AE, settings
from tests.net.test_fsm import FakeWriter
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


def nagle_client(port: int, rounds: int, tls: ssl.SSLContext | None = None, *, nodelay: bool = False) -> list[float]:
    """Associate, then ``rounds`` two-PDU C-ECHOs, each timed; Nagle stays on (the default), or with
    ``nodelay`` is off and each request goes in one write."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if nodelay:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
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
            if nodelay:
                sock.sendall(first + last)
            else:
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


def round_trips(
    tls_server: ssl.SSLContext | None = None, tls_client: ssl.SSLContext | None = None, *, nodelay: bool = False
) -> list[float]:
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
            return await asyncio.to_thread(functools.partial(nagle_client, port, ROUNDS, tls_client, nodelay=nodelay))
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


def test_no_quickack_while_the_peer_waits_for_our_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that sent its whole request and waits for the answer gets no TCP_QUICKACK (a system
    call and a bare ACK segment per request): the answer carries the ACK. A Nagle peer that is still
    sending its request gets one for each part it sends."""
    acks: list[int] = []
    real = UpperLayer._ack_now

    def counted(self: UpperLayer, sock: socket.socket, option: int) -> None:
        acks.append(option)
        real(self, sock, option)

    monkeypatch.setattr(UpperLayer, "_ack_now", counted)
    round_trips(nodelay=True)
    assert len(acks) < ROUNDS // 3, f"{len(acks)} QUICKACKs for {ROUNDS} requests sent whole"
    acks.clear()
    times = round_trips()
    assert len(acks) >= ROUNDS, f"{len(acks)} QUICKACKs for {ROUNDS} requests in two writes each"
    assert statistics.median(times) < MEDIAN_LIMIT


@pytest.mark.parametrize(
    ("situation", "prompt"),
    [
        ("idle", True),  # the next request may come in parts
        ("window full", False),  # the peer waits for our answer, which carries the ACK
        ("window full, a cancellable request", True),  # a C-CANCEL-RQ may follow it
        ("window not full", True),  # another request may come (PS3.7 D.3.3.3)
        ("half a message read", True),  # its next PDU may be held back for our ACK
        ("awaiting a response", True),  # the peer's response may come in parts
    ],
)
def test_ack_promptly_table(situation: str, prompt: bool) -> None:
    async def run() -> bool:
        assoc = Association(asyncio.StreamReader(), FakeWriter(), AssociationSettings("US"), is_requestor=False)  # type: ignore[arg-type]
        if situation.startswith("window"):
            assoc.outstanding = 1
            assoc.window = 2 if situation == "window not full" else 1
            assoc.cancellable = 1 if "cancellable" in situation else 0
        elif situation == "half a message read":
            assoc.outstanding = 1
            context = NegotiatedContext(1, VERIFICATION_SOP_CLASS, IMPLICIT_VR_LITTLE_ENDIAN)
            assoc._incoming[1] = _Incoming(context)
        elif situation == "awaiting a response":
            assoc.outstanding = 1
            assoc._responses[1] = asyncio.Queue()
        return assoc.ack_promptly()

    assert asyncio.run(run()) is prompt
