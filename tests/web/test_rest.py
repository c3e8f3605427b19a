from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import httpx

from minipacs.core.archive import Archive
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


def zipped(*files: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, f in enumerate(files):
            z.writestr(f"f{n}.dcm", f)
    return out.getvalue()


def test_upload_list_read_download_delete(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "stored"
        r = await client.post(
            "/api/instances",
            content=zipped(part10(study_uid=STUDY), b"junk"),
            headers={"Content-Type": "application/zip"},
        )
        assert r.status_code == 207 and r.json()["stored"] == 1 and r.json()["failed"] == 1
        studies = (await client.get("/api/studies")).json()
        assert {s["StudyInstanceUID"] for s in studies} == {STUDY}
        assert (await client.get(f"/api/studies/{STUDY}")).json()["PatientName"] == "Doe^John"
        assert (await client.get("/api/search", params={"level": "series", "Modality": "C?"})).status_code == 200
        assert len((await client.get("/api/instances", params={"limit": "1"})).json()) == 1
        tags = (await client.get(f"/api/instances/{SOP}/tags")).json()
        assert tags["00080018"]["Value"] == [SOP]
        r = await client.get(f"/api/instances/{SOP}/file")
        assert r.content[128:132] == b"DICM"
        r = await client.get(f"/api/studies/{STUDY}/archive")
        assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 2
        assert (await client.get("/api/stats")).json()["instances"] == 2
        assert (await client.get("/api/associations")).status_code == 200
        r = await client.delete(f"/api/series/{SERIES}")
        assert r.json()["deleted_instances"] == 1
        assert await archive.count_instances() == 1
        assert (await client.delete(f"/api/studies/{STUDY}")).status_code == 200
        assert await archive.count_instances() == 0
        assert (await client.get("/api/studies")).json() == []
        assert (await client.get(f"/api/studies/{STUDY}")).status_code == 404
        doc = (await client.get("/api/openapi.json")).json()
        assert doc["openapi"].startswith("3.") and "/dicom-web/studies" in doc["paths"]

    web(body)


def test_hostile_uploads(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for content, ctype in [
            (b"hello", "application/dicom"),
            (b"PK\x03\x04broken", "application/zip"),
            (b"--a\r\nbroken", "multipart/form-data; boundary=a"),
            (b"", "application/dicom"),
        ]:
            r = await client.post("/api/instances", content=content, headers={"Content-Type": ctype})
            assert 400 <= r.status_code < 500, (ctype, r.text)
            assert r.json().get("error") or r.json().get("failed")
        r = await client.post("/api/instances", content=part10(rows=256, cols=256))
        assert r.status_code == 413
        for url in [
            "/api/studies/..%2F..",
            "/api/instances/1.2.3abc/file",
            "/api/nope",
            "/api/search?level=studies&PatientID=%27%20OR%201%3D1--&limit=abc",
            "/api/patients/*",
        ]:
            r = await client.get(url)
            assert 400 <= r.status_code < 500, (url, r.text)
        assert (await client.delete("/api/studies/1.2.3")).status_code == 404
        assert await archive.count_instances() == 0

    web(body, max_upload_bytes=65536)
