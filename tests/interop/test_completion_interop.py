"""Issue 5 end to end: after a modality's day (pynetdicom as the modality: MPPS IN PROGRESS ->
C-STORE -> MPPS COMPLETED; the commitment part is tests/interop/test_modality_day.py), DCMTK
findscu finds the study by Study Status ID (0032,000A) = COMPLETED, and the changes journal
has the day in order: the instances, then the StudyComplete row."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydicom
import pytest

from minipacs.core.changes import read_changes
from minipacs.core.model import Origin
from minipacs.core.worklist import Worklist
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.modality import MPPS_CLASS, SERVER_AE, completed, mpps_create, mpps_final, serving, with_scu
from tests.peers import dcmtk, run
from tests.worklist_data import entry

pytestmark = pytest.mark.interop
STUDY = "1.2.826.0.1.3680043.10.9.42"
OTHER = "1.2.826.0.1.3680043.10.9.43"  # a study without a procedure step: never complete
#: Study Status ID by tag: DCMTK 3.6.7's dictionary names it RETIRED_StudyStatusID, not StudyStatusID.
STATUS = "0032,000A"


def modality_day(port: int, files: list[Path], mpps_uid: str) -> tuple[int, list[int], int]:
    """N-CREATE, the C-STOREs, N-SET COMPLETED referencing them: the statuses."""

    def body(assoc: Any) -> tuple[int, list[int], int]:
        created, _ = assoc.send_n_create(mpps_create(STUDY), MPPS_CLASS, mpps_uid)
        stored = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
        sops = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
        done, _ = assoc.send_n_set(mpps_final(f"{STUDY}.1", sops), MPPS_CLASS, mpps_uid)
        return int(created.Status), stored, int(done.Status)

    return with_scu(port, body, [MPPS_CLASS, CT_IMAGE_STORAGE])


def findscu(port: int, out: Path, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [a for key in keys for a in ("-k", key)]
    res = run(
        [
            dcmtk("findscu"),
            "-S",
            "-aec",
            SERVER_AE,
            "-X",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            *args,
            "127.0.0.1",
            str(port),
        ]
    )
    assert res.returncode == 0 and "E: " not in res.stdout + res.stderr, res.stdout + res.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_finds_the_completed_study_and_the_journal_tells_the_day(tmp_path: Path) -> None:
    files = [
        write_ct(tmp_path / f"{n}.dcm", study_uid=STUDY, series_uid=f"{STUDY}.1", sop_uid=f"{STUDY}.1.{n}")
        for n in range(3)
    ]
    other = write_ct(tmp_path / "other.dcm", study_uid=OTHER, series_uid=f"{OTHER}.1", sop_uid=f"{OTHER}.1.1")

    async def main() -> None:
        async with serving(tmp_path) as app:
            await app.archive.import_file(other, Origin("import"))
            await Worklist(app.archive).add(
                entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", study_uid=STUDY)
            )
            day = await asyncio.to_thread(modality_day, app.dicom.port, files, "1.2.826.0.1.3680043.10.9.44")
            assert day == (0, [0, 0, 0], 0)
            for _ in range(100):
                if STUDY in await completed(app):
                    break
                await asyncio.sleep(0.05)
            assert STUDY in await completed(app)

            port = app.dicom.port
            found = await asyncio.to_thread(findscu, port, tmp_path / "done", f"{STATUS}=COMPLETED", "StudyInstanceUID")
            assert [(str(ds.StudyInstanceUID), ds.StudyStatusID) for ds in found] == [(STUDY, "COMPLETED")]
            every = await asyncio.to_thread(findscu, port, tmp_path / "all", STATUS, "StudyInstanceUID")
            assert {str(ds.StudyInstanceUID): ds.StudyStatusID for ds in every} == {STUDY: "COMPLETED", OTHER: ""}

            changes, _, done = await app.archive.read(lambda conn: read_changes(conn, 0, 1000))
            assert done
            mine = [c for c in changes if c.study == STUDY]
            new = [c for c in mine if c.type == "NewInstance"]
            assert sorted(c.uid for c in new) == [f"{STUDY}.1.{n}" for n in range(3)]
            [complete] = [c for c in mine if c.type == "StudyComplete"]
            assert complete.uid == STUDY and complete.seq > max(c.seq for c in new)
            assert [c.type for c in mine if c.level == "mpps"] == ["MppsCreated", "MppsCompleted"]
            assert [c.type for c in changes if c.study == OTHER] == [
                "NewPatient",
                "NewStudy",
                "NewSeries",
                "NewInstance",
            ]

    asyncio.run(main())
