"""Ingest end to end, on SQLite and PostgreSQL (see conftest.index_url)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from sqlalchemy import select

from minipacs.bootstrap import open_archive
from minipacs.core.archive import Archive
from minipacs.core.blob_removals import remove_due, watch
from minipacs.core.delete import delete_resource
from minipacs.core.errors import (
    ArchiveError,
    DuplicateInstance,
    InstanceMismatch,
    InvalidIdentifier,
    InvalidInstance,
    NotFound,
    OutOfResources,
)
from minipacs.core.model import AssociationRecord, DuplicatePolicy, Origin, StagedPath, StoreStatus
from minipacs.core.storage_check import check_storage, remove_unindexed
from minipacs.index import blob_removal_repo
from minipacs.index.schema import BlobRemoval, Instance, Patient, Series, Study
from tests.dicomgen import (
    CT_IMAGE_STORAGE,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    encode_dataset,
    generate_uid,
    make_ct,
    write_ct,
)
from tests.peers import leftover_transfers
from tests.stored_files import instance_path

#: A moment after any grace period a test sets (keep_replaced_seconds is at most a day).
AFTER_GRACE = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
DICOM = Origin(kind="dicom", calling_aet="MODALITY", called_aet="MINIPACS", peer_host="10.0.0.7", peer_port=4242)
Run = Callable[..., Any]


def stage(
    archive: Archive,
    ds: pydicom.Dataset,
    syntax: str = ExplicitVRLittleEndian,
    data: bytes | None = None,
    *,
    in_memory: bool = False,
) -> StagedPath:
    staging = archive.open_staging(ds.SOPClassUID, ds.SOPInstanceUID, syntax, "MODALITY", in_memory=in_memory)
    staging.write(encode_dataset(ds, syntax) if data is None else data)
    return staging.finish()


def rows(archive: Archive, model: Any) -> list[Any]:
    return archive._index.read(lambda conn: list(conn.execute(select(model.__table__)).mappings()))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_ingest_stores_a_valid_part10_file_and_rows(with_archive: Run, syntax: str) -> None:
    ds = make_ct("1.2.826.1", "1.2.826.1.2", "1.2.826.1.2.3", IssuerOfPatientID="HOSP")
    data = encode_dataset(ds, syntax)

    async def body(archive: Archive) -> None:
        outcome = await archive.ingest(stage(archive, ds, syntax, data), DICOM)
        assert outcome.status is StoreStatus.STORED
        assert re.fullmatch(r"1\.2\.826\.1/1\.2\.826\.1\.2/1\.2\.826\.1\.2\.3_[0-9a-f]{16}\.dcm", outcome.relative_path)
        assert (outcome.study_instance_uid, outcome.series_instance_uid) == ("1.2.826.1", "1.2.826.1.2")
        path = await instance_path(archive, "1.2.826.1.2.3")
        assert path == archive.blobs.path_of(outcome.relative_path)
        assert outcome.size == path.stat().st_size
        stored = pydicom.dcmread(path)
        assert stored.SOPInstanceUID == "1.2.826.1.2.3"
        assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY"
        assert path.read_bytes().endswith(data)
        assert path.read_bytes()[: -len(data)][128:132] == b"DICM"
        assert await archive.count_instances() == 1
        assert leftover_transfers(archive.settings.data_dir) == []
        (patient,) = rows(archive, Patient)
        assert patient["patient_id"] == "P1" and patient["issuer_of_patient_id"] == "HOSP"
        assert patient["patient_name_norm"] == "doe^john"
        assert patient["patient_birth_date"] == dt.date(1970, 1, 1)
        (study,) = rows(archive, Study)
        assert study["study_date"] == dt.date(2024, 1, 31) and study["study_date_raw"] == "20240131"
        assert study["study_time"] == dt.time(10, 15, 30, 250000)
        assert study["accession_number"] == "ACC1" and study["patient_pk"] == patient["id"]
        (series,) = rows(archive, Series)
        assert (series["modality"], series["series_number"], series["body_part_examined"]) == ("CT", 2, "HEAD")
        (instance,) = rows(archive, Instance)
        assert (instance["rows"], instance["columns"], instance["instance_number"]) == (64, 64, 3)
        assert instance["transfer_syntax_uid"] == syntax
        assert (instance["calling_aet"], instance["peer_host"], instance["origin_kind"]) == (
            "MODALITY",
            "10.0.0.7",
            "dicom",
        )
        assert instance["received_at"].tzinfo is not None

    with_archive(body)


def test_garbage_dates_become_null_and_keep_raw_text(with_archive: Run) -> None:
    with pydicom_config.disable_value_validation():
        ds = make_ct("1.2.1", "1.2.2", "1.2.3", StudyDate="20241341", StudyTime="99", PatientBirthDate="unknown")

    async def body(archive: Archive) -> None:
        await archive.ingest(stage(archive, ds), DICOM)
        (study,) = rows(archive, Study)
        assert (study["study_date"], study["study_date_raw"]) == (None, "20241341")
        assert (study["study_time"], study["study_time_raw"]) == (None, "99")
        (patient,) = rows(archive, Patient)
        assert (patient["patient_birth_date"], patient["patient_birth_date_raw"]) == (None, "unknown")

    with_archive(body)


def test_later_instances_keep_the_first_study_values(with_archive: Run) -> None:
    first = make_ct("1.2.1", "1.2.2", "1.2.3", StudyDescription="FIRST")
    second = make_ct("1.2.1", "1.2.4", "1.2.5", StudyDescription="SECOND", patient_name="Other^Name")

    async def body(archive: Archive) -> None:
        await archive.ingest(stage(archive, first), DICOM)
        await archive.ingest(stage(archive, second), DICOM)
        (study,) = rows(archive, Study)
        assert study["study_description"] == "FIRST"
        (patient,) = rows(archive, Patient)
        assert patient["patient_name"] == "Doe^John"
        assert len(rows(archive, Series)) == 2

    with_archive(body)


@pytest.mark.parametrize(
    ("policy", "status", "stored_description"),
    [
        (DuplicatePolicy.KEEP, StoreStatus.DUPLICATE_KEPT, "FIRST"),
        (DuplicatePolicy.REPLACE, StoreStatus.REPLACED, "SECOND"),
        (DuplicatePolicy.REJECT, None, "FIRST"),
    ],
)
def test_duplicate_policies(
    with_archive: Run, policy: DuplicatePolicy, status: StoreStatus | None, stored_description: str
) -> None:
    first = make_ct("1.2.1", "1.2.2", "1.2.3", SeriesDescription="FIRST")
    second = make_ct("1.2.1", "1.2.2", "1.2.3", SeriesDescription="SECOND", InstanceNumber=9)

    async def body(archive: Archive) -> None:
        await archive.ingest(stage(archive, first), DICOM)
        staged = stage(archive, second)
        if status is None:
            with pytest.raises(DuplicateInstance, match="already stored"):
                await archive.ingest(staged, DICOM)
        else:
            assert (await archive.ingest(staged, DICOM)).status is status
        assert not staged.path.exists()
        stored = pydicom.dcmread(await instance_path(archive, "1.2.3"))
        assert stored.SeriesDescription == stored_description
        (instance,) = rows(archive, Instance)
        assert instance["instance_number"] == (9 if policy is DuplicatePolicy.REPLACE else 3)
        assert await archive.count_instances() == 1

    with_archive(body, duplicate_policy=policy)


def test_replace_into_another_series_moves_the_file(with_archive: Run) -> None:
    async def body(archive: Archive) -> None:
        await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)
        old = await instance_path(archive, "1.2.3")
        outcome = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.9", "1.2.3")), DICOM)
        assert outcome.status is StoreStatus.REPLACED
        assert (await instance_path(archive, "1.2.3")).parent.name == "1.2.9"
        assert old.exists()  # the replaced copy waits out its grace period (core/blob_removals.py)
        assert await remove_due(archive, AFTER_GRACE) == 1
        assert not old.exists()

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_a_replacing_copy_gets_its_own_file_and_the_replaced_one_goes_after_its_grace_period(
    with_archive: Run,
) -> None:
    """Issue 10: each stored copy has its own blob key; the replacing one lands beside the replaced
    one, never on its path. The replaced copy's blob (exactly that key) is queued in blob_removals in
    the transaction of the replacement and removed once keep_replaced_seconds is over, never before:
    a retrieve that chose it still reads it."""

    async def body(archive: Archive) -> None:
        first = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)
        second = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3", InstanceNumber=9)), DICOM)
        assert second.status is StoreStatus.REPLACED
        assert second.relative_path != first.relative_path
        assert await instance_path(archive, "1.2.3") == archive.blobs.path_of(second.relative_path)
        (instance,) = rows(archive, Instance)
        assert instance["blob_key"] == second.relative_path
        # still there, queued with its size, due keep_replaced_seconds (300 by default) after the commit
        assert archive.blobs.path_of(first.relative_path).is_file()
        (queued,) = rows(archive, BlobRemoval)
        assert (queued["blob_key"], queued["size"], queued["reason"]) == (first.relative_path, first.size, "replaced")
        wait = queued["remove_after"] - instance["received_at"]
        assert dt.timedelta(seconds=299) < wait <= dt.timedelta(seconds=301)
        assert await remove_due(archive) == 0  # not due yet
        assert archive.blobs.path_of(first.relative_path).is_file()
        assert await remove_due(archive, AFTER_GRACE) == 1
        assert not archive.blobs.path_of(first.relative_path).exists() and rows(archive, BlobRemoval) == []
        assert [p.name for p in archive.blobs.path_of("1.2.1").rglob("*.dcm")] == [second.relative_path.split("/")[-1]]

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_the_sweep_after_a_short_grace_period_removes_the_replaced_copy_never_the_new_one(with_archive: Run) -> None:
    """keep_replaced_seconds set small: the periodic sweep every node runs (core/blob_removals.py
    ``watch``) removes the replaced copy once it is due, and keeps the copy the row names."""

    async def body(archive: Archive) -> None:
        first = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)
        second = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3", InstanceNumber=9)), DICOM)
        assert archive.settings.keep_replaced_seconds == 0.6
        assert archive.blobs.path_of(first.relative_path).is_file()  # right after the replace
        sweeper = asyncio.create_task(watch(archive, archive.settings.keep_replaced_seconds))
        try:
            for _ in range(400):  # removed within about a second; up to 20 s on a loaded machine
                if not archive.blobs.path_of(first.relative_path).exists() and not rows(archive, BlobRemoval):
                    break
                await asyncio.sleep(0.05)
            assert not archive.blobs.path_of(first.relative_path).exists()
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        assert archive.blobs.path_of(second.relative_path).is_file()
        assert rows(archive, BlobRemoval) == []
        assert pydicom.dcmread(await instance_path(archive, "1.2.3")).InstanceNumber == 9

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE, keep_replaced_seconds=0.6)


def test_the_sweep_never_removes_a_key_a_row_names(with_archive: Run) -> None:
    """Keys are unique per copy, so a queued key is never named again; if one were, its blob stays
    and only the queue row goes."""

    async def body(archive: Archive) -> None:
        first = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)

        def queue_the_live_copy(conn: Any) -> None:
            replaced = blob_removal_repo.Replaced(first.relative_path, first.size, "replaced")
            blob_removal_repo.queue(conn, [replaced], dt.datetime.now(dt.UTC))

        await archive.write(queue_the_live_copy)
        assert await remove_due(archive, AFTER_GRACE) == 0
        assert archive.blobs.path_of(first.relative_path).is_file() and rows(archive, BlobRemoval) == []

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_copies_of_one_instance_in_one_batch_leave_the_last_one(with_archive: Run) -> None:
    """Three copies of one SOP Instance committed in one writer transaction: the index keeps the
    last, and only its file is left once the grace period is over (each replaced row's own blob
    was queued in that transaction)."""

    async def body(archive: Archive) -> None:
        staged = [stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3", InstanceNumber=n)) for n in (1, 2, 3)]
        outcomes = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged))
        assert [o.status for o in outcomes] == [StoreStatus.STORED, StoreStatus.REPLACED, StoreStatus.REPLACED]
        assert len({o.relative_path for o in outcomes}) == 3
        (instance,) = rows(archive, Instance)
        assert (instance["instance_number"], instance["blob_key"]) == (3, outcomes[2].relative_path)
        queued = sorted(r["blob_key"] for r in rows(archive, BlobRemoval))
        assert queued == sorted(o.relative_path for o in outcomes[:2])
        assert await remove_due(archive, AFTER_GRACE) == 2
        assert sorted(p.name for p in archive.blobs.path_of("1.2.1").rglob("*.dcm")) == [
            outcomes[2].relative_path.split("/")[-1]
        ]

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_a_replaced_blob_that_cannot_be_removed_fails_nothing(with_archive: Run) -> None:
    """The replacement is committed before the old blob goes: failing to remove it is logged and
    leaves it queued for the next pass, never a failure status for a stored copy."""

    async def body(archive: Archive) -> None:
        first = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)

        def refuse(key: str) -> None:
            raise PermissionError(13, "Permission denied")

        delete = archive.blobs.delete
        archive.blobs.delete = refuse  # type: ignore[method-assign]
        second = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3", InstanceNumber=9)), DICOM)
        assert second.status is StoreStatus.REPLACED
        assert await remove_due(archive, AFTER_GRACE) == 0
        assert archive.blobs.path_of(first.relative_path).exists()  # left behind, still queued
        assert [r["blob_key"] for r in rows(archive, BlobRemoval)] == [first.relative_path]
        assert await instance_path(archive, "1.2.3") == archive.blobs.path_of(second.relative_path)
        archive.blobs.delete = delete  # type: ignore[method-assign]
        assert await remove_due(archive, AFTER_GRACE) == 1  # the next pass
        assert not archive.blobs.path_of(first.relative_path).exists()

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_an_ingest_after_a_deletion_in_the_same_batch_finds_its_series_anew(with_archive: Run) -> None:
    """A deletion in the writer's batch removes a series whose key the writer cached: an ingest
    after it in the same transaction (and on the retry job by job) must not reuse that key."""

    async def body(archive: Archive) -> None:
        await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3.1")), DICOM)
        gate = threading.Event()
        blocker = asyncio.create_task(archive.write(lambda conn: gate.wait(10)))
        await asyncio.sleep(0.05)  # the writer waits inside the blocker: the next three make one batch
        batch = asyncio.gather(
            archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3.2")), DICOM),
            delete_resource(archive, "study", "1.2.1"),
            archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3.3")), DICOM),
        )
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        before, deleted, after = await batch
        assert before.status is after.status is StoreStatus.STORED
        assert deleted.instances == 2
        assert [i["sop_instance_uid"] for i in rows(archive, Instance)] == ["1.2.3.3"]
        assert (await check_storage(archive)).consistent

    with_archive(body)


def test_concurrent_ingests_are_durable_and_batched(with_archive: Run) -> None:
    study, series = generate_uid(), generate_uid()
    datasets = [make_ct(study, series if i % 2 else generate_uid(), generate_uid()) for i in range(200)]
    payloads = [encode_dataset(ds) for ds in datasets]

    async def body(archive: Archive) -> None:
        staged = [stage(archive, ds, data=data) for ds, data in zip(datasets, payloads, strict=True)]
        outcomes = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged))
        assert {o.status for o in outcomes} == {StoreStatus.STORED}
        assert await archive.count_instances() == 200
        for outcome in outcomes[::20]:
            assert (await instance_path(archive, outcome.sop_instance_uid)).is_file()
        stats = archive.stats
        assert stats.ingested == 200
        assert stats.multi_job_batches >= 1 and stats.largest_batch > 1
        assert stats.batches < 200

    with_archive(body)


def test_a_bad_job_in_a_batch_fails_alone(with_archive: Run) -> None:
    good = [make_ct("1.2.1", "1.2.2", f"1.2.3.{i}") for i in range(20)]
    bad = make_ct("1.2.1", "1.2.2", "1.2.3.99")
    with pydicom_config.disable_value_validation():
        hostile = make_ct("1.2.1", "../../x", "1.2.3.98")

    async def body(archive: Archive) -> None:
        staged = [stage(archive, ds) for ds in good[:10]]
        staged.append(stage(archive, bad, data=encode_dataset(bad)[:200]))  # truncated header
        staged.append(stage(archive, bad, data=encode_dataset(make_ct("1.2.1", "1.2.2", "1.2.3.97"))))  # mismatch
        staged.append(stage(archive, hostile))
        staged += [stage(archive, ds) for ds in good[10:]]
        results = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged), return_exceptions=True)
        assert isinstance(results[10], InvalidInstance) and not isinstance(results[10], InvalidIdentifier)
        assert isinstance(results[11], InstanceMismatch)
        assert isinstance(results[12], InvalidIdentifier) and "SeriesInstanceUID" in str(results[12])
        assert all(r.status is StoreStatus.STORED for r in results[:10] + results[13:])  # type: ignore[union-attr]
        assert await archive.count_instances() == 20
        assert leftover_transfers(archive.settings.data_dir) == []
        assert not any("x" in p.name for p in archive.blobs.path_of("1.2.1").rglob("*"))

    with_archive(body)


@pytest.mark.parametrize(
    ("in_memory", "pool", "pack_bytes"),
    [(False, True, 0), (True, True, 1 << 20), (True, True, 0), (True, False, 0)],
    ids=[
        "staged-file",
        "received-into-memory-into-a-pack",
        "received-into-memory-via-a-pool-file",
        "received-into-memory-no-pool-file",
    ],
)
def test_a_failing_job_inside_the_writer_batch_rolls_back_alone(
    with_archive: Run, in_memory: bool, pool: bool, pack_bytes: int
) -> None:
    """A failure after the rows were written (the rename, or the write of an instance received into
    memory: into its pack entry, or through a file the staging pool made ahead, or at its key when the
    pool had none ready) fails that job alone: the batch is rolled back and retried job by job, and a
    full disk is reported as OutOfResources. Nothing is left behind: no blob without a row, nothing in
    staging."""

    async def body(archive: Archive) -> None:
        staged = [stage(archive, make_ct("1.2.1", f"1.2.2.{i}", f"1.2.3.{i}"), in_memory=in_memory) for i in range(6)]
        assert all((s.data is not None) == in_memory for s in staged)
        if not pool:
            archive._staging_pool.take_ready = lambda: None  # type: ignore[method-assign]
        name = "put_bytes" if in_memory and (pack_bytes or not pool) else "put_from_staging"
        real_put = getattr(archive.blobs, name)

        def put(source: Any, key: str) -> None:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            if b"1.2.3.2\x00" in data:  # the third instance's SOP Instance UID, padded to an even length
                raise OSError(28, "No space left on device")
            real_put(source, key)

        setattr(archive.blobs, name, put)
        results = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged), return_exceptions=True)
        assert isinstance(results[2], OutOfResources)
        assert await archive.count_instances() == 5
        assert len(rows(archive, Series)) == 5
        with pytest.raises(NotFound):
            await instance_path(archive, "1.2.3.2")
        keys = sorted(archive.blobs.keys())
        assert keys == sorted(row["blob_key"] for row in rows(archive, Instance))
        assert all(key.startswith("packs/") == bool(pack_bytes) for key in keys)
        assert list(archive.staging_dir.iterdir()) == []

    with_archive(body, pack_bytes=pack_bytes)


def _record(calling: str) -> AssociationRecord:
    return AssociationRecord(
        started_at=dt.datetime.now(dt.UTC),
        role="acceptor",
        calling_aet=calling,
        called_aet="MINIPACS",
        peer_host="10.0.0.8",
        peer_port=4242,
        accepted=True,
    )


def test_a_write_call_that_refuses_part_way_leaves_nothing_and_spoils_no_other_job(with_archive: Run) -> None:
    """A write job that raises ArchiveError after some of its writes is refused, and none of those
    writes stays (they were committed half done); the jobs batched with it commit."""
    from minipacs.index import repository

    half = _record("HALF")

    def half_then_refuse(conn: Any) -> None:
        values = {name: getattr(half, name) for name in repository.ASSOCIATION_FIELDS}
        repository.save_association(conn, {**values, "node": "n"}, None)
        raise ArchiveError("refused after a first write")

    async def body(archive: Archive) -> None:
        results = await asyncio.gather(
            archive.write(half_then_refuse),
            archive.record_association(_record("GOOD")),
            archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3.1")), DICOM),
            return_exceptions=True,
        )
        assert isinstance(results[0], ArchiveError) and "first write" in str(results[0])
        assert isinstance(results[1], int)
        callers = [a.calling_aet for a in await archive.list_associations()]
        assert callers == ["GOOD"], callers
        assert await archive.count_instances() == 1

    with_archive(body)


def test_import_file_part10_and_raw_dataset(with_archive: Run, tmp_path: Path) -> None:
    part10 = write_ct(tmp_path / "a.dcm", study_uid="1.2.1", series_uid="1.2.2", sop_uid="1.2.3")
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(encode_dataset(make_ct("1.2.1", "1.2.2", "1.2.4"), "1.2.840.10008.1.2"))

    async def body(archive: Archive) -> None:
        first = await archive.import_file(part10, Origin(kind="import"))
        second = await archive.import_file(raw, Origin(kind="import"))
        assert first.status is second.status is StoreStatus.STORED
        stored = pydicom.dcmread(await instance_path(archive, "1.2.4"))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert stored.PatientID == "P1"
        original = part10.read_bytes()
        assert (await instance_path(archive, "1.2.3")).read_bytes()[-4096:] == original[-4096:]

    with_archive(body)


def test_associations_are_recorded_and_listed_newest_first(with_archive: Run) -> None:
    start = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

    async def body(archive: Archive) -> None:
        ids = []
        for minute in range(3):
            rec = AssociationRecord(
                started_at=start + dt.timedelta(minutes=minute),
                role="acceptor",
                calling_aet="SCU",
                called_aet="MINIPACS",
                peer_host="127.0.0.1",
                peer_port=5000 + minute,
                accepted=True,
                contexts=[{"abstract_syntax": CT_IMAGE_STORAGE, "result": 0}],
            )
            ids.append(await archive.record_association(rec))
        rec.id = ids[-1]
        rec.ended_at = rec.started_at + dt.timedelta(seconds=5)
        rec.end_reason = "released"
        rec.operations = [{"op": "C-STORE", "status": 0}]
        assert await archive.record_association(rec) == ids[-1]
        listed = await archive.list_associations(limit=2)
        assert [r.id for r in listed] == [ids[2], ids[1]]
        assert listed[0].duration_s == 5.0
        assert listed[0].end_reason == "released"
        assert listed[0].operations == [{"op": "C-STORE", "status": 0}]
        assert listed[0].contexts == [{"abstract_syntax": CT_IMAGE_STORAGE, "result": 0}]
        assert listed[0].started_at == start + dt.timedelta(minutes=2)
        # issue 11 item 8: each association names the node that saw it (node_id)
        assert {r.node for r in listed} == {"PACS-A"}

    with_archive(body, node_id="PACS-A")


def test_unknown_instance_is_not_found(with_archive: Run) -> None:
    async def body(archive: Archive) -> None:
        with pytest.raises(NotFound):
            await instance_path(archive, "1.2.3")

    with_archive(body)


def test_closed_archive_refuses_work(tmp_path: Path) -> None:
    from minipacs.config import Settings
    from minipacs.core.errors import ArchiveError

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path))
        await archive.close()
        await archive.close()
        with pytest.raises(ArchiveError, match="closed"):
            archive.open_staging(CT_IMAGE_STORAGE, "1.2", ExplicitVRLittleEndian)

    asyncio.run(main())


def test_a_second_process_never_cleans_the_first_ones_transfers(tmp_path: Path) -> None:
    """`minipacs log` or `import` next to a running server must not delete its staging files."""
    import os
    import subprocess
    import sys
    import textwrap

    from minipacs.config import load_settings

    settings = load_settings(env={}, overrides={"data_dir": tmp_path / "d"})

    async def body() -> None:
        first = await open_archive(settings)
        try:
            inflight = first.open_staging("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1")
            inflight.write(b"\x08\x00" * 8)
            opener = textwrap.dedent(f"""
                import asyncio
                from minipacs.config import load_settings
                from minipacs.bootstrap import open_archive
                async def main():
                    a = await open_archive(load_settings(env={{}}, overrides={{"data_dir": {str(tmp_path / "d")!r}}}))
                    await a.close()
                asyncio.run(main())
            """)
            src = str(Path(__file__).resolve().parents[2] / "src")  # this tree's code, not the installed one
            res = subprocess.run(
                [sys.executable, "-c", opener],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": src},
            )
            assert res.returncode == 0, res.stderr
            assert inflight.path.exists()  # the other process left it alone
            inflight.discard()
        finally:
            await first.close()
        # with no other process, the next opener is the one that recovers
        leftover = tmp_path / "d" / "staging" / "crashed.part"
        leftover.write_bytes(b"x")
        again = await open_archive(settings)
        await again.close()
        assert not leftover.exists()

    asyncio.run(body())


def test_a_database_error_reaches_the_peer_without_its_sql() -> None:
    from sqlalchemy.exc import IntegrityError

    from minipacs.core.archive import _as_failure

    exc = IntegrityError("INSERT INTO instances (sop_instance_uid) VALUES (?)", ("1.2.3",), Exception("UNIQUE"))
    failure = _as_failure(exc)
    assert isinstance(failure, ArchiveError)
    assert "INSERT" not in str(failure) and "1.2.3" not in str(failure)
    assert "IntegrityError" in str(failure) and "server log" in str(failure)


def test_a_restart_of_the_folder_owner_leaves_another_nodes_transfers_alone(tmp_path: Path) -> None:
    """Issue 11 item 1: two processes on one data folder; the one holding its lock restarts while the
    other receives. The other stages in a folder of its own, which only its own end (or, once it
    is gone, the next owner's start) removes."""
    from minipacs.config import Settings
    from minipacs.core.archive import PRIVATE_PREFIX, _make_private_folders

    settings = Settings(data_dir=tmp_path / "d")
    ds = make_ct("1.2.826.7", "1.2.826.7.1", "1.2.826.7.1.1")

    async def body() -> None:
        owner = await open_archive(settings)
        other = await open_archive(settings)  # a second open file description: the lock is taken
        assert owner.owns_data_dir and not other.owns_data_dir
        assert other.staging_dir.name.startswith(f"{PRIVATE_PREFIX}{settings.resolved_node_id}.{os.getpid()}-")
        inflight = other.open_staging(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "MODALITY")
        await owner.close()
        restarted = await open_archive(settings)  # takes the lock and cleans what is no one's
        try:
            assert restarted.owns_data_dir and inflight.path.exists()
            inflight.write(encode_dataset(ds, ExplicitVRLittleEndian))
            outcome = await other.ingest(inflight.finish(), DICOM)
            assert outcome.status is StoreStatus.STORED
            private = other.staging_dir
            await other.close()
            assert not private.exists()  # a clean end removes its folders
            # a process that died: its folders are locked by no one, and the next owner removes them
            staging, _ready, fd = _make_private_folders(restarted.settings.data_dir)
            (staging / "dead.part").write_bytes(b"x")
            os.close(fd)
        finally:
            await restarted.close()
        last = await open_archive(settings)
        await last.close()
        assert not staging.exists()
        assert leftover_transfers(settings.data_dir) == []

    asyncio.run(body())


def test_minipacs_check_counts_replaced_copies_waiting_for_removal_not_as_unindexed(with_archive: Run) -> None:
    """A replaced copy's file has no row during its grace period, yet a retrieve may read it: the
    storage check counts it apart, and --remove-unindexed leaves it to the sweep."""

    async def body(archive: Archive) -> None:
        first = await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3")), DICOM)
        await archive.ingest(stage(archive, make_ct("1.2.1", "1.2.2", "1.2.3", InstanceNumber=9)), DICOM)
        found = await check_storage(archive)
        assert (found.rows, found.files, found.unindexed, found.pending_removal) == (1, 2, [], 1)
        assert found.consistent
        assert await remove_unindexed(archive, [first.relative_path]) == []
        assert archive.blobs.path_of(first.relative_path).is_file()
        assert await remove_due(archive, AFTER_GRACE) == 1
        found = await check_storage(archive)
        assert (found.rows, found.files, found.unindexed, found.pending_removal) == (1, 1, [], 0)

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)
