"""HL7 v2 orders: the ORM/OMG -> worklist mapping table, order control (HL7 Table 0119), and the core's
refusals as HL7 acknowledgement codes: hl7/orders.py on core/orders.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom.charset import convert_encodings, python_encoding
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.errors import ArchiveError
from minipacs.core.orders import (
    AmbiguousOrder,
    DuplicateOrder,
    InvalidOrder,
    OrderChanged,
    OrderControl,
    OrderRefused,
    UnknownOrder,
)
from minipacs.core.worklist import CANCELLED, Worklist
from minipacs.hl7.errors import HL7Error
from minipacs.hl7.message import (
    CHARSETS,
    Encoding,
    Message,
    declared_charset,
    parse,
    parse_bytes,
)
from minipacs.hl7.orders import (
    FIELD_MAP,
    ORDER_CONTROL,
    REFUSALS,
    apply,
    check_type,
    handle,
    refusal,
    to_dataset,
    to_datasets,
)
from tests.hl7.samples import NAME, OMG, OMI, orm, with_msh18

T = TypeVar("T")
_msh18 = with_msh18


def run(tmp: Path, body: Callable[[Worklist], Awaitable[T]]) -> T:
    async def main() -> T:
        archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
        try:
            return await body(Worklist(archive))
        finally:
            await archive.close()

    return asyncio.run(main())


def mapped(text: str) -> Dataset:
    return mapped_message(parse(text))


def mapped_message(message: Message) -> Dataset:
    check_type(message)
    from minipacs.hl7.orders import _groups

    patient, groups = _groups(message)
    return to_dataset(message, patient, groups[0])


# ------------------------------------------------------------------ the mapping table


def test_other_encoding_characters_from_msh2() -> None:
    text = orm(msh2="!@#$", fs="%", name="Doe!John", pid3="PAT1!!!HOSP", obr4="CTHEAD!CT Head!LOCAL")
    message = parse(text)
    assert message.encoding == Encoding("%", "!", "@", "#", "$")
    ds = mapped(text)
    assert ds.PatientID == "PAT1" and str(ds.PatientName) == "Doe^John"
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20240105"


EXPECTED_ORM = {  # FIELD_MAP row -> value from orm(): one row per mapped field
    "PatientID": "PAT1",
    "IssuerOfPatientID": "HOSP",
    "PatientName": "Doe^John^Q^Dr^Jr",
    "PatientBirthDate": "19700101",
    "PatientSex": "M",
    "ReferringPhysicianName": "Who^Doctor",
    "PlacerOrderNumberImagingServiceRequest": "PLACC100",
    "FillerOrderNumberImagingServiceRequest": "FLACC100",
    "AccessionNumber": "ACC100",
    "RequestedProcedureID": "RPACC100",
    "RequestedProcedureDescription": "CT Head w/o contrast",
    "RequestingPhysician": "House^Gregory",
    "RequestedProcedurePriority": "ROUTINE",
}
EXPECTED_SPS = {
    "Modality": "CT",
    "ScheduledProcedureStepStartDate": "20240105",
    "ScheduledProcedureStepStartTime": "0830",
    "ScheduledProcedureStepID": "SPSACC100",
    "ScheduledProcedureStepDescription": "CT Head w/o contrast",
}


@pytest.mark.parametrize(("keyword", "value"), sorted(EXPECTED_ORM.items()))
def test_orm_mapping_top_level(keyword: str, value: str) -> None:
    assert str(mapped(orm()).get(keyword)) == value


@pytest.mark.parametrize(("keyword", "value"), sorted(EXPECTED_SPS.items()))
def test_orm_mapping_scheduled_procedure_step(keyword: str, value: str) -> None:
    assert str(mapped(orm()).ScheduledProcedureStepSequence[0].get(keyword)) == value


def test_orm_mapping_code_and_study_uid() -> None:
    ds = mapped(orm())
    code = ds.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodeMeaning, code.CodingSchemeDesignator) == (
        "CTHEAD",
        "CT Head w/o contrast",
        "LOCAL",
    )
    assert ds.StudyInstanceUID.startswith("1.2.826.0.1.3680043.10.9.")


def test_omg_o19_mapping_with_tq1_ipc_and_non_ascii() -> None:
    ds = mapped(OMG)
    assert ds.AccessionNumber == "ACC9" and ds.RequestedProcedureID == "RP9"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.9.909" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.PatientSex == "F"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepID) == ("US", "US01", "SPS9")
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == ("20240210", "101500")


def test_escapes_and_missing_optional_fields() -> None:
    ds = mapped(orm(name="O\\S\\Brien^Mary", obr4="X1^Knee \\T\\ ankle\\F\\left", start=""))
    assert str(ds.PatientName) == "O^Brien^Mary"  # escaped ^ is data, not a component (PN shows it as is)
    assert ds.RequestedProcedureDescription == "Knee & ankle|left"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert "ScheduledProcedureStepStartDate" not in sps and "ScheduledStationAETitle" not in sps


def test_every_field_map_row_has_a_known_level_and_source() -> None:
    for row in FIELD_MAP:
        assert row.level in ("top", "sps", "code") and row.sources
        assert all(len(s.split("-")[0]) == 3 for s in row.sources)


@pytest.mark.parametrize(
    ("text", "code", "location", "words"),
    [
        (orm(pid3=""), "AE", "PID-3", "patient ID"),
        (orm(modality=""), "AE", "OBR-24", "modality"),
        (orm(start="2024-01-05"), "AE", "OBR-27", "date/time"),
        (orm(control="ZZ"), "AE", "ORC-1", "order control 'ZZ'"),
        (orm(obr4="X" * 40 + "^Too long a code"), "AE", "OBR-4", "CodeValue from OBR-4.1 cannot be stored"),
        (orm().replace("ORM^O01", "ADT^A01"), "AR", "MSH-9", "not supported"),
        (orm().replace("ORM^O01", "ORM^O02"), "AR", "MSH-9", "not an order event"),
    ],
)
def test_broken_orders_are_refused_and_change_nothing(
    tmp_path: Path, text: str, code: str, location: str, words: str
) -> None:
    async def body(worklist: Worklist) -> int:
        with pytest.raises(HL7Error, match=words) as info:
            await apply(parse(text), worklist)
        assert (info.value.ack_code, info.value.location) == (code, location)
        return len(await worklist.list())

    assert run(tmp_path, body) == 0


def test_missing_pid_and_orc() -> None:
    base = "MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\r"
    for text, words in (
        (base + "ORC|NW\rOBR|1\r", "no PID"),
        (base + "PID|||1\r", "no ORC"),
        (base + "PID|||1\rOBR|1\r", "before any ORC"),
    ):
        with pytest.raises(HL7Error, match=words):
            asyncio.run(apply(parse(text), Worklist(None)))  # type: ignore[arg-type]  # refused before any I/O


# ------------------------------------------------------------------ order control (HL7 Table 0119)


def test_order_control_table_rows() -> None:
    assert set(ORDER_CONTROL) == {"NW", "CA", "DC", "OC", "XO"}
    assert [ORDER_CONTROL[c] for c in ("NW", "CA", "DC", "OC", "XO")] == [
        OrderControl.NEW,
        OrderControl.CANCEL,
        OrderControl.CANCEL,
        OrderControl.CANCEL,
        OrderControl.CHANGE,
    ]


def test_nw_then_duplicate_nw_then_xo_then_ca(tmp_path: Path) -> None:
    async def body(worklist: Worklist) -> None:
        text = await apply(parse(orm()), worklist)
        assert "ACC100 scheduled" in text
        [entry] = await worklist.by_accession("ACC100")
        assert entry.status == "SCHEDULED" and str(entry.dataset.PatientName) == "Doe^John^Q^Dr^Jr"
        study = entry.dataset.StudyInstanceUID
        with pytest.raises(HL7Error, match="already on the worklist") as info:
            await apply(parse(orm()), worklist)
        assert info.value.error_code == 205
        changed = orm("XO", modality="MR").replace(f"ZDS|{study}", "ZDS|")
        assert "changed" in await apply(parse(changed), worklist)
        [entry] = await worklist.by_accession("ACC100")
        assert entry.dataset.ScheduledProcedureStepSequence[0].Modality == "MR"
        assert entry.dataset.StudyInstanceUID == study
        assert "cancelled" in await apply(parse(orm("CA")), worklist)
        [entry] = await worklist.by_accession("ACC100")
        assert entry.status == CANCELLED
        query = Dataset()
        query.AccessionNumber = "ACC100"
        assert await worklist.find(query) == []
        with pytest.raises(HL7Error, match="no open worklist entry") as info:
            await apply(parse(orm("CA")), worklist)
        assert info.value.error_code == 204

    run(tmp_path, body)


@pytest.mark.parametrize("control", ["DC", "OC"])
def test_discontinue_and_filler_cancel(tmp_path: Path, control: str) -> None:
    async def body(worklist: Worklist) -> str:
        await apply(parse(OMG), worklist)
        await apply(parse(OMG.replace("ORC|NW", f"ORC|{control}")), worklist)
        return (await worklist.by_accession("ACC9"))[0].status

    assert run(tmp_path, body) == CANCELLED


def test_a_bad_order_group_stops_the_whole_message(tmp_path: Path) -> None:
    good = orm(accession="ACC1")
    second = orm(accession="ACC2", modality="")
    text = good + "\r".join(line for line in second.split("\r") if line[:3] in ("ORC", "OBR"))

    async def body(worklist: Worklist) -> int:
        with pytest.raises(HL7Error, match="modality"):
            await apply(parse(text), worklist)
        return len(await worklist.list())

    assert run(tmp_path, body) == 0


# ------------------------------------------------------------------ XO: one update, in place


def _xo(**changes: str) -> str:
    return orm("XO", **changes)


def test_xo_updates_the_entry_in_place_keeping_id_status_and_study(tmp_path: Path) -> None:
    async def body(worklist: Worklist) -> None:
        await apply(parse(orm()), worklist)
        [before] = await worklist.by_accession("ACC100")
        await worklist.set_status(before.id, "IN PROGRESS")  # the modality has started (MPPS)
        study = before.dataset.StudyInstanceUID
        assert f"worklist entry {before.id}" in await apply(
            parse(_xo(modality="MR").replace(f"ZDS|{study}", "ZDS|")), worklist
        )
        [after] = await worklist.list()
        assert (after.id, after.status, after.dataset.StudyInstanceUID) == (before.id, "IN PROGRESS", study)
        assert after.dataset.ScheduledProcedureStepSequence[0].Modality == "MR"

    run(tmp_path, body)


def _two_orders(first: str, second: str) -> str:
    """One message with the order groups of ``first`` and ``second``."""
    return first + "\r".join(line for line in second.split("\r") if line[:3] in ("ORC", "OBR", "ZDS"))


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("value too long for its VR", _xo(obr4="X" * 40 + "^Too long a code")),
        ("no modality", _xo(modality="")),
        ("bad date", _xo(start="2024-01-05")),
        ("second order of the message bad", _two_orders(_xo(modality="MR"), orm(accession="ACC2", modality=""))),
    ],
)
def test_xo_refused_midway_changes_nothing(tmp_path: Path, label: str, text: str) -> None:
    async def body(worklist: Worklist) -> None:
        await apply(parse(orm()), worklist)
        before = await worklist.list()
        with pytest.raises(HL7Error) as info:
            await apply(parse(text), worklist)
        assert info.value.ack_code == "AE", label
        assert [(e.id, e.status, e.dataset) for e in await worklist.list()] == [
            (e.id, e.status, e.dataset) for e in before
        ]

    run(tmp_path, body)


def test_xo_failing_inside_the_writer_transaction_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UPDATE and everything around it is one transaction: a failure after it rolls it back
    (remove-then-add would have lost the entry)."""
    from minipacs.index import worklist_repo

    real = worklist_repo.update_worklist

    def update_then_fail(conn: object, pk: int, values: object) -> int:
        real(conn, pk, values)  # type: ignore[arg-type]
        raise RuntimeError("disk I/O error")

    async def body(worklist: Worklist) -> None:
        await apply(parse(orm()), worklist)
        before = await worklist.list()
        monkeypatch.setattr(worklist_repo, "update_worklist", update_then_fail)
        # the peer learns the failure's type, not its text (it may carry SQL): the server log has it
        with pytest.raises(ArchiveError, match="internal error: RuntimeError"):
            await apply(parse(_xo(modality="MR")), worklist)
        monkeypatch.undo()
        after = await worklist.list()
        assert [(e.id, e.dataset) for e in after] == [(e.id, e.dataset) for e in before]
        assert after[0].dataset.ScheduledProcedureStepSequence[0].Modality == "CT"

    run(tmp_path, body)


def test_xo_for_an_unknown_or_cancelled_order_is_refused_not_created(tmp_path: Path) -> None:
    """HL7 Table 0119: XO changes an existing order; unknown -> AE, ERR 204 (Unknown key identifier)."""

    async def body(worklist: Worklist) -> None:
        with pytest.raises(HL7Error, match="no open worklist entry for order ACC100 to change") as info:
            await apply(parse(_xo()), worklist)
        assert (info.value.ack_code, info.value.error_code) == ("AE", 204)
        assert await worklist.list() == []
        await apply(parse(orm()), worklist)
        await apply(parse(orm("CA")), worklist)
        with pytest.raises(HL7Error, match="no open worklist entry"):  # a late XO does not resurrect it
            await apply(parse(_xo(modality="MR")), worklist)
        [entry] = await worklist.list()
        assert entry.status == CANCELLED and entry.dataset.ScheduledProcedureStepSequence[0].Modality == "CT"

    run(tmp_path, body)


def test_xo_picks_the_requested_procedure_among_entries_of_one_accession(tmp_path: Path) -> None:
    async def body(worklist: Worklist) -> None:
        await apply(parse(orm()), worklist)
        other = mapped(orm())
        other.RequestedProcedureID = "RP2"
        del other.StudyInstanceUID
        second = await worklist.add(other)  # a second requested procedure of the same order
        await apply(parse(_xo(modality="MR")), worklist)  # OBR-19 RPACC100
        entries = {e.dataset.RequestedProcedureID: e for e in await worklist.list()}
        assert entries["RPACC100"].dataset.ScheduledProcedureStepSequence[0].Modality == "MR"
        assert entries["RP2"].dataset.ScheduledProcedureStepSequence[0].Modality == "CT"
        assert entries["RP2"].id == second.id
        with pytest.raises(HL7Error, match="2 open worklist entries") as info:  # no OBR-19: which one?
            await apply(parse(_xo(modality="US").replace("|RPACC100|", "||")), worklist)
        assert info.value.location == "OBR-19"

    run(tmp_path, body)


# ------------------------------------------------------------------ MSH-18 character sets (HL7 Table 0211)


@pytest.mark.parametrize("code", sorted(CHARSETS))
def test_msh18_table_row_decodes_and_maps_to_specific_character_set(code: str) -> None:
    charset = CHARSETS[code]
    letter = {"ASCII": "", "UNICODE UTF-8": "ж", "8859/15": "€", "GB 18030-2000": "张"}.get(code, None)
    letter = bytes([0xE4]).decode(charset.codec) if letter is None else letter  # a letter of the upper half
    text = _msh18(orm(name=f"D{letter}e^John"), code)
    message = parse_bytes(text.encode(charset.codec))
    assert message.charset == charset and declared_charset(text.encode(charset.codec)) == code
    ds = mapped_message(message)
    assert str(ds.PatientName) == f"D{letter}e^John"
    assert ds.get("SpecificCharacterSet", "") == charset.dicom
    if charset.dicom:  # pydicom knows the term and writes the name in it
        encoded = ds.PatientName.encode(convert_encodings([charset.dicom]))
        assert encoded.decode(python_encoding[charset.dicom]) == f"D{letter}e^John"


@pytest.mark.parametrize(
    ("msh18", "encoding", "dicom"),
    [
        ("", "utf-8", "ISO_IR 192"),  # no MSH-18: UTF-8 when the bytes are valid UTF-8
        ("", "latin-1", "ISO_IR 100"),  # ... else ISO 8859-1
        ("utf-8", "utf-8", "ISO_IR 192"),  # a name senders use instead of UNICODE UTF-8
        ("8859/1", "latin-1", "ISO_IR 100"),
    ],
)
def test_msh18_absent_or_alias(msh18: str, encoding: str, dicom: str) -> None:
    text = _msh18(orm(name=NAME), msh18) if msh18 else orm(name=NAME)
    ds = mapped_message(parse_bytes(text.encode(encoding)))
    assert str(ds.PatientName) == NAME and ds.SpecificCharacterSet == dicom


def test_hex_escape_outside_the_declared_charset_falls_back_to_utf8() -> None:
    ds = mapped_message(parse_bytes(_msh18(orm(name="Ob\\XE28093\\rien^M"), "8859/1").encode("latin-1")))
    assert str(ds.PatientName) == "Ob\u2013rien^M" and ds.SpecificCharacterSet == "ISO_IR 192"


# ------------------------------------------------------------------ core refusals -> HL7 acknowledgement codes

REFUSAL_ROWS = [  # (core refusal, control, keyword) -> (MSA-1, ERR-3, ERR-2, end of MSA-3)
    (InvalidOrder, OrderControl.NEW, "AccessionNumber", ("AE", 101, "OBR-18", "why (OBR-18 / IPC-1)")),
    (InvalidOrder, OrderControl.CHANGE, "", ("AE", 101, "", "why")),
    (
        DuplicateOrder,
        OrderControl.NEW,
        "AccessionNumber",
        ("AE", 205, "OBR-18", "why; send XO to change it or CA to cancel it"),
    ),
    (
        AmbiguousOrder,
        OrderControl.CHANGE,
        "RequestedProcedureID",
        ("AE", 205, "OBR-19", "why; OBR-19 Requested Procedure ID says which"),
    ),
    (UnknownOrder, OrderControl.CHANGE, "AccessionNumber", ("AE", 204, "OBR-18", "why; send NW for a new order")),
    (UnknownOrder, OrderControl.CANCEL, "AccessionNumber", ("AE", 204, "OBR-18", "why")),
    (OrderChanged, OrderControl.CHANGE, "", ("AE", 204, "ORC-1", "why")),
]


@pytest.mark.parametrize(("kind", "control", "keyword", "expected"), REFUSAL_ROWS)
def test_refusal_table_row(
    kind: type[OrderRefused], control: OrderControl, keyword: str, expected: tuple[str, int, str, str]
) -> None:
    error = refusal(kind("why", control=control, keyword=keyword))
    assert (error.ack_code, error.error_code, error.location, error.reason) == expected


def test_every_core_refusal_has_an_acknowledgement() -> None:
    import minipacs.core.orders as core_orders

    kinds = {v for v in vars(core_orders).values() if isinstance(v, type) and issubclass(v, OrderRefused)}
    assert set(REFUSALS) == kinds - {OrderRefused} == {row[0] for row in REFUSAL_ROWS}


# ------------------------------------------------------------------ names in several representations

JAPANESE = "Yamada^Tarou^^^^^^A~山田^太郎^^^^^^I~やまだ^たろう^^^^^^P"


@pytest.mark.parametrize(
    ("pid5", "expected"),
    [
        (JAPANESE, "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        # the alphabetic repetition without its code, the others out of order
        ("Yamada^Tarou~やまだ^たろう^^^^^^P~山田^太郎^^^^^^I", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("山田^太郎^^^^^^I", "=山田^太郎"),  # only the ideographic one
        ("Hong^Gildong^^^^^^A~洪^吉洞^^^^^^I~홍^길동^^^^^^P", "Hong^Gildong=洪^吉洞=홍^길동"),
        # no I or P: the first repetition alone, as before (a second name is another name)
        ("Doe^John~Roe^Jane", "Doe^John"),
        ("Doe^John^^^^^^A~Roe^Jane^^^^^^A", "Doe^John"),
    ],
)
def test_a_name_repeated_per_representation_fills_the_component_groups(pid5: str, expected: str) -> None:
    """HL7 v2.5 2A.3.90 XPN: a name is repeated once per representation, marked by XPN.8 (Table 4000:
    A alphabetic, I ideographic, P phonetic); they are the DICOM name's component groups (PS3.5
    6.2.1). Only the first repetition was read, so a Japanese order lost its kanji and kana."""
    ds = mapped(with_msh18(orm(name=pid5), "UNICODE UTF-8"))
    assert str(ds.PatientName) == expected


def test_a_doctors_name_in_several_representations() -> None:
    """XCN (PV1-8 referring, OBR-16 ordering): the ID first, the representation code in XCN.15."""
    text = orm().replace("123^Who^Doctor", "123^Yamada^Hanako^^^^^^^^^^^^A~123^山田^花子^^^^^^^^^^^^I")
    ds = mapped(with_msh18(text, "UNICODE UTF-8"))
    assert str(ds.ReferringPhysicianName) == "Yamada^Hanako=山田^花子"


# ------------------------------------------------------------------ OMI^O23 (IHE RAD-4, HL7 v2.5.1 option)


def _omi_entries(text: str) -> list[Dataset]:
    from minipacs.hl7.orders import _groups

    message = parse(text)
    patient, groups = _groups(message)
    return to_datasets(message, patient, groups[0])


def test_omi_o23_is_taken_and_each_ipc_is_a_worklist_entry_of_its_own(tmp_path: Path) -> None:
    """IHE RAD TF-2 4.4 (HL7 v2.5.1 option): the Order Filler schedules with OMI^O23, one IPC segment
    per Scheduled Procedure Step; it was refused with AR 200 (only ORM^O01 and OMG^O19 were taken).
    PS3.4 K.6.1.2.1: a worklist item focuses on one step, so each IPC is an entry of its own."""
    entries = _omi_entries(OMI)
    assert [(d.AccessionNumber, d.RequestedProcedureID, d.StudyInstanceUID) for d in entries] == [
        ("ACC23", "RP23", "1.2.826.0.1.3680043.10.9.2323")
    ] * 2
    steps = [d.ScheduledProcedureStepSequence for d in entries]
    assert [len(s) for s in steps] == [1, 1]
    assert [(s[0].ScheduledProcedureStepID, s[0].Modality, s[0].ScheduledStationAETitle) for s in steps] == [
        ("SPS23A", "CT", "CT01"),
        ("SPS23B", "CT", "CT02"),
    ]
    assert all(s[0].ScheduledProcedureStepStartDate == "20240210" for s in steps)

    async def body(worklist: Worklist) -> list[bytes | list[tuple[str, str]]]:
        said: list[bytes | list[tuple[str, str]]] = []
        for text in (OMI, OMI, OMI.replace("ORC|NW", "ORC|XO").replace("SPS23B|CT|", "SPS23B|MR|"), CANCEL_A):
            said.append(await handle(text.encode(), worklist))
            said.append(
                [
                    (e.status, e.dataset.ScheduledProcedureStepSequence[0].Modality)
                    for e in await worklist.by_accession("ACC23")
                ]
            )
        return said

    new, after_new, again, after_again, change, after_change, cancel, after_cancel = run(tmp_path, body)
    assert b"MSA|AA|CTL23|" in new and b"ACK^O23^ACK" in new  # type: ignore[operator]
    assert after_new == [("SCHEDULED", "CT"), ("SCHEDULED", "CT")]
    assert b"MSA|AE|" in again and after_again == after_new  # type: ignore[operator]
    assert b"MSA|AA|" in change and after_change == [("SCHEDULED", "CT"), ("SCHEDULED", "MR")]  # type: ignore[operator]
    assert b"MSA|AA|" in cancel and after_cancel == [("CANCELLED", "CT"), ("SCHEDULED", "MR")]  # type: ignore[operator]


#: A CA of the first step only.
CANCEL_A = "\r".join(line for line in OMI.replace("ORC|NW", "ORC|CA").split("\r") if "SPS23B" not in line)


@pytest.mark.parametrize("change", ["SPS23B|CT|", "SPS23B||"])
def test_steps_of_an_order_need_their_id_and_modality(change: str) -> None:
    text = OMI.replace("SPS23B|CT|", change.replace("SPS23B", "") if change == "SPS23B|CT|" else change)
    with pytest.raises(HL7Error, match="IPC-4" if change == "SPS23B|CT|" else "no modality"):
        _omi_entries(text)


@pytest.mark.parametrize(
    ("charset", "escaped", "expected", "dicom"),
    [
        ("8859/7", "\\XE1E2\\", "\u03b1\u03b2", "ISO_IR 126"),  # Greek alpha beta, not Latin-1 a-acute a-circumflex
        ("8859/5", "\\XB8\\", "\u0418", "ISO_IR 144"),  # Cyrillic I, not the Latin-1 cedilla
        ("8859/1", "\\XE9\\", "\u00e9", "ISO_IR 100"),
    ],
)
def test_hex_escape_is_read_in_the_declared_charset(charset: str, escaped: str, expected: str, dicom: str) -> None:
    """HL7 v2.5 2.7.3: \\Xhh\\ is data in the message's character set (MSH-18); it was read as
    ISO 8859-1 whatever MSH-18 said."""
    ds = mapped_message(parse_bytes(_msh18(orm(name=f"N{escaped}^M"), charset).encode("ascii")))
    assert str(ds.PatientName) == f"N{expected}^M" and ds.SpecificCharacterSet == dicom


def test_display_escapes_leave_no_backslash_in_dicom_values() -> None:
    """HL7 v2.5 2.7.2 / 2.7.6: highlighting and formatting escapes mean nothing in a DICOM value; kept
    as sent, their backslashes split the name into five values (PS3.5 6.4: the value separator)."""
    ds = mapped(orm(name="\\H\\Doe\\N\\^John\\.in 2\\"))
    assert ds["PatientName"].VM == 1 and str(ds.PatientName) == "Doe^John"


@pytest.mark.parametrize(("field", "text"), [("accession", "A\\E\\B"), ("name", "Doe\\E\\^John")])
def test_a_backslash_in_a_value_that_cannot_hold_one_is_refused(field: str, text: str) -> None:
    """PS3.5 6.4: a backslash separates values; an escaped one (\\E\\) in an LO/SH/PN would turn the
    order's one value into several: AE 102 naming the field, like a control character."""
    with pytest.raises(HL7Error, match="backslash") as info:
        mapped(orm(**{field: text}))
    assert info.value.error_code == 102
