"""Corrections end to end on a real `minipacs serve` (issue 14): after a REST modify, a CLI modify
and an HL7 A08, every way out shows the corrected values: C-FIND, C-GET and C-MOVE (pynetdicom),
QIDO-RS, WADO-RS metadata, the file bytes (REST download) and the ZIP export; the corrections log
has the old values.
Then a merge and a split over REST."""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from minipacs.hl7.mllp import frame
from tests.dicomgen import make_ct
from tests.peers import free_port, minipacs_cmd, run, start_server, wait_for_port


def _part10(**kw: Any) -> bytes:
    out = io.BytesIO()
    make_ct(**kw).save_as(out, enforce_file_format=True)
    return out.getvalue()


def _find(port: int, **keys: str) -> list[Dataset]:
    ae = AE("FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for name in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        setattr(ident, name, keys.get(name, ""))
    found = [ds for status, ds in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind) if ds]
    assoc.release()
    return found


def _get(port: int, study: str) -> list[Dataset]:
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE("GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="MINIPACS",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    statuses = [status.Status for status, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses[-1] == 0x0000, statuses
    return received


def _move(port: int, study: str, http: httpx.Client) -> list[Dataset]:
    """C-MOVE the study to a pynetdicom storage SCP registered as node MOVER (which also asks)."""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    scp_port = free_port()
    ae = AE("MOVER")
    ae.add_supported_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    scp = ae.start_server(("127.0.0.1", scp_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        rsp = http.post("/api/nodes", json={"ae_title": "MOVER", "host": "127.0.0.1", "port": scp_port})
        assert rsp.status_code in (200, 201), rsp.text
        assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
        assert assoc.is_established
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study
        statuses = [s.Status for s, _ in assoc.send_c_move(ident, "MOVER", StudyRootQueryRetrieveInformationModelMove)]
        assoc.release()
        assert statuses[-1] == 0x0000, statuses
    finally:
        scp.shutdown()
    return received


def _hl7(port: int, message: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(frame(message))
        data = b""
        while not data.endswith(b"\x1c\x0d"):
            chunk = sock.recv(65536)
            assert chunk, "the HL7 listener closed the connection"
            data += chunk
    return data.decode()


def test_every_way_out_shows_the_corrected_values(tmp_path: Path) -> None:
    http_port, hl7_port = free_port(), free_port()
    server = start_server(
        tmp_path,
        env={
            "MINIPACS_HTTP_PORT": str(http_port),
            "MINIPACS_HL7_PORT": str(hl7_port),
            "MINIPACS_ALLOW_UNREGISTERED": "echo,store,find,get,move",
            "MINIPACS_FSYNC": "false",
        },
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=server.proc)
        wait_for_port("127.0.0.1", hl7_port, proc=server.proc)
        base = f"http://127.0.0.1:{http_port}"
        study, series, other_series = generate_uid(), generate_uid(), generate_uid()
        sops = [generate_uid() for _ in range(3)]
        with httpx.Client(base_url=base, timeout=60) as http:
            for i, sop in enumerate(sops):
                ser = series if i < 2 else other_series
                body = _part10(study_uid=study, series_uid=ser, sop_uid=sop, patient_id="WRONG")
                assert http.post("/api/instances", content=body).status_code == 200
            rsp = http.post(
                "/api/patients/WRONG/modify", json={"changes": {"PatientID": "RIGHT", "PatientName": "DOE^JANE"}}
            )
            assert rsp.status_code == 200, rsp.text
            assert rsp.json()["instances"] == 3 and rsp.json()["old_values"]["PatientID"] == "WRONG"
            # a second process: the command line, beside the running server
            cli = run(
                minipacs_cmd("modify", "--data", str(server.data_dir), "--study", study, "AccessionNumber=ACC-NEW")
            )
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["old_values"] == {"AccessionNumber": "ACC1"}
            # HL7 A08 through the server's own MLLP listener
            ack = _hl7(
                hl7_port,
                "MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206||ADT^A08|C8|P|2.5\rPID|1||RIGHT||DOE^JANE||19650405|F\r",
            )
            assert "MSA|AA|C8" in ack, ack

            # C-FIND
            [found] = _find(server.port, StudyInstanceUID=study)
            assert (found.PatientID, str(found.PatientName), found.AccessionNumber) == ("RIGHT", "DOE^JANE", "ACC-NEW")
            assert _find(server.port, PatientID="WRONG") == []
            # QIDO-RS
            [qido] = http.get("/dicom-web/studies", params={"PatientID": "RIGHT"}).json()
            assert qido["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
            assert qido["00080050"]["Value"] == ["ACC-NEW"]
            empty = http.get("/dicom-web/studies", params={"PatientID": "WRONG"})
            assert empty.status_code == 204 or empty.json() == []
            # WADO-RS metadata
            meta = http.get(f"/dicom-web/studies/{study}/metadata").json()
            assert len(meta) == 3
            for item in meta:
                assert item["00100020"]["Value"] == ["RIGHT"]
                assert item["00100030"]["Value"] == ["19650405"]
                assert item["00080050"]["Value"] == ["ACC-NEW"]
            # the file bytes (REST download, as WADO and exports read them)
            for sop in sops:
                rsp = http.get(f"/api/instances/{sop}/file")
                assert rsp.status_code == 200
                ds = pydicom.dcmread(io.BytesIO(rsp.content))
                assert (ds.SOPInstanceUID, ds.PatientID, ds.AccessionNumber, ds.PatientSex) == (
                    sop,
                    "RIGHT",
                    "ACC-NEW",
                    "F",
                )
            # C-GET
            got = _get(server.port, study)
            assert sorted(ds.SOPInstanceUID for ds in got) == sorted(sops)
            assert {(ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) for ds in got} == {
                ("RIGHT", "DOE^JANE", "19650405")
            }
            # C-MOVE to a registered node
            moved_out = _move(server.port, study, http)
            assert {(ds.SOPInstanceUID, ds.PatientID, ds.AccessionNumber) for ds in moved_out} == {
                (sop, "RIGHT", "ACC-NEW") for sop in sops
            }
            # the ZIP export
            with zipfile.ZipFile(io.BytesIO(http.get(f"/api/studies/{study}/archive").content)) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                assert len(names) == 3
                for name in names:
                    ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
                    assert (ds.PatientID, str(ds.PatientName)) == ("RIGHT", "DOE^JANE")
            # the log: three corrections, who and the old values
            log = http.get("/api/corrections").json()
            assert [row["operation"] for row in log] == ["modify"] * 3
            assert log[0]["actor"].startswith("HL7 ADT^A08 C8")
            assert "command line" in log[1]["actor"]
            assert log[2]["old_values"] == {"PatientID": "WRONG", "PatientName": "Doe^John"}

            # merge another patient into RIGHT, then split a series off into its study
            dup_study = generate_uid()
            dup_sop = generate_uid()
            body = _part10(study_uid=dup_study, series_uid=generate_uid(), sop_uid=dup_sop, patient_id="DUP")
            assert http.post("/api/instances", content=body).status_code == 200
            rsp = http.post("/api/patients/merge", json={"source": "DUP", "target": "RIGHT"})
            assert rsp.status_code == 200, rsp.text
            assert {ds.StudyInstanceUID for ds in _find(server.port, PatientID="RIGHT")} == {study, dup_study}
            rsp = http.post(f"/api/series/{other_series}/move", json={"study": dup_study})
            assert rsp.status_code == 200, rsp.text
            moved = pydicom.dcmread(io.BytesIO(http.get(f"/api/instances/{sops[2]}/file").content))
            assert moved.StudyInstanceUID == dup_study
            assert len(http.get(f"/dicom-web/studies/{dup_study}/metadata").json()) == 2
            assert http.post(f"/api/series/{other_series}/move", json={"study": "1.2.3.999"}).status_code == 404
            bad = http.post("/api/studies/" + study + "/modify", json={"changes": {"PatientName": "X"}})
            assert bad.status_code == 400 and "correct the patient" in bad.json()["error"]["message"]
    finally:
        assert server.stop() == 0, server.log_text()
