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

from minipacs.core.archive import Archive
from minipacs.core.corrections import list_corrections
from minipacs.core.worklist import CANCELLED, Worklist
from minipacs.hl7.message import parse
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
