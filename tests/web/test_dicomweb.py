from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from minipacs.web.transfer import split_multipart, boundary_of
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


def stow_body(*files: bytes, boundary: str = "XYZ") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


async def stow(client: httpx.AsyncClient, *files: bytes) -> httpx.Response:
    body, headers = stow_body(*files)
    return await client.post("/dicom-web/studies", content=body, headers=headers)


def test_stow_then_qido_wado_metadata(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP), b"not dicom at all")
        assert r.status_code == 202, r.text
        doc = r.json()
        assert doc["00081199"]["Value"][0]["00081155"]["Value"] == [SOP]
        assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        r = await client.get("/dicom-web/studies", params={"PatientName": "Doe*", "includefield": "StudyDescription"})
        assert r.status_code == 200
        studies = r.json()
        assert [s["0020000D"]["Value"] for s in studies] == [[STUDY]]
        assert studies[0]["00081030"]["Value"] == ["CT HEAD"]
        assert (await client.get("/dicom-web/studies", params={"PatientName": "Nobody"})).json() == []
        r = await client.get(f"/dicom-web/studies/{STUDY}/series")
        assert r.json()[0]["0020000E"]["Value"] == [SERIES]
        r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances")
        assert r.json()[0]["00080018"]["Value"] == [SOP]
        r = await client.get(f"/dicom-web/studies/{STUDY}/metadata")
        meta = r.json()
        assert meta[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
        assert meta[0]["7FE00010"]["BulkDataURI"].startswith("http://testserver/dicom-web/studies/")
        r = await client.get(f"/dicom-web/studies/{STUDY}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related")
        parts = split_multipart(r.content, boundary_of(r.headers["content-type"]))
        assert len(parts) == 1 and parts[0].body[128:132] == b"DICM"
        base = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
        r = await client.get(base + "/frames/1")
        parts = split_multipart(r.content, boundary_of(r.headers["content-type"]))
        assert len(parts[0].body) == 64 * 64 * 2
        r = await client.get(base + "/rendered", params={"window": "40,400"}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        r = await client.get(base + "/thumbnail")
        assert r.headers["content-type"] == "image/jpeg"
        r = await client.get("/dicom-web/wado", params={"requestType": "WADO", "studyUID": STUDY,
                                                        "seriesUID": SERIES, "objectUID": SOP,
                                                        "contentType": "application/dicom"})
        assert r.status_code == 200 and r.content[128:132] == b"DICM"
        r = await client.get("/dicom-web/studies", params={"limit": "1", "offset": "1"})
        assert r.json() == []

    web(body)


def test_metadata_is_precomputed_after_ingest(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        import asyncio

        from minipacs.core.metadata import _TABLE  # noqa: PLC2701 - checking the stored row

        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        for _ in range(100):
            rows = await archive.read(lambda c: c.execute(_TABLE.select()).all())
            if rows:
                break
            await asyncio.sleep(0.02)
        assert rows and json.loads(rows[0].json)["00080018"]["Value"] == [SOP]

    web(body)


@pytest.mark.parametrize("url", [
    "/dicom-web/studies/..%2F..%2Fetc",
    "/dicom-web/studies/1.2.3;DROP TABLE/metadata",
    "/dicom-web/studies/1.02.3",
    "/dicom-web/studies?PatientName=%27%3B%20DROP%20TABLE%20studies%3B--",
    "/dicom-web/studies?NoSuchKeyword=1",
    "/dicom-web/studies?limit=-1",
    "/dicom-web/studies?StudyDate=2020-garbage-",
    "/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/x",
])
def test_hostile_urls_get_4xx_and_change_nothing(web: Callable[..., Any], url: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(url)
        if r.status_code == 200:  # an injection attempt is just a value that matches nothing
            assert r.json() == []
        else:
            assert 400 <= r.status_code < 500, r.text
            assert r.json()["error"]["code"]
        assert await archive.count_instances() == 1

    web(body)


@pytest.mark.parametrize("payload,content_type", [
    (b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nabc", 'multipart/related; type="application/dicom"; boundary=XYZ'),
    (b"garbage", 'multipart/related; type="application/dicom"'),
    (b"garbage", "application/json"),
])
def test_broken_stow_bodies(web: Callable[..., Any], payload: bytes, content_type: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/dicom-web/studies", content=payload, headers={"Content-Type": content_type})
        assert 400 <= r.status_code < 500 and r.json()["error"]["message"]
        assert await archive.count_instances() == 0

    web(body)


def test_oversized_stow_is_413(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, part10(rows=128, cols=128))
        assert r.status_code == 413
        assert await archive.count_instances() == 0

    web(body, max_upload_bytes=4096)


def test_stow_to_other_study_fails_the_instance(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data, headers = stow_body(part10(study_uid="1.2.9"))
        r = await client.post(f"/dicom-web/studies/{STUDY}", content=data, headers=headers)
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
        assert await archive.count_instances() == 0

    web(body)
