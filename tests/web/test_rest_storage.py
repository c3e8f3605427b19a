"""Compression over HTTP, in process: POST /api/storage/compress queues a job; GET /api/storage and the
study details report the disk saved; WADO-RS with the default Accept still answers the compressed
instance (as stored, as it answers any stored compressed instance), an explicit uncompressed
transfer-syntax gets the original pixels, and the kept metadata says OB; roles and errors."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.compression import SYNTAXES, CompressionPolicy, CompressionSettings, Compressor
from minipacs.core.compression_jobs import register_compression_jobs
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.core.test_compression import image, save
from tests.web.test_rest_nodes import USERS, auth

VIEWER, OPERATOR = auth("vic", "v-pass"), auth("oli", "o-pass")


def _parts(response: httpx.Response) -> list[bytes]:
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    chunks = response.content.split(b"--" + boundary.encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0] for chunk in chunks]


def test_compress_over_rest_and_retrieve(tmp_path: Path) -> None:
    study = generate_uid()
    ds, arr = image("16signed", study)
    sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    policy = CompressionPolicy("ct", "jpeg-ls-lossless", {"Modality": "CT"})

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False, users=USERS, compression=(policy,))
        archive = await open_archive(settings)
        queue = JobQueue(archive, JobSettings(runner="web-test", poll_seconds=0.05, progress_seconds=0.05))
        register_compression_jobs(queue, Compressor(archive, CompressionSettings(fsync=False)))
        await queue.start()
        app = create_app(AppContext(settings, archive, MetadataStore(archive), jobs=queue))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            await archive.import_file(save(ds, tmp_path / "in.dcm"), Origin("test"))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                body = {"study_uids": [study], "policy": "ct"}
                assert (await client.post("/api/storage/compress", json=body, headers=VIEWER)).status_code == 403
                bads: list[dict[str, object]] = [{}, {"study_uids": []}, {"study_uids": [study], "syntax": "jpeg"}]
                for bad in [*bads, {"study_uids": ["x"]}]:
                    r = await client.post("/api/storage/compress", json=bad, headers=OPERATOR)
                    assert r.status_code == 400, (bad, r.text)
                r = await client.post("/api/storage/compress", json={**body, "policy": "mr"}, headers=OPERATOR)
                assert r.status_code == 400 and "no [[compression]] policy named 'mr'" in r.text
                r = await client.post("/api/storage/compress", json=body, headers=OPERATOR)
                assert r.status_code == 202, r.text
                job = await queue.wait(r.json()["id"], timeout=120)
                assert job.state is JobState.DONE and job.details["compressed"] == 1, job.message

                total = (await client.get("/api/storage", headers=VIEWER)).json()
                assert total["compressed"] == 1 and total["saved_bytes"] == job.details["saved_bytes"] > 0
                assert total["ratio"] > 1 and total["policies"][0]["transfer_syntax_uid"] == SYNTAXES[policy.syntax].uid
                one = (await client.get(f"/api/storage/studies/{study}", headers=VIEWER)).json()
                assert one["saved_bytes"] == total["saved_bytes"] and one["skipped_instances"] == []
                assert (await client.get(f"/api/storage/studies/{generate_uid()}", headers=VIEWER)).status_code == 404
                details = (await client.get(f"/api/studies/{study}", headers=VIEWER)).json()
                assert details["storage"]["saved_bytes"] == total["saved_bytes"]
                page = (await client.get(f"/ui/studies/{study}", headers=VIEWER)).text
                assert f"{total['saved_bytes']} saved by compression (1 of 1 instances compressed" in page
                assert f'href="/api/storage/studies/{study}"' in page

                url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
                as_stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
                default = await client.get(url, headers={**VIEWER, "Accept": as_stored})
                assert default.status_code == 200, default.text
                stored = pydicom.dcmread(io.BytesIO(_parts(default)[0]))
                assert stored.file_meta.TransferSyntaxUID == SYNTAXES["jpeg-ls-lossless"].uid
                assert stored.SOPInstanceUID == sop and np.array_equal(stored.pixel_array, arr)
                accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
                plain = await client.get(url, headers={**VIEWER, "Accept": accept})
                assert plain.status_code == 200, plain.text
                native = pydicom.dcmread(io.BytesIO(_parts(plain)[0]))
                assert native.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
                assert np.array_equal(native.pixel_array, arr)
                meta = (await client.get(url + "/metadata", headers=VIEWER)).json()[0]
                assert meta["7FE00010"]["vr"] == "OB"
        finally:
            await queue.close()
            await archive.close()

    asyncio.run(main())
