"""STOW-RS of JSON metadata and bulk data (PS3.18 10.5.1.2; web/stow_bulk.py).

The instances are made from real files (pydicom's test data: JPEG baseline and lossless, JPEG-LS,
RLE with 2 frames; a CT of our own with native Pixel Data), sent as their PS3.18 JSON with the
binary values in parts named by Content-Location, read back by WADO-RS and checked value by value,
pixels decoded; DCMTK's dcmdump reads the stored files without a warning.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.web import stow_bulk
from tests.dicomgen import make_ct
from tests.peers import dcmtk

BOUNDARY = "minipacs-bulk-test"
JSON_TYPE = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'


def fresh(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    if not ds.get("PatientID"):
        ds.PatientID = "P-" + name[:10]
    return ds


def body(parts: Iterable[tuple[dict[str, str], bytes]]) -> bytes:
    out = io.BytesIO()
    for headers, data in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        for name, value in headers.items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def metadata_of(ds: pydicom.Dataset, uri: str) -> dict[str, Any]:
    """The PS3.18 JSON of ``ds`` with Pixel Data as a BulkDataURI (every other binary value inline)."""
    without = pydicom.Dataset()
    without.update({e.tag: e for e in ds if e.tag != 0x7FE00010})
    item: dict[str, Any] = without.to_json_dict(bulk_data_threshold=1 << 30)
    item["7FE00010"] = {"vr": "OB" if ds.file_meta.TransferSyntaxUID.is_compressed else "OW", "BulkDataURI": uri}
    return item


def frames(ds: pydicom.Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


def retrieved(client_get: Any, ds: pydicom.Dataset) -> pydicom.Dataset:
    return client_get(ds)


async def fetch(client: httpx.AsyncClient, ds: pydicom.Dataset, folder: Path) -> tuple[pydicom.Dataset, Path]:
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    got = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert got.status_code == 200, got.text
    start = got.content.index(b"DICM") - 128
    path = folder / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(got.content[start : got.content.rindex(b"\r\n--")])
    dumped = subprocess.run([dcmtk("dcmdump"), "+E", str(path)], capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0 and not dumped.stderr.strip(), dumped.stderr
    return pydicom.dcmread(path), path


def test_native_and_compressed_instances_with_their_bulk_data(web: Callable[..., Any], tmp_path: Path) -> None:
    ct = make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    baseline, lossless = fresh("SC_rgb_jpeg_dcmtk.dcm"), fresh("SC_rgb_jpeg_gdcm.dcm")
    rle, jpeg_ls = fresh("SC_rgb_rle_2frame.dcm"), fresh("MR_small_jpeg_ls_lossless.dcm")
    metadata = [
        metadata_of(ct, "bulk/ct"),
        metadata_of(baseline, "bulk/baseline"),
        metadata_of(lossless, "bulk/lossless"),
        metadata_of(rle, "bulk/rle"),
        metadata_of(jpeg_ls, "bulk/jls"),
    ]
    parts = [
        ({"Content-Type": "application/dicom+json"}, json.dumps(metadata).encode()),
        ({"Content-Type": "application/octet-stream", "Content-Location": "bulk/ct"}, ct.PixelData),
        # no transfer-syntax: the JPEG's own SOF marker (and the lossless scan's predictor) tell
        ({"Content-Type": "image/jpeg", "Content-Location": "bulk/baseline"}, frames(baseline)[0]),
        ({"Content-Type": "image/jpeg", "Content-Location": "bulk/lossless"}, frames(lossless)[0]),
        # two frames: two parts of one Content-Location, in order
        *[
            (
                {
                    "Content-Type": 'image/dicom-rle; transfer-syntax="1.2.840.10008.1.2.5"',
                    "Content-Location": "bulk/rle",
                },
                f,
            )
            for f in frames(rle)
        ],
        ({"Content-Type": "image/jls", "Content-Location": "bulk/jls"}, frames(jpeg_ls)[0]),
    ]

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        got = await client.post("/dicom-web/studies", content=body(parts), headers={"Content-Type": JSON_TYPE})
        assert got.status_code == 200, got.text
        assert len(got.json()["00081199"]["Value"]) == 5
        for sent, syntax in (
            (ct, "1.2.840.10008.1.2.1"),
            (baseline, "1.2.840.10008.1.2.4.50"),
            (lossless, "1.2.840.10008.1.2.4.70"),
            (rle, "1.2.840.10008.1.2.5"),
            (jpeg_ls, "1.2.840.10008.1.2.4.80"),
        ):
            back, _ = await fetch(client, sent, tmp_path)
            assert back.file_meta.TransferSyntaxUID == syntax, (sent.SOPInstanceUID, back.file_meta.TransferSyntaxUID)
            for elem in sent:
                if elem.tag != 0x7FE00010:
                    assert back[elem.tag].value == elem.value, elem.keyword
            if syntax == "1.2.840.10008.1.2.1":
                assert back.PixelData == sent.PixelData
            else:
                assert frames(back) == frames(sent)  # the fragments as sent, one per frame
                assert np.array_equal(back.pixel_array, sent.pixel_array)

    web(run)


def test_failures_are_per_instance_and_broken_requests_store_nothing(
    web: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, orphan, mismatch = (fresh("SC_rgb_jpeg_dcmtk.dcm") for _ in range(3))
    bad_class = fresh("SC_rgb_jpeg_dcmtk.dcm")
    meta = [
        metadata_of(good, "b/good"),
        metadata_of(orphan, "b/nowhere"),  # no part has it
        metadata_of(mismatch, "b/mismatch"),  # an RLE syntax on a JPEG part
        {k: v for k, v in metadata_of(bad_class, "b/good").items() if k != "00080018"},  # no SOP Instance UID
    ]
    jpeg = frames(good)[0]
    parts = [
        ({"Content-Type": "application/dicom+json"}, json.dumps(meta).encode()),
        ({"Content-Type": "image/jpeg", "Content-Location": "b/good"}, jpeg),
        ({"Content-Type": "image/jpeg; transfer-syntax=1.2.840.10008.1.2.5", "Content-Location": "b/mismatch"}, jpeg),
    ]

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        got = await client.post("/dicom-web/studies", content=body(parts), headers={"Content-Type": JSON_TYPE})
        assert got.status_code == 202, got.text
        answer = got.json()
        assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [good.SOPInstanceUID]
        reasons = [i["00081197"]["Value"][0] for i in answer["00081198"]["Value"]]
        assert reasons == [0xC000, 0xC000, 0xC000], reasons
        named = [i.get("00081155", {}).get("Value", [""])[0] for i in answer["00081198"]["Value"]]
        assert named == [orphan.SOPInstanceUID, mismatch.SOPInstanceUID, ""]  # PS3.18 Table I.2-1, when known
        await fetch(client, good, tmp_path)
        before = sorted(p.name for p in archive.staging_dir.iterdir())
        # the study of the URL: another study's instance is 0xA900 (PS3.18 10.5.1)
        other = fresh("SC_rgb_jpeg_dcmtk.dcm")
        one = [
            ({"Content-Type": "application/dicom+json"}, json.dumps([metadata_of(other, "x")]).encode()),
            ({"Content-Type": "image/jpeg", "Content-Location": "x"}, jpeg),
        ]
        got = await client.post(
            f"/dicom-web/studies/{good.StudyInstanceUID}", content=body(one), headers={"Content-Type": JSON_TYPE}
        )
        assert got.status_code == 409 and got.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
        # broken as a whole: 400 or 415, nothing stored, nothing left in staging
        for content, headers, status in (
            (body([({"Content-Type": "application/dicom+json"}, b"{not json")]), JSON_TYPE, 400),
            (body([({"Content-Type": "application/octet-stream"}, b"no location")]), JSON_TYPE, 400),
            (body([({"Content-Type": "application/octet-stream", "Content-Location": "a"}, b"x")]), JSON_TYPE, 400),
            (body([]), f'multipart/related; type="text/html"; boundary={BOUNDARY}', 415),
        ):
            got = await client.post("/dicom-web/studies", content=content, headers={"Content-Type": headers})
            assert got.status_code == status, (status, got.text)
        assert sorted(p.name for p in archive.staging_dir.iterdir()) == before
        # the metadata limit, at the limit and one byte past it
        monkeypatch.setattr(stow_bulk, "METADATA_MAX_BYTES", 4096)
        small = json.dumps([metadata_of(fresh("SC_rgb_jpeg_dcmtk.dcm"), "s")]).encode()
        at = small + b" " * (4096 - len(small))
        assert len(at) == 4096
        ok = [
            ({"Content-Type": "application/dicom+json"}, at),
            ({"Content-Type": "image/jpeg", "Content-Location": "s"}, jpeg),
        ]
        assert (
            await client.post("/dicom-web/studies", content=body(ok), headers={"Content-Type": JSON_TYPE})
        ).status_code == 200
        over = [({"Content-Type": "application/dicom+json"}, at + b" "), ok[1]]
        got = await client.post("/dicom-web/studies", content=body(over), headers={"Content-Type": JSON_TYPE})
        assert got.status_code == 413, got.text

    web(run)


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
    ],
)
def test_a_frame_says_its_own_syntax(name: str, syntax: str) -> None:
    head = frames(pydicom.dcmread(get_testdata_file(name)))[0][:65536]
    media = "image/jls" if "jpeg_ls" in name else "image/jpeg"
    assert stow_bulk.frame_syntax(media, "", head) == syntax
    with pytest.raises(stow_bulk.BulkRefused, match="cannot hold"):
        stow_bulk.frame_syntax(media, "1.2.840.10008.1.2.5", head)
    with pytest.raises(stow_bulk.BulkRefused, match="SOF"):
        stow_bulk.frame_syntax("image/jpeg", "", b"\xff\xd8\xff\xd9")


def test_xml_metadata_one_document_per_instance(web: Callable[..., Any], tmp_path: Path) -> None:
    """type="application/dicom+xml": each metadata part one PS3.19 Native DICOM Model document."""
    from minipacs.dicom.xml_model import native_xml

    first, second = fresh("SC_rgb_jpeg_dcmtk.dcm"), fresh("SC_rgb_jpeg_dcmtk.dcm")
    second.PatientName = "Ünïcode^Näme"
    second.SpecificCharacterSet = "ISO_IR 192"
    xml_type = f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
    parts = [
        ({"Content-Type": "application/dicom+xml"}, native_xml(metadata_of(first, "f1")).encode()),
        ({"Content-Type": "application/dicom+xml"}, native_xml(metadata_of(second, "f2")).encode()),
        ({"Content-Type": "image/jpeg", "Content-Location": "f1"}, frames(first)[0]),
        ({"Content-Type": "image/jpeg", "Content-Location": "f2"}, frames(second)[0]),
    ]

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        got = await client.post("/dicom-web/studies", content=body(parts), headers={"Content-Type": xml_type})
        assert got.status_code == 200, got.text
        for sent in (first, second):
            back, _ = await fetch(client, sent, tmp_path)
            assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
            assert back.PatientName == sent.PatientName and frames(back) == frames(sent)
        broken = [({"Content-Type": "application/dicom+xml"}, b"<NativeDicomModel><oops")]
        got = await client.post("/dicom-web/studies", content=body(broken), headers={"Content-Type": xml_type})
        assert got.status_code == 400 and "Native DICOM Model" in got.text

    web(run)


def test_bulk_data_inside_a_sequence_at_its_limit(
    web: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BulkDataURI in a sequence item is read into memory: at NESTED_BULK_MAX_BYTES it is stored, one
    byte more and that instance fails (0xC000) while the request goes on."""
    monkeypatch.setattr(stow_bulk, "NESTED_BULK_MAX_BYTES", 64)

    def with_icon(size: int) -> tuple[pydicom.Dataset, dict[str, Any]]:
        ds = fresh("SC_rgb_jpeg_dcmtk.dcm")
        icon = pydicom.Dataset()
        icon.Rows, icon.Columns = 8, 8
        icon.PixelData = bytes(size)
        icon["PixelData"].VR = "OB"
        ds.IconImageSequence = [icon]
        meta = metadata_of(ds, f"px/{size}")
        meta["00880200"]["Value"][0]["7FE00010"] = {"vr": "OB", "BulkDataURI": f"icon/{size}"}
        return ds, meta

    (at, at_meta), (over, over_meta) = with_icon(64), with_icon(65)
    jpeg = frames(at)[0]
    parts = [
        ({"Content-Type": "application/dicom+json"}, json.dumps([at_meta, over_meta]).encode()),
        ({"Content-Type": "image/jpeg", "Content-Location": "px/64"}, jpeg),
        ({"Content-Type": "image/jpeg", "Content-Location": "px/65"}, jpeg),
        ({"Content-Type": "application/octet-stream", "Content-Location": "icon/64"}, bytes(range(64))),
        ({"Content-Type": "application/octet-stream", "Content-Location": "icon/65"}, bytes(65)),
    ]

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        got = await client.post("/dicom-web/studies", content=body(parts), headers={"Content-Type": JSON_TYPE})
        assert got.status_code == 202, got.text
        answer = got.json()
        assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [at.SOPInstanceUID]
        assert [i["00081155"]["Value"][0] for i in answer["00081198"]["Value"]] == [over.SOPInstanceUID]
        back, _ = await fetch(client, at, tmp_path)
        assert back.IconImageSequence[0].PixelData == bytes(range(64))

    web(run)


def test_a_bulk_data_part_serves_one_element(web: Callable[..., Any], tmp_path: Path) -> None:
    """A part named by several elements would be written once per name (a 1 GiB part named a thousand
    times: a terabyte written for a 1 GiB request): the first use takes it, any other fails its instance."""
    first, second = (fresh("SC_rgb_jpeg_dcmtk.dcm") for _ in range(2))
    twice = make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    twice_meta = metadata_of(twice, "own")
    twice_meta["00420011"] = {"vr": "OB", "BulkDataURI": "own"}  # the same part for a second element
    parts = [
        (
            {"Content-Type": "application/dicom+json"},
            json.dumps([metadata_of(first, "shared"), metadata_of(second, "shared"), twice_meta]).encode(),
        ),
        ({"Content-Type": "image/jpeg", "Content-Location": "shared"}, frames(first)[0]),
        ({"Content-Type": "application/octet-stream", "Content-Location": "own"}, twice.PixelData),
    ]

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        got = await client.post("/dicom-web/studies", content=body(parts), headers={"Content-Type": JSON_TYPE})
        assert got.status_code == 202, got.text
        answer = got.json()
        assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [first.SOPInstanceUID]
        failed = [i["00081155"]["Value"][0] for i in answer["00081198"]["Value"]]
        assert failed == [second.SOPInstanceUID, twice.SOPInstanceUID]

    web(run)
