"""Study, Series and Instance Bulkdata (PS3.18 Table 10.3-2, mandatory for Retrieve): every bulk data item
of the resource in one multipart/related answer, each part at the BulkDataURI the metadata gives."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.core.archive import Archive
from minipacs.web.multipart import MultipartParser, PartStart
from minipacs.web.transfer import boundary_of, split_multipart
from tests.dicomgen import make_ct
from tests.web.test_dicomweb import _decoded, _frames_as_stored, _store_compressed, stow

STUDY, SERIES = "1.2.8.1", "1.2.8.1.1"
SOPS = ("1.2.8.1.1.1", "1.2.8.1.1.2")


def _instance(sop: str, n: int, *, icon: bool = True, pixels: bool = True) -> bytes:
    ds = make_ct(
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=sop,
        PixelData=(np.arange(64 * 64, dtype="<u2") + n).tobytes(),
    )
    if icon:
        item = Dataset()
        item.Rows, item.Columns, item.SamplesPerPixel = 64, 64, 1
        item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation = 8, 8, 7, 0
        item.PhotometricInterpretation = "MONOCHROME2"
        item.PixelData = bytes([n]) * 4096
        ds.IconImageSequence = Sequence([item])
    if not pixels:  # no image at all (with Rows, the metadata would name a Pixel Data, core/metadata.py)
        for keyword in ("PixelData", "Rows", "Columns"):
            delattr(ds, keyword)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _parts(r: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part, Content-Location included."""
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith('multipart/related; type="application/octet-stream"; boundary=')
    parser = MultipartParser(boundary_of(r.headers["content-type"]))
    parts: list[tuple[dict[str, str], bytes]] = []
    for event in parser.feed(r.content):
        if isinstance(event, PartStart):
            parts.append((event.headers, b""))
        elif isinstance(event, bytes):
            parts[-1] = (parts[-1][0], parts[-1][1] + event)
    parser.close()
    return parts


def _uris(obj: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for element in obj.values():
        if "BulkDataURI" in element:
            found.append(element["BulkDataURI"])
        for item in element.get("Value", []) if element.get("vr") == "SQ" else []:
            found.extend(_uris(item))
    return found


def _local(url: str) -> str:
    return url.removeprefix("http://testserver")


@pytest.mark.parametrize(
    "path,count",
    [
        (f"/studies/{STUDY}", 2),
        (f"/studies/{STUDY}/series/{SERIES}", 2),
        (f"/studies/{STUDY}/series/{SERIES}/instances/{SOPS[1]}", 1),
    ],
)
def test_every_bulk_data_item_at_its_bulk_data_uri(web: Callable[..., Any], path: str, count: int) -> None:
    """Each part's Content-Location is a BulkDataURI of the resource's metadata, every one of them is there,
    and each part's octets are what GET of that URI gives."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, *(_instance(sop, n) for n, sop in enumerate(SOPS, 1)))).status_code == 200
        metadata = (await client.get(f"/dicom-web{path}/metadata")).json()
        uris = [uri for obj in metadata for uri in _uris(obj)]
        assert len(uris) == 2 * count  # Pixel Data and the icon's, per instance
        parts = _parts(await client.get(f"/dicom-web{path}/bulkdata"))
        assert sorted(headers["content-location"] for headers, _ in parts) == sorted(uris)
        for headers, data in parts:
            single = await client.get(
                _local(headers["content-location"]), headers={"Accept": "application/octet-stream"}
            )
            assert single.status_code == 200 and data == single.content
            assert headers["content-type"] == single.headers["content-type"]

    web(body)


def test_compressed_pixel_data_decompressed_or_as_stored(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.18 8.7.3.3: application/octet-stream without a transfer syntax, Explicit VR Little Endian octets at
    the Pixel Data's BulkDataURI; as stored (transfer-syntax=*), one part per compressed frame at that
    frame's URL; nothing the Accept header allows: 406, as for the BulkDataURI itself."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, ds = await _store_compressed(archive, tmp_path, "rle_2frames")
        pixel_uri = (await client.get(url + "/metadata")).json()[0]["7FE00010"]["BulkDataURI"]
        octets = {"Accept": 'multipart/related; type="application/octet-stream"'}
        parts = _parts(await client.get(url + "/bulkdata", headers=octets))
        assert [h["content-location"] for h, _ in parts] == [pixel_uri]
        assert parts[0][1] == b"".join(_decoded(ds))  # one value: the frames joined, as Pixel Data is
        assert parts[0][0]["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        as_stored = {"Accept": "multipart/related; type=*/*; transfer-syntax=*"}
        stored = _parts(await client.get(url + "/bulkdata", headers=as_stored))
        frames = [f"http://testserver{url}/frames/{n}" for n in (1, 2)]
        assert [h["content-location"] for h, _ in stored] == frames
        assert [d for _, d in stored] == _frames_as_stored(ds)
        for location, (_headers, data) in zip(frames, stored, strict=True):  # each resolves to its octets
            single = await client.get(_local(location), headers=as_stored)
            assert split_multipart(single.content, boundary_of(single.headers["content-type"]))[0].body == data
        r = await client.get(url + "/bulkdata", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert r.status_code == 406 and "ask for" in r.json()["error"]["message"]

    web(body)


def test_no_bulk_data_no_study_and_hostile_requests(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _instance(SOPS[0], 1, icon=False, pixels=False))).status_code == 200
        r = await client.get(f"/dicom-web/studies/{STUDY}/bulkdata")
        assert r.status_code == 204 and r.content == b""  # a multipart body needs a part (RFC 2046 5.1.1)
        assert (await client.get("/dicom-web/studies/1.2.999/bulkdata")).status_code == 404
        assert (await client.get("/dicom-web/studies/1.2.x/bulkdata")).status_code == 400
        for accept in ("image/png", "x" * 50000, "*/*;q=" + "9" * 3000, "multipart/related; type=", ";;,,"):
            r = await client.get(f"/dicom-web/studies/{STUDY}/bulkdata", headers={"Accept": accept})
            assert r.status_code in (204, 406), (accept[:40], r.status_code)

    web(body)


def test_an_instance_whose_file_is_gone_is_left_out_and_the_rest_streams(web: Callable[..., Any]) -> None:
    """One instance whose file went missing (its metadata kept) is left out; the others' bulk data arrives."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, *(_instance(sop, n) for n, sop in enumerate(SOPS, 1)))).status_code == 200
        await client.get(f"/dicom-web/studies/{STUDY}/metadata")  # kept before the file goes
        keys = await archive.read(
            lambda c: [row[0] for row in c.exec_driver_sql("SELECT blob_key FROM instances ORDER BY id").all()]
        )
        archive.blobs.path_of(keys[0]).unlink()
        parts = _parts(await client.get(f"/dicom-web/studies/{STUDY}/bulkdata"))
        assert len(parts) == 2 and all(SOPS[1] in headers["content-location"] for headers, _ in parts)

    web(body)
