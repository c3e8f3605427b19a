"""WADO-RS bulk data and metadata negotiation (PS3.18 8.7.3.3, 10.4.1.1.5, F.2.6): every BulkDataURI resolves
to the value it stands for, as little-endian octets, in one part when asked, with byte ranges."""

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
from tests.dicomgen import make_ct
from tests.web.test_dicomweb import _parts, _store_compressed, stow

STUDY, SERIES, SOP = "1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.1"
BASE = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
PIXELS = np.arange(64 * 64, dtype="<u2").reshape(64, 64)
ICON = bytes(range(256)) * 16  # 64 x 64 x 8 bits: 4096 bytes, past the inline threshold


def _with_icon() -> bytes:
    ds = make_ct(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, PixelData=PIXELS.tobytes())
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 64, 64, 1
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.PixelData = ICON
    ds.IconImageSequence = Sequence([icon])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _local(url: str) -> str:
    return url.removeprefix("http://testserver")


def test_a_bulk_data_uri_inside_a_sequence_names_that_element(web: Callable[..., Any]) -> None:
    """PS3.18 F.2.6: a BulkDataURI locates the bulk data of ITS attribute; the Icon Image Sequence's Pixel
    Data had the top-level Pixel Data's URI, so a client fetching the icon got the whole image."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _with_icon())).status_code == 200
        meta = (await client.get(BASE + "/metadata")).json()[0]
        icon_uri = meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
        assert icon_uri.endswith("/bulkdata/00880200/0/7FE00010")
        assert _parts(await client.get(_local(icon_uri)))[0].body == ICON
        top = _parts(await client.get(_local(meta["7FE00010"]["BulkDataURI"])))[0]
        assert top.body == PIXELS.tobytes()
        assert "transfer-syntax=1.2.840.10008.1.2.1" in top.content_type
        assert (await client.get(BASE + "/bulkdata/00880200/1/7FE00010")).status_code == 404
        assert (await client.get(BASE + "/bulkdata/00880200/x/7FE00010")).status_code == 400

    web(body)


def test_single_part_and_byte_ranges(web: Callable[..., Any]) -> None:
    """PS3.18 8.7.3.3: Accept: application/octet-stream is one part; RFC 9110 14: Range -> 206 / 416."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _with_icon())).status_code == 200
        url = BASE + "/bulkdata/00880200/0/7FE00010"
        octets = {"Accept": "application/octet-stream"}
        r = await client.get(url, headers=octets)
        assert r.status_code == 200 and r.content == ICON and r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        r = await client.get(url, headers={**octets, "Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == ICON[10:20]
        assert r.headers["content-range"] == f"bytes 10-19/{len(ICON)}"
        r = await client.get(url, headers={**octets, "Range": "bytes=-4"})
        assert r.status_code == 206 and r.content == ICON[-4:]
        r = await client.get(url, headers={**octets, "Range": "bytes=4000-"})
        assert r.status_code == 206 and r.content == ICON[4000:]
        r = await client.get(url, headers={**octets, "Range": "bytes=" + "9" * 5000 + "-"})
        assert r.status_code == 200 and r.content == ICON  # not a range we read (was int() of it: 500)
        r = await client.get(url, headers={**octets, "Range": f"bytes={len(ICON)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(ICON)}"
        r = await client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert r.headers["content-type"].startswith("multipart/related")
        r = await client.get(url, headers={"Accept": "image/png"})  # Table 8.7.3-1: the Default, not a 406
        assert r.status_code == 200 and 'type="application/octet-stream"' in r.headers["content-type"]

    web(body)


def test_a_numeric_attribute_is_little_endian_octets(web: Callable[..., Any]) -> None:
    """PS3.18 8.7.3.3: bulk data is little-endian binary, not the value's text (Rows 64 -> 40 00)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _with_icon())).status_code == 200
        r = await client.get(BASE + "/bulkdata/00280010", headers={"Accept": "application/octet-stream"})
        assert r.content == b"\x40\x00"

    web(body)


@pytest.mark.parametrize("name", ["jpeg_baseline", "rle_2frames"])
def test_pixel_data_of_a_compressed_instance_is_its_frames(web: Callable[..., Any], tmp_path: Path, name: str) -> None:
    """The Pixel Data BulkDataURI of an encapsulated instance: its frames, as stored for their media type
    (Table 8.7.3-5) or decompressed to native octets -- never the encapsulated item stream."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        from pydicom.encaps import generate_frames

        url, ds = await _store_compressed(archive, tmp_path, name)
        count = int(ds.get("NumberOfFrames", 1))
        meta = (await client.get(url + "/metadata")).json()[0]
        bulk = _local(meta["7FE00010"]["BulkDataURI"])
        stored = list(generate_frames(ds.PixelData, number_of_frames=count))
        r = await client.get(bulk, headers={"Accept": "multipart/related; type=*/*; transfer-syntax=*"})
        assert [p.body for p in _parts(r)] == stored
        r = await client.get(bulk, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        decoded = ds.pixel_array
        frames = [decoded] if count == 1 else list(decoded)
        assert [p.body for p in _parts(r)] == [f.astype(f.dtype.newbyteorder("<")).tobytes() for f in frames]
        r = await client.get(bulk, headers={"Accept": "application/octet-stream"})  # one part: all of them
        assert r.content == b"".join(f.astype(f.dtype.newbyteorder("<")).tobytes() for f in frames)

    web(body)


def test_metadata_and_search_answer_their_default_media_type(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.18 Table 8.7.3-1: the Default media type (application/dicom+json for metadata and search results,
    Tables 10.4.4-1 and 10.6.4-1) is returned when none of the acceptable ones is supported -- not a 406
    (application/dicom+xml is supported: tests/web/test_native_xml.py)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, _ds = await _store_compressed(archive, tmp_path, "rle")
        for accept in ("image/jpeg", "application/dicom+json", "application/json", "text/html", ""):
            for target in (url + "/metadata", "/dicom-web/studies"):
                r = await client.get(target, headers={"Accept": accept})
                assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json", accept
                assert isinstance(r.json(), list)

    web(body)


@pytest.mark.parametrize("proxies,expected", [((), "http://127.0.0.1:8042/"), (("10.0.0.1",), "http://127.0.0.1/")])
def test_urls_keep_the_port_a_client_leaves_out_of_host(
    web: Callable[..., Any], proxies: tuple[str, ...], expected: str
) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` to port 8042: the BulkDataURIs and Retrieve URLs it gets
    must still name 8042, or following them goes to port 80. Behind a declared reverse proxy the Host
    header is the public name and is kept as it is."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _with_icon())).status_code == 200
        direct = httpx.AsyncClient(transport=client._transport, base_url="http://127.0.0.1:8042")
        async with direct:
            r = await direct.get(BASE + "/metadata", headers={"Host": "127.0.0.1"})
            assert r.json()[0]["7FE00010"]["BulkDataURI"].startswith(expected + "dicom-web/studies/")
            r = await direct.get("/dicom-web/studies", headers={"Host": "127.0.0.1"})
            assert r.json()[0]["00081190"]["Value"][0] == expected + f"dicom-web/studies/{STUDY}"
            r = await direct.get("/dicom-web/studies", headers={"Host": "127.0.0.1:8042"})
            assert r.json()[0]["00081190"]["Value"][0] == f"http://127.0.0.1:8042/dicom-web/studies/{STUDY}"

    web(body, http_trusted_proxies=proxies)


def test_implicit_vr_instances_go_out_in_explicit_vr(web: Callable[..., Any]) -> None:
    """PS3.18 8.7.3: Implicit VR Little Endian "shall not be used with Web Services": an instance a modality
    sent in Implicit VR goes out in Explicit VR Little Endian unless the client names Implicit VR itself."""
    from pydicom import dcmread
    from pydicom.uid import ImplicitVRLittleEndian

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        ds = make_ct(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, transfer_syntax=ImplicitVRLittleEndian)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        assert (await stow(client, out.getvalue())).status_code == 200
        for accept in ("", "*/*", 'multipart/related; type="application/dicom"; transfer-syntax=*'):
            part = _parts(await client.get(BASE, headers={"Accept": accept} if accept else {}))[0]
            assert part.content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", accept
            got = dcmread(io.BytesIO(part.body))
            assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and got.PatientName == "Doe^John"
        named = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
        part = _parts(await client.get(BASE, headers={"Accept": named}))[0]
        assert dcmread(io.BytesIO(part.body)).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        wado = {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": SOP}
        r = await client.get("/wado", params={**wado, "contentType": "application/dicom"})
        assert dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"

    web(body)


def test_accept_query_parameter_on_every_resource(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.18 8.3.3.1 / Table 10.4.1-5 and 10.1.2-1: the ``accept`` query parameter stands for the Accept
    header on every resource (links cannot set headers); QIDO-RS does not read it as an attribute."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, _ds = await _store_compressed(archive, tmp_path, "rle_2frames")
        explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        part = _parts(await client.get(url, params={"accept": explicit}))[0]
        assert part.content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        r = await client.get(url + "/frames/2", params={"accept": "application/octet-stream"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/octet-stream")
        r = await client.get("/dicom-web/studies", params={"accept": "application/dicom+json", "charset": "utf-8"})
        assert r.status_code == 200 and len(r.json()) == 1

    web(body)


def test_frame_thumbnail(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.18 10.4.1.1.4: an origin server with any Thumbnail resource supports all of them, Frame Thumbnail too."""
    from PIL import Image

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, _ds = await _store_compressed(archive, tmp_path, "rle_2frames")
        r = await client.get(url + "/frames/2/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(r.content)).size) <= 128
        assert (await client.get(url + "/frames/3/thumbnail")).status_code == 404
        for bad in ("/frames/0", "/frames/1,0", "/frames/0/rendered", "/frames/0/thumbnail"):
            assert (await client.get(url + bad)).status_code == 400, bad  # frames count from 1

    web(body)
