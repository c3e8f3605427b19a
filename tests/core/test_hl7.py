"""HL7 v2 parsing, escapes (HL7 v2.5 2.7), the ORM/OMG -> worklist mapping table and order control."""

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
from minipacs.core.hl7 import (
    CHARSETS,
    DEFAULT_ENCODING,
    Encoding,
    HL7Error,
    Message,
    build_ack,
    declared_charset,
    escape,
    parse,
    parse_bytes,
    unescape,
)
from minipacs.core.hl7_orders import FIELD_MAP, ORDER_CONTROL, apply, check_type, to_dataset
from minipacs.core.worklist import CANCELLED, Worklist

T = TypeVar("T")


def orm(control: str = "NW", accession: str = "ACC100", *, pid3: str = "PAT1^^^HOSP^MR",
        name: str = "Doe^John^Q^Jr^Dr", obr4: str = "CTHEAD^CT Head w/o contrast^LOCAL",
        modality: str = "CT", start: str = "202401050830", sep: str = "\r", extra: str = "",
        msh2: str = "^~\\&", fs: str = "|") -> str:
    """An ORM^O01 as an IHE RAD-4 Order Filler sends it (HL7 v2.3.1)."""
    c, r = msh2[0], msh2[1]
    segments = [
        f"MSH{fs}{msh2}{fs}RIS{fs}HOSP{fs}MINIPACS{fs}RAD{fs}20240104120000{fs}{fs}ORM{c}O01{fs}CTL{accession}{fs}P"
        f"{fs}2.3.1",
        f"PID{fs}1{fs}{fs}{pid3}{fs}{fs}{name}{fs}{fs}19700101{fs}M",
        f"PV1{fs}1{fs}O{fs}{fs}{fs}{fs}{fs}{fs}123{c}Who{c}Doctor",
        f"ORC{fs}{control}{fs}PL{accession}{fs}FL{accession}{fs}{fs}SC",
        f"OBR{fs}1{fs}PL{accession}{fs}FL{accession}{fs}{obr4}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}"
        f"77{c}House{c}Gregory{fs}{fs}{accession}{fs}RP{accession}{fs}SPS{accession}{fs}{fs}{fs}{fs}{modality}"
        f"{fs}{fs}{fs}{c}{c}{c}{start}{c}{c}R",
        f"ZDS{fs}1.2.826.0.1.3680043.10.9.{len(accession)}{accession.encode().hex()[:8]}{c}RIS{c}Application{c}DICOM",
    ]
    if extra:
        segments.append(extra)
    return sep.join(segments) + sep


OMG = ("MSH|^~\\&|RIS|HOSP|MINIPACS|RAD|20240104120000||OMG^O19^OMG_O19|CTL9|P|2.5.1\r"
       "PID|1||PAT9^^^HOSP||Müller^Jürgen||19800229|F\r"
       "ORC|NW|PL9|FL9\r"
       "TQ1|||||||20240210101500\r"
       "OBR|1|PL9|FL9|USABD^US Abdomen^LOCAL\r"
       "IPC|ACC9|RP9|1.2.826.0.1.3680043.10.9.909|SPS9|US||||US01\r")


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
    from minipacs.core.hl7_orders import _groups
    patient, groups = _groups(message)
    return to_dataset(message, patient, groups[0])


# ------------------------------------------------------------------ escapes and parsing

ESCAPES = [  # HL7 v2.5 2.7.1 .. 2.7.4
    ("a\\F\\b", "a|b"),
    ("a\\S\\b", "a^b"),
    ("a\\T\\b", "a&b"),
    ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"),
    ("\\X4D\\\\X75\\ller", "Muller"),
    ("M\\XC3BC\\ller", "Müller"),
    ("M\\XFC\\ller", "Müller"),  # not UTF-8: Latin-1
    ("line\\.br\\two", "line\ntwo"),
    ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # formatting kept as sent
    ("lone \\ escape", "lone \\ escape"),
]


@pytest.mark.parametrize(("raw", "text"), ESCAPES)
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw) == text


def test_escape_round_trips_delimiters() -> None:
    text = "a|b^c&d~e\\f"
    assert escape(text) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert unescape(escape(text)) == text
    enc = Encoding("#", "!", "$", "?", "%")
    assert unescape(escape(text + "#!$?%", enc), enc) == text + "#!$?%"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators_cr_lf_crlf(sep: str) -> None:
    message = parse(orm(sep=sep))
    assert [s.name for s in message.segments] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]
    assert message.message_type == ("ORM", "O01") and message.control_id == "CTLACC100"


def test_msh_fields_are_numbered_from_msh1() -> None:
    message = parse(orm())
    msh = message.first("MSH")
    assert message.value(msh, 1) == "|" and message.value(msh, 2) == "^~\\&"
    assert message.value(msh, 3) == "RIS" and message.value(msh, 12) == "2.3.1"


def test_other_encoding_characters_from_msh2() -> None:
    text = orm(msh2="!@#$", fs="%", name="Doe!John", pid3="PAT1!!!HOSP", obr4="CTHEAD!CT Head!LOCAL")
    message = parse(text)
    assert message.encoding == Encoding("%", "!", "@", "#", "$")
    ds = mapped(text)
    assert ds.PatientID == "PAT1" and str(ds.PatientName) == "Doe^John"
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20240105"


def test_repetitions_components_and_null() -> None:
    message = parse("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rPID|||ID1^^^H1~ID2^^^H2||\"\"\r")
    pid = message.first("PID")
    assert message.value(pid, 3) == "ID1" and message.value(pid, 3, 4, repetition=1) == "H2"
    assert message.value(pid, 5) == "" and message.value(pid, 40) == ""


BROKEN = [  # (text, MSA code, words in the reason)
    ("", "AR", "empty"),
    ("PID|||1\r", "AR", "MSH"),
    ("\x00\x01garbage\xff", "AR", "MSH"),
    ("MSH|ab|x\r", "AR", "encoding characters"),
    ("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rthis is not a segment\r", "AR", "not an HL7 segment"),
    ("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rMSH|^~\\&|A\r", "AR", "second MSH"),
]


@pytest.mark.parametrize(("text", "code", "words"), BROKEN)
def test_unparseable_messages_are_rejected_with_a_reason(text: str, code: str, words: str) -> None:
    with pytest.raises(HL7Error, match=words) as info:
        parse(text)
    assert info.value.ack_code == code


def test_ack_answers_the_message() -> None:
    message = parse(orm())
    ack = parse(build_ack(message, "AA", "order ACC100 scheduled"))
    msh, msa = ack.first("MSH"), ack.first("MSA")
    assert ack.message_type == ("ACK", "O01")
    assert ack.value(msh, 5) == "RIS" and ack.value(msh, 6) == "HOSP" and ack.value(msh, 3) == "MINIPACS"
    assert ack.value(msa, 1) == "AA" and ack.value(msa, 2) == "CTLACC100"
    assert ack.value(msa, 3) == "order ACC100 scheduled" and ack.first("ERR") is None


def test_nak_carries_reason_and_err_segment_even_unparsed() -> None:
    error = HL7Error("PID-3 is empty | really", location="PID-3", error_code=101)
    ack = parse(build_ack(None, "AE", error.reason, error=error))
    assert ack.value(ack.first("MSA"), 3) == "PID-3 is empty | really"
    err = ack.first("ERR")
    assert ack.value(err, 2, 1) == "PID" and ack.value(err, 2, 3) == "3"
    assert ack.value(err, 3, 1) == "101" and ack.value(err, 4) == "E"
    assert ack.encoding == DEFAULT_ENCODING


# ------------------------------------------------------------------ the mapping table

EXPECTED_ORM = {  # FIELD_MAP row -> value from orm(): one row per mapped field
    "PatientID": "PAT1", "IssuerOfPatientID": "HOSP", "PatientName": "Doe^John^Q^Dr^Jr",
    "PatientBirthDate": "19700101", "PatientSex": "M", "ReferringPhysicianName": "Who^Doctor",
    "PlacerOrderNumberImagingServiceRequest": "PLACC100", "FillerOrderNumberImagingServiceRequest": "FLACC100",
    "AccessionNumber": "ACC100", "RequestedProcedureID": "RPACC100",
    "RequestedProcedureDescription": "CT Head w/o contrast", "RequestingPhysician": "House^Gregory",
    "RequestedProcedurePriority": "ROUTINE",
}
EXPECTED_SPS = {
    "Modality": "CT", "ScheduledProcedureStepStartDate": "20240105", "ScheduledProcedureStepStartTime": "0830",
    "ScheduledProcedureStepID": "SPSACC100", "ScheduledProcedureStepDescription": "CT Head w/o contrast",
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
        "CTHEAD", "CT Head w/o contrast", "LOCAL")
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


@pytest.mark.parametrize(("text", "code", "location", "words"), [
    (orm(pid3=""), "AE", "PID-3", "patient ID"),
    (orm(modality=""), "AE", "OBR-24", "modality"),
    (orm(start="2024-01-05"), "AE", "OBR-27", "date/time"),
    (orm(control="ZZ"), "AE", "ORC-1", "order control 'ZZ'"),
    (orm(obr4="X" * 40 + "^Too long a code"), "AE", "OBR-4", "CodeValue from OBR-4.1 cannot be stored"),
    (orm().replace("ORM^O01", "ADT^A01"), "AR", "MSH-9", "not supported"),
    (orm().replace("ORM^O01", "ORM^O02"), "AR", "MSH-9", "not an order event"),
])
def test_broken_orders_are_refused_and_change_nothing(tmp_path: Path, text: str, code: str, location: str,
                                                       words: str) -> None:
    async def body(worklist: Worklist) -> int:
        with pytest.raises(HL7Error, match=words) as info:
            await apply(parse(text), worklist)
        assert (info.value.ack_code, info.value.location) == (code, location)
        return len(await worklist.list())

    assert run(tmp_path, body) == 0


def test_missing_pid_and_orc() -> None:
    base = "MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\r"
    for text, words in ((base + "ORC|NW\rOBR|1\r", "no PID"), (base + "PID|||1\r", "no ORC"),
                        (base + "PID|||1\rOBR|1\r", "before any ORC")):
        with pytest.raises(HL7Error, match=words):
            asyncio.run(apply(parse(text), Worklist(None)))  # type: ignore[arg-type]  # refused before any I/O


# ------------------------------------------------------------------ order control (HL7 Table 0119)

def test_order_control_table_rows() -> None:
    assert set(ORDER_CONTROL) == {"NW", "CA", "DC", "OC", "XO"}


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
        assert f"worklist entry {before.id}" in await apply(parse(_xo(modality="MR").replace(f"ZDS|{study}", "ZDS|")),
                                                            worklist)
        [after] = await worklist.list()
        assert (after.id, after.status, after.dataset.StudyInstanceUID) == (before.id, "IN PROGRESS", study)
        assert after.dataset.ScheduledProcedureStepSequence[0].Modality == "MR"

    run(tmp_path, body)


def _two_orders(first: str, second: str) -> str:
    """One message with the order groups of ``first`` and ``second``."""
    return first + "\r".join(line for line in second.split("\r") if line[:3] in ("ORC", "OBR", "ZDS"))


@pytest.mark.parametrize(("label", "text"), [
    ("value too long for its VR", _xo(obr4="X" * 40 + "^Too long a code")),
    ("no modality", _xo(modality="")),
    ("bad date", _xo(start="2024-01-05")),
    ("second order of the message bad", _two_orders(_xo(modality="MR"), orm(accession="ACC2", modality=""))),
])
def test_xo_refused_midway_changes_nothing(tmp_path: Path, label: str, text: str) -> None:
    async def body(worklist: Worklist) -> None:
        await apply(parse(orm()), worklist)
        before = await worklist.list()
        with pytest.raises(HL7Error) as info:
            await apply(parse(text), worklist)
        assert info.value.ack_code == "AE", label
        assert [(e.id, e.status, e.dataset) for e in await worklist.list()] == [
            (e.id, e.status, e.dataset) for e in before]

    run(tmp_path, body)


def test_xo_failing_inside_the_writer_transaction_changes_nothing(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
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
        with pytest.raises(ArchiveError, match="disk I/O"):
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

NAME = "Müller^Jürgen"


def _msh18(text: str, charset: str) -> str:
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields += [""] * (17 - len(fields)) + [charset]  # fields[n - 1] is MSH-n
    return "|".join(fields[:18]) + "\r" + rest


@pytest.mark.parametrize("code", sorted(CHARSETS))
def test_msh18_table_row_decodes_and_maps_to_specific_character_set(code: str) -> None:
    charset = CHARSETS[code]
    letter = {"ASCII": "", "UNICODE UTF-8": "ж"}.get(code, None)
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


@pytest.mark.parametrize(("msh18", "payload", "code", "words"), [
    ("UNICODE UTF-16", NAME.encode("latin-1"), 103, "not supported"),
    ("BIG-5", NAME.encode("latin-1"), 103, "not supported"),
    ("UNICODE UTF-8", NAME.encode("latin-1"), 102, "byte 0xFC at offset"),
    ("ASCII", NAME.encode("utf-8"), 102, "not valid ASCII"),
])
def test_msh18_unsupported_or_not_matching_the_bytes_is_rejected(msh18: str, payload: bytes, code: int,
                                                                words: str) -> None:
    data = _msh18(orm(name="@NAME@"), msh18).encode("ascii").replace(b"@NAME@", payload)
    with pytest.raises(HL7Error, match=words) as info:
        parse_bytes(data)
    assert (info.value.ack_code, info.value.error_code, info.value.location) == ("AR", code, "MSH-18")


@pytest.mark.parametrize(("msh18", "encoding", "dicom"), [
    ("", "utf-8", "ISO_IR 192"),  # no MSH-18: UTF-8 when the bytes are valid UTF-8
    ("", "latin-1", "ISO_IR 100"),  # ... else ISO 8859-1
    ("utf-8", "utf-8", "ISO_IR 192"),  # a name senders use instead of UNICODE UTF-8
    ("8859/1", "latin-1", "ISO_IR 100"),
])
def test_msh18_absent_or_alias(msh18: str, encoding: str, dicom: str) -> None:
    text = _msh18(orm(name=NAME), msh18) if msh18 else orm(name=NAME)
    ds = mapped_message(parse_bytes(text.encode(encoding)))
    assert str(ds.PatientName) == NAME and ds.SpecificCharacterSet == dicom


def test_hex_escape_outside_the_declared_charset_falls_back_to_utf8() -> None:
    ds = mapped_message(parse_bytes(_msh18(orm(name="Ob\\XE28093\\rien^M"), "8859/1").encode("latin-1")))
    assert str(ds.PatientName) == "Ob\u2013rien^M" and ds.SpecificCharacterSet == "ISO_IR 192"


def test_ack_repeats_msh18() -> None:
    ack = parse(build_ack(parse(_msh18(orm(), "8859/1")), "AA", "ok"))
    assert ack.value(ack.first("MSH"), 18) == "8859/1" and ack.value(ack.first("MSA"), 1) == "AA"
    plain = parse(build_ack(parse(orm()), "AA", "ok"))
    assert plain.value(plain.first("MSH"), 18) == ""
