"""The retired Patient/Study Only Query/Retrieve model (PS3.4 C.6.3, Table C.5-3) for C-MOVE and C-GET, with
DCMTK's movescu and getscu ``-O`` as the peers: a study, and a patient, retrieved; a SERIES-level
request refused with 0xA900, since the model has no SERIES level. Served, never proposed by us."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.model import Origin
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.retrieve_scu import GET_MODEL_UIDS, MOVE_MODEL_UIDS, FolderStorage
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from tests.dicomgen import write_ct
from tests.services.test_move_get import TIMEOUTS, FakeNode, FakeRegistry

GETSCU, MOVESCU = "/usr/bin/getscu", "/usr/bin/movescu"


async def _run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return int(proc.returncode or 0), (out + err).decode(errors="replace")


def test_patient_study_only_move_and_get_with_dcmtk(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        study, other = generate_uid(), generate_uid()
        for n, (uid, pid) in enumerate([(study, "PSO-1"), (study, "PSO-1"), (other, "PSO-1")]):
            path = write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=uid, patient_id=pid, InstanceNumber=n + 1)
            await archive.import_file(path, Origin("import"))
        registry = FakeRegistry()
        server = DicomServer(
            "MINIPACS",
            [StorageSCP(archive, scu_role=True), MoveSCP(archive, registry), GetSCP(archive)],
            host="127.0.0.1",
            port=0,
            timeouts=TIMEOUTS,
        )
        dest = DicomServer("DEST", [FolderStorage(tmp_path / "dest")], host="127.0.0.1", port=0, timeouts=TIMEOUTS)
        await server.start()
        await dest.start()
        registry.nodes.append(FakeNode("DEST", "127.0.0.1", dest.port))
        base = ["-aec", "MINIPACS", "127.0.0.1", str(server.port)]
        got = tmp_path / "got"
        got.mkdir()
        try:
            code, text = await _run(
                MOVESCU, "-O", "-aet", "MOVER", "-aem", "DEST",
                "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PSO-1", "-k", f"StudyInstanceUID={study}", *base,
            )  # fmt: skip
            assert code == 0, text
            code, text = await _run(
                GETSCU, "-O", "-aet", "GETTER", "-od", str(got),
                "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PSO-1", *base,
            )  # fmt: skip
            assert code == 0, text
            code, text = await _run(
                MOVESCU, "-O", "-aet", "MOVER", "-aem", "DEST",
                "-k", "QueryRetrieveLevel=SERIES", "-k", "PatientID=PSO-1", "-k", f"StudyInstanceUID={study}",
                "-k", "SeriesInstanceUID=1.2.3", *base,
            )  # fmt: skip
            assert "DataSetDoesNotMatchSOPClass" in text, text  # DCMTK's name of 0xA900
        finally:
            await server.close(grace=2.0)
            await dest.close(grace=2.0)
            await archive.close()
        moved = sorted(str(pydicom.dcmread(p).StudyInstanceUID) for p in (tmp_path / "dest").rglob("*") if p.is_file())
        assert moved == [study, study]  # the study, both instances
        gotten = sorted(str(pydicom.dcmread(p).StudyInstanceUID) for p in got.iterdir())
        assert gotten == sorted([study, study, other])  # the whole patient

    asyncio.run(main())


def test_we_never_propose_the_retired_model() -> None:
    assert "PATIENT/STUDY" not in MOVE_MODEL_UIDS and "PATIENT/STUDY" not in GET_MODEL_UIDS
