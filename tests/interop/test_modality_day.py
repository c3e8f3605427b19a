"""A modality's whole day against minipacs, pynetdicom playing the modality (issue 5):
worklist query -> MPPS IN PROGRESS -> C-STORE -> MPPS COMPLETED -> storage commitment report
-> the study is complete in the index and in the log."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.core.worklist import Worklist
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.modality import (
    COMMIT_CLASS,
    COMMIT_INSTANCE,
    MPPS_CLASS,
    commitment_request,
    completed,
    mpps_create,
    mpps_final,
    mpps_rows,
    serving,
    with_scu,
)
from tests.services.test_commitment import Reports
from tests.worklist_data import entry

pytestmark = pytest.mark.interop
MWL_FIND = "1.2.840.10008.5.1.4.31"
STUDY = "1.2.826.0.1.3680043.10.9.42"


def step_statuses(assoc: Any, value: str) -> list[tuple[str, str]]:
    """(Accession Number, Scheduled Procedure Step Status) of the worklist entries whose step has
    status ``value`` (empty: any open one)."""
    query = Dataset()
    query.AccessionNumber = ""
    sps = Dataset()
    sps.ScheduledProcedureStepStatus = value
    query.ScheduledProcedureStepSequence = [sps]
    return [
        (str(ds.AccessionNumber), str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus))
        for status, ds in assoc.send_c_find(query, MWL_FIND)
        if status and status.Status == 0xFF00
    ]


def modality_day(port: int, files: list[Path], reports: Reports) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def body(assoc: Any) -> dict[str, Any]:
        query = Dataset()
        query.PatientID = "123456"
        query.AccessionNumber = ""
        query.StudyInstanceUID = ""
        sps = Dataset()
        sps.ScheduledStationAETitle = "CT01"
        sps.Modality = ""
        query.ScheduledProcedureStepSequence = [sps]
        found = [ds for status, ds in assoc.send_c_find(query, MWL_FIND) if status and status.Status == 0xFF00]
        out["worklist"] = [(str(ds.AccessionNumber), str(ds.StudyInstanceUID)) for ds in found]
        study = out["worklist"][0][1]
        mpps_uid = generate_uid()
        status, _ = assoc.send_n_create(mpps_create(study, out["worklist"][0][0]), MPPS_CLASS, mpps_uid)
        out["create"], out["mpps"] = int(status.Status), mpps_uid
        out["started"] = step_statuses(assoc, "")  # PS3.3 C.4.10: the step is STARTED now
        out["store"] = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
        sops = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
        status, _ = assoc.send_n_set(mpps_final(f"{STUDY}.1", sops), MPPS_CLASS, mpps_uid)
        out["set"] = int(status.Status)
        out["still scheduled"] = step_statuses(assoc, "SCHEDULED")  # done: off the list
        out["completed"] = step_statuses(assoc, "COMPLETED")  # asked for by value: there
        out["txn"] = generate_uid()
        status, _ = assoc.send_n_action(
            commitment_request(out["txn"], [(CT_IMAGE_STORAGE, u) for u in sops]), 1, COMMIT_CLASS, COMMIT_INSTANCE
        )
        out["action"] = int(status.Status)
        reports.answered.wait(30)  # the report follows the N-ACTION-RSP; a loaded CI machine is slow
        return out

    return with_scu(port, body, [MWL_FIND, MPPS_CLASS, COMMIT_CLASS, CT_IMAGE_STORAGE], handlers=reports.handlers)


def test_modality_day(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    reports = Reports()
    files = [
        write_ct(tmp_path / f"{n}.dcm", study_uid=STUDY, series_uid=f"{STUDY}.1", sop_uid=f"{STUDY}.1.{n}")
        for n in range(3)
    ]

    async def main() -> None:
        async with serving(tmp_path) as app:
            wl = await Worklist(app.archive).add(
                entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", study_uid=STUDY)
            )
            day = await asyncio.to_thread(modality_day, app.dicom.port, files, reports)
            assert day["worklist"] == [("ACC1", STUDY)]
            assert (day["create"], day["store"], day["set"], day["action"]) == (0, [0, 0, 0], 0, 0)
            assert day["started"] == [("ACC1", "STARTED")]
            assert (day["still scheduled"], day["completed"]) == ([], [("ACC1", "COMPLETED")])
            [(event, info)] = reports.got
            assert event == 1 and info.TransactionUID == day["txn"] and len(info.ReferencedSOPSequence) == 3
            row = await mpps_rows(app, day["mpps"])
            assert row is not None and row["status"] == "COMPLETED" and row["worklist_pk"] == wl.id
            entry_now = await Worklist(app.archive).get(wl.id)
            assert entry_now is not None and entry_now.status == "COMPLETED"
            assert STUDY in await completed(app)
        async with serving(tmp_path) as app:  # the association log has every step of the day
            [record] = [r for r in await app.archive.list_associations() if r.calling_aet == "CT01"]
            ops = [str(op.get("op")) for op in record.operations]
            assert {"C-FIND", "N-CREATE", "C-STORE", "N-SET", "N-ACTION", "N-EVENT-REPORT"} <= set(ops)

    asyncio.run(main())
    assert any(f"study {STUDY} is complete" in r.getMessage() for r in caplog.records)
