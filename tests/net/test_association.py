"""Associations over real loopback TCP: our requestor, our acceptor, DCMTK and pynetdicom.

Covers C-ECHO in every direction, fragmentation of multi-megabyte messages to
tiny peer Maximum Lengths, the A-ASSOCIATE-RJ cases of PS3.8 Table 9-21, and
hostile byte streams on raw sockets, each answered with the right A-ABORT
(PS3.8 Table 9-26) or a close while a well-behaved association carries on.
Timeouts are small so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE, evt

from minipacs.net.association import (
    Association,
    AssociationError,
    AssociationRejected,
    AssociationSettings,
    Message,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.memory import BytesSink
from minipacs.net.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ, decode_pdu, encode_pdu, pdata_pdu_header
from minipacs.net.pdu_items import PresentationContextAC, UserInformation
from minipacs.net.presentation import NegotiatedContext, SupportedContext, negotiate
from minipacs.services.base import Service
from minipacs.services.dispatch import Operation
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP, echo
from tests.peers import dcmtk, free_port

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: A private SOP class for the echo-back service (UID root 1.2.826.0.1.3680043.9 is for examples)
ECHO_BACK = "1.2.826.0.1.3680043.9.7433.1.1"
#: A standard SOP class with N-ACTION, for pynetdicom as acceptor (it refuses unregistered private UIDs)
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
SERVER_AE = "MINIPACS"
TIMEOUTS = Timeouts(acse=0.5, dimse=3.0, idle=5.0)
SMALL_PDU = 4096
PAYLOAD_SIZE = 3 * 1024 * 1024


# ------------------------------------------------------------ expected bytes
def abort_bytes(source: int, reason: int) -> bytes:
    """PS3.8 Table 9-26."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


def reject_bytes(result: int, source: int, reason: int) -> bytes:
    """PS3.8 Table 9-21."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


RELEASE_RQ = struct.pack(">BBL4x", 0x05, 0, 4)
RELEASE_RP = struct.pack(">BBL4x", 0x06, 0, 4)


# ------------------------------------------------------------ the echo-back service
class EchoBackSCP(Service):
    """N-ACTION on a private SOP class: the Action Reply is the Action Information, byte for byte."""

    name = "echo-back"

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {ECHO_BACK: SupportedContext(ECHO_BACK, frozenset({IMPLICIT_LE}))}

    def handlers(self) -> Mapping[str, Operation]:
        return {"N-ACTION-RQ": Operation(self.n_action, access="commit")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> BytesSink | None:
        return None

    async def n_action(self, assoc: Association, message: Message) -> None:
        sink = message.dataset
        data = sink.getvalue() if isinstance(sink, BytesSink) else b""
        rsp = Command.make(
            "N-ACTION-RSP",
            has_dataset=True,
            MessageIDBeingRespondedTo=message.command["MessageID"],
            AffectedSOPClassUID=ECHO_BACK,
            AffectedSOPInstanceUID=message.command["RequestedSOPInstanceUID"],
            ActionTypeID=message.command["ActionTypeID"],
            Status=0x0000,
        )
        await assoc.send_message(message.context.context_id, rsp, data)


def settings(ae: str = "OURSCU", max_pdu: int = 16384) -> AssociationSettings:
    return AssociationSettings(ae_title=ae, max_pdu_receive=max_pdu, max_pdu_send=0, timeouts=TIMEOUTS)


def proposal(ae: str = "OURSCU", called: str = SERVER_AE, max_pdu: int = 16384) -> AAssociateRQ:
    return build_rq(ae, called, [(VERIFICATION, [IMPLICIT_LE]), (ECHO_BACK, [IMPLICIT_LE])], settings(ae, max_pdu))


@asynccontextmanager
async def serving(
    *,
    timeouts: Timeouts = TIMEOUTS,
    max_pdu_receive: int = 16384,
    max_associations: int = 8,
    check_called_aet: bool = True,
) -> AsyncIterator[DicomServer]:
    server = DicomServer(
        SERVER_AE,
        [VerificationSCP(), EchoBackSCP()],
        host="127.0.0.1",
        port=0,
        max_associations=max_associations,
        check_called_aet=check_called_aet,
        max_pdu_receive=max_pdu_receive,
        max_pdu_send=0,
        timeouts=timeouts,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=1.0)
    assert not server.connections, "every connection ended"


async def wait_until_idle(server: DicomServer, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not server.connections, f"{len(server.connections)} connection(s) still open"


async def echo_back(assoc: Association, payload: bytes, sop_class: str = ECHO_BACK) -> bytes:
    ctx = assoc.context_for(sop_class)
    assert ctx is not None
    rq = Command.make(
        "N-ACTION-RQ",
        has_dataset=True,
        MessageID=assoc.next_message_id(),
        RequestedSOPClassUID=sop_class,
        RequestedSOPInstanceUID="1.2.3.4",
        ActionTypeID=1,
    )
    replies = [m async for m in assoc.request(ctx.context_id, rq, payload)]
    assert len(replies) == 1 and replies[0].command["Status"] == 0
    sink = replies[0].dataset
    assert isinstance(sink, BytesSink)
    return sink.getvalue()


# ------------------------------------------------------------ raw sockets
@dataclass
class Raw:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_pdu(self, timeout: float = 3.0) -> tuple[int, bytes] | None:
        """The next PDU as (type, whole PDU bytes), or None at end of stream."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(6), timeout)
            body = await asyncio.wait_for(self.reader.readexactly(struct.unpack(">xxL", header)[0]), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return header[0], header + body

    async def associate(self, called: str = SERVER_AE) -> None:
        self.send(encode_pdu(proposal("RAW", called)))
        pdu = await self.read_pdu()
        assert pdu is not None and pdu[0] == 0x02, f"expected A-ASSOCIATE-AC, got {pdu!r}"

    async def expect_abort(self) -> bytes:
        """Read until the A-ABORT (skipping e.g. a C-ECHO-RSP), then expect the close."""
        while True:
            pdu = await self.read_pdu()
            assert pdu is not None, "connection closed without A-ABORT"
            if pdu[0] == 0x07:
                await self.expect_close()
                return pdu[1]

    async def expect_close(self, timeout: float = 3.0) -> None:
        """The server closes (after ARTIM in Sta13) without sending anything more."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        assert data == b""

    def close(self) -> None:
        self.writer.close()


def echo_pdata(context_id: int = 1) -> bytes:
    cmd = Command.make("C-ECHO-RQ", MessageID=1, AffectedSOPClassUID=VERIFICATION).encode()
    return pdata_pdu_header(context_id, True, True, len(cmd)) + cmd


@asynccontextmanager
async def well_behaved(server: DicomServer) -> AsyncIterator[None]:
    """A parallel association echoing in a loop; it must finish with a normal release."""
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def loop() -> int:
        assoc = await connect("127.0.0.1", server.port, proposal("GOOD"), settings("GOOD"))
        count = 0
        while not stop.is_set() or count < 3:
            assert await echo(assoc) == 0x0000
            count += 1
            ready.set()
            await asyncio.sleep(0.005)
        await assoc.release()
        assert assoc.end_reason == "released"
        return count

    task = asyncio.ensure_future(loop())
    await asyncio.wait_for(ready.wait(), 3.0)
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5.0) >= 3


# ------------------------------------------------------------ echo, every direction
def test_echo_ours_to_ours() -> None:
    async def run() -> None:
        async with serving() as server:
            assoc = await connect("127.0.0.1", server.port, proposal(), settings())
            assert assoc.context_for(VERIFICATION) is not None
            assert [await echo(assoc) for _ in range(3)] == [0, 0, 0]
            await assoc.release()
            assert assoc.end_reason == "released"
            await wait_until_idle(server)

    asyncio.run(run())


def test_echo_dcmtk_echoscu_to_ours() -> None:
    echoscu = dcmtk("echoscu")

    async def run() -> None:
        async with serving() as server:
            proc = await asyncio.create_subprocess_exec(
                echoscu,
                "-aet",
                "DCMTK",
                "-aec",
                SERVER_AE,
                "--repeat",
                "3",
                "127.0.0.1",
                str(server.port),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, out.decode(errors="replace")
            await wait_until_idle(server)

    asyncio.run(run())


def test_echo_ours_to_dcmtk_storescp() -> None:
    storescp = dcmtk("storescp")
    port = free_port()

    async def run() -> None:
        proc = await asyncio.create_subprocess_exec(
            storescp,
            "-aet",
            "STORESCP",
            "--output-directory",
            "/tmp",
            str(port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assoc = None
            for _ in range(100):
                try:
                    assoc = await connect("127.0.0.1", port, proposal(called="STORESCP"), settings())
                    break
                except AssociationError:
                    await asyncio.sleep(0.05)
            assert assoc is not None, "storescp did not start"
            assert await echo(assoc) == 0
            await assoc.release()
            assert assoc.end_reason == "released"
        finally:
            proc.terminate()
            await proc.wait()

    asyncio.run(run())


def test_echo_pynetdicom_to_ours() -> None:
    async def run() -> None:
        async with serving() as server:

            def scu() -> int:
                ae = AE(ae_title="PYNETDICOM")
                ae.add_requested_context(VERIFICATION)
                assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AE)
                assert assoc.is_established
                status = assoc.send_c_echo()
                assoc.release()
                return int(status.Status)

            assert await asyncio.to_thread(scu) == 0
            await wait_until_idle(server)

    asyncio.run(run())


def test_echo_ours_to_pynetdicom() -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_supported_context(VERIFICATION)
    scp = ae.start_server(("127.0.0.1", 0), block=False)
    assert scp is not None
    try:
        port = scp.server_address[1]

        async def run() -> None:
            assoc = await connect("127.0.0.1", port, proposal(called="PYNETDICOM"), settings())
            assert await echo(assoc) == 0
            await assoc.release()
            assert assoc.end_reason == "released"

        asyncio.run(run())
    finally:
        scp.shutdown()


# ------------------------------------------------------------ fragmentation
def test_large_message_fragmented_both_ways_ours_to_ours() -> None:
    """3 MB each way with a 4096-byte Maximum Length on both sides: ~770 P-DATA-TF PDUs."""
    payload = os.urandom(PAYLOAD_SIZE)

    async def run() -> None:
        async with serving(max_pdu_receive=SMALL_PDU) as server:
            assoc = await connect("127.0.0.1", server.port, proposal(max_pdu=SMALL_PDU), settings(max_pdu=SMALL_PDU))
            assert assoc.peer_max_pdu == SMALL_PDU
            assert await echo_back(assoc, payload) == payload
            # Each PDU carries at most 4096 - 12 bytes of data after its two headers.
            min_fragments = PAYLOAD_SIZE // (SMALL_PDU - 6)
            assert assoc.dul.bytes_sent >= PAYLOAD_SIZE + 12 * min_fragments
            assert assoc.dul.bytes_received >= PAYLOAD_SIZE + 12 * min_fragments
            assert await echo_back(assoc, b"") == b""
            await assoc.release()
            await wait_until_idle(server)

    asyncio.run(run())


def pynetdicom_payload() -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.EncapsulatedDocument = os.urandom(PAYLOAD_SIZE)
    return ds, ds.EncapsulatedDocument


def test_large_message_fragmented_pynetdicom_to_ours() -> None:
    async def run() -> None:
        async with serving(max_pdu_receive=SMALL_PDU) as server:

            def scu() -> None:
                ae = AE(ae_title="PYNETDICOM")
                ae.maximum_pdu_size = SMALL_PDU
                ae.add_requested_context(ECHO_BACK, IMPLICIT_LE)
                assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AE)
                assert assoc.is_established
                assert assoc.acceptor.maximum_length == SMALL_PDU
                ds, payload = pynetdicom_payload()
                status, reply = assoc.send_n_action(ds, 1, ECHO_BACK, "1.2.3.4")
                assoc.release()
                assert status.Status == 0
                assert reply is not None
                assert reply.EncapsulatedDocument == payload

            await asyncio.to_thread(scu)
            await wait_until_idle(server)

    asyncio.run(run())


def test_large_message_fragmented_ours_to_pynetdicom() -> None:
    def handle(event: evt.Event) -> tuple[int, Dataset]:
        return 0x0000, event.action_information

    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_pdu_size = SMALL_PDU
    ae.add_supported_context(STORAGE_COMMITMENT, IMPLICIT_LE)
    scp = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_ACTION, handle)])
    assert scp is not None
    try:
        port = scp.server_address[1]
        ds, payload = pynetdicom_payload()
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        write_dataset(buffer, ds)
        encoded = buffer.getvalue()

        async def run() -> None:
            rq = build_rq("OURSCU", "PYNETDICOM", [(STORAGE_COMMITMENT, [IMPLICIT_LE])], settings(max_pdu=SMALL_PDU))
            assoc = await connect("127.0.0.1", port, rq, settings(max_pdu=SMALL_PDU))
            assert assoc.peer_max_pdu == SMALL_PDU
            assert await echo_back(assoc, encoded, STORAGE_COMMITMENT) == encoded
            await assoc.release()

        asyncio.run(run())
    finally:
        scp.shutdown()


# ------------------------------------------------------------ rejections (PS3.8 Table 9-21)
def test_reject_wrong_called_ae() -> None:
    async def run() -> None:
        async with serving(check_called_aet=True) as server:
            with pytest.raises(AssociationRejected) as info:
                await connect("127.0.0.1", server.port, proposal(called="SOMEONE"), settings())
            rj = info.value.rj
            assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
            assert "called AE title not recognized" in str(info.value)
            await wait_until_idle(server)

    asyncio.run(run())


def test_reject_too_many_associations() -> None:
    async def run() -> None:
        async with serving(max_associations=1) as server:
            first = await connect("127.0.0.1", server.port, proposal(), settings())
            with pytest.raises(AssociationRejected) as info:
                await connect("127.0.0.1", server.port, proposal(), settings())
            rj = info.value.rj
            assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
            assert await echo(first) == 0, "the open association is unaffected"
            await first.release()
            await wait_until_idle(server)
            # With the first one gone, there is room again.
            again = await connect("127.0.0.1", server.port, proposal(), settings())
            await again.release()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("case", "rq", "expected"),
    [
        (
            "application context not DICOM's",
            AAssociateRQ(
                SERVER_AE,
                "RAW",
                proposal().presentation_contexts,
                UserInformation(maximum_length=16384),
                application_context="1.2.3.4.5",
            ),
            reject_bytes(1, 1, 2),
        ),
        (
            "protocol version without bit 0",
            AAssociateRQ(
                SERVER_AE,
                "RAW",
                proposal().presentation_contexts,
                UserInformation(maximum_length=16384),
                protocol_version=2,
            ),
            reject_bytes(1, 2, 2),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_reject_raw(case: str, rq: AAssociateRQ, expected: bytes) -> None:
    async def run() -> None:
        async with serving() as server:
            raw = await Raw.open(server.port)
            raw.send(encode_pdu(rq))
            pdu = await raw.read_pdu()
            assert pdu is not None and pdu[1] == expected
            raw.close()
            await wait_until_idle(server)

    asyncio.run(run())


def test_repeated_context_id_gets_one_answer_to_its_first_proposal() -> None:
    """PS3.8 9.3.2.2: Presentation-context-IDs are unique in a request. One that repeats an ID gets
    one answer for it (to the first proposal, as DCMTK's storescp does), never two answers with the
    same ID; a C-ECHO on that context then works."""

    async def run() -> None:
        async with serving() as server:
            rq = proposal("RAW")
            first, second = rq.presentation_contexts
            repeated = replace(rq, presentation_contexts=[first, replace(second, context_id=first.context_id)])
            raw = await Raw.open(server.port)
            raw.send(encode_pdu(repeated))
            pdu = await raw.read_pdu()
            assert pdu is not None and pdu[0] == 0x02
            ac = decode_pdu(0x02, pdu[1][6:])
            assert isinstance(ac, AAssociateAC)
            assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.presentation_contexts] == [
                (first.context_id, 0, IMPLICIT_LE)
            ]
            raw.send(echo_pdata(first.context_id))
            answer = await raw.read_pdu()
            assert answer is not None and answer[0] == 0x04  # the C-ECHO-RSP
            raw.send(RELEASE_RQ)
            assert await raw.read_pdu() == (0x06, RELEASE_RP)
            raw.close()
            await wait_until_idle(server)

    asyncio.run(run())


# ------------------------------------------------------------ hostile input
PDATA_HEADER_ONLY = struct.pack(">BBL", 0x04, 0, 10_000)

# (case, associate first, bytes sent, expected A-ABORT bytes or None for a plain close)
HOSTILE: list[tuple[str, bool, bytes, bytes | None]] = [
    ("unknown PDU type", True, struct.pack(">BBL4x", 0x0A, 0, 4), abort_bytes(2, 1)),
    ("unknown PDU type before association", False, struct.pack(">BBL4x", 0x0A, 0, 4), abort_bytes(2, 1)),
    ("P-DATA larger than max_pdu_receive", True, struct.pack(">BBL", 0x04, 0, 16385), abort_bytes(2, 6)),
    ("P-DATA on an unaccepted context", True, echo_pdata(context_id=99), abort_bytes(2, 6)),
    ("P-DATA before association", False, echo_pdata(), abort_bytes(2, 2)),
    ("A-RELEASE-RQ of the wrong length", True, struct.pack(">BBL6x", 0x05, 0, 6), abort_bytes(2, 6)),
    ("PDV longer than its PDU", True, struct.pack(">BBLLBB", 0x04, 0, 6, 100, 1, 3), abort_bytes(2, 6)),
    ("garbage after a valid PDU", True, echo_pdata() + b"\xff" * 12, abort_bytes(2, 1)),
    ("data set fragment before its command", True, pdata_pdu_header(1, False, True, 4) + b"abcd", abort_bytes(2, 5)),
    ("unreadable command set", True, pdata_pdu_header(1, True, True, 7) + b"\x00" * 7, abort_bytes(2, 6)),
    ("second A-ASSOCIATE-RQ", True, encode_pdu(proposal("RAW")), abort_bytes(2, 2)),
    (
        "A-ASSOCIATE-AC to an acceptor",
        False,
        encode_pdu(AAssociateAC(SERVER_AE, "RAW", [], UserInformation())),
        abort_bytes(2, 2),
    ),
    ("truncated PDU then close", True, PDATA_HEADER_ONLY + b"\x00" * 100, None),
    ("truncated header then close", True, b"\x04\x00\x00", None),
    ("truncated A-ASSOCIATE-RQ then close", False, encode_pdu(proposal("RAW"))[:40], None),
]


@pytest.mark.parametrize(("associate", "data", "expected"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_input(associate: bool, data: bytes, expected: bytes | None) -> None:
    async def run() -> None:
        async with serving() as server, well_behaved(server):
            raw = await Raw.open(server.port)
            if associate:
                await raw.associate()
            raw.send(data)
            if expected is None:
                raw.writer.write_eof()
                await raw.expect_close()
            else:
                assert await raw.expect_abort() == expected
            raw.close()
        await wait_until_idle(server)

    asyncio.run(run())


def test_bad_pdu_inside_a_fragmented_message() -> None:
    """An A-ASSOCIATE-RQ between two fragments of a message: the partial data set is discarded."""

    async def run() -> None:
        async with serving() as server, well_behaved(server):
            raw = await Raw.open(server.port)
            await raw.associate()
            cmd = Command.make(
                "N-ACTION-RQ",
                has_dataset=True,
                MessageID=1,
                RequestedSOPClassUID=ECHO_BACK,
                RequestedSOPInstanceUID="1.2.3.4",
                ActionTypeID=1,
            ).encode()
            raw.send(pdata_pdu_header(3, True, True, len(cmd)) + cmd)
            raw.send(pdata_pdu_header(3, False, False, 4) + b"abcd")
            raw.send(struct.pack(">BBL", 0x09, 0, 0))
            assert await raw.expect_abort() == abort_bytes(2, 1)
            raw.close()

    asyncio.run(run())


# ------------------------------------------------------------ timers
def test_artim_closes_a_silent_connection() -> None:
    """Sta2: no A-ASSOCIATE-RQ within the ARTIM time (acse timeout) -> the server closes."""

    async def run() -> None:
        async with serving() as server, well_behaved(server):
            raw = await Raw.open(server.port)
            started = time.monotonic()
            await raw.expect_close(timeout=TIMEOUTS.acse + 2)
            assert time.monotonic() - started >= TIMEOUTS.acse * 0.8
            raw.close()

    asyncio.run(run())


def test_idle_timeout_aborts_an_idle_association() -> None:
    timeouts = Timeouts(acse=0.5, dimse=3.0, idle=0.4)

    async def run() -> None:
        async with serving(timeouts=timeouts) as server:
            raw = await Raw.open(server.port)
            await raw.associate()
            started = time.monotonic()
            assert await raw.expect_abort() == abort_bytes(0, 0)
            assert time.monotonic() - started >= timeouts.idle * 0.8
            raw.close()

            # Our requestor sees the abort as the end of the association.
            assoc = await connect("127.0.0.1", server.port, proposal(), settings())
            await asyncio.wait_for(assoc.wait_closed(), 3)
            assert "aborted by peer" in assoc.aborted_reason
            await wait_until_idle(server)

    asyncio.run(run())


def test_server_close_aborts_connections_without_association() -> None:
    """close() on a server with a connection still in Sta2 must not raise."""

    async def run() -> None:
        timeouts = Timeouts(acse=30.0, dimse=3.0, idle=30.0)
        async with serving(timeouts=timeouts) as server:
            raw = await Raw.open(server.port)
            await asyncio.sleep(0.05)
            assert len(server.connections) == 1
        await raw.expect_close()
        raw.close()

    asyncio.run(run())


# ------------------------------------------------------------ release collision (PS3.8 §7.2, Sta9-Sta12)
def test_release_collision_as_requestor() -> None:
    """Both sides send A-RELEASE-RQ: we (requestor) answer first (AR-8 Sta9, AR-9 Sta11, AR-3)."""

    async def run() -> None:
        seen: list[int] = []

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = Raw(reader, writer)
            rq = await raw.read_pdu()
            assert rq is not None and rq[0] == 0x01
            ac = AAssociateAC("PEER", "OURSCU", [], UserInformation(maximum_length=16384))
            raw.send(encode_pdu(ac))
            release = await raw.read_pdu()
            assert release is not None and release[1] == RELEASE_RQ
            raw.send(RELEASE_RQ)  # the collision
            answer = await raw.read_pdu()
            assert answer is not None
            seen.append(answer[0])
            raw.send(RELEASE_RP)
            await raw.expect_close()
            raw.close()

        listener = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        assoc = await connect("127.0.0.1", port, proposal(called="PEER"), settings())
        await asyncio.wait_for(assoc.release(), 3)
        assert seen == [0x06]
        assert assoc.end_reason == "released"
        listener.close()
        await listener.wait_closed()

    asyncio.run(run())


def test_release_collision_as_acceptor() -> None:
    """We (acceptor) release while the requestor does: AR-8 Sta10, AR-10 Sta12, AR-4 Sta13."""

    async def run() -> None:
        accepted: asyncio.Future[Association] = asyncio.get_running_loop().create_future()

        def negotiator(assoc: Association, rq: AAssociateRQ) -> AAssociateAC | AAssociateRJ:
            answers, _accepted, roles = negotiate(
                rq.presentation_contexts, {VERIFICATION: SupportedContext(VERIFICATION, frozenset({IMPLICIT_LE}))}
            )
            return AAssociateAC(rq.called_ae, rq.calling_ae, answers, UserInformation(maximum_length=16384))

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assoc = Association(reader, writer, settings("PEER"), is_requestor=False, negotiator=negotiator)
            accepted.set_result(assoc)
            await assoc.dul.run()

        listener = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        raw = await Raw.open(port)
        await raw.associate(called="PEER")
        acceptor = await accepted
        releasing = asyncio.ensure_future(acceptor.release())
        pdu = await raw.read_pdu()
        assert pdu is not None and pdu[1] == RELEASE_RQ
        raw.send(RELEASE_RQ)  # collision: we are the requestor, so we answer first
        raw.send(RELEASE_RP)
        pdu = await raw.read_pdu()
        assert pdu is not None and pdu[1] == RELEASE_RP
        raw.close()
        await asyncio.wait_for(releasing, 3)
        assert acceptor.end_reason == "released"
        listener.close()
        await listener.wait_closed()

    asyncio.run(run())


# ------------------------------------------------------------ the peer aborts mid-message
@pytest.mark.parametrize("abort_after_pdus", [0, 3], ids=["before-the-request", "mid-message"])
def test_peer_abort_while_we_send_is_an_association_error(abort_after_pdus: int) -> None:
    """A-ABORT from the peer before or in the middle of a 3 MB message: AssociationError,
    not the state machine's InvalidTransition."""

    async def run() -> None:
        peer_done = asyncio.Event()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw = Raw(reader, writer)
            rq = await raw.read_pdu()
            assert rq is not None and rq[0] == 0x01
            ac = AAssociateAC(
                "PEER", "OURSCU", [PresentationContextAC(3, 0, IMPLICIT_LE)], UserInformation(maximum_length=SMALL_PDU)
            )
            raw.send(encode_pdu(ac))
            for _ in range(abort_after_pdus):
                assert await raw.read_pdu() is not None
            raw.send(abort_bytes(0, 0))
            await raw.reader.read()  # keep reading (no RST) until we close after AA-3
            raw.close()
            await writer.wait_closed()
            peer_done.set()

        listener = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        assoc = await connect("127.0.0.1", port, proposal(called="PEER"), settings())
        if abort_after_pdus == 0:
            await asyncio.wait_for(assoc.dul.wait_closed(), 3)
        with pytest.raises(AssociationError, match="aborted by peer"):
            await echo_back(assoc, os.urandom(PAYLOAD_SIZE))
        await asyncio.wait_for(assoc.wait_closed(), 3)
        await assoc.release()  # a no-op once the association is gone
        await asyncio.wait_for(peer_done.wait(), 3)
        listener.close()
        await listener.wait_closed()

    asyncio.run(run())


def test_release_after_our_own_abort_is_a_no_op() -> None:
    async def run() -> None:
        async with serving() as server:
            assoc = await connect("127.0.0.1", server.port, proposal(), settings())
            assoc.abort("test gives up")
            await asyncio.wait_for(assoc.release(), 3)
            assert assoc.end_reason == "test gives up"
            with pytest.raises(AssociationError, match="has ended"):
                await echo(assoc)
            await wait_until_idle(server)

    asyncio.run(run())


def test_no_new_request_once_the_peer_has_asked_to_release() -> None:
    """In Sta8 the peer waits for our A-RELEASE-RP and cannot answer a request (e.g. a
    storage commitment report): sending one is refused at once, nothing is written."""
    from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
    from minipacs.net.fsm import State
    from minipacs.net.presentation import NegotiatedContext
    from tests.net.test_fsm import FakeWriter

    async def main() -> None:
        writer = FakeWriter()
        assoc = Association(
            asyncio.StreamReader(),
            writer,
            AssociationSettings(ae_title="US"),  # type: ignore[arg-type]
            is_requestor=False,
        )
        assoc.contexts[1] = NegotiatedContext(1, VERIFICATION_SOP_CLASS, EXPLICIT_VR_LITTLE_ENDIAN)
        assoc.dul.state = State.STA8
        before = len(writer.data)
        rq = Command.make("C-ECHO-RQ", MessageID=1, AffectedSOPClassUID=VERIFICATION_SOP_CLASS)
        with pytest.raises(AssociationError, match="asked to release"):
            await assoc.send_message(1, rq)
        assert len(writer.data) == before
        # a response may still go out in Sta8 (PS3.8 AR-7)
        rsp = Command.make(
            "C-ECHO-RSP", MessageIDBeingRespondedTo=1, AffectedSOPClassUID=VERIFICATION_SOP_CLASS, Status=0
        )
        await assoc.send_message(1, rsp)
        assert len(writer.data) > before

    asyncio.run(main())
