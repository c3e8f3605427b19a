"""What minipacs does with each kind of HL7 v2 message a real HIS / RIS sends, over a real MLLP
connection (hl7/adt.py EVENTS, hl7/orders.py ORDER_CONTROL; README "HL7", docs/CORRECTIONS.md): the
visit and registration events of an ADT feed are acknowledged and change nothing, A36 merges, a message
sent again with the same MSH-10 (its ACK was lost) gets the same AA and is not applied twice, OMI^O23's
IPC segment wins over OBR placer fields, ORC-1 SC is acknowledged, timestamps with an offset are the
archive's local time, and an ORC with two OBR segments is refused rather than half applied."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

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
from tests.hl7.test_mllp import mwl_c_find, serve_mwl

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# ------------------------------------------------------------------ ADT: what each event does


@pytest.mark.parametrize("event", ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11", "A12", "A13", "A28", "A38"])
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
        refused = await exchange(reader, writer, adt("A47", "GOOD2", mrg="NOBODY"))
        again = await exchange(reader, writer, adt("A47", "GOOD2", mrg="NOBODY"))
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
def test_a_resend_outside_the_memory_is_applied_as_a_new_message(tmp_path: Path, window: float, limit: int) -> None:
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


# ------------------------------------------------------------------ orders, seen by a modality's C-FIND


def mwl(port: int) -> list[Dataset]:
    """pynetdicom as the modality: every worklist item, with the keys these tests look at (blocking)."""
    query = Dataset()
    for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber", "RequestedProcedureID", "StudyInstanceUID"):
        setattr(query, keyword, "")
    step = Dataset()
    for keyword in ("Modality", "ScheduledProcedureStepID", "ScheduledProcedureStepStartDate"):
        setattr(step, keyword, "")
    step.ScheduledProcedureStepStartTime = ""
    query.ScheduledProcedureStepSequence = [step]
    found = mwl_c_find(port, query, "CT01")
    return sorted(found, key=lambda ds: str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))


Exchange = Callable[[str], Awaitable[tuple[str, str]]]


def with_mwl(tmp: Path, body: Callable[[Exchange, int], Awaitable[None]]) -> None:
    """``body(send, port)``: ``send`` one message over MLLP -> (MSA-1, MSA-3); ``port`` the MWL SCP's."""

    async def run(server: MLLPServer, worklist: Worklist, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

        async def send_one(message: str) -> tuple[str, str]:
            return msa(await exchange(reader, writer, message))

        try:
            await body(send_one, port)
        finally:
            writer.close()
            await writer.wait_closed()

    serve_mwl(tmp, run)


def test_omi_ipc_wins_over_the_placer_fields_of_obr(tmp_path: Path) -> None:
    """IHE RAD TF-2 4.4 (OMI^O23): accession, procedure and step IDs, Study Instance UID and modality
    are IPC's; OBR-18 .. 20 are the placer's and filler's own fields and OBR-24 a service section."""
    omi = OMI.replace(
        "OBR|1|PL23|FL23|CTCHEST^CT Chest^LOCAL",
        "OBR|1|PL23|FL23|CTCHEST^CT Chest^LOCAL" + "|" * 14 + "PLACERFIELD1|PLACERFIELD2|FILLERFIELD1||||RAD",
    )
    assert parse(omi).value(parse(omi).first("OBR"), 24) == "RAD"  # the sample really fills OBR-18 .. 24

    async def body(send_one: Exchange, port: int) -> None:
        code, text = await send_one(omi)
        assert code == "AA", text
        found = await asyncio.to_thread(mwl, port)
        assert [ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in found] == ["SPS23A", "SPS23B"]
        for ds in found:
            assert (ds.AccessionNumber, ds.RequestedProcedureID) == ("ACC23", "RP23")
            assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.9.2323"
            assert ds.ScheduledProcedureStepSequence[0].Modality == "CT"

    with_mwl(tmp_path, body)


def test_orc_1_sc_status_change(tmp_path: Path) -> None:
    """HL7 Table 0119 SC with ORC-5 (Table 0038): in process or completed is acknowledged and changes
    nothing (the modality reports progress by MPPS); cancelled or discontinued takes the order off."""

    def sc(status: str) -> str:
        return orm("SC").replace("ORC|SC|PLACC100|FLACC100||SC", f"ORC|SC|PLACC100|FLACC100||{status}")

    async def body(send_one: Exchange, port: int) -> None:
        assert (await send_one(orm()))[0] == "AA"
        for status in ("IP", "CM", ""):
            code, text = await send_one(sc(status).replace("|CTLACC100|", f"|CTLSC{status}|"))
            assert code == "AA" and "worklist is unchanged" in text, text
        [entry] = await asyncio.to_thread(mwl, port)
        assert entry.AccessionNumber == "ACC100"
        code, text = await send_one(sc("CA").replace("|CTLACC100|", "|CTLSCCA|"))
        assert code == "AA" and "cancelled" in text, text
        assert await asyncio.to_thread(mwl, port) == []
        # a status change still needs what an order needs: its values are checked
        code, text = await send_one(sc("IP").replace("|CTLACC100|", "|CTLBAD|").replace("19700101", "1970-01-01"))
        assert code == "AE" and "not an HL7 date" in text

    with_mwl(tmp_path, body)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The archive's local time is UTC-5 (POSIX TZ, no time zone database needed)."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("start", "date", "clock"),
    [
        ("20240105133000+0000", "20240105", "083000"),
        ("20240105020000+0000", "20240104", "210000"),  # the day before, locally
        ("202401050830+0100", "20240105", "0230"),  # the precision sent is kept
        ("20240105083000-0500", "20240105", "083000"),  # local already
        ("202401050830", "20240105", "0830"),  # no offset: the sender's local time, as sent
        ("20240105", "20240105", ""),
    ],
)
def test_a_start_time_with_an_offset_is_the_archives_local_time(
    tmp_path: Path, new_york: None, start: str, date: str, clock: str
) -> None:
    """HL7 v2.5 2A.3.22 DTM +/-ZZZZ: DICOM DA / TM carry no offset, a modality shows them as the local
    wall clock and "today's" worklist query matches them so: the step's start in local time."""

    async def body(send_one: Exchange, port: int) -> None:
        code, text = await send_one(orm(start=start))
        assert code == "AA", text
        [ds] = await asyncio.to_thread(mwl, port)
        step = ds.ScheduledProcedureStepSequence[0]
        assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (date, clock)

    with_mwl(tmp_path, body)


@pytest.mark.parametrize(
    ("start", "words"),
    [
        ("20240105083", "not an HL7 date/time"),
        ("20240230083000+0000", "not a calendar date"),
        ("202402300830", "not a calendar date"),  # 30 February was put on the worklist as it came
        ("202401052530", "not a calendar date"),
        ("202401050830+2500", "not an HL7 date/time"),
    ],
)
def test_a_broken_start_time_is_refused(tmp_path: Path, start: str, words: str) -> None:
    async def body(send_one: Exchange, port: int) -> None:
        code, text = await send_one(orm(start=start))
        assert code == "AE" and words in text, text
        assert await asyncio.to_thread(mwl, port) == []

    with_mwl(tmp_path, body)


@pytest.mark.parametrize("birth", ["1970", "197003"])
def test_a_birth_date_known_to_the_year_or_month_is_taken_as_unknown(tmp_path: Path, birth: str) -> None:
    """HL7 DTM allows YYYY and YYYYMM (a birth date known that far); DICOM DA does not: the order is
    taken (a patient is not refused an exam for it) and the entry's birth date is empty."""

    async def body(send_one: Exchange, port: int) -> None:
        code, text = await send_one(orm().replace("|19700101|", f"|{birth}|"))
        assert code == "AA", text
        [ds] = await asyncio.to_thread(mwl, port)
        assert ds.PatientBirthDate in ("", None)

    with_mwl(tmp_path, body)


def test_an_orc_with_two_obr_segments_is_refused_not_half_applied(tmp_path: Path) -> None:
    """ORM^O01 / OMI^O23: one OBR per ORC; the second OBR used to be dropped without a word."""
    text = orm()
    obr = next(line for line in text.split("\r") if line.startswith("OBR"))
    second = obr.replace("ACC100", "ACC101").replace("|CT|", "|MR|")
    message = text.replace(obr, obr + "\r" + second)

    async def body(send_one: Exchange, port: int) -> None:
        code, answer = await send_one(message)
        assert code == "AE" and "two OBR segments" in answer, answer
        assert await asyncio.to_thread(mwl, port) == []

    with_mwl(tmp_path, body)


def test_a_value_dicom_cannot_hold_is_refused_naming_the_field_it_came_from(tmp_path: Path) -> None:
    """HL7 v2.5 2.15.5 ERR-2 Error Location: an OMI's accession comes from IPC-1, not OBR-18."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        code, text, ack = await send(reader, writer, OMI.replace("IPC|ACC23|", "IPC|" + "A" * 17 + "|"))
        assert code == "AE" and "AccessionNumber from IPC-1" in text, text
        err = ack.first("ERR")
        assert err is not None and ack.raw(err, 2) == "IPC^1^1"
        code, text, ack = await send(reader, writer, orm(accession="B" * 17))
        assert code == "AE" and "AccessionNumber from OBR-18" in text, text
        assert ack.raw(ack.first("ERR"), 2) == "OBR^1^18"

    serve(tmp_path, body)


def test_a_resend_after_a_restart_or_to_another_node_gets_its_ack_from_the_index(tmp_path: Path) -> None:
    """core/hl7_acks.py: the ACK of an accepted message is kept in the index for hl7_resend_window; a
    receiver with an empty memory (the server restarted, or another node behind a load balancer) answers
    the resend with it and applies nothing. Without the index (acks=None) the resend was applied again:
    the order a duplicate, AE."""
    from minipacs.core.hl7_acks import AckStore

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:

            def receiver(acks: AckStore | None) -> HL7Receiver:
                return HL7Receiver(Worklist(archive), Corrections(archive), acks=acks)

            data = frame(orm())[1:-2]
            first = await receiver(AckStore(archive, 600.0))(data)
            assert msa(first)[0] == "AA"
            again = await receiver(AckStore(archive, 600.0))(data)  # a fresh process's memory
            assert again == first
            assert len(await Worklist(archive).by_accession("ACC100")) == 1
            # memory only, as before: the resend is applied again, and refused as a duplicate
            assert msa(await receiver(None)(data))[0] == "AE"
            # past the window the index does not answer either (an administrator's deliberate replay)
            assert await AckStore(archive, 0.5).find(data) == first
            await asyncio.sleep(0.6)
            assert await AckStore(archive, 0.5).find(data) is None
        finally:
            await archive.close()

    asyncio.run(main())
