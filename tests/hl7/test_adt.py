"""HL7 ADT over a real MLLP connection on loopback (hl7/adt.py, issue 14): A08 updates the archived
patient (its files rewritten) and its open worklist entries, A40/A34 merge, A47 renames; unknown
patients, missing segments and empty identifiers are answered AE with the reason, unsupported
events AR, an oversized frame AR and the connection closed; nothing is changed by a refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections, list_corrections
from minipacs.core.model import Origin
from minipacs.core.worklist import Worklist
from minipacs.hl7.adt import HL7Receiver
from minipacs.hl7.message import Message, parse
from minipacs.hl7.mllp import MLLPServer, frame
from minipacs.index.audit_repo import audit_rows
from tests.dicomgen import write_ct
from tests.hl7.samples import orm
from tests.stored_files import instance_path
from tests.worklist_data import entry as worklist_entry

T = TypeVar("T")
Body = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Archive], Awaitable[T]]


def adt(event: str, pid3: str, *, name: str = "", mrg: str | None = None, birth: str = "", sex: str = "") -> str:
    """An ADT message as a HIS sends it (HL7 v2.5; A40's structure ADT_A39)."""
    segments = [
        f"MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206101500||ADT^{event}^ADT_A39|CTL{event}|P|2.5",
        f"EVN|{event}|20261206101500",
        f"PID|1||{pid3}||{name}||{birth}|{sex}",
    ]
    if mrg is not None:
        segments.append(f"MRG|{mrg}")
    return "\r".join(segments) + "\r"


def serve(tmp: Path, body: Body[T], max_bytes: int = 1 << 20) -> T:
    async def main() -> T:
        archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
        server = MLLPServer(
            HL7Receiver(Worklist(archive), Corrections(archive)), host="127.0.0.1", port=0, max_message_bytes=max_bytes
        )
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            return await body(reader, writer, archive)
        finally:
            writer.close()
            await writer.wait_closed()
            await server.close()
            await archive.close()

    return asyncio.run(main())


async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str) -> tuple[str, str, Message]:
    """(MSA-1, MSA-3, the ACK) of one message."""
    writer.write(frame(message))
    await writer.drain()
    data = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 60)
    ack = parse(data[1:-2].decode("utf-8"))
    seg = ack.first("MSA")
    return ack.value(seg, 1), ack.value(seg, 3), ack


async def store(archive: Archive, tmp: Path, patient_id: str, name: str = "Doe^John", n: int = 1) -> list[str]:
    study, series = generate_uid(), generate_uid()
    sops = []
    for _ in range(n):
        sop = generate_uid()
        path = write_ct(
            tmp / f"{sop}.dcm",
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            patient_id=patient_id,
            patient_name=name,
        )
        await archive.import_file(path, Origin("import"))
        sops.append(sop)
    return sops


async def stored(archive: Archive, sop: str) -> pydicom.Dataset:
    return pydicom.dcmread(await instance_path(archive, sop), stop_before_pixels=True)


def test_a08_updates_archived_files_and_open_worklist_entries(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        sops = await store(archive, tmp_path, "PAT1", n=2)
        worklist = Worklist(archive)
        entry = await worklist.add(worklist_entry("PAT1", "Doe^John", "ACC1", "CT", "CT1", "20261206", "0900"))
        code, text, ack = await send(reader, writer, adt("A08", "PAT1^^^HOSP^MR", name="Doe^Jane", birth="19710203"))
        assert code == "AA", text
        assert ack.value(ack.first("MSA"), 2) == "CTLA08"
        assert "2 instance(s) rewritten" in text
        for sop in sops:
            ds = await stored(archive, sop)
            assert (str(ds.PatientName), ds.PatientBirthDate) == ("Doe^Jane", "19710203")
        wl = await worklist.get(entry.id)
        assert wl is not None and str(wl.dataset.PatientName) == "Doe^Jane"
        [log] = await list_corrections(archive)
        assert log["actor"] == "HL7 ADT^A08 CTLA08 from HIS/HOSP"
        await archive.audit.flush()
        [row] = await archive.read(lambda conn: audit_rows(conn, patient_id="PAT1"))
        assert (row["action"], row["actor_kind"], row["actor"]) == ("modified", "hl7", "HIS/HOSP")
        assert row["address"] == "127.0.0.1"  # the MLLP connection's peer (hl7/mllp.py PEER)
        assert log["old_values"] == {"PatientName": "Doe^John", "PatientBirthDate": "19700101"}
        # the same update again changes nothing and rewrites nothing
        code, text, _ = await send(reader, writer, adt("A08", "PAT1", name="Doe^Jane", birth="19710203"))
        assert code == "AA" and "nothing changed" in text
        assert len(await list_corrections(archive)) == 1

    serve(tmp_path, body)


def test_a08_of_a_worklist_only_patient_and_of_an_unknown_one(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        worklist = Worklist(archive)
        entry = await worklist.add(worklist_entry("WL1", "Old^Name", "ACC2", "CT", "CT1", "20261206", "0900"))
        code, text, _ = await send(reader, writer, adt("A08", "WL1", name="New^Name"))
        assert code == "AA" and "1 worklist entry" in text
        wl = await worklist.get(entry.id)
        assert wl is not None and str(wl.dataset.PatientName) == "New^Name"
        # a patient minipacs does not know (most of a HIS's patients never had an image): AA, nothing changed
        # (an AE would fill the sender's error queue with messages that can never succeed)
        code, text, ack = await send(reader, writer, adt("A08", "NOBODY", name="X^Y"))
        assert code == "AA" and "NOBODY" in text and "nothing to update" in text, text
        assert ack.first("ERR") is None
        assert await worklist.get(entry.id) is not None and len(await list_corrections(archive)) == 0

    serve(tmp_path, body)


def test_a40_merges_the_prior_patient_into_the_surviving_one(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        keep = await store(archive, tmp_path, "GOOD", "Right^Name")
        dup = await store(archive, tmp_path, "DUP", "Wrong^Name", n=2)
        worklist = Worklist(archive)
        entry = await worklist.add(worklist_entry("DUP", "Wrong^Name", "ACC3", "CT", "CT1", "20261206", "0900"))
        code, text, _ = await send(reader, writer, adt("A40", "GOOD^^^HOSP", name="Right^Name", mrg="DUP^^^HOSP"))
        assert code == "AA", text
        assert "merged into GOOD" in text
        for sop in keep + dup:
            ds = await stored(archive, sop)
            assert (ds.PatientID, str(ds.PatientName)) == ("GOOD", "Right^Name")
        wl = await worklist.get(entry.id)
        assert wl is not None and wl.dataset.PatientID == "GOOD"
        assert await Corrections(archive).patient("DUP") is None
        await archive.audit.flush()
        merged = [
            r for r in await archive.read(lambda conn: audit_rows(conn, actor="HIS/HOSP")) if r["action"] == "merged"
        ]
        assert merged and {(r["actor_kind"], r["address"]) for r in merged} == {("hl7", "127.0.0.1")}
        # A34 (ID only) to a surviving ID nobody has yet: the prior patient takes it
        code, text, _ = await send(reader, writer, adt("A34", "NEWID", mrg="GOOD"))
        assert code == "AA" and "is now NEWID" in text
        assert (await stored(archive, dup[0])).PatientID == "NEWID"

    serve(tmp_path, body)


def test_a40_with_new_demographics_rewrites_the_surviving_patients_own_files_too(tmp_path: Path) -> None:
    """An A40 whose PID gives the surviving patient a new name: the index row took it, and so did the
    prior patient's files, but the survivor's own files kept the old name, so C-FIND answered one name and
    C-MOVE sent another (the adt helper's finding, session 10)."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        keep = await store(archive, tmp_path, "GOOD", "Old^Name")
        dup = await store(archive, tmp_path, "DUP", "Wrong^Name", n=2)
        code, text, _ = await send(reader, writer, adt("A40", "GOOD^^^HOSP", name="New^Name", mrg="DUP^^^HOSP"))
        assert code == "AA", text
        for sop in keep + dup:
            ds = await stored(archive, sop)
            assert (ds.PatientID, str(ds.PatientName)) == ("GOOD", "New^Name"), sop
        patient = await Corrections(archive).patient("GOOD")
        assert patient is not None and patient["PatientName"] == "New^Name"

    serve(tmp_path, body)


def test_a47_changes_the_identifier_and_refuses_an_existing_one(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [sop] = await store(archive, tmp_path, "TEMP1")
        await store(archive, tmp_path, "TAKEN")
        code, text, ack = await send(reader, writer, adt("A47", "TAKEN", mrg="TEMP1"))
        assert code == "AE" and "send A40" in text
        err = ack.first("ERR")
        assert err is not None and ack.value(err, 3) == "205"
        assert (await stored(archive, sop)).PatientID == "TEMP1"
        code, text, _ = await send(reader, writer, adt("A47", "MRN77", mrg="TEMP1"))
        assert code == "AA", text
        assert (await stored(archive, sop)).PatientID == "MRN77"

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("message", "code", "words", "where"),
    [
        ("MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206||ADT^A40|C1|P|2.5\rEVN|A40\rMRG|P1\r", "AE", "no PID", "PID"),
        (adt("A40", "P1"), "AE", "no MRG segment", "MRG"),
        (adt("A40", "P1", mrg=""), "AE", "MRG-1 Prior Patient Identifier List is empty", "MRG^1^1"),
        (adt("A08", "", name="X"), "AE", "PID-3 Patient Identifier List is empty", "PID^1^3"),
        (adt("A47", "P9", mrg="NOBODY"), "AE", "prior patient 'NOBODY' (MRG-1) is neither", "PID^1^3"),
        (adt("A08", "P1", birth="1970-01-01"), "AE", "not an HL7 date", "PID^1^7"),
        # a '=' (the escape \X3D\) in the ideographic repetition: every repetition that makes the name is checked
        (
            adt("A08", "P1", name="Doe^John^^^^^^A~\\X3D\\^x^^^^^^I"),
            "AE",
            "PID-5 component 1 holds '^', '=' or a backslash",
            "PID^1^5",
        ),
        # A29 delete person information: a PACS never deletes studies on an ADT feed
        (adt("A29", "P1"), "AR", "ADT^A29 is not an ADT event minipacs takes", "MSH^1^9"),
    ],
)
def test_bad_adt_is_refused_with_the_reason_and_changes_nothing(
    tmp_path: Path, message: str, code: str, words: str, where: str
) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [sop] = await store(archive, tmp_path, "P1")
        got, text, ack = await send(reader, writer, message)
        assert (got, words in text) == (code, True), text
        err = ack.first("ERR")
        assert err is not None and ack.raw(err, 2) == where
        assert (await stored(archive, sop)).PatientID == "P1"
        assert await list_corrections(archive) == []
        got, _, _ = await send(reader, writer, orm())  # the connection still serves, orders too
        assert got == "AA"

    serve(tmp_path, body)


def test_oversized_adt_is_refused_and_the_connection_closed(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [sop] = await store(archive, tmp_path, "P1")
        got, text, _ = await send(reader, writer, adt("A08", "P1", name="X" * 5000))
        assert got == "AR" and "hl7_max_message_bytes" in text
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert (await stored(archive, sop)).PatientName == "Doe^John"

    serve(tmp_path, body, max_bytes=2048)


def groups(event: str, pairs: list[tuple[str, str]]) -> str:
    """An ADT message with several patient groups (PID, MRG), as ADT_A39 allows."""
    segments = [
        f"MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206101500||ADT^{event}^ADT_A39|CTL{event}G|P|2.5",
        f"EVN|{event}|20261206101500",
    ]
    for n, (pid3, mrg) in enumerate(pairs, start=1):
        segments += [f"PID|{n}||{pid3}", f"MRG|{mrg}"]
    return "\r".join(segments) + "\r"


def test_a_group_that_cannot_apply_stops_the_whole_message_before_any_change(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        await store(archive, tmp_path, "GOOD")
        [dup] = await store(archive, tmp_path, "DUP")
        # the second group's prior is the one the first group merges away: nothing left to merge
        code, text, _ = await send(reader, writer, groups("A40", [("GOOD", "DUP"), ("OTHER", "DUP")]))
        assert code == "AE" and "prior patient 'DUP' (MRG-1)" in text, text
        assert "earlier patient" not in text  # nothing was applied, so none is said to be
        assert (await stored(archive, dup)).PatientID == "DUP"
        assert await Corrections(archive).patient("DUP") is not None

    serve(tmp_path, body)


def test_groups_that_build_on_each_other_are_checked_in_order_and_applied(tmp_path: Path) -> None:
    """The check follows the message: a second group may name the ID the first one gave."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [sop] = await store(archive, tmp_path, "T1")
        await store(archive, tmp_path, "TAKEN")
        code, text, _ = await send(reader, writer, groups("A47", [("T2", "T1"), ("T3", "T2")]))
        assert code == "AA", text
        assert (await stored(archive, sop)).PatientID == "T3"
        # and a later group that would take an existing ID stops the message before its first group
        code, text, _ = await send(reader, writer, groups("A47", [("T4", "T3"), ("TAKEN", "T4")]))
        assert code == "AE" and "already exists" in text, text
        assert (await stored(archive, sop)).PatientID == "T3"

    serve(tmp_path, body)


def test_a08_with_a_name_in_three_representations(tmp_path: Path) -> None:
    """PID-5 repeated per representation (XPN.8 A, I, P; HL7 v2.5 2A.3.90) becomes the three
    component groups of the archived files' Patient's Name, readable in their character set."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        sops = await store(archive, tmp_path, "JP1", name="Yamada^Tarou")
        message = adt("A08", "JP1", name="Yamada^Tarou^^^^^^A~山田^太郎^^^^^^I~やまだ^たろう^^^^^^P")
        message = message.replace("|2.5\r", "|2.5||||||UNICODE UTF-8\r", 1)
        code, text, _ = await send(reader, writer, message)
        assert code == "AA", text
        ds = await stored(archive, sops[0])
        assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
        assert "ISO_IR 192" in ds.SpecificCharacterSet or "ISO 2022 IR 87" in ds.SpecificCharacterSet

    serve(tmp_path, body)


def test_a40_takes_the_prior_identifier_in_the_domain_of_pid_3(tmp_path: Path) -> None:
    """HL7 v2.5 3.4.3.1: MRG-1, like PID-3, lists the prior patient's identifiers, one per assigning
    authority (an MRN and a national ID). The one in PID-3's domain (CX.4 / CX.5) is the Patient ID the
    archive knows; such a merge was refused as 'several prior identifiers'."""

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        worklist = Worklist(archive)
        await worklist.add(worklist_entry("OLD1", "Doe^John", "ACC1", "CT", "CT1", "20261206", "0900"))
        await worklist.add(worklist_entry("NEW1", "Doe^John", "ACC2", "CT", "CT1", "20261206", "0900"))
        message = adt("A40", "NEW1^^^HOSP^MR~111^^^SSA^SS", mrg="999^^^SSA^SS~OLD1^^^HOSP^MR")
        code, text, _ = await send(reader, writer, message)
        assert code == "AA", text
        assert sorted(e.dataset.PatientID for e in await worklist.list()) == ["NEW1", "NEW1"]
        # two prior IDs in PID-3's own domain: which one is meant cannot be told
        code, text, _ = await send(reader, writer, adt("A40", "NEW1^^^HOSP^MR", mrg="A^^^HOSP^MR~B^^^HOSP^MR"))
        assert code == "AE" and "several prior identifiers" in text

    serve(tmp_path, body)


def test_a40_ahead_of_the_prior_patients_images_is_remembered_and_its_arrivals_merged(tmp_path: Path) -> None:
    """IHE PIR: the HIS merges TEMP9 into MRN9 before any image of TEMP9 reached the archive (a modality
    still holds the old worklist). The merge is acknowledged AA and kept in the corrections log (state
    "remembered", 0 instances); core/merge_watch.py then takes the images that arrive under TEMP9 as it
    takes any merged-away ID's, here with merged_patient_arrivals = "merge". A second merge of TEMP9 now
    contradicts the first and is refused, naming it."""
    from minipacs.core.merge_watch import MergedArrivals

    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        [mrn] = await store(archive, tmp_path, "MRN9")
        fixer = Corrections(archive)
        watcher = MergedArrivals(archive, fixer, "merge")
        await watcher.start()
        try:
            code, text, _ = await send(reader, writer, adt("A40", "MRN9", mrg="TEMP9"))
            assert code == "AA" and "nothing archived under TEMP9 yet, merge remembered" in text, text
            [row] = [r for r in await list_corrections(archive) if r["operation"] == "merge"]
            assert (row["state"], row["instances"], row["target"]) == ("remembered", 0, "MRN9")
            assert row["old_values"] == {"PatientID": "TEMP9"}
            [late] = await store(archive, tmp_path, "TEMP9")  # the modality's images, under the old ID
            assert await watcher.look() == 1
            assert (await stored(archive, late)).PatientID == "MRN9"
            assert await fixer.patient("TEMP9") is None and (await stored(archive, mrn)).PatientID == "MRN9"
            code, text, _ = await send(reader, writer, adt("A40", "OTHER9", mrg="TEMP9"))
            assert code == "AE" and "'TEMP9' (MRG-1) was merged into 'MRN9' by correction" in text, text
        finally:
            await watcher.close()

    serve(tmp_path, body)
