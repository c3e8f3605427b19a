"""Corrections (core/corrections.py, issue 14): modify, merge, move a series; the files are rewritten
through the ingest path, the index answers the new values, the corrections log keeps the old ones,
a store into the study during a modify is not lost, large corrections run as jobs.
Every test runs on SQLite and PostgreSQL (tests/core/conftest.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from minipacs.core.archive import Archive
from minipacs.core.blob_removals import remove_due
from minipacs.core.changes import read_changes
from minipacs.core.corrections import JOB_KIND, Corrections, list_corrections, register_correction_jobs
from minipacs.core.errors import CorrectionConflict, InvalidCorrection, NotFound
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.model import Origin
from minipacs.core.query import query
from minipacs.core.retrieve import select_instances
from minipacs.core.worklist import Worklist
from minipacs.dicom.levels import STUDY_ROOT, Level
from minipacs.index import blob_removal_repo, corrections_repo
from minipacs.index.audit_repo import audit_rows
from minipacs.index.entities import Entity
from minipacs.index.repository import blob_keys
from minipacs.index.schema import BlobRemoval
from tests.core.conftest import ArchiveRunner
from tests.dicomgen import write_ct
from tests.stored_files import instance_path
from tests.worklist_data import entry as worklist_entry

#: A moment after any grace period (keep_replaced_seconds is at most a day).
AFTER_GRACE = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)


async def _store(archive: Archive, tmp: Path, n: int, **kw: Any) -> list[str]:
    """``n`` CT instances (make_ct keywords ``kw``); their SOP Instance UIDs."""
    uids = []
    for _ in range(n):
        sop = generate_uid()
        path = write_ct(tmp / f"{sop}.dcm", sop_uid=sop, **kw)
        await archive.import_file(path, Origin("import", calling_aet="MODALITY", peer_host="10.0.0.9"))
        uids.append(sop)
    return uids


async def _files(archive: Archive) -> dict[str, pydicom.Dataset]:
    """Every stored file by SOP Instance UID, exactly one per instance once the grace period of the
    replaced copies is over: until then their files stay, queued in blob_removals (a retrieve that
    chose one still reads it), and nothing else is left behind."""
    named = {key for _, key in await archive.read(blob_keys)}
    queued = await archive.read(blob_removal_repo.pending_keys)
    assert set(archive.blobs.keys()) <= named | queued, "a file that is neither named nor queued"
    await remove_due(archive, AFTER_GRACE)
    found: dict[str, pydicom.Dataset] = {}
    for key in archive.blobs.keys():
        ds = pydicom.dcmread(archive.blobs.path_of(key), stop_before_pixels=True)
        assert ds.SOPInstanceUID not in found, f"two files of {ds.SOPInstanceUID}"
        found[ds.SOPInstanceUID] = ds
    return found


async def _studies(archive: Archive, **keys: str) -> list[pydicom.Dataset]:
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for name in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDescription"):
        setattr(ident, name, keys.get(name, ""))
    return [ds async for ds in query(archive, Level.STUDY, ident, model=STUDY_ROOT)]


def test_modify_patient_rewrites_files_and_logs_old_values(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study, series = generate_uid(), generate_uid()
        sops = await _store(archive, tmp_path, 3, study_uid=study, series_uid=series, patient_id="WRONG")
        other = await _store(archive, tmp_path, 1, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P2")
        before = {row[0]: row[1] for row in await archive.read(blob_keys)}
        entry = await Worklist(archive).add(
            worklist_entry("WRONG", "Doe^John", "ACC5", "CT", "CT1", "20240131", "0900")
        )
        result = await Corrections(archive).modify(
            "patient", "WRONG", {"PatientID": "RIGHT", "PatientName": "DOE^JANE"}, "alice"
        )
        assert (result.instances, result.left, result.target) == (3, 0, "RIGHT")
        assert result.old_values == {"PatientID": "WRONG", "PatientName": "Doe^John"}
        files = await _files(archive)
        for sop in sops:  # same SOP Instance UIDs, new values, new blob keys
            assert (files[sop].PatientID, str(files[sop].PatientName)) == ("RIGHT", "DOE^JANE")
            assert files[sop].PatientBirthDate == "19700101"  # untouched attributes stay
        assert files[other[0]].PatientID == "P2"
        after = {row[0]: row[1] for row in await archive.read(blob_keys)}
        assert all(after[s] != before[s] for s in sops) and after[other[0]] == before[other[0]]
        assert [ds.PatientID for ds in await _studies(archive, StudyInstanceUID=study)] == ["RIGHT"]
        assert await _studies(archive, PatientID="WRONG") == []
        origin = await archive.read(
            lambda conn: conn.exec_driver_sql("SELECT DISTINCT calling_aet, peer_host FROM instances").all()
        )
        assert sorted(tuple(r) for r in origin) == [("MODALITY", "10.0.0.9")]  # who sent it: kept
        log = await list_corrections(archive)
        assert log[0]["actor"] == "alice" and log[0]["state"] == "done" and log[0]["instances"] == 3
        assert log[0]["old_values"]["PatientID"] == "WRONG" and log[0]["new_values"]["PatientName"] == "DOE^JANE"
        changes, _, _ = await archive.read(lambda conn: read_changes(conn, 0, 100))
        assert [(c.type, c.level, c.uid) for c in changes if c.type == "Modified"] == [("Modified", "patient", "RIGHT")]
        wl = await Worklist(archive).get(entry.id)
        assert wl is not None and (wl.dataset.PatientID, str(wl.dataset.PatientName)) == ("RIGHT", "DOE^JANE")

    with_archive(body, fsync=False)


def test_a_corrected_copy_replaces_the_old_one_which_stays_its_grace_period(
    with_archive: ArchiveRunner, tmp_path: Path
) -> None:
    """The rewrite of a correction replaces each stored copy: the old file is still there right after
    the correction, queued in blob_removals ("corrected") in the transaction that switched the row, so
    a C-MOVE, C-GET or WADO that listed the study before still opens it; once the grace period is over
    the sweep removes it, never the corrected copy."""

    async def body(archive: Archive) -> None:
        study, series = generate_uid(), generate_uid()
        sops = await _store(archive, tmp_path, 3, study_uid=study, series_uid=series, patient_id="WRONG")
        chosen = await select_instances(archive, "STUDY", {"StudyInstanceUID": study})  # a retrieve lists it
        before = {row[0]: row[1] for row in await archive.read(blob_keys)}
        await Corrections(archive).modify("patient", "WRONG", {"PatientID": "RIGHT"}, "alice")
        after = {row[0]: row[1] for row in await archive.read(blob_keys)}
        assert all(after[s] != before[s] for s in sops)
        for instance in chosen:  # the retrieve goes on with the copies it chose: every one still opens
            with instance.open() as fh:
                assert pydicom.dcmread(fh).PatientID == "WRONG"
        queued = await archive.read(lambda conn: conn.execute(select(BlobRemoval.blob_key, BlobRemoval.reason)).all())
        assert sorted(queued) == sorted((before[s], "corrected") for s in sops)
        assert await remove_due(archive) == 0  # 300 s by default: not due yet
        assert all(archive.blobs.exists(before[s]) for s in sops)
        assert await remove_due(archive, AFTER_GRACE) == 3
        assert not any(archive.blobs.exists(before[s]) for s in sops)
        assert all(archive.blobs.exists(after[s]) for s in sops)
        assert {ds.PatientID for ds in (await _files(archive)).values()} == {"RIGHT"}

    with_archive(body, fsync=False)


def test_modify_study_and_series(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study, series = generate_uid(), generate_uid()
        sops = await _store(archive, tmp_path, 2, study_uid=study, series_uid=series)
        c = Corrections(archive)
        await c.modify("study", study, {"AccessionNumber": "A-77", "StudyDescription": "CT CHEST"}, "bob")
        await c.modify("series", series, {"SeriesDescription": "CORONAL", "SeriesNumber": "9"}, "bob")
        files = await _files(archive)
        for sop in sops:
            ds = files[sop]
            assert (ds.AccessionNumber, ds.StudyDescription, ds.SeriesDescription, ds.SeriesNumber) == (
                "A-77",
                "CT CHEST",
                "CORONAL",
                9,
            )
        [found] = await _studies(archive, AccessionNumber="A-77")
        assert found.StudyDescription == "CT CHEST"
        log = await list_corrections(archive, series)
        assert log[0]["old_values"] == {"SeriesDescription": "AXIAL", "SeriesNumber": "2"}

    with_archive(body, fsync=False)


def test_refusals_change_nothing(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study = generate_uid()
        await _store(archive, tmp_path, 1, study_uid=study, series_uid=generate_uid(), patient_id="A")
        await _store(archive, tmp_path, 1, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="B")
        c = Corrections(archive)
        with pytest.raises(InvalidCorrection, match="cannot be corrected"):
            await c.modify("patient", "A", {"SOPInstanceUID": "1.2"}, "x")
        with pytest.raises(InvalidCorrection, match="correct the patient"):
            await c.modify("study", study, {"PatientName": "X"}, "x")
        with pytest.raises(InvalidCorrection, match="not valid"):
            await c.modify("patient", "A", {"PatientBirthDate": "1970-01-01"}, "x")
        with pytest.raises(CorrectionConflict, match="merge the two patients"):
            await c.modify("patient", "A", {"PatientID": "B"}, "x")
        with pytest.raises(NotFound):
            await c.modify("patient", "NOBODY", {"PatientName": "X"}, "x")
        with pytest.raises(InvalidCorrection, match="with itself"):
            await c.merge("A", "A", "x")
        assert await list_corrections(archive) == []
        assert {ds.PatientID for ds in (await _files(archive)).values()} == {"A", "B"}

    with_archive(body, fsync=False)


def test_merge_moves_every_study_and_removes_the_duplicate(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        keep = await _store(
            archive,
            tmp_path,
            1,
            study_uid=generate_uid(),
            series_uid=generate_uid(),
            patient_id="A",
            patient_name="Right^Name",
        )
        s1, s2 = generate_uid(), generate_uid()
        dup = await _store(
            archive, tmp_path, 2, study_uid=s1, series_uid=generate_uid(), patient_id="B", patient_name="Wrong^Name"
        )
        dup += await _store(archive, tmp_path, 1, study_uid=s2, series_uid=generate_uid(), patient_id="B")
        result = await Corrections(archive).merge("B", "A", "admin", who=("user", "ada", "10.1.2.3"))
        assert result.instances == 3
        await archive.audit.flush()
        rows = await archive.read(lambda conn: audit_rows(conn, patient_id="A"))
        assert {(r["action"], r["actor_kind"], r["actor"], r["address"], r["study_uid"]) for r in rows} == {
            ("merged", "user", "ada", "10.1.2.3", s1),
            ("merged", "user", "ada", "10.1.2.3", s2),
        }
        assert sorted(result.old_values["StudyInstanceUIDs"]) == sorted([s1, s2])
        files = await _files(archive)
        assert {(files[s].PatientID, str(files[s].PatientName)) for s in dup + keep} == {("A", "Right^Name")}
        assert len(await _studies(archive, PatientID="A")) == 3
        assert await _studies(archive, PatientID="B") == []
        assert await archive.read(lambda conn: corrections_repo.rows_named(conn, Entity.PATIENT, "B")) == []

    with_archive(body, fsync=False)


def test_move_series_to_another_study(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        target = generate_uid()
        await _store(
            archive, tmp_path, 1, study_uid=target, series_uid=generate_uid(), patient_id="A", AccessionNumber="GOOD"
        )
        wrong, series = generate_uid(), generate_uid()
        moved = await _store(archive, tmp_path, 2, study_uid=wrong, series_uid=series, patient_id="Z")
        result = await Corrections(archive).move_series(series, target, "carol")
        assert result.old_values == {"StudyInstanceUID": wrong} and result.instances == 2
        files = await _files(archive)
        for sop in moved:
            assert (files[sop].StudyInstanceUID, files[sop].PatientID, files[sop].AccessionNumber) == (
                target,
                "A",
                "GOOD",
            )
            assert files[sop].SOPInstanceUID == sop
        keys = dict(await archive.read(blob_keys))
        assert all(keys[sop].startswith(f"{target}/{series}/") for sop in moved)
        assert await _studies(archive, StudyInstanceUID=wrong) == []  # left empty: gone
        assert await _studies(archive, PatientID="Z") == []
        with pytest.raises(InvalidCorrection, match="already in"):
            await Corrections(archive).move_series(series, target, "carol")

    with_archive(body, fsync=False)


@pytest.mark.parametrize("passes", [3, 1])
def test_a_store_into_the_study_during_a_modify_is_not_lost(
    with_archive: ArchiveRunner, tmp_path: Path, passes: int
) -> None:
    """With correction_max_passes = 1 (the limit) the late store is kept but still holds the old
    values, and the answer says so (``left``); with more passes it is rewritten too."""

    async def body(archive: Archive) -> None:
        study, series = generate_uid(), generate_uid()
        await _store(archive, tmp_path, 6, study_uid=study, series_uid=series, patient_id="P")
        late = generate_uid()
        path = write_ct(tmp_path / "late.dcm", study_uid=study, series_uid=series, sop_uid=late, patient_id="P")
        c = Corrections(archive, max_passes=passes)
        original = c._rewrite_one  # the store lands after the first file is rewritten
        stored: list[Any] = []

        async def rewrite_then_store(copy: Any, values: Any) -> str:
            key = await original(copy, values)
            if not stored:  # once, while the other rewrites of the pass are in flight
                stored.append(path)
                await archive.import_file(path, Origin("dicom"))
            return key

        c._rewrite_one = rewrite_then_store  # type: ignore[method-assign]
        result = await c.modify("patient", "P", {"PatientName": "NEW^NAME"}, "dave")
        files = await _files(archive)
        assert late in files and len(files) == 7  # never lost
        if passes > 1:
            assert (result.instances, result.left) == (7, 0)  # the late one too, in a second pass
            assert {str(ds.PatientName) for ds in files.values()} == {"NEW^NAME"}
        else:
            assert (result.instances, result.left) == (6, 1)
            assert str(files[late].PatientName) == "Doe^John"
            [row] = await list_corrections(archive)
            assert "1 instance(s) stored during the correction" in row["message"]

    with_archive(body, fsync=False)


def test_a_large_correction_runs_as_a_job(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study = generate_uid()
        await _store(archive, tmp_path, 3, study_uid=study, series_uid=generate_uid())
        queue = JobQueue(archive, JobSettings(runner="node-a", poll_seconds=0.05, progress_seconds=0.05))
        c = Corrections(archive, inline_max=2)
        register_correction_jobs(queue, c)
        assert JOB_KIND in queue.kinds  # correction_inline_max_instances = 2: 3 instances are a job
        params = {
            "operation": "modify",
            "level": "study",
            "target": study,
            "actor": "eve",
            "changes": {"StudyDescription": "LARGE"},
        }
        queued = await c.submit(params)
        assert queued.job is not None and queued.instances == 0
        assert {ds.StudyDescription for ds in (await _files(archive)).values()} == {"CT HEAD"}  # not yet
        await queue.start()
        try:
            job = await queue.wait(queued.job, timeout=60)
        finally:
            await queue.close()
        assert job.state == JobState.DONE, job.message
        assert {ds.StudyDescription for ds in (await _files(archive)).values()} == {"LARGE"}
        c.inline_max = 3  # at the limit: at once
        assert (await c.submit({**params, "changes": {"StudyDescription": "SMALL"}})).instances == 3

    with_archive(body, fsync=False)


def test_rewrite_keeps_pixel_data(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study = generate_uid()
        [sop] = await _store(archive, tmp_path, 1, study_uid=study, series_uid=generate_uid())
        before = pydicom.dcmread(await instance_path(archive, sop)).PixelData
        await Corrections(archive).modify("study", study, {"StudyID": "42"}, "x")
        after = pydicom.dcmread(await instance_path(archive, sop))
        assert after.PixelData == before and after.StudyID == "42"

    with_archive(body, fsync=False)


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [("correction_inline_max_instances", -1, 0), ("correction_max_passes", 0, 1), ("correction_max_passes", 101, 100)],
)
def test_settings_at_their_limits(key: str, bad: int, good: int) -> None:
    from minipacs.config import ConfigError, Settings

    assert getattr(Settings(**{key: good}).validate(), key) == good
    with pytest.raises(ConfigError, match=key):
        Settings(**{key: bad}).validate()


def test_a_correction_made_meanwhile_is_not_undone(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    """B corrects the name again while A's files are being rewritten: A's later passes write what the
    index holds now (B's name), so every file ends with the name the index answers."""

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, 6, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P")
        a, b = Corrections(archive), Corrections(archive)
        original = a._rewrite_one  # B runs whole after A's first file
        ran: list[Any] = []

        async def rewrite_then_correct(copy: Any, values: Any) -> str:
            key = await original(copy, values)
            if not ran:
                ran.append(True)
                await b.modify("patient", "P", {"PatientName": "B^NAME"}, "bob")
            return key

        a._rewrite_one = rewrite_then_correct  # type: ignore[method-assign]
        await a.modify("patient", "P", {"PatientName": "A^NAME"}, "alice")
        assert {str(ds.PatientName) for ds in (await _files(archive)).values()} == {"B^NAME"}
        assert [str(ds.PatientName) for ds in await _studies(archive, PatientID="P")] == ["B^NAME"]

    with_archive(body, fsync=False)


def test_split_a_series_into_a_new_study(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study, keep, split = generate_uid(), generate_uid(), generate_uid()
        await _store(archive, tmp_path, 1, study_uid=study, series_uid=keep, AccessionNumber="A1")
        moved = await _store(archive, tmp_path, 2, study_uid=study, series_uid=split, AccessionNumber="A1")
        result = await Corrections(archive).move_series(split, None, "x")
        new = result.new_values["StudyInstanceUID"]
        assert new != study and result.old_values == {"StudyInstanceUID": study}
        files = await _files(archive)
        assert {(files[s].StudyInstanceUID, files[s].AccessionNumber, files[s].PatientID) for s in moved} == {
            (new, "A1", "P1")
        }
        assert sorted(ds.StudyInstanceUID for ds in await _studies(archive, PatientID="P1")) == sorted([study, new])
        changes, _, _ = await archive.read(lambda conn: read_changes(conn, 0, 100))
        assert ("NewStudy", new) in [(c.type, c.uid) for c in changes]

    with_archive(body, fsync=False)


def test_an_unreadable_file_is_left_and_said(with_archive: ArchiveRunner, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study = generate_uid()
        good, broken = await _store(archive, tmp_path, 2, study_uid=study, series_uid=generate_uid())
        path = await instance_path(archive, broken)
        path.write_bytes(path.read_bytes()[:400])  # truncated inside the header
        result = await Corrections(archive, max_passes=1).modify("study", study, {"StudyID": "7"}, "x")
        assert (result.instances, result.left) == (1, 1)
        assert pydicom.dcmread(await instance_path(archive, good)).StudyID == "7"
        [row] = await list_corrections(archive)
        assert row["state"] == "done" and "could not be read" in row["message"]

    with_archive(body, fsync=False)
