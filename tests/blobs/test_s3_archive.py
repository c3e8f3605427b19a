"""`minipacs serve` with ``storage = "s3://..."`` on a real S3 server (moto on loopback): every way
bytes go in and out works with no stored file on local disk, and an acknowledged instance survives
a kill -9 (docs/S3.md, durability)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.dicomgen import CT_IMAGE_STORAGE, make_ct, write_ct
from tests.peers import ServerProcess, free_port, minipacs_cmd, start_server, wait_for_port
from tests.s3server import S3Server

pytestmark = pytest.mark.interop

MB = 1024 * 1024
PREFIX = "site/archive"


def _objects(s3: S3Server, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object of the bucket by key (LIST pages of 1,000)."""
    out: dict[str, dict[str, Any]] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = item
    return out


def _stored_files(data: Path) -> list[Path]:
    return [p for p in (data / "storage").rglob("*") if p.is_file()] if (data / "storage").exists() else []


@contextmanager
def s3_server_process(tmp: Path, s3: S3Server, bucket: str, http_port: int = 0) -> Iterator[ServerProcess]:
    env = {
        **s3.env(bucket, PREFIX),
        "MINIPACS_S3_MULTIPART_BYTES": str(5 * MB),
        "MINIPACS_ALLOW_UNREGISTERED": "echo,store,find,get",
    }
    if http_port:
        env["MINIPACS_HTTP_PORT"] = str(http_port)
    server = start_server(tmp, env=env)
    try:
        if http_port:
            wait_for_port("127.0.0.1", http_port, proc=server.proc)
        yield server
    finally:
        server.stop()


def c_get_study(port: int, study: str) -> dict[str, Dataset]:
    """C-GET of a study with pynetdicom as the SCU (and C-STORE SCP on the same association)."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    received: dict[str, Dataset] = {}

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="MINIPACS",
        ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert statuses and statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return received


def test_serve_on_s3_store_retrieve_wado_zip_delete_check(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    study, series = generate_uid(), generate_uid()
    files = [
        write_ct(tmp_path / "in" / f"{i}.dcm", study_uid=study, series_uid=series, PixelData=os.urandom(64 * 64 * 2))
        for i in range(4)
    ]
    # 1,600 x 1,800 x 16 bit = 5.5 MiB: above s3_multipart_bytes (5 MiB), uploaded in 2 parts
    big = os.urandom(1600 * 1800 * 2)
    files.append(
        write_ct(tmp_path / "in" / "big.dcm", study_uid=study, series_uid=series, rows=1600, cols=1800, PixelData=big)
    )
    sent = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in files)}
    big_sop = str(pydicom.dcmread(files[-1]).SOPInstanceUID)
    http_port = free_port()
    with s3_server_process(tmp_path, s3_server, bucket, http_port) as server:
        storescu = subprocess.run(
            ["/usr/bin/storescu", "-aec", "MINIPACS", "127.0.0.1", str(server.port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert storescu.returncode == 0, storescu.stdout + storescu.stderr
        objects = _objects(s3_server, bucket)
        assert len(objects) == 5 and all(key.startswith(PREFIX + "/") for key in objects), sorted(objects)
        big_object = [meta for key, meta in objects.items() if big_sop in key]
        assert len(big_object) == 1 and big_object[0]["ETag"].endswith('-2"'), big_object  # multipart: 5 MiB + the rest
        assert _stored_files(server.data_dir) == [], "an instance was stored on local disk"

        got = c_get_study(server.port, study)  # C-GET: streamed from S3 (FileRegion with the blob's opener)
        assert set(got) == set(sent)
        assert all(got[uid].PixelData == sent[uid].PixelData for uid in sent)

        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            accept = {"accept": 'multipart/related; type="application/dicom"'}
            dicomweb = http.get(f"/dicom-web/studies/{study}", headers=accept)
            assert dicomweb.status_code == 200 and dicomweb.content.count(b"DICM") == 5
            meta = http.get(f"/dicom-web/studies/{study}/series/{series}/instances/{big_sop}/metadata")
            assert meta.status_code == 200 and meta.json()[0]["00280010"]["Value"] == [1600]
            frame = http.get(
                f"/dicom-web/studies/{study}/series/{series}/instances/{big_sop}/frames/1",
                headers={"accept": 'multipart/related; type="application/octet-stream"'},
            )
            assert frame.status_code == 200 and sent[big_sop].PixelData in frame.content
            uri = http.get(
                "/wado",
                params={
                    "requestType": "WADO",
                    "studyUID": study,
                    "seriesUID": series,
                    "objectUID": big_sop,
                    "contentType": "application/dicom",
                },
            )
            assert uri.status_code == 200
            assert pydicom.dcmread(io.BytesIO(uri.content)).PixelData == sent[big_sop].PixelData
            one = http.get(f"/api/instances/{big_sop}/file")
            assert one.status_code == 200 and pydicom.dcmread(io.BytesIO(one.content)).SOPInstanceUID == big_sop
            archive = http.get(f"/api/studies/{study}/archive")
            assert archive.status_code == 200
            with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
                contents = [zipped.read(name) for name in zipped.namelist()]
            members = {str(pydicom.dcmread(io.BytesIO(c)).SOPInstanceUID): c for c in contents}
            assert set(members) == set(sent)
            assert all(pydicom.dcmread(io.BytesIO(members[u])).PixelData == sent[u].PixelData for u in sent)
            # a return key read from the stored file (query.py representative files), not the index
            qido = http.get(
                f"/dicom-web/studies/{study}/instances", params={"includefield": "00280101", "SOPInstanceUID": big_sop}
            )
            assert qido.status_code == 200, qido.text
            assert qido.json()[0]["00280101"]["Value"] == [12], qido.json()

            check = subprocess.run(
                minipacs_cmd("check", "--data", str(server.data_dir), "--json"),
                capture_output=True,
                text=True,
                timeout=120,
                env={**_child_env(), **s3_server.env(bucket, PREFIX)},
            )
            assert check.returncode == 0, check.stdout + check.stderr
            report = json.loads(check.stdout)
            assert (report["rows"], report["files"], report["missing"], report["unindexed"]) == (5, 5, [], []), report

            deleted = http.delete(f"/api/studies/{study}")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["deleted_instances"] == 5
        assert _objects(s3_server, bucket) == {}, "the delete left objects in the bucket"


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def test_acknowledged_instances_survive_kill_9_on_s3(tmp_path: Path, s3_server: S3Server) -> None:
    """A 0x0000 goes out only after the object PUT completed: after a kill -9 mid-transfer every
    acknowledged instance is indexed, its object has the indexed size, and it is retrievable."""
    from pynetdicom import AE

    bucket = s3_server.new_bucket()
    rng = random.Random()
    acked: list[str] = []
    twentieth = threading.Event()
    study, series = generate_uid(), generate_uid()
    with s3_server_process(tmp_path, s3_server, bucket) as server:

        def killer() -> None:
            if twentieth.wait(120):
                time.sleep(rng.uniform(0.0, 0.05))
                server.proc.send_signal(signal.SIGKILL)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        ae = AE(ae_title="PYNETSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="MINIPACS")
        assert assoc.is_established
        raw_socket = assoc.dul.socket.socket  # pynetdicom leaves it open when the peer dies
        try:
            for i in range(150):
                ds = make_ct(study, series, generate_uid())
                if i % 4 == 3:
                    ds.PixelData = bytes([i % 251]) * (MB + 2 * rng.randrange(100_000))
                try:
                    rsp = assoc.send_c_store(ds)
                except (RuntimeError, OSError):
                    break
                if "Status" in rsp and int(rsp.Status) == 0x0000:
                    acked.append(str(ds.SOPInstanceUID))
                    if len(acked) == 20:
                        twentieth.set()
                if not assoc.is_established or server.proc.poll() is not None:
                    break
        finally:
            twentieth.set()
            if assoc.is_established:
                assoc.abort()
            if raw_socket is not None:
                raw_socket.close()
        thread.join(10)
        assert server.proc.wait(30) == -signal.SIGKILL, "the server was not killed by the SIGKILL"
    assert 20 <= len(acked) < 150, f"{len(acked)} acknowledged: the kill did not land mid-transfers"

    import sqlite3

    with sqlite3.connect(server.data_dir / "index.sqlite3") as db:
        found = db.execute("SELECT sop_instance_uid, blob_key, size FROM instances").fetchall()
    rows = {uid: (key, size) for uid, key, size in found}
    missing = [uid for uid in acked if uid not in rows]
    assert not missing, f"{len(missing)} acknowledged instance(s) not indexed after kill -9"
    objects = _objects(s3_server, bucket)
    for uid, (key, size) in rows.items():
        meta = objects.get(f"{PREFIX}/{key}")
        assert meta is not None, f"index row {uid} names {key}, which is not in the bucket"
        assert meta["Size"] == size, f"{key}: {meta['Size']} bytes in S3, {size} in the index"

    again = start_server(  # the same data folder (index) and bucket
        tmp_path,
        env={**s3_server.env(bucket, PREFIX), "MINIPACS_ALLOW_UNREGISTERED": "echo,store,find,get"},
    )
    try:
        got = c_get_study(again.port, study)
        assert set(acked) <= set(got), f"{len(set(acked) - set(got))} acknowledged instance(s) not retrievable"
    finally:
        again.stop()
