"""A modality's side of the day for tests: MPPS and commitment datasets, a pynetdicom SCU, the server."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.index import worklist_repo as repo

T = TypeVar("T")
SERVER_AE = "MINIPACS"
MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
COMMIT_CLASS = "1.2.840.10008.1.20.1"
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    base = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title=SERVER_AE,
        fsync=False,
        acse_timeout=3.0,
        dimse_timeout=5.0,
        connect_timeout=3.0,
    )
    app = await build_app(dataclasses.replace(base, **settings))
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


def mpps_create(
    study_uid: str, accession: str = "ACC1", status: str = "IN PROGRESS", drop: Sequence[str] = ()
) -> Dataset:
    """An N-CREATE attribute list as PS3.4 Table F.7.2-1 asks, minus ``drop``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.AccessionNumber = accession
    item.ReferencedStudySequence = []
    item.RequestedProcedureID = f"RP{accession}"
    item.ScheduledProcedureStepID = f"SPS{accession}"
    item.ScheduledProcedureStepDescription = "CT step"
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = "Doe^John"
    ds.PatientID = "123456"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = "CT one"
    ds.PerformedLocation = "2F"
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "083500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for keyword in drop:
        delattr(ds, keyword)
    return ds


def mpps_final(
    series_uid: str, sop_uids: Sequence[str], status: str = "COMPLETED", sop_class: str = "1.2.840.10008.5.1.4.1.1.2"
) -> Dataset:
    """The N-SET that ends the step, with the Performed Series Sequence referencing the images."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240105"
    ds.PerformedProcedureStepEndTime = "090000"
    series = Dataset()
    series.PerformingPhysicianName = "Strange^Stephen"
    series.ProtocolName = "HEAD"
    series.OperatorsName = "Op^One"
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = "AXIAL"
    series.RetrieveAETitle = ""
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    refs = []
    for uid in sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    ds.PerformedSeriesSequence = [series]
    return ds


def commitment_request(transaction: str, refs: Sequence[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for sop_class, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def with_scu(
    port: int, body: Callable[[Any], T], contexts: Sequence[str], *, calling: str = "CT01", handlers: Sequence[Any] = ()
) -> T:
    """Associate as ``calling`` with pynetdicom, run ``body(assoc)``, release. Blocking: use a thread."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for ctx in contexts:
        ae.add_requested_context(ctx)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE, evt_handlers=list(handlers))
    assert assoc.is_established, "association to minipacs refused"
    raw_socket = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    try:
        return body(assoc)
    finally:
        assoc.release()
        ae.shutdown()
        if raw_socket is not None:
            raw_socket.close()  # pynetdicom leaves it open when the association ends abnormally


async def mpps_rows(app: App, uid: str) -> dict[str, Any] | None:
    return await app.archive.read(lambda conn: repo.mpps_row(conn, uid))


async def completed(app: App) -> set[str]:
    return set(await app.archive.read(repo.completed_studies))
