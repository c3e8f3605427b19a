"""Defects that fuzzing the network input found (tools/fuzz_net.py and live mutated byte streams).

Each test states the input, what minipacs did, and the part of PS3.7 / PS3.8 it now follows.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from minipacs.bootstrap import build_app
from minipacs.config import Settings
from minipacs.net.association import Association, AssociationError, AssociationSettings, Message, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.pdu import PDV, AAssociateAC, AAssociateRQ, AReleaseRP, AReleaseRQ, PDataTF
from minipacs.net.pdu_items import (
    AsynchronousOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassExtendedNegotiation,
    UserInformation,
)
from minipacs.net.presentation import accepted_by_peer
from minipacs.services.dispatch import Response
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP, echo
from tests.peers import leftover_transfers

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


# ------------------------------------------------------------ the requestor's view of an A-ASSOCIATE-AC
def test_an_accepted_context_with_a_transfer_syntax_not_proposed_is_not_used() -> None:
    """PS3.8 9.3.3.2: the Transfer Syntax Sub-Item of an accepted context holds "a single transfer
    syntax name proposed by the association-requestor" for that context. An acceptor answering
    context 3 (proposed in native syntaxes only) with JPEG 2000 made us send JPEG 2000 data on
    it (store_file matched the file's syntax), a syntax the context never proposed. Such an answer
    is no acceptance we can use: the context is left out, as one the acceptor rejected."""
    proposed = [
        PresentationContextRQ(1, CT_IMAGE, [EXPLICIT_LE]),
        PresentationContextRQ(3, CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE]),
    ]
    answers = [
        PresentationContextAC(1, 0, EXPLICIT_LE),
        PresentationContextAC(3, 0, JPEG_2000_LOSSLESS),
    ]
    accepted = accepted_by_peer(proposed, answers)
    assert [(c.context_id, c.transfer_syntax) for c in accepted] == [(1, EXPLICIT_LE)]


def test_a_role_reply_grants_no_role_that_was_not_proposed() -> None:
    """PS3.7 D.3.3.4 (Table D.3-9): a role the requestor proposed as 0 cannot be accepted by the
    acceptor ("not allowed"). An A-ASSOCIATE-AC whose role reply said SCP for a context we proposed
    as SCU only made the context one on which we act as SCP. The roles granted are those both
    proposed and accepted."""
    proposed = [PresentationContextRQ(1, CT_IMAGE, [IMPLICIT_LE])]
    answers = [PresentationContextAC(1, 0, IMPLICIT_LE)]
    asked = [RoleSelection(CT_IMAGE, scu_role=True, scp_role=False)]
    reply = [RoleSelection(CT_IMAGE, scu_role=True, scp_role=True)]
    (context,) = accepted_by_peer(proposed, answers, reply, asked)
    assert (context.requestor_is_scu, context.requestor_is_scp) == (True, False)


# ------------------------------------------------------------ extended negotiation in the A-ASSOCIATE-AC
VERIFICATION = "1.2.840.10008.1.1"


class EchoesExtendedNegotiation(VerificationSCP):
    """Answers every SOP Class Extended Negotiation item proposed for Verification with ``reply``."""

    def __init__(self, reply: bytes = b"\x01") -> None:
        self.reply = reply

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        return [
            SOPClassExtendedNegotiation(item.sop_class_uid, self.reply)
            for item in proposed
            if item.sop_class_uid == VERIFICATION
        ]


@asynccontextmanager
async def verification_server(service: VerificationSCP) -> AsyncIterator[DicomServer]:
    server = DicomServer(
        "MINIPACS",
        [service],
        host="127.0.0.1",
        port=0,
        check_called_aet=False,
        timeouts=Timeouts(acse=1.0, dimse=3.0, idle=30.0),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=1.0)


def associate_rq(extended: int) -> bytes:
    """An A-ASSOCIATE-RQ whose User Information holds ``extended`` copies of one item for Verification."""
    info = UserInformation(extended=[SOPClassExtendedNegotiation(VERIFICATION, b"\x01")] * extended)
    return AAssociateRQ("MINIPACS", "FUZZ", [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])], info).encode()


async def read_pdu(reader: asyncio.StreamReader, timeout: float = 3.0) -> tuple[int, bytes]:
    """The next PDU as (PDU-type, body)."""
    header = await asyncio.wait_for(reader.readexactly(6), timeout)
    body = await asyncio.wait_for(reader.readexactly(struct.unpack(">xxL", header)[0]), timeout)
    return header[0], body


async def first_pdu(port: int, request: bytes, timeout: float = 3.0) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_pdu(reader, timeout)
    finally:
        writer.close()


def test_duplicate_extended_negotiation_items_get_one_answer_and_never_overflow_the_ac() -> None:
    """PS3.7 D.3.3.5: only one SOP Class Extended Negotiation Sub-Item per SOP Class UID may be in
    the A-ASSOCIATE-RQ, and only one in the A-ASSOCIATE-AC. A request repeating the item 1,927 times
    (a full 65,535-byte User Information Item) was answered once per copy: the AC's User Information
    Item then exceeded its 16-bit Item-length, encoding it raised ValueError in an event-loop
    callback ("Exception in callback UpperLayer._respond_associate"), no answer was sent and the
    connection sat in Sta3, counted against max_associations, until the idle timeout. Now each SOP
    class gets one answer, to its first item (as with repeated presentation context IDs)."""

    async def run() -> None:
        async with verification_server(EchoesExtendedNegotiation()) as server:
            pdu_type, body = await first_pdu(server.port, associate_rq(3))
            assert pdu_type == 0x02
            assert AAssociateAC.decode(memoryview(body)).user_information.extended == [
                SOPClassExtendedNegotiation(VERIFICATION, b"\x01")
            ]
            pdu_type, body = await first_pdu(server.port, associate_rq(1927))
            assert pdu_type == 0x02

    asyncio.run(run())


def test_an_a_associate_ac_that_cannot_be_encoded_aborts_at_once() -> None:
    """PS3.8 Table 9-10, Sta3: the association is accepted, and our answer cannot be encoded (here
    a service answers with a 70,000-byte extended negotiation reply, beyond an item's 16-bit
    Item-length). The ValueError escaped into an event-loop callback and left the layer in Sta3:
    no PDU was sent, the connection held a max_associations slot until the idle timeout. Now it is
    an A-ABORT request (Evt15, AA-1) at once, with the reason in the log."""

    async def run() -> None:
        async with verification_server(EchoesExtendedNegotiation(b"\x00" * 70000)) as server:
            started = time.monotonic()
            pdu_type, body = await first_pdu(server.port, associate_rq(1))
            assert (pdu_type, body) == (0x07, bytes(4))
            assert time.monotonic() - started < 1.0
            deadline = time.monotonic() + 3.0
            while server.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not server.connections and not server.established

    asyncio.run(run())


def test_a_repeated_context_id_is_used_as_the_proposal_it_was_answered_for() -> None:
    """PS3.8 9.3.2.2: Presentation-context-IDs are unique in a request; negotiate() answers a repeated
    ID once, for its FIRST proposal (as DCMTK does). The association's table of contexts, built by
    accepted_by_peer, took the LAST proposal of that ID instead: a request proposing ID 1 for
    Verification and again for a private SOP class had its acceptance of Verification recorded as
    the private class, and its C-ECHO on context 1 was refused as an unrecognized operation (0x0211).
    Both now read the first proposal, so the context is what the A-ASSOCIATE-AC said."""
    proposed = [
        PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE]),
        PresentationContextRQ(1, "1.2.826.0.1.3680043.9.7433.1.9", [IMPLICIT_LE]),
    ]
    (context,) = accepted_by_peer(proposed, [PresentationContextAC(1, 0, IMPLICIT_LE)])
    assert context.abstract_syntax == VERIFICATION

    async def run() -> None:
        async with verification_server(VerificationSCP()) as server:
            rq = AAssociateRQ("MINIPACS", "FUZZ", proposed, UserInformation(maximum_length=16384))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(rq.encode())
                assert (await read_pdu(reader))[0] == 0x02
                echo = Command.make("C-ECHO-RQ", AffectedSOPClassUID=VERIFICATION, MessageID=7).encode()
                writer.write(PDataTF([PDV(1, True, True, echo)]).encode())
                pdu_type, body = await read_pdu(reader)
                assert pdu_type == 0x04
                response = Command.decode(PDataTF.decode(memoryview(body)).pdvs[0].data)
                assert (response.name, response.status) == ("C-ECHO-RSP", 0x0000)
            finally:
                writer.close()

    asyncio.run(run())


# ------------------------------------------------------------ control characters in command sets
FORGED = "\n2026-01-01 00:00:00,000 ERROR minipacs.server forged line"


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("C-FIND-RQ", {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.2.2.1" + FORGED, "Priority": 0}),
        ("C-STORE-RQ", {"AffectedSOPClassUID": "1.2", "Priority": 0, "AffectedSOPInstanceUID": "1.2\r\x1b[2J"}),
        ("C-MOVE-RQ", {"AffectedSOPClassUID": "1.2", "Priority": 0, "MoveDestination": "DEST" + FORGED[:10]}),
        ("N-GET-RQ", {"RequestedSOPClassUID": "1.2\x7f", "RequestedSOPInstanceUID": "1.2"}),
    ],
)
def test_a_uid_or_ae_title_with_a_control_character_is_read_escaped_never_raw(
    message: str, fields: dict[str, object]
) -> None:
    """PS3.5 Table 6.2-1: a UI holds digits and periods, an AE printable characters; neither any control
    character. A C-FIND-RQ whose Affected SOP Class UID ended in a newline and a made-up log line was
    logged as is by the services (the forged line appeared in the server log as an ERROR of its own),
    and a C-MOVE-RQ's Move Destination likewise. The value is now read with its control characters
    escaped: no longer a valid UID or AE title, it is refused by the service with its status and an
    Error Comment (tests/interop/test_durability.py: a C-STORE's gets 0xC000 and the association
    goes on), and a log line that shows it stays one line."""
    data = Command.make(message, has_dataset=message != "N-GET-RQ", MessageID=1, **fields).encode()
    decoded = Command.decode(data)
    escaped = 0
    for keyword, sent in fields.items():
        if not isinstance(sent, str):
            continue
        got = decoded.get(keyword)
        assert isinstance(got, str) and got.isprintable(), (keyword, got)
        if sent.isprintable():
            assert got == sent
        else:
            assert got == sent.encode("unicode_escape").decode("ascii"), (keyword, got)
            escaped += 1
    assert escaped == 1


def test_an_error_comment_with_control_characters_is_decoded_with_them_escaped() -> None:
    """PS3.5 Table 6.2-1: an LO holds no control character (ESC aside). A response's Error Comment
    is text for a person, logged by our SCUs: its control characters are shown escaped (``\\n``),
    never written into a log line raw, and the response is still read."""
    data = Command.make(
        "C-STORE-RSP", MessageIDBeingRespondedTo=1, Status=0xC000, ErrorComment="bad\r\nline\x00two"
    ).encode()
    assert Command.decode(data).error_comment == "bad\\r\\nline\\x00two"


# ------------------------------------------------------------ a data set where none is due
def test_a_c_cancel_rq_with_a_data_set_leaves_no_staged_file_behind(tmp_path: Path) -> None:
    """PS3.7 9.3.2.3: a C-CANCEL-RQ carries no data set. One that announced a data set on a Storage
    context had it staged by the Storage SCP's sink like a C-STORE's (600 KB: a file), and the C-CANCEL
    path never discarded it: the file stayed in ready/ for good, so a peer could fill the disk with
    cancels. A C-CANCEL's data set is now drained into memory (bounded) and dropped."""

    async def run() -> None:
        settings = Settings(data_dir=tmp_path / "data", host="127.0.0.1", port=0, fsync=False, acse_timeout=1.0)
        app = await build_app(settings)
        await app.dicom.start()
        try:
            rq = AAssociateRQ(
                "MINIPACS",
                "FUZZ",
                [PresentationContextRQ(3, CT_IMAGE, [IMPLICIT_LE])],
                UserInformation(maximum_length=16384),
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", app.dicom.port)
            writer.write(rq.encode())
            assert (await read_pdu(reader))[0] == 0x02
            cancel = Command(
                {
                    "CommandField": 0x0FFF,
                    "MessageIDBeingRespondedTo": 1,
                    "CommandDataSetType": 0x0000,
                    "AffectedSOPClassUID": CT_IMAGE,
                    "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.9.7433.9.1",
                }
            )
            data = b"\x08\x00\x05\x00" + bytes(600 * 1024)
            writer.write(PDataTF([PDV(3, True, True, cancel.encode())]).encode())
            for start in range(0, len(data), 16000):
                last = start + 16000 >= len(data)
                writer.write(PDataTF([PDV(3, False, last, data[start : start + 16000])]).encode())
            writer.write(AReleaseRQ().encode())
            assert (await read_pdu(reader))[0] == 0x06
            writer.close()
            assert leftover_transfers(settings.data_dir) == []
        finally:
            await app.close(grace=1.0)

    asyncio.run(run())


# ------------------------------------------------------------ two outstanding requests with one Message ID
class SlowVerification(VerificationSCP):
    """Answers C-ECHO after a moment, so that two requests are outstanding at once."""

    async def c_echo(self, assoc: Association, message: Message) -> Response:
        await asyncio.sleep(0.2)
        return await super().c_echo(assoc, message)


def test_two_outstanding_requests_with_one_message_id_each_get_exactly_one_response() -> None:
    """PS3.7 9.1.1.1 / E.1: the Message ID names an outstanding request; a peer that gives two the same
    one (found by the live fuzz: pipelined C-FINDs, both Message ID 3) breaks that, but each request
    still deserves exactly one final response (PS3.7 9.3). The association marked a request answered by
    looking its Message ID up: the first C-ECHO's response marked the SECOND answered, so the first was
    answered again with 0xC000 "handler ended without a final response" and the second's own response
    was refused as one "after its final response" (tracebacks logged, three responses or one instead of
    two). A response now marks the very request it answers."""

    async def run() -> None:
        async with verification_server(SlowVerification()) as server:
            info = UserInformation(maximum_length=16384, async_ops=AsynchronousOperationsWindow(4, 1))
            rq = AAssociateRQ("MINIPACS", "FUZZ", [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])], info)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(rq.encode())
                assert (await read_pdu(reader))[0] == 0x02
                echo = Command.make("C-ECHO-RQ", AffectedSOPClassUID=VERIFICATION, MessageID=3).encode()
                writer.write(PDataTF([PDV(1, True, True, echo), PDV(1, True, True, echo)]).encode())
                writer.write(AReleaseRQ().encode())
                responses = []
                while True:
                    pdu_type, body = await read_pdu(reader)
                    if pdu_type != 0x04:
                        break
                    for pdv in PDataTF.decode(memoryview(body)).pdvs:
                        response = Command.decode(pdv.data)
                        responses.append((response.name, response.message_id_being_responded_to, response.status))
                assert pdu_type == 0x06
                assert responses == [("C-ECHO-RSP", 3, 0x0000)] * 2
            finally:
                writer.close()

    asyncio.run(run())


# ------------------------------------------------------------ a Pending status where none is defined
def test_a_pending_status_ends_a_request_that_has_no_pending_responses() -> None:
    """PS3.7 9.1: only C-FIND, C-GET and C-MOVE have Pending responses (more follow); a C-ECHO-RSP or a
    C-STORE-RSP is the one and only response. An acceptor answering our C-ECHO (or a C-GET/C-MOVE
    sub-operation's C-STORE) with status 0xFF00 made us wait for a further response that never comes,
    until the DIMSE timeout aborted the association. That response is now final: its status is returned."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_pdu(reader)
        answer = AAssociateAC("PEER", "US", [PresentationContextAC(1, 0, IMPLICIT_LE)], UserInformation(16384))
        writer.write(answer.encode())
        _pdu_type, body = await read_pdu(reader)
        request = Command.decode(PDataTF.decode(memoryview(body)).pdvs[0].data)
        pending = Command.make(
            "C-ECHO-RSP", MessageIDBeingRespondedTo=request.message_id, Status=0xFF00, AffectedSOPClassUID=VERIFICATION
        )
        writer.write(PDataTF([PDV(1, True, True, pending.encode())]).encode())
        if (await read_pdu(reader))[0] == 0x05:
            writer.write(AReleaseRP().encode())
        writer.close()

    async def run() -> None:
        listener = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        settings = AssociationSettings("US", timeouts=Timeouts(acse=2.0, dimse=2.0, idle=5.0))
        assoc = await connect(
            "127.0.0.1", port, build_rq("US", "PEER", [(VERIFICATION, [IMPLICIT_LE])], settings), settings
        )
        started = time.monotonic()
        assert await echo(assoc) == 0xFF00
        assert time.monotonic() - started < 1.0
        await assoc.release()
        listener.close()
        await listener.wait_closed()

    asyncio.run(run())


# ------------------------------------------------------------ presentation context items of an A-ASSOCIATE-RQ
def test_an_associate_rq_without_a_presentation_context_is_rejected(caplog: pytest.LogCaptureFixture) -> None:
    """PS3.8 9.3.2: an A-ASSOCIATE-RQ holds "one or more" Presentation Context Items. One with none was
    accepted (an association on which nothing can be asked, holding a max_associations slot). It now
    gets an A-ASSOCIATE-RJ permanent, service-user, no reason given (PS3.8 Table 9-21) -- what
    DCMTK's DcmSCP answers when no context is acceptable -- and a log line that says why."""

    async def run() -> None:
        async with verification_server(VerificationSCP()) as server:
            rq = AAssociateRQ("MINIPACS", "FUZZ", [], UserInformation(maximum_length=16384))
            with caplog.at_level("WARNING", logger="minipacs"):
                pdu_type, body = await first_pdu(server.port, rq.encode())
            assert pdu_type == 0x03, "A-ASSOCIATE-RJ"
            assert body[1:4] == bytes([1, 1, 1])
            assert any("no Presentation Context" in r.getMessage() for r in caplog.records)
            assert await echo_on(server.port) == 0

    asyncio.run(run())


async def echo_on(port: int) -> int:
    settings = AssociationSettings(ae_title="OURSCU", timeouts=Timeouts(acse=1.0, dimse=3.0, idle=5.0))
    assoc = await connect(
        "127.0.0.1", port, build_rq("OURSCU", "MINIPACS", [(VERIFICATION, [IMPLICIT_LE])], settings), settings
    )
    try:
        return await echo(assoc)
    finally:
        await assoc.release()


def test_a_presentation_context_with_an_even_id_is_answered_as_rejected() -> None:
    """PS3.8 9.3.2.2: a Presentation-context-ID is an odd integer from 1 to 255. Contexts 0, 2 and 254
    were accepted and used. Each is now answered "no reason (provider rejection)" (PS3.8 Table 9-18,
    result 2) and never used -- P-DATA on it is aborted as on any context not accepted -- while the
    odd IDs at the ends of the range, 1 and 255, are accepted as before."""
    proposed = [PresentationContextRQ(cid, VERIFICATION, [IMPLICIT_LE]) for cid in (0, 1, 2, 254, 255)]

    async def run() -> None:
        async with verification_server(VerificationSCP()) as server:
            rq = AAssociateRQ("MINIPACS", "FUZZ", proposed, UserInformation(maximum_length=16384))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(rq.encode())
                pdu_type, body = await read_pdu(reader)
                assert pdu_type == 0x02
                ac = AAssociateAC.decode(memoryview(body))
                assert {c.context_id: c.result for c in ac.presentation_contexts} == {0: 2, 1: 0, 2: 2, 254: 2, 255: 0}
                echo = Command.make("C-ECHO-RQ", AffectedSOPClassUID=VERIFICATION, MessageID=1).encode()
                writer.write(PDataTF([PDV(255, True, True, echo)]).encode())
                assert (await read_pdu(reader))[0] == 0x04  # answered on 255
                writer.write(PDataTF([PDV(2, True, True, echo)]).encode())
                assert (await read_pdu(reader))[0] == 0x07  # A-ABORT: 2 was not accepted
            finally:
                writer.close()

    asyncio.run(run())


# ------------------------------------------------------------ a tiny Maximum Length
def test_a_peer_announcing_a_maximum_length_below_max_pdu_peer_min_is_rejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer announcing a Maximum Length of 8 got 2-byte fragments: a C-GET of a 500 MB study became
    250 million PDUs, our CPU spent on its behalf. PS3.8 D.1 sets no floor; max_pdu_peer_min does:
    exactly at it the association is accepted, one below it gets an A-ASSOCIATE-RJ (permanent,
    service-user, no reason given) and a log line naming the value and the setting; 0 ("no
    maximum", PS3.8 D.1) is always accepted."""

    async def run() -> None:
        server = DicomServer(
            "MINIPACS",
            [VerificationSCP()],
            host="127.0.0.1",
            port=0,
            timeouts=Timeouts(acse=1.0, dimse=3.0, idle=30.0),
            max_pdu_peer_min=1024,
        )
        await server.start()
        try:
            for announced, answer in ((1024, 0x02), (0, 0x02), (1023, 0x03), (8, 0x03)):
                info = UserInformation(maximum_length=announced)
                rq = AAssociateRQ("MINIPACS", "FUZZ", [PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])], info)
                with caplog.at_level("WARNING", logger="minipacs"):
                    pdu_type, body = await first_pdu(server.port, rq.encode())
                assert pdu_type == answer, announced
                if answer == 0x03:
                    assert body[1:4] == bytes([1, 1, 1])
                    lines = [r.getMessage() for r in caplog.records if "max_pdu_peer_min" in r.getMessage()]
                    assert lines and f"Maximum Length of {announced}" in lines[-1] and "1024" in lines[-1]
        finally:
            await server.close(grace=1.0)

    asyncio.run(run())


def test_an_acceptor_announcing_a_maximum_length_below_max_pdu_peer_min_is_not_used() -> None:
    """As requestor: an A-ASSOCIATE-AC announcing less than our max_pdu_peer_min is aborted at once and
    the caller told why (the value and the setting); exactly at the floor it is used."""

    async def run() -> None:
        server = DicomServer(
            "MINIPACS",
            [VerificationSCP()],
            host="127.0.0.1",
            port=0,
            max_pdu_receive=4096,
            timeouts=Timeouts(acse=1.0, dimse=3.0, idle=30.0),
        )
        await server.start()
        try:
            for floor, usable in ((4096, True), (4097, False)):
                settings = AssociationSettings(
                    ae_title="OURSCU", timeouts=Timeouts(acse=1.0, dimse=3.0, idle=5.0), max_pdu_peer_min=floor
                )
                rq = build_rq("OURSCU", "MINIPACS", [(VERIFICATION, [IMPLICIT_LE])], settings)
                if usable:
                    assoc = await connect("127.0.0.1", server.port, rq, settings)
                    assert await echo(assoc) == 0
                    await assoc.release()
                else:
                    with pytest.raises(AssociationError, match=r"Maximum Length of 4096.*max_pdu_peer_min"):
                        await connect("127.0.0.1", server.port, rq, settings)
        finally:
            await server.close(grace=1.0)

    asyncio.run(run())
