"""What minipacs does with each kind of HL7 v2 message a real HIS / RIS sends, over a real MLLP
connection (hl7/adt.py EVENTS, hl7/orders.py ORDER_CONTROL; README "HL7", docs/CORRECTIONS.md): the
visit and registration events of an ADT feed are acknowledged and change nothing, A36 merges, a message
sent again with the same MSH-10 (its ACK was lost) gets the same AA and is not applied twice, OMI^O23's
IPC segment wins over OBR placer fields, ORC-1 SC is acknowledged, timestamps with an offset are the
archive's local time, and an ORC with two OBR segments is refused rather than half applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections, list_corrections
from minipacs.core.worklist import CANCELLED, Worklist
from minipacs.hl7.adt import HL7Receiver
from minipacs.hl7.message import parse
from minipacs.hl7.mllp import MLLPServer, frame
from minipacs.hl7.sequence import Resends
from tests.hl7.samples import OMI, orm
from tests.hl7.test_adt import adt, send, serve, store, stored

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# ------------------------------------------------------------------ ADT: what each event does


@pytest.mark.parametrize("event", ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11", "A12", "A13", "A28"])
def test_visit_and_registration_events_are_acknowledged_and_change_nothing(tmp_path: Path, event: str) -> None:
    """HL7 v2.5 3.3.1 - 3.3.13, 3.3.28: a HIS's whole ADT feed reaches the PACS; AA (not AR: refusing
    them fills the sender's error queue), and no study is changed even when the PID differs."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [sop] = await store(archive, tmp_path, "P1", "Doe^John")
        code, text, ack = await send(reader, writer, adt(event, "P1^^^HOSP^MR", name="Other^Name", birth="19500101"))
        assert code == "AA", text
        assert "nothing changed" in text and ack.first("ERR") is None
        assert ack.value(ack.first("MSH"), 9, 2) == event
        ds = await stored(archive, sop)
        assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Doe^John")
        assert await list_corrections(archive) == []
        # an unknown patient is no error either: nothing to change
        code, _, _ = await send(reader, writer, adt(event, "NOBODY"))
        assert code == "AA"

    serve(tmp_path, body)


def test_a_registration_without_pid_is_still_refused(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        no_pid = "\r".join(line for line in adt("A04", "P1").split("\r") if not line.startswith("PID")) + "\r"
        code, text, ack = await send(reader, writer, no_pid)
        assert code == "AE" and "no PID segment" in text
        err = ack.first("ERR")
        assert err is not None and ack.value(err, 3) == "100"

    serve(tmp_path, body)


def test_a35_account_merge_changes_nothing_and_a36_merges_the_patient(tmp_path: Path) -> None:
    """HL7 v2.5 3.3.35 (merge account number only: no patient identifier changes) and 3.3.36 (merge
    patient ID and account number: the patient merge of A34 / A40)."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        await store(archive, tmp_path, "GOOD", "Right^Name")
        [dup] = await store(archive, tmp_path, "DUP", "Wrong^Name")
        code, text, _ = await send(reader, writer, adt("A35", "GOOD", mrg="DUP"))
        assert code == "AA" and "nothing changed" in text
        assert (await stored(archive, dup)).PatientID == "DUP"
        code, text, _ = await send(reader, writer, adt("A36", "GOOD", mrg="DUP"))
        assert code == "AA" and "merged into GOOD" in text, text
        assert (await stored(archive, dup)).PatientID == "GOOD"

    serve(tmp_path, body)


# ------------------------------------------------------------------ the same message sent again


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str) -> bytes:
    """The ACK's bytes (frame removed) answering ``message``."""
    writer.write(frame(message))
    await writer.drain()
    return (await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 60))[1:-2]


def msa(ack: bytes) -> tuple[str, str]:
    reply = parse(ack.decode("utf-8"))
    return reply.value(reply.first("MSA"), 1), reply.value(reply.first("MSA"), 3)


def test_a_message_sent_again_gets_the_same_ack_and_is_not_applied_twice(tmp_path: Path) -> None:
    """HL7 v2.5 2.9.2: a sender that lost the ACK sends the same message (same MSH-10) again; it was
    applied, so the answer is its AA again, not AE 205 "already on the worklist" or AE 204 "unknown"."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        worklist = Worklist(archive)
        first = await exchange(reader, writer, orm())
        assert msa(first)[0] == "AA"
        assert await exchange(reader, writer, orm()) == first
        assert len(await worklist.by_accession("ACC100")) == 1
        cancel = await exchange(reader, writer, orm("CA"))
        assert msa(cancel)[0] == "AA"
        assert await exchange(reader, writer, orm("CA")) == cancel
        [entry] = await worklist.by_accession("ACC100")
        assert entry.status == CANCELLED
        await store(archive, tmp_path, "GOOD")
        [dup] = await store(archive, tmp_path, "DUP")
        merge = await exchange(reader, writer, adt("A40", "GOOD", mrg="DUP"))
        assert msa(merge)[0] == "AA"
        assert await exchange(reader, writer, adt("A40", "GOOD", mrg="DUP")) == merge
        assert (await stored(archive, dup)).PatientID == "GOOD"
        # a refusal is not remembered: sent again it is checked again (here: refused again)
        refused = await exchange(reader, writer, adt("A40", "GOOD", mrg="NOBODY"))
        again = await exchange(reader, writer, adt("A40", "GOOD", mrg="NOBODY"))
        assert msa(refused)[0] == msa(again)[0] == "AE" and refused != again  # a new ACK (its own MSH-10)
        # another message (another MSH-10) with the same order is still a duplicate
        code, text = msa(await exchange(reader, writer, orm().replace("|CTLACC100|", "|CTL2|")))
        assert code == "AA" and "scheduled" in text  # the first was cancelled: a new order

    serve(tmp_path, body)


def serve_with(tmp: Path, window: float, limit: int, messages: list[str]) -> list[tuple[str, str]]:
    """(MSA-1, MSA-3) of each message sent to a receiver remembering ``limit`` messages for ``window`` s."""

    async def main() -> list[tuple[str, str]]:
        archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
        receiver = HL7Receiver(Worklist(archive), Corrections(archive), resend_window=window, resend_max=limit)
        server = MLLPServer(receiver, host="127.0.0.1", port=0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            return [msa(await exchange(reader, writer, m)) for m in messages]
        finally:
            writer.close()
            await writer.wait_closed()
            await server.close()
            await archive.close()

    return asyncio.run(main())


@pytest.mark.parametrize(("window", "limit"), [(0.0, 100), (600.0, 0), (600.0, 1)])
def test_a_resend_outside_the_memory_is_applied_as_a_new_message(
    tmp_path: Path, window: float, limit: int
) -> None:
    """Nothing remembered (window 0 or limit 0), or the message pushed out by the next one (limit 1): the
    resend is a new NW of an order on the worklist, AE 205 as before."""
    answers = serve_with(tmp_path, window, limit, [orm(accession="A1"), orm(accession="A2"), orm(accession="A1")])
    assert [code for code, _ in answers] == ["AA", "AA", "AE"]
    assert "already on the worklist" in answers[2][1]


def test_the_resend_memory_at_its_limits() -> None:
    now = [0.0]
    resends = Resends(window=10.0, limit=2, clock=lambda: now[0])
    ack = b"MSH|^~\\&|MINIPACS||RIS|HOSP|20261207||ACK^O01^ACK|1|P|2.5\rMSA|AA|CTL1\r"
    nak = ack.replace(b"MSA|AA", b"MSA|AE")
    resends.remember(b"one", ack)
    resends.remember(b"refused", nak)
    assert resends.ack_of(b"one") == ack and resends.ack_of(b"refused") is None
    now[0] = 10.0
    assert resends.ack_of(b"one") == ack  # at the window's end: still remembered
    now[0] = 10.001
    assert resends.ack_of(b"one") is None
    for data in (b"a", b"b", b"c"):
        resends.remember(data, ack)
    assert [resends.ack_of(d) for d in (b"a", b"b", b"c")] == [None, ack, ack]  # the limit: the oldest goes
