"""Modality Worklist: entries, PS3.4 K.6 matching, the SCP over real loopback associations, the CLI."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.worklist import InvalidWorklistEntry, Worklist, read_worklist_file
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, MODALITY_WORKLIST_FIND
from minipacs.index import worklist_repo as repo
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dul import Timeouts
from minipacs.services.find_scu import find_all, set_key
from minipacs.services.server import DicomServer
from minipacs.services.worklist import ModalityWorklistSCP
from tests.worklist_data import ENTRIES, entry, write_wl

TIMEOUTS = Timeouts(acse=5.0, dimse=10.0, idle=30.0)


def identifier(*specs: str) -> Dataset:
    ds = Dataset()
    for spec in specs:
        path, _, value = spec.partition("=")
        set_key(ds, path, value)
    return ds


async def _with_worklist(tmp: Path, body: Any, extra: int = 0) -> Any:
    archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
    try:
        worklist = Worklist(archive)
        for ds in ENTRIES:
            await worklist.add(Dataset(ds))
        for n in range(extra):
            await worklist.add(
                entry(
                    f"P{n}",
                    "Many^Pat",
                    f"ACCX{n}",
                    "CT",
                    "CT09",
                    "20240301",
                    "080000",
                    study_uid=f"1.2.826.0.1.3680043.10.9.1000{n}",
                )
            )
        return await body(archive, worklist)
    finally:
        await archive.close()


def accessions(found: list[Dataset]) -> list[str]:
    return sorted(str(ds.AccessionNumber) for ds in found)


SPS = "ScheduledProcedureStepSequence[0]."
SPS_DATE_TIME = ("AccessionNumber",)
# (date key, time key, expected): the steps of ACC1..ACC4 start on 2024-01-05 08:30, 01-06 14:00,
# 01-07 09:30 and 02-10 10:15 (tests/worklist_data.py ENTRIES). Matched each on its own, the first
# three would give ACC2, ACC2 and ACC1; the fourth would be refused (a time range across midnight).
COMBINED_CASES: list[tuple[str, str, list[str]]] = [
    ("20240105-20240107", "1000-1800", ["ACC2", "ACC3"]),  # Jan 5 10:00 until Jan 7 18:00
    ("20240106-", "1200-", ["ACC2", "ACC3", "ACC4"]),  # from Jan 6 12:00 on
    ("-20240107", "-0900", ["ACC1", "ACC2"]),  # until Jan 7 09:00
    ("20240105-20240106", "0800-0100", ["ACC1"]),  # Jan 5 08:00 until Jan 6 01:00
    ("20240105-20240107", "1000-", ["ACC2"]),  # not one form: each on its own (C.2.2.2.5.4)
    ("20240105", "0800-0900", ["ACC1"]),  # a single date: each on its own
]

# PS3.4 K.6.1.2.2 / C.2.2.2: one row per kind of matching the modalities use
MATCHING_CASES = [
    (("PatientID=123456", "AccessionNumber"), ["ACC1", "ACC2"]),
    (("AccessionNumber=ACC3",), ["ACC3"]),
    (("PatientName=doe*", "AccessionNumber"), ["ACC1", "ACC2"]),  # PN: case-insensitive wildcard
    (("PatientName=Müller^Jürgen", "AccessionNumber"), ["ACC4"]),
    (("AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT0?"), ["ACC1", "ACC3"]),
    (("AccessionNumber", "ScheduledProcedureStepSequence[0].Modality=MR"), ["ACC2"]),
    (
        ("AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240106-"),
        ["ACC2", "ACC3", "ACC4"],
    ),
    (
        (
            "AccessionNumber",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240105",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=0800-0900",
        ),
        ["ACC1"],
    ),
    (("AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=1200-"), ["ACC2"]),
    (("AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName=HOUSE^*"), ["ACC2"]),
    (
        (
            "AccessionNumber",
            "ScheduledProcedureStepSequence[0].Modality=CT",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR01",
        ),
        [],
    ),  # both in ONE item
    (("AccessionNumber", "ScheduledProcedureStepSequence"), ["ACC1", "ACC2", "ACC3", "ACC4"]),
    (("SpecificCharacterSet=ISO_IR 192", "PatientID=123456", "AccessionNumber"), ["ACC1", "ACC2"]),  # K.2.2.2
    # PS3.4 Table K.6-1 (0040,0003): a date range and a time range are ONE period (C.2.2.2.5.4)
    *[
        ((*SPS_DATE_TIME, f"{SPS}ScheduledProcedureStepStartDate={d}", f"{SPS}ScheduledProcedureStepStartTime={t}"), x)
        for d, t, x in COMBINED_CASES
    ],
]


@pytest.mark.parametrize(("specs", "expected"), MATCHING_CASES)
def test_k6_matching(tmp_path: Path, specs: tuple[str, ...], expected: list[str]) -> None:
    async def body(_archive: Archive, worklist: Worklist) -> list[Dataset]:
        return await worklist.find(identifier(*specs))

    assert accessions(asyncio.run(_with_worklist(tmp_path, body))) == expected


def test_every_requested_key_is_answered_and_no_other(tmp_path: Path) -> None:
    async def body(_archive: Archive, worklist: Worklist) -> list[Dataset]:
        return await worklist.find(
            identifier(
                "AccessionNumber=ACC1",
                "PatientName",
                "OtherPatientIDs",
                "ScheduledProcedureStepSequence[0].Modality",
                "ScheduledProcedureStepSequence[0].CommentsOnTheScheduledProcedureStep",
            )
        )

    [found] = asyncio.run(_with_worklist(tmp_path, body))
    assert set(found.dir()) == {"AccessionNumber", "PatientName", "OtherPatientIDs", "ScheduledProcedureStepSequence"}
    assert found.OtherPatientIDs in (None, "")
    sps = found.ScheduledProcedureStepSequence[0]
    assert set(sps.dir()) == {"Modality", "CommentsOnTheScheduledProcedureStep"} and sps.Modality == "CT"

    # an empty sequence key returns the stored items whole
    async def whole(_archive: Archive, worklist: Worklist) -> list[Dataset]:
        return await worklist.find(identifier("AccessionNumber=ACC1", "ScheduledProcedureStepSequence"))

    [found] = asyncio.run(_with_worklist(tmp_path / "2", whole))
    assert found.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "SPSACC1"


def test_entries_add_list_remove_and_validation(tmp_path: Path) -> None:
    async def body(_archive: Archive, worklist: Worklist) -> None:
        assert len(await worklist.list()) == 4
        with pytest.raises(InvalidWorklistEntry, match="ScheduledProcedureStepSequence"):
            bad = Dataset()
            bad.PatientID = "1"
            await worklist.add(bad)
        added = await worklist.add(entry("9", "A^B", "ACC9", "CR", "CR1", "20240101", "", study_uid="1.2.3"))
        assert (await worklist.get(added.id)) is not None
        assert await worklist.remove("ACC9") == 1
        assert await worklist.remove(str(added.id)) == 0
        assert len(await worklist.list()) == 4

    asyncio.run(_with_worklist(tmp_path, body))


def test_reads_part10_and_raw_wl_files(tmp_path: Path) -> None:
    for part10 in (True, False):
        [path, *_] = write_wl(tmp_path / str(part10), part10=part10)
        ds = read_worklist_file(path)
        assert ds.PatientID == "123456" and ds.ScheduledProcedureStepSequence[0].Modality == "CT"
    (tmp_path / "junk.wl").write_bytes(b"not dicom at all")
    with pytest.raises(InvalidWorklistEntry):
        read_worklist_file(tmp_path / "junk.wl")


async def _scp_query(tmp: Path, specs: tuple[str, ...], cancel_after: int | None = None, extra: int = 0) -> Any:
    async def body(_archive: Archive, worklist: Worklist) -> Any:
        server = DicomServer("MINIPACS", [ModalityWorklistSCP(worklist)], host="127.0.0.1", port=0, timeouts=TIMEOUTS)
        await server.start()
        try:
            settings = AssociationSettings(ae_title="CT01", timeouts=TIMEOUTS)
            rq = build_rq(
                "CT01",
                "MINIPACS",
                [(MODALITY_WORKLIST_FIND, [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])],
                settings,
            )
            assoc = await connect("127.0.0.1", server.port, rq, settings)
            try:
                return await find_all(assoc, MODALITY_WORKLIST_FIND, identifier(*specs), cancel_after=cancel_after)
            finally:
                await assoc.release()
        finally:
            await server.close(1.0)

    return await _with_worklist(tmp, body, extra)


def test_scp_answers_pending_then_success(tmp_path: Path) -> None:
    result = asyncio.run(_scp_query(tmp_path, ("PatientID=123456", "AccessionNumber", "PatientName")))
    assert result.status == 0x0000 and accessions(result.matches) == ["ACC1", "ACC2"]


def test_scp_non_ascii_answer_carries_a_character_set(tmp_path: Path) -> None:
    result = asyncio.run(_scp_query(tmp_path, ("PatientID=777777", "PatientName")))
    [match] = result.matches
    assert match.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192") and str(match.PatientName) == "Müller^Jürgen"


def test_scp_leaves_out_a_timezone_offset_it_has_no_value_for(tmp_path: Path) -> None:
    """PS3.4 K.4.1.1.3.2: Timezone Offset From UTC "shall not be sent with a zero-length value"; the
    entries have none, and a value in the request is not matched (K.2.2.2: it says how times are meant)."""
    for offset in ("", "+0100"):
        result = asyncio.run(
            _scp_query(
                tmp_path / f"tz{offset}", ("PatientID=123456", "AccessionNumber", f"TimezoneOffsetFromUTC={offset}")
            )
        )
        assert result.status == 0 and accessions(result.matches) == ["ACC1", "ACC2"]
        assert all("TimezoneOffsetFromUTC" not in m for m in result.matches)


def test_scp_matches_a_date_range_and_a_time_range_as_one_period(tmp_path: Path) -> None:
    """PS3.4 Table K.6-1 over the wire (DCMTK-style keys): 20240105-20240107 with 1000-1800 is one
    period; a combined range that ends before it starts is refused with 0xC001 and a comment."""
    keys = ("AccessionNumber", f"{SPS}ScheduledProcedureStepStartDate=20240105-20240107")
    result = asyncio.run(_scp_query(tmp_path / "a", (*keys, f"{SPS}ScheduledProcedureStepStartTime=1000-1800")))
    assert result.status == 0 and accessions(result.matches) == ["ACC2", "ACC3"]
    for match in result.matches:  # both keys answered with the stored values
        step = match.ScheduledProcedureStepSequence[0]
        assert step.ScheduledProcedureStepStartDate and step.ScheduledProcedureStepStartTime
    backwards = (
        "AccessionNumber",
        f"{SPS}ScheduledProcedureStepStartDate=20240107-20240107",
        f"{SPS}ScheduledProcedureStepStartTime=1800-1000",
    )
    result = asyncio.run(_scp_query(tmp_path / "b", backwards))
    assert result.status == 0xC001 and "ends before it starts" in result.error_comment


def test_scp_c_cancel(tmp_path: Path) -> None:
    result = asyncio.run(_scp_query(tmp_path, ("AccessionNumber",), cancel_after=2, extra=200))
    assert result.status == 0xFE00 and 2 <= len(result.matches) < 204


def test_scp_refuses_unmatchable_key(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the bad date we mean to send
        ds = identifier("AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=2024x")
    result = asyncio.run(_scp_query(tmp_path, ("AccessionNumber",)))  # a universal key answers everything
    assert result.status == 0 and len(result.matches) == 4

    async def body(_archive: Archive, worklist: Worklist) -> None:
        from minipacs.core.errors import InvalidKeyValue

        with pytest.raises(InvalidKeyValue):
            await worklist.find(ds)

    asyncio.run(_with_worklist(tmp_path / "b", body))


def test_cli_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert (
        main(
            [
                "worklist",
                "add",
                "--data",
                data,
                "--patient-id",
                "42",
                "--patient-name",
                "Doe^Jane",
                "--accession",
                "A42",
                "--modality",
                "MR",
                "--station-aet",
                "MR01",
                "--start",
                "202403011030",
            ]
        )
        == 0
    )
    assert main(["worklist", "add", "--data", data, "--patient-id", "43", "--modality", ""]) == 2
    assert main(["worklist", "list", "--data", data]) == 0
    out = capsys.readouterr().out
    assert "A42" in out and "MR01" in out and "20240301 1030" in out
    assert main(["worklist", "remove", "--data", data, "A42"]) == 0
    assert main(["worklist", "remove", "--data", data, "A42"]) == 1


def test_scp_refuses_a_key_holding_a_nul(tmp_path: Path) -> None:
    """A Modality Worklist key of only a NUL was universal matching (every scheduled step answered);
    refused now with 0xC001, by the rule QIDO-RS uses (dicom/vr.py control_character, PS3.5 6.1.3)."""
    result = asyncio.run(_scp_query(tmp_path, ("AccessionNumber", "PatientName=\x00")))
    assert result.status == 0xC001 and result.matches == []
    assert "PatientName" in result.error_comment


STATUS_KEY = f"{SPS}ScheduledProcedureStepStatus"


def test_scheduled_procedure_step_status_follows_the_entry(tmp_path: Path) -> None:
    """PS3.3 C.4.10 / PS3.4 Table K.6-1 (0040,0020) Scheduled Procedure Step Status: once an MPPS
    (or an order) changed the entry, the step's status says so, in the answer and in matching, as
    dcm4chee-arc does (IN PROGRESS -> STARTED, DISCONTINUED, COMPLETED; CANCELED spelled as
    DICOM spells it). It used to answer the stored value (empty, or SCHEDULED from the order) for
    an entry being performed, so a modality asking for SCHEDULED steps got the started ones too.
    A status the order gave a scheduled entry (ARRIVED, READY) is kept. Done entries stay off
    the list unless the query asks for their status by value (dcm4chee-arc's "Hide SPS with
    Status", which also yields to a status matching key)."""

    async def body(_archive: Archive, worklist: Worklist) -> dict[str, Any]:
        entries = {e.accession_number: e for e in await worklist.list()}
        arrived = entry("888888", "Poe^Edgar", "ACC5", "CT", "CT01", "20240108", "100000")
        arrived.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = "ARRIVED"
        await worklist.add(arrived)
        await worklist.set_status(entries["ACC1"].id, "IN PROGRESS")
        await worklist.set_status(entries["ACC2"].id, "COMPLETED")
        await worklist.set_status(entries["ACC3"].id, "CANCELLED")
        found: dict[str, Any] = {}
        for value in ("", "SCHEDULED", "STARTED", "COMPLETED", "CANCELED", "SCHEDULED\\ARRIVED", "NOSUCH", "C*"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns of the wildcard in a CS it is given
                query = identifier("AccessionNumber", f"{STATUS_KEY}={value}")
            answers = await worklist.find(query)
            found[value] = {
                str(a.AccessionNumber): str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus)
                for a in answers
            }
        return found

    found = asyncio.run(_with_worklist(tmp_path, body))
    assert found[""] == {"ACC1": "STARTED", "ACC4": "SCHEDULED", "ACC5": "ARRIVED"}
    assert found["SCHEDULED"] == {"ACC4": "SCHEDULED"}
    assert found["STARTED"] == {"ACC1": "STARTED"}
    assert found["COMPLETED"] == {"ACC2": "COMPLETED"}
    assert found["CANCELED"] == {"ACC3": "CANCELED"}
    assert found["SCHEDULED\\ARRIVED"] == {"ACC4": "SCHEDULED", "ACC5": "ARRIVED"}
    assert found["NOSUCH"] == {}
    assert found["C*"] == {"ACC2": "COMPLETED", "ACC3": "CANCELED"}  # a wildcard reads every state


def test_a_multi_valued_station_reads_as_dicom_text(tmp_path: Path) -> None:
    """DCMTK's sample worklist (wklist1.dump) schedules a step on two stations, AA32\\AA33 (AE, VM 1-n).
    `worklist list`, the web page and the indexed column showed Python's list, "['AA32', 'AA33']",
    cut to 16 characters in the column; DICOM text joins values with backslashes (PS3.5 6.4)."""

    async def body(archive: Archive, worklist: Worklist) -> tuple[dict[str, str], str]:
        two = entry("999999", "Two^Stations", "ACC9", "MR", "AA32", "20240109", "080000")
        two.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = ["AA32", "AA33"]
        added = await worklist.add(two)
        column = await archive.read(lambda conn: repo.worklist_row(conn, added.id))
        assert column is not None
        return added.summary(), str(column["scheduled_station_ae"])

    summary, column = asyncio.run(_with_worklist(tmp_path, body))
    assert summary["station"] == column == "AA32\\AA33"


def test_each_scheduled_procedure_step_is_a_worklist_item_of_its_own(tmp_path: Path) -> None:
    """PS3.4 K.1.1 / K.6.1.1: "each item is related to one task"; the worklist "is structured according
    to Scheduled Procedure Steps", and K.4.1.3 answers one Pending response per matching step. An entry
    with two steps (POST /api/worklist, a .wl file) came back as ONE response holding both items, and a
    modality, which performs the first item of what it selects, never saw the second step."""

    async def body(_archive: Archive, worklist: Worklist) -> tuple[list[Dataset], list[Dataset]]:
        two = entry("999999", "Two^Steps", "ACC9", "CT", "CT01", "20240109", "080000")
        second = Dataset()
        second.Modality = "MR"
        second.ScheduledStationAETitle = "MR01"
        second.ScheduledProcedureStepStartDate = "20240109"
        second.ScheduledProcedureStepStartTime = "090000"
        second.ScheduledProcedureStepID = "SPSACC9B"
        two.ScheduledProcedureStepSequence.append(second)
        await worklist.add(two)
        every = await worklist.find(identifier("AccessionNumber=ACC9", "ScheduledProcedureStepSequence"))
        mr = await worklist.find(
            identifier("AccessionNumber=ACC9", f"{SPS}Modality=MR", f"{SPS}ScheduledProcedureStepID")
        )
        return every, mr

    every, mr = asyncio.run(_with_worklist(tmp_path, body))
    assert [[str(s.ScheduledProcedureStepID) for s in e.ScheduledProcedureStepSequence] for e in every] == [
        ["SPSACC9"],
        ["SPSACC9B"],
    ]
    assert [[(s.Modality, s.ScheduledProcedureStepID) for s in e.ScheduledProcedureStepSequence] for e in mr] == [
        [("MR", "SPSACC9B")]
    ]


@pytest.mark.parametrize(
    ("value", "states"),
    [
        ("", ("SCHEDULED", "IN PROGRESS")),
        ("SCHEDULED", ("SCHEDULED",)),
        ("READY\\STARTED", ("SCHEDULED", "IN PROGRESS")),
        ("CANCELED", ("CANCELLED",)),
        ("NOSUCH", ()),
        ("*ED", ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")),
    ],
)
def test_a_status_asked_for_reads_only_the_entries_that_can_answer_it(value: str, states: tuple[str, ...]) -> None:
    """A modality that always asks for SCHEDULED steps must not make each query read every entry
    ever done: the entry states read are those whose status term (core/worklist.py
    SPS_STATUS_OF_STATE) the key can match; a wildcard reads them all."""
    from minipacs.core.identifier import read_keys
    from minipacs.core.worklist import COMBINED_DATE_TIME, _states

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the wildcard in a CS it is given
        keys = read_keys(identifier(f"{STATUS_KEY}={value}"), combined=COMBINED_DATE_TIME)
    assert _states(keys) == states
