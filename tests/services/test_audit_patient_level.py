"""Patient-level queries are audited as "queried" (issue 14): a C-FIND at PATIENT level (Patient Root,
DCMTK findscu -P) whether or not it names a patient; a STUDY-level query naming nobody is not; C-GET
is "retrieved" (WADO-RS is "viewed": tests/web/test_audit_patient_level_web.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.audit import EVERY_PATIENT, patient_query
from minipacs.core.model import Origin
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.qr_get import GetSCP
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from tests.dicomgen import write_ct
from tests.services.test_audit_dicom import FINDSCU, GETSCU, _run
from tests.services.test_move_get import TIMEOUTS


@pytest.mark.parametrize(
    ("keys", "level", "expected"),
    [
        ({"PatientName": ""}, "PATIENT", ("", EVERY_PATIENT)),
        ({"PatientID": "P1"}, "PATIENT", ("P1", "PatientID=P1")),
        ({"PatientName": ""}, "STUDY", None),
        ({}, "", None),
    ],
)
def test_a_patient_level_query_always_names_what_it_asked(
    keys: dict[str, str], level: str, expected: tuple[str, str] | None
) -> None:
    assert patient_query(keys, level=level) == expected


def test_c_find_at_patient_level_and_c_get_are_audited(tmp_path: Path) -> None:
    async def main() -> list[dict[str, Any]]:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        study = generate_uid()
        path = write_ct(tmp_path / "src" / "1.dcm", study_uid=study, patient_id="PID-P")
        await archive.import_file(path, Origin("import"))
        server = DicomServer(
            "MINIPACS",
            [StorageSCP(archive, scu_role=True), QueryRetrieveFindSCP(archive, ae_title="MINIPACS"), GetSCP(archive)],
            host="127.0.0.1",
            port=0,
            timeouts=TIMEOUTS,
        )
        await server.start()
        (tmp_path / "got").mkdir()
        try:
            base = ["-aec", "MINIPACS", "127.0.0.1", str(server.port)]
            find = [FINDSCU, "-P", "-aet", "LISTER", "-k", "QueryRetrieveLevel=PATIENT"]
            await _run(*find, "-k", "PatientID=PID-P", *base)
            await _run(*find, "-k", "PatientName=", *base)  # every patient: still a patient-level query
            await _run(FINDSCU, "-S", "-aet", "DATES", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=", *base)
            await _run(
                GETSCU, "-S", "-aet", "GETTER", "-od", str(tmp_path / "got"),
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *base,
            )  # fmt: skip
            return await archive.audit.query()
        finally:
            await server.close(grace=2.0)
            await archive.close()

    rows = asyncio.run(main())
    got = sorted((r["action"], r["actor"], r["patient_id"], r["detail"]) for r in rows)
    assert got == [
        ("queried", "LISTER", "", f"C-FIND PATIENT: {EVERY_PATIENT}"),
        ("queried", "LISTER", "PID-P", "C-FIND PATIENT: PatientID=PID-P"),
        ("retrieved", "GETTER", "PID-P", "C-GET STUDY: 1 instance(s)"),
    ]
