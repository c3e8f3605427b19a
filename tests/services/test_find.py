"""C-FIND SCP and SCU in process, over real loopback associations (PS3.4 C.4.1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.dicom.identifier import encode_identifier
from minipacs.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_FIND,
    PATIENT_STUDY_ONLY_FIND,
    STUDY_ROOT_FIND,
    transfer_syntax,
)
from minipacs.net.association import Association, AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.memory import BytesSink
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.services.find_scu import build_identifier, find, find_all
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.server import DicomServer
from minipacs.services.verification import VerificationSCP
from tests.dicomgen import write_ct

TIMEOUTS = Timeouts(acse=5.0, dimse=10.0, idle=30.0)
N_STUDIES = 150
ALL_FIND = [PATIENT_ROOT_FIND, STUDY_ROOT_FIND, PATIENT_STUDY_ONLY_FIND]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding N_STUDIES one-instance studies (imported once; tests only read)."""
    folder = tmp_path_factory.mktemp("find-files")
    for n in range(N_STUDIES):
        write_ct(
            folder / f"{n:04d}.dcm",
            rows=8,
            cols=8,
            patient_id="PIDX" if n == 7 else f"PID{n % 10}",
            patient_name="Müller^Jürgen" if n == 7 else f"Patient{n:03d}^Test",
            AccessionNumber=f"ACC{n:04d}",
            StudyDate=f"2024{1 + n % 12:02d}15",
            study_uid=f"1.2.826.0.1.3680043.10.2.{n + 1}",
        )

    async def load() -> None:
        archive = await open_archive(Settings(data_dir=folder / "data", fsync=False))
        try:
            for path in sorted(folder.glob("*.dcm")):
                await archive.import_file(path, Origin("import", "", "", "", 0))
        finally:
            await archive.close()

    asyncio.run(load())
    return folder / "data"


@asynccontextmanager
async def running(tmp: Path, files: Path, **scp: Any) -> AsyncIterator[tuple[DicomServer, Archive]]:
    archive = await open_archive(Settings(data_dir=files, fsync=False))
    find_scp = QueryRetrieveFindSCP(archive, ae_title="MINIPACS", **scp)
    server = DicomServer("MINIPACS", [VerificationSCP(), find_scp], host="127.0.0.1", port=0, timeouts=TIMEOUTS)
    await server.start()
    try:
        yield server, archive
    finally:
        await server.close(1.0)
        await archive.close()


async def associate(
    port: int, classes: list[str] | None = None, relational: bool = False, syntaxes: list[str] | None = None
) -> Association:
    settings = AssociationSettings(ae_title="FINDSCU", timeouts=TIMEOUTS)
    ts = syntaxes or [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    rq = build_rq("FINDSCU", "MINIPACS", [(c, ts) for c in classes or ALL_FIND], settings)
    if relational:
        rq.user_information.extended = [SOPClassExtendedNegotiation(c, b"\x01") for c in classes or ALL_FIND]
    return await connect("127.0.0.1", port, rq, settings)


Body = Callable[[DicomServer, Archive], Any]


def run(tmp: Path, files: Path, body: Body, **scp: Any) -> Any:
    async def main() -> Any:
        async with running(tmp, files, **scp) as (server, archive):
            return await body(server, archive)

    return asyncio.run(main())


def ident(level: str, **keys: Any) -> Dataset:
    return build_identifier(keys, level)


def test_study_root_find_streams_pending_then_success(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        result = await find_all(
            assoc,
            STUDY_ROOT_FIND,
            ident(
                "STUDY",
                PatientID="PID3",
                AccessionNumber=None,
                StudyDate=None,
                RetrieveAETitle=None,
                NumberOfStudyRelatedInstances=None,
            ),
        )
        assert result.status == 0x0000
        assert len(result.matches) == N_STUDIES // 10
        assert all(m.RetrieveAETitle == "MINIPACS" for m in result.matches)
        assert all(int(m.NumberOfStudyRelatedInstances) == 1 for m in result.matches)
        # a second query on the same association
        again = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0003"))
        assert [m.AccessionNumber for m in again.matches] == ["ACC0003"]
        await assoc.release()

    run(tmp_path, files, body)


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN])
def test_every_uncompressed_transfer_syntax(tmp_path: Path, files: Path, syntax: str) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port, [STUDY_ROOT_FIND], syntaxes=[syntax])
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", PatientName="müller*", PatientID=None))
        await assoc.release()
        assert result.status == 0
        assert [str(m.PatientName) for m in result.matches] == ["Müller^Jürgen"]
        assert result.matches[0].SpecificCharacterSet == "ISO_IR 192"

    run(tmp_path, files, body)


def test_iso_ir_100_request_gets_iso_ir_100_answers(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        ds = ident("STUDY", PatientName="MÜLLER^JÜRGEN")
        ds.SpecificCharacterSet = "ISO_IR 100"
        result = await find_all(assoc, STUDY_ROOT_FIND, ds)
        await assoc.release()
        assert [str(m.PatientName) for m in result.matches] == ["Müller^Jürgen"]
        assert result.matches[0].SpecificCharacterSet == "ISO_IR 100"

    run(tmp_path, files, body)


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])
@pytest.mark.parametrize(
    ("charset", "keys"),
    [
        ("", {"AccessionNumber": "ACC0042"}),  # an ASCII row: RowEncoder's ASCII loop
        ("ISO_IR 100", {"PatientName": "MÜLLER^JÜRGEN"}),  # a Latin-1 row: its one-set encoder
        ("ISO 2022 IR 6\\ISO 2022 IR 87", {"AccessionNumber": "ACC0042"}),  # code extensions: pydicom
    ],
)
def test_timezone_offset_from_utc_without_a_value_is_left_out(
    tmp_path: Path, files: Path, syntax: str, charset: str, keys: dict[str, str]
) -> None:
    """PS3.4 C.4.1.1.3.2: Timezone Offset From UTC "shall not be sent with a zero-length value"; the
    stored instances have none, so the responses leave it out (it was answered zero-length). And it is
    not matched (C.4.1.1.3.1): a value in the request finds the same studies."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port, [STUDY_ROOT_FIND], syntaxes=[syntax])
        answers = []
        for offset in ("", "+0100"):
            ds = ident("STUDY", **{"AccessionNumber": "", "PatientName": "", "TimezoneOffsetFromUTC": offset, **keys})
            if charset:
                ds.SpecificCharacterSet = charset.split("\\")
            result = await find_all(assoc, STUDY_ROOT_FIND, ds)
            assert result.status == 0
            answers.append([str(m.AccessionNumber) for m in result.matches])
            assert all("TimezoneOffsetFromUTC" not in m for m in result.matches)
            assert all("AccessionNumber" in m and "PatientName" in m for m in result.matches)
        await assoc.release()
        assert answers[0] == answers[1] and len(answers[0]) == 1

    run(tmp_path, files, body)


def test_patient_root_patient_level(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        result = await find_all(
            assoc, PATIENT_ROOT_FIND, ident("PATIENT", PatientID="PID1", NumberOfPatientRelatedStudies=None)
        )
        await assoc.release()
        assert result.status == 0
        assert [int(m.NumberOfPatientRelatedStudies) for m in result.matches] == [N_STUDIES // 10]

    run(tmp_path, files, body)


def test_study_root_study_level_counts_the_patients_studies(tmp_path: Path, files: Path) -> None:
    """PS3.4 C.6.2.1.2 (Table C.6-5): the Study level of the Study Root model carries Number of Patient
    Related Studies/Series/Instances; each study answers its patient's (15 one-instance studies for
    PID1, also when the query matches one of them). They came out as 150 studies, 1 series and 1
    instance (a cartesian product)."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        counts = {
            "NumberOfPatientRelatedStudies": None,
            "NumberOfPatientRelatedSeries": None,
            "NumberOfPatientRelatedInstances": None,
        }
        every = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", PatientID="PID1", **counts))
        one = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0011", **counts))
        await assoc.release()
        assert every.status == 0 and one.status == 0
        wanted = (N_STUDIES // 10,) * 3
        answers = [tuple(int(m[k].value) for k in counts) for m in every.matches + one.matches]
        assert answers == [wanted] * (N_STUDIES // 10 + 1)

    run(tmp_path, files, body)


def test_uid_list_above_the_level_needs_relational_queries(tmp_path: Path, files: Path) -> None:
    """PS3.4 C.4.1.2.1: a hierarchical C-FIND has a single value in the unique key of each level above
    its level (0xA900 otherwise, as C-MOVE refuses it, C.4.2.2.1); with relational queries negotiated
    (C.4.1.3.2.1) a UID list there is matched like any key."""
    studies = "1.2.826.0.1.3680043.10.2.1\\1.2.826.0.1.3680043.10.2.2"

    async def body(server: DicomServer, archive: Archive) -> None:
        keys = {"StudyInstanceUID": studies, "SeriesInstanceUID": None}
        hierarchical = await associate(server.port, [STUDY_ROOT_FIND])
        refused = await find_all(hierarchical, STUDY_ROOT_FIND, ident("SERIES", **keys))
        await hierarchical.release()
        relational = await associate(server.port, [STUDY_ROOT_FIND], relational=True)
        found = await find_all(relational, STUDY_ROOT_FIND, ident("SERIES", **keys))
        await relational.release()
        assert refused.status == 0xA900 and not refused.matches
        assert found.status == 0 and len(found.matches) == 2

    run(tmp_path, files, body)


def test_unsupported_optional_key_gives_ff01(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        statuses = []
        from minipacs.services.find_scu import find

        async for status, _ds, _cmd in find(
            assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0001", NumberOfStudyRelatedSeries="1")
        ):
            statuses.append(status)
        await assoc.release()
        assert statuses == [0xFF01, 0x0000]

    run(tmp_path, files, body)


def test_cancel_stops_the_query(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber=None), cancel_after=1)
        assert result.status == 0xFE00
        assert 1 <= len(result.matches) < N_STUDIES
        still = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0100"))
        assert len(still.matches) == 1
        await assoc.release()

    run(tmp_path, files, body)


def test_result_limit(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber=None))
        await assoc.release()
        assert len(result.matches) == 5
        assert result.status == 0xA700
        assert "max_results" in result.error_comment

    run(tmp_path, files, body, max_results=5)


def test_relational_query_when_negotiated(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        plain = await associate(server.port)
        refused = await find_all(plain, STUDY_ROOT_FIND, ident("SERIES", Modality="CT", AccessionNumber=None))
        await plain.release()
        assert refused.status == 0xA900
        assoc = await associate(server.port, relational=True)
        assert assoc.ac is not None and assoc.ac.user_information.extended
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("SERIES", PatientID="PID2", Modality="CT"))
        await assoc.release()
        assert result.status == 0
        assert len(result.matches) == N_STUDIES // 10

    run(tmp_path, files, body)


HOSTILE: list[tuple[str, dict[str, Any], set[int]]] = [
    ("SQL metacharacters", {"PatientName": "%';--", "AccessionNumber": "_"}, {0x0000}),
    ("SQL injection", {"PatientID": "x' OR 1=1; DROP TABLE studies; --"}, {0x0000}),
    ("huge wildcard", {"PatientName": "*" * 10000, "PatientID": "PID1"}, {0x0000}),
    ("huge ? wildcard", {"PatientName": "?" * 10000}, {0xC001}),
    ("very long value", {"StudyDescription": "x" * 60000}, {0xC001}),
    ("wrong VR content (date)", {"StudyDate": "yesterday"}, {0xC001}),
    ("reversed range", {"StudyDate": "20241231-20240101"}, {0xC001}),
    # PS3.5 6.1.2-6.1.3: NUL and C0 controls but ESC are refused as QIDO-RS refuses them (0xC001); NULs were
    # dropped, so PatientName "\x00" was universal matching and answered every study
    ("NUL bytes", {"PatientID": "PID1\x00\x00"}, {0xC001}),
    ("only a NUL", {"PatientName": "\x00"}, {0xC001}),
    ("a C0 control", {"PatientID": "PID\x01"}, {0xC001}),
    ("DEL", {"AccessionNumber": "ACC\x7f"}, {0xC001}),
    ("a NUL inside a UID", {"StudyInstanceUID": "1.2.826\x00.1"}, {0xC001}),
    ("a TAB in an LT key (a format effector, PS3.5 6.1.3)", {"PatientComments": "a\tb"}, {0x0000}),
    ("no QueryRetrieveLevel", {"QueryRetrieveLevel": "FOO"}, {0xA900}),
]


@pytest.mark.parametrize(("keys", "statuses"), [(k, s) for _n, k, s in HOSTILE], ids=[n for n, _k, _s in HOSTILE])
def test_hostile_keys_fail_cleanly_and_the_server_keeps_serving(
    tmp_path: Path, files: Path, keys: dict[str, Any], statuses: set[int], caplog: pytest.LogCaptureFixture
) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        with pydicom.config.disable_value_validation():
            for k, v in keys.items():
                setattr(ds, k, v)
        result = await find_all(assoc, STUDY_ROOT_FIND, ds)
        assert result.status in statuses, result.error_comment
        if result.status == 0 and "PatientID" in keys and keys["PatientID"].startswith("x'"):
            assert result.matches == []
        after = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0042"))
        assert len(after.matches) == 1
        await assoc.release()

    with caplog.at_level(logging.WARNING, logger="minipacs.find"):
        run(tmp_path, files, body)
    if statuses != {0}:
        assert any("C-FIND refused" in r.getMessage() for r in caplog.records)


async def _raw_find(assoc: Association, data: bytes) -> tuple[int, str]:
    ctx = assoc.context_for(STUDY_ROOT_FIND)
    assert ctx is not None
    rq = Command.make(
        "C-FIND-RQ",
        has_dataset=True,
        MessageID=assoc.next_message_id(),
        Priority=0,
        AffectedSOPClassUID=STUDY_ROOT_FIND,
    )
    status, text = -1, ""
    async for rsp in assoc.request(ctx.context_id, rq, data):
        status = int(rsp.command["Status"])
        text = str(rsp.command.get("ErrorComment", ""))
        assert not isinstance(rsp.dataset, BytesSink) or status in (0xFF00, 0xFF01) or not rsp.dataset.getvalue()
    return status, text


FAILED = frozenset(range(0xC000, 0xD000)) | {0xA900}
# (case, identifier bytes in Implicit VR Little Endian, acceptable final statuses)
RAW: list[tuple[str, bytes, frozenset[int]]] = [
    ("garbage bytes", b"\xff\xfe\x00\x01garbage!", FAILED),
    (
        "element length past the end (pydicom reads what is there)",
        b"\x08\x00\x52\x00\xff\x00\x00\x00STUDY ",
        FAILED | {0x0000},
    ),
    (
        "binary key with a value",
        b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x28\x00\x10\x00\x02\x00\x00\x00\x00\x02",
        FAILED,
    ),
    (
        "sequence with a broken item",
        b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
        b"\x08\x00\x32\x10\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00\x01\x02",
        FAILED | {0x0000},
    ),
]


@pytest.mark.parametrize(("data", "allowed"), [(d, a) for _n, d, a in RAW], ids=[n for n, _d, _a in RAW])
def test_unreadable_identifiers(tmp_path: Path, files: Path, data: bytes, allowed: frozenset[int]) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port, [STUDY_ROOT_FIND], syntaxes=[IMPLICIT_VR_LITTLE_ENDIAN])
        status, text = await _raw_find(assoc, data)
        assert status in allowed, hex(status)
        assert text or status == 0
        after = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber="ACC0042"))
        assert len(after.matches) == 1
        await assoc.release()

    run(tmp_path, files, body)


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])
@pytest.mark.parametrize("charset", ["", "ISO_IR 100"])
def test_our_scu_reads_every_match_of_a_long_stream_at_a_small_max_pdu(
    tmp_path: Path, files: Path, syntax: str, charset: str
) -> None:
    """Issue 11: every Pending response of a 150-match query, read by our SCU with a Maximum Length
    of 64 bytes: each identifier (and some command sets) straddles PDUs, the command sets the
    SCU decodes are alike (Command.decode keeps them) and arrive many to a read (Association.request
    takes them without a timer). Each match is its own response, in index order, none lost, the
    non-ASCII name in the repertoire the requester can read."""

    async def body(server: DicomServer, archive: Archive) -> None:
        server.assoc_settings.max_pdu_peer_min = 64  # below the default floor (1024), on purpose
        settings = AssociationSettings(ae_title="FINDSCU", timeouts=TIMEOUTS, max_pdu_receive=64)
        rq = build_rq("FINDSCU", "MINIPACS", [(STUDY_ROOT_FIND, [syntax])], settings)
        assoc = await connect("127.0.0.1", server.port, rq, settings)
        ds = ident("STUDY", AccessionNumber=None, PatientName=None, StudyDate=None, RetrieveAETitle=None)
        if charset:
            ds.SpecificCharacterSet = charset
        statuses: list[int] = []
        matches: list[Dataset] = []
        async for status, match, _command in find(assoc, STUDY_ROOT_FIND, ds):
            statuses.append(status)
            if match is not None:
                matches.append(match)
        await assoc.release()
        assert statuses == [0xFF00] * N_STUDIES + [0x0000]
        assert [m.AccessionNumber for m in matches] == [f"ACC{n:04d}" for n in range(N_STUDIES)]
        assert all(m.RetrieveAETitle == "MINIPACS" for m in matches)
        names = {str(m.PatientName) for m in matches}
        assert "Müller^Jürgen" in names and len(names) > 5
        [mueller] = [m for m in matches if m.AccessionNumber == "ACC0007"]
        assert mueller.SpecificCharacterSet == (charset or "ISO_IR 192")
        ts = transfer_syntax(syntax)
        assert ts is not None
        assert all(len(encode_identifier(m, ts)) > 64 for m in matches)

    run(tmp_path, files, body)


@pytest.mark.parametrize("model", ALL_FIND)
def test_a_key_of_only_nul_is_refused_not_matched_as_universal(tmp_path: Path, files: Path, model: str) -> None:
    """PatientName "\\x00" was read as empty (NULs dropped), universal matching: every study answered.
    Refused now in every Q/R model with 0xC001 and an Error Comment naming the key, nothing answered,
    by the rule QIDO-RS uses (dicom/vr.py control_character, PS3.5 6.1.2-6.1.3)."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = ""
        with pydicom.config.disable_value_validation():
            ds.PatientName = "\x00"
        result = await find_all(assoc, model, ds)
        assert result.status == 0xC001 and result.matches == []
        assert "PatientName" in result.error_comment and len(result.error_comment) <= 64
        await assoc.release()

    run(tmp_path, files, body)


@pytest.mark.parametrize(
    ("level", "keys", "status", "comment"),
    [
        ("STUDY", {"StudyDate": "2020"}, 0xC001, "StudyDate '2020' is not a valid DA value or range"),
        ("STUDY", {"StudyDate": "20240101-2024"}, 0xC001, "StudyDate '20240101-2024' is not a valid DA value or range"),
        ("STUDY", {"StudyTime": "23*"}, 0xC001, "StudyTime '23*' is not a valid TM value or range"),
        ("SERIES", {"Modality": "CT"}, 0xA900, "a SERIES query needs a single value in StudyInstanceUID"),
        (
            "IMAGE",
            {"StudyInstanceUID": "1.2.3", "SOPInstanceUID": ""},
            0xA900,
            "a IMAGE query needs a single value in SeriesInstanceUID",
        ),
    ],
)
def test_a_refusal_names_the_key_in_its_error_comment(
    tmp_path: Path, files: Path, level: str, keys: dict[str, str], status: int, comment: str
) -> None:
    """PS3.7 C.4 (0000,0902): the Error Comment of a refused C-FIND says which key is at fault, within
    the LO's 64 characters; it said "A key value cannot be matched; correct it and ask again" (or
    "Identifier does not fit the query model; check level and keys") whatever the key, findscu's
    user left to guess which."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        with pydicom.config.disable_value_validation():
            for keyword, value in keys.items():
                setattr(ds, keyword, value)
        result = await find_all(assoc, STUDY_ROOT_FIND, ds)
        await assoc.release()
        assert (result.status, result.error_comment) == (status, comment)

    run(tmp_path, files, body)


def test_combined_date_time_matching_is_negotiated(tmp_path: Path, files: Path) -> None:
    """PS3.4 C.5.1.1 (Table C.5-1): byte 2 asks for combined date-time matching; we agree to it and to
    relational queries (byte 1), and answer 0 to fuzzy matching of person names and timezone query
    adjustment (bytes 3, 4). Agreed, StudyDate 20240115-20240315 with StudyTime 1030-1010 is January 15
    10:30 until March 15 10:10 (the February study only, each at 10:15:30); without it, the time range
    alone crosses midnight and is refused (C.2.2.2.5.2)."""
    keys = {"StudyDate": "20240115-20240315", "StudyTime": "1030-1010", "AccessionNumber": None}

    async def body(server: DicomServer, archive: Archive) -> None:
        settings = AssociationSettings(ae_title="FINDSCU", timeouts=TIMEOUTS)
        rq = build_rq("FINDSCU", "MINIPACS", [(STUDY_ROOT_FIND, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
        rq.user_information.extended = [SOPClassExtendedNegotiation(STUDY_ROOT_FIND, b"\x00\x01\x01\x01")]
        combined = await connect("127.0.0.1", server.port, rq, settings)
        assert combined.ac is not None
        assert [item.info for item in combined.ac.user_information.extended] == [b"\x00\x01\x00\x00"]
        found = await find_all(combined, STUDY_ROOT_FIND, ident("STUDY", **keys))
        await combined.release()
        plain = await associate(server.port)
        refused = await find_all(plain, STUDY_ROOT_FIND, ident("STUDY", **keys))
        await plain.release()
        assert found.status == 0
        assert sorted(str(m.StudyDate) for m in found.matches) == ["20240215"] * 13
        assert refused.status == 0xC001

    run(tmp_path, files, body)


@pytest.mark.parametrize(
    ("model", "level"),
    [(STUDY_ROOT_FIND, "STUDY"), (PATIENT_ROOT_FIND, "PATIENT"), (PATIENT_STUDY_ONLY_FIND, "PATIENT")],
)
def test_an_empty_archive_answers_only_the_final_success(tmp_path: Path, model: str, level: str) -> None:
    """PS3.4 C.4.1.3.1.1: no match, no Pending response: the one response is the final 0x0000, without
    an identifier (find_all counts every Pending identifier as a match)."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port, [model])
        result = await find_all(assoc, model, ident(level, PatientID="", PatientName=""))
        await assoc.release()
        assert (result.status, result.matches) == (0, [])

    run(tmp_path, tmp_path / "empty-data", body)


@pytest.mark.parametrize(
    ("value", "matches"), [("", 15), ("MINIPACS", 15), ("MINI*", 15), ("OTHER", 0), ("OTHER\\X", 0)]
)
def test_retrieve_ae_title_is_matched_against_ours(tmp_path: Path, files: Path, value: str, matches: int) -> None:
    """PS3.4 C.2.2.2: every match is retrieved from us (RetrieveAETitle answers our title), so
    RetrieveAETitle=OTHER matches nothing; it answered every study, each saying MINIPACS."""

    async def body(server: DicomServer, archive: Archive) -> None:
        assoc = await associate(server.port)
        ds = ident("STUDY", PatientID="PID3", RetrieveAETitle=value)
        result = await find_all(assoc, STUDY_ROOT_FIND, ds)
        await assoc.release()
        assert (result.status, len(result.matches)) == (0, matches)
        assert all(m.RetrieveAETitle == "MINIPACS" for m in result.matches)

    run(tmp_path, files, body)
