"""The audit trail of DICOM peers: C-FIND naming a patient, C-GET and C-MOVE, each with the peer's AE
title and address; DCMTK findscu, getscu and movescu are the peers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.model import Origin
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.retrieve_scu import FolderStorage
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from tests.dicomgen import write_ct
from tests.services.test_move_get import TIMEOUTS, FakeNode, FakeRegistry

FINDSCU, GETSCU, MOVESCU = "/usr/bin/findscu", "/usr/bin/getscu", "/usr/bin/movescu"


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (cmd[0], err.decode(errors="replace"))


def test_find_get_move_are_audited_per_request_and_study(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        study = generate_uid()
        for n in range(2):
            path = write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=study, patient_id="PID-D", InstanceNumber=n + 1)
            await archive.import_file(path, Origin("import"))
        registry = FakeRegistry()
        server = DicomServer(
            "MINIPACS",
            [
                StorageSCP(archive, scu_role=True),
                QueryRetrieveFindSCP(archive, ae_title="MINIPACS"),
                MoveSCP(archive, registry),
                GetSCP(archive),
            ],
            host="127.0.0.1",
            port=0,
            timeouts=TIMEOUTS,
        )
        dest = DicomServer("DEST", [FolderStorage(tmp_path / "dest")], host="127.0.0.1", port=0, timeouts=TIMEOUTS)
        await server.start()
        await dest.start()
        registry.nodes.append(FakeNode("DEST", "127.0.0.1", dest.port))
        port = str(server.port)
        (tmp_path / "got").mkdir()
        try:
            base = ["-aec", "MINIPACS", "127.0.0.1", port]
            find = [FINDSCU, "-S", "-aet", "FINDER", "-k", "QueryRetrieveLevel=STUDY"]
            await _run(*find, "-k", "PatientID=PID-D", *base)
            await _run(*find, "-k", "StudyDate=", *base)
            await _run(
                GETSCU, "-S", "-aet", "GETTER", "-od", str(tmp_path / "got"),
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *base,
            )  # fmt: skip
            await _run(
                MOVESCU, "-S", "-aet", "MOVER", "-aem", "DEST",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *base,
            )  # fmt: skip
            rows = await archive.audit.query(patient_id="PID-D")
        finally:
            await server.close(grace=2.0)
            await dest.close(grace=2.0)
            await archive.close()
        got = sorted((r["action"], r["actor_kind"], r["actor"], r["address"], r["study_uid"]) for r in rows)
        assert got == [
            ("queried", "dicom", "FINDER", "127.0.0.1", ""),  # the query without a patient key: no row
            ("retrieved", "dicom", "GETTER", "127.0.0.1", study),
            ("retrieved", "dicom", "MOVER", "127.0.0.1", study),
        ]
        details = {r["actor"]: r["detail"] for r in rows}
        assert details["MOVER"].startswith("C-MOVE STUDY to DEST at 127.0.0.1:") and "2 instance(s)" in details["MOVER"]
        assert details["GETTER"] == "C-GET STUDY: 2 instance(s)"
        assert details["FINDER"] == "C-FIND STUDY: PatientID=PID-D"

    asyncio.run(main())
