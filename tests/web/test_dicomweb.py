from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.dicom.uids import LOSSLESS_ONLY_SYNTAXES
from minipacs.web.accept import FRAME_MEDIA_TYPES
from minipacs.web.transfer import boundary_of, split_multipart
from tests.compressed import COMPRESSED, fresh_copy
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


def stow_body(*files: bytes, boundary: str = "XYZ") -> tuple[bytes, dict[str, str]]:
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n" for f in files
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
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
        r = await client.get(
            "/dicom-web/wado",
            params={
                "requestType": "WADO",
                "studyUID": STUDY,
                "seriesUID": SERIES,
                "objectUID": SOP,
                "contentType": "application/dicom",
            },
        )
        assert r.status_code == 200 and r.content[128:132] == b"DICM"
        r = await client.get("/dicom-web/studies", params={"limit": "1", "offset": "1"})
        assert r.json() == []

    web(body)


def test_metadata_is_precomputed_after_ingest(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        import asyncio

        from minipacs.index.metadata_repo import _TABLE

        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        for _ in range(100):
            rows = await archive.read(lambda c: c.execute(_TABLE.select()).all())
            if rows:
                break
            await asyncio.sleep(0.02)
        assert rows and json.loads(rows[0].json)["00080018"]["Value"] == [SOP]

    web(body)


@pytest.mark.parametrize(
    "url",
    [
        "/dicom-web/studies/..%2F..%2Fetc",
        "/dicom-web/studies/1.2.3;DROP TABLE/metadata",
        "/dicom-web/studies/1.02.3",
        "/dicom-web/studies?PatientName=%27%3B%20DROP%20TABLE%20studies%3B--",
        "/dicom-web/studies?NoSuchKeyword=1",
        "/dicom-web/studies?limit=-1",
        "/dicom-web/studies?StudyDate=2020-garbage-",
        "/dicom-web/series?SeriesNumber=1A",  # an IS that is no number: was an unhandled ValueError, 500
        "/dicom-web/instances?SliceThickness=abc",
        "/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/x",
        # a number of 5000 digits: int() refuses it with a ValueError, which was a 500
        "/dicom-web/studies?limit=" + "9" * 5000,
        "/dicom-web/studies?offset=" + "9" * 5000,
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/" + "9" * 5000,
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered?viewport={'9' * 5000},64",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered?quality={'9' * 5000}",
        f"/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}&frameNumber={'9' * 5000}",
        f"/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}&rows={'9' * 5000}",
        "/api/changes?limit=" + "9" * 5000,  # the REST API's whole-number parameters (web/rest.py)
    ],
)
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


@pytest.mark.parametrize(
    "payload,content_type",
    [
        (
            b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nabc",
            'multipart/related; type="application/dicom"; boundary=XYZ',
        ),
        (b"garbage", 'multipart/related; type="application/dicom"'),
        (b"garbage", "application/json"),
    ],
)
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


# ------------------------------------------------------------------ compressed instances: frames and transcoding


def _frames_as_stored(ds: Any) -> list[bytes]:
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def _decoded(ds: Any) -> list[bytes]:
    pixels = ds.pixel_array
    frames = [pixels] if int(ds.get("NumberOfFrames", 1)) == 1 else list(pixels)
    return [f.astype(f.dtype.newbyteorder("<")).tobytes() for f in frames]


def _parts(r: httpx.Response) -> list[Any]:
    assert r.status_code == 200, r.text
    return split_multipart(r.content, boundary_of(r.headers["content-type"]))


async def _store_compressed(archive: Archive, tmp: Path, name: str) -> tuple[str, Any]:
    from minipacs.core.model import Origin

    path, ds = fresh_copy(name, tmp)
    await archive.import_file(path, Origin("import"))
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    return url, ds


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_frames_of_compressed_instances_as_stored_and_decompressed(
    web: Callable[..., Any], tmp_path: Path, name: str
) -> None:
    _file, ts, count = COMPRESSED[name]
    media = FRAME_MEDIA_TYPES[ts]

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, ds = await _store_compressed(archive, tmp_path / "src", name)
        numbers = ",".join(str(n) for n in range(1, count + 1))
        stored, decoded = _frames_as_stored(ds), _decoded(ds)
        # anything without a transfer syntax: the Default (PS3.18 8.7.3.3), decompressed unless lossy
        lossy = ts not in LOSSLESS_ONLY_SYNTAXES
        # the stored bitstream: by its own media type, as octet-stream with its syntax or *, or */* if lossy
        for accept in (
            f'multipart/related; type="{media}"',
            f"multipart/related; type={media}; transfer-syntax={ts}",
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            f'multipart/related; type="application/octet-stream"; transfer-syntax={ts}',
            'multipart/related; type="*/*"; transfer-syntax=*',
            *(['multipart/related; type="*/*"'] if lossy else []),
        ):
            r = await client.get(f"{url}/frames/{numbers}", headers={"Accept": accept})
            parts = _parts(r)
            assert [p.body for p in parts] == stored, accept
            assert all(p.content_type.endswith(f"transfer-syntax={ts}") for p in parts), accept
        # decompressed to native Explicit VR Little Endian
        for accept in (
            'multipart/related; type="application/octet-stream"',
            "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            "multipart/related",
            *([] if lossy else ['multipart/related; type="*/*"', "*/*"]),
        ):
            parts = _parts(await client.get(f"{url}/frames/{numbers}", headers={"Accept": accept}))
            assert [p.body for p in parts] == decoded, accept
            assert parts[0].content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        # neither: a JPEG asked of a JPEG 2000 instance, a syntax we cannot produce
        other = "image/jp2" if media != "image/jp2" else "image/jpeg"
        for accept in (
            f'multipart/related; type="{other}"',
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.201',
        ):
            r = await client.get(f"{url}/frames/1", headers={"Accept": accept})
            assert r.status_code == 406, accept
            assert ts in r.json()["error"]["message"] and "decompressed" in r.json()["error"]["message"]
        r = await client.get(f"{url}/frames/{count + 1}", headers={"Accept": "multipart/related; type=*/*"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_such_frame"

    web(body)


def test_frames_that_cannot_be_decoded_are_406_with_the_way_out(web: Callable[..., Any], tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, ds = await _store_compressed(archive, tmp_path / "src", "jpeg_baseline")
        stored = await archive.read(
            lambda c: c.exec_driver_sql(
                "SELECT blob_key FROM instances WHERE sop_instance_uid = ?", (str(ds.SOPInstanceUID),)
            ).scalar_one()
        )
        path = archive.blobs.path_of(stored)
        data = bytearray(path.read_bytes())
        start = data.rindex(b"\xff\xd8")  # the JPEG bitstream: keep the marker, garble the rest
        data[start + 2 : start + 600] = b"\x00" * 598
        path.write_bytes(bytes(data))
        octets = 'multipart/related; type="application/octet-stream"'
        r = await client.get(f"{url}/frames/1", headers={"Accept": octets})
        assert r.status_code == 406
        error = r.json()["error"]
        assert error["code"] == "cannot_decompress" and "transfer-syntax=1.2.840.10008.1.2.4.50" in error["message"]
        r = await client.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
        assert r.status_code == 200
        # no Accept header: the Default could not be made, so the frames as stored (PS3.18 8.7.3.3), not a 406
        r = await client.get(f"{url}/frames/1", headers={"Accept": ""})
        assert r.status_code == 200
        (part,) = _parts(r)
        assert part.content_type == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"

    web(body)


def test_retrieve_transcodes_per_accept(web: Callable[..., Any], tmp_path: Path) -> None:
    import pydicom

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, ds = await _store_compressed(archive, tmp_path / "src", "jpeg2000_lossless")
        study_url = url.split("/series/")[0]
        ts = "1.2.840.10008.1.2.4.90"
        # as stored: transfer-syntax=* (the origin server's choice)
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        parts = _parts(await client.get(url, headers={"Accept": accept}))
        assert len(parts) == 1 and parts[0].content_type == f"application/dicom; transfer-syntax={ts}"
        assert pydicom.dcmread(io.BytesIO(parts[0].body)).PixelData == ds.PixelData  # the stored bitstream
        # no transfer-syntax parameter: the Default, Explicit VR Little Endian (PS3.18 Table 8.7.3-2, 2016c on)
        for default in ('multipart/related; type="application/dicom"', "*/*", None):
            parts = _parts(await client.get(url, headers={"Accept": default} if default else {}))
            assert len(parts) == 1 and parts[0].content_type == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
            got = pydicom.dcmread(io.BytesIO(parts[0].body))
            assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert (got.pixel_array == ds.pixel_array).all()
        # decompressed on request, at instance and at study level
        for target in ("1.2.840.10008.1.2.1",):
            for where in (url, study_url):
                accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
                parts = _parts(await client.get(where, headers={"Accept": accept}))
                assert len(parts) == 1 and parts[0].content_type == f"application/dicom; transfer-syntax={target}"
                got = pydicom.dcmread(io.BytesIO(parts[0].body))
                assert got.file_meta.TransferSyntaxUID == target
                assert got.SOPInstanceUID == ds.SOPInstanceUID
                assert (got.pixel_array == ds.pixel_array).all()
        # a syntax we cannot produce (we never compress; PS3.18 §8.7.3 rules out Implicit VR): 406, what to ask for
        for ts_asked in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2"):
            r = await client.get(
                url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts_asked}'}
            )
            assert r.status_code == 406 and "transfer-syntax=*" in r.json()["error"]["message"]
        # the first acceptable choice wins
        r = await client.get(
            url,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.4.50, multipart/related; "
                'type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
            },
        )
        assert _parts(r)[0].content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")

    web(body)


def test_retrieve_leaves_out_a_missing_file_and_streams_the_rest(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        sops = [f"{SERIES}.{i}" for i in range(1, 4)]
        for sop in sops:
            await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=sop))
        keys = await archive.read(
            lambda c: [row[0] for row in c.exec_driver_sql("SELECT blob_key FROM instances ORDER BY id").all()]
        )
        archive.blobs.path_of(keys[1]).unlink()
        r = await client.get(f"/dicom-web/studies/{STUDY}")
        # PS3.18 Table 10.4.3-1: 206, representations for some but not all of the Target Resources
        assert r.status_code == 206 and "1 of the 3 instances are missing" in r.headers["warning"]
        parts = split_multipart(r.content, boundary_of(r.headers["content-type"]))
        assert len(parts) == 2 and all(p.body[128:132] == b"DICM" for p in parts)

    web(body)


def test_metadata_leaves_out_an_unreadable_instance_and_says_so(web: Callable[..., Any]) -> None:
    """One instance whose file is gone or broken made the whole study's metadata a 500, so a viewer could
    not open the study at all. Study and series metadata now answer the rest with 206 and a Warning
    (PS3.18 Table 10.4.3-1), as the instances' retrieve does; the instance alone keeps its error."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        sops = [f"{SERIES}.{i}" for i in range(1, 5)]
        for sop in sops:
            await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=sop))
        keys = await archive.read(
            lambda c: [row[0] for row in c.exec_driver_sql("SELECT blob_key FROM instances ORDER BY id").all()]
        )
        await archive.write(lambda c: c.exec_driver_sql("DELETE FROM instance_metadata"))  # none computed yet
        archive.blobs.path_of(keys[1]).unlink()  # gone
        broken = archive.blobs.path_of(keys[2])  # its header is whole, its data set cut in its first element
        data = broken.read_bytes()
        broken.write_bytes(data[: data.index(b"\x08\x00\x05\x00CS") + 7])
        for url in (f"/dicom-web/studies/{STUDY}/metadata", f"/dicom-web/studies/{STUDY}/series/{SERIES}/metadata"):
            r = await client.get(url)
            assert r.status_code == 206, r.text
            assert r.headers["warning"].startswith("299 http://")
            assert "2 of the 4 instances cannot be read and are left out" in r.headers["warning"]
            got = [m["00080018"]["Value"][0] for m in r.json()]
            assert got == [sops[0], sops[3]]
            xml = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
            assert xml.status_code == 206 and xml.content.count(b"<NativeDicomModel") == 2
        instance = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances"
        r = await client.get(f"{instance}/{sops[1]}/metadata")  # its file is gone
        assert r.status_code == 404 and "indexed but their files are missing from storage" in r.text
        r = await client.get(f"{instance}/{sops[2]}/metadata")  # its file is broken
        assert r.status_code == 500 and r.json()["error"]["code"] == "unreadable_instance"
        assert "1.2.3.4/" not in r.text  # the file is named in the server log only
        for key in (keys[0], keys[3]):
            archive.blobs.path_of(key).unlink()
        r = await client.get(f"/dicom-web/studies/{STUDY}/metadata")  # none can be read: the error, not []
        assert r.status_code == 500 and r.json()["error"]["code"] == "unreadable_instance"

    web(body)


def test_rendered_and_thumbnail_of_compressed_instances(web: Callable[..., Any], tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for name in sorted(COMPRESSED):
            url, _ds = await _store_compressed(archive, tmp_path / "src" / name, name)
            r = await client.get(url + "/rendered", headers={"Accept": "image/png"})
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", name
            r = await client.get(url + "/thumbnail", headers={"Accept": "image/jpeg"})
            assert r.status_code == 200 and r.content[:2] == b"\xff\xd8", name

    web(body)


def test_retrieve_of_an_instance_whose_file_is_gone_is_404(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        key = await archive.read(lambda c: c.exec_driver_sql("SELECT blob_key FROM instances").scalar_one())
        archive.blobs.path_of(key).unlink()
        r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}")
        assert r.status_code == 404 and "missing from storage" in r.json()["error"]["message"]

    web(body)


def test_wado_uri_transfer_syntax(web: Callable[..., Any], tmp_path: Path) -> None:
    import pydicom

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        _url, ds = await _store_compressed(archive, tmp_path / "src", "jpeg_ls")
        params = {
            "requestType": "WADO",
            "studyUID": str(ds.StudyInstanceUID),
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
            "contentType": "application/dicom",
        }
        # no transferSyntax: the Default, Explicit VR Little Endian (PS3.18 9.4.2.4; JPEG-LS lossless is decoded)
        r = await client.get("/dicom-web/wado", params=params)
        assert r.status_code == 200 and r.headers["content-length"] == str(len(r.content))
        default = pydicom.dcmread(io.BytesIO(r.content))
        assert default.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (default.pixel_array == ds.pixel_array).all()
        r = await client.get("/dicom-web/wado", params={**params, "transferSyntax": "1.2.840.10008.1.2.4.80"})
        assert pydicom.dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        r = await client.get("/dicom-web/wado", params={**params, "transferSyntax": "1.2.840.10008.1.2.1"})
        got = pydicom.dcmread(io.BytesIO(r.content))
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (got.pixel_array == ds.pixel_array).all()
        r = await client.get("/dicom-web/wado", params={**params, "transferSyntax": "1.2.840.10008.1.2.4.50"})
        assert r.status_code == 406

    web(body)


def test_qido_empty_modalities_in_study_is_an_empty_value_list(web: Callable[..., Any]) -> None:
    """Issue 12 item 13: ModalitiesInStudy with no value is ``"Value": []`` (the pinned OHIF reads its length)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, part10(Modality=""), part10(study_uid=STUDY))
        assert r.status_code == 200, r.text
        studies = (await client.get("/dicom-web/studies")).json()
        by_uid = {s["0020000D"]["Value"][0]: s for s in studies}
        assert len(by_uid) == 2
        empty = next(s for uid, s in by_uid.items() if uid != STUDY)
        assert empty["00080061"] == {"vr": "CS", "Value": []}
        assert by_uid[STUDY]["00080061"] == {"vr": "CS", "Value": ["CT"]}

    web(body)


def test_an_invalid_integer_string_does_not_fail_the_studys_metadata(web: Callable[..., Any]) -> None:
    """A stored instance with NumberOfFrames '1A' (an invalid IS, as in pydicom's badVR.dcm) made
    WADO-RS study metadata answer 500, so a viewer could not open the study at all. PS3.18 F.2.3
    lets the value be a JSON String; the other instance is unaffected."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        good = part10(study_uid=STUDY, series_uid=SERIES)
        bad = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, NumberOfFrames=97)
        marker = b"(\x00\x08\x00IS\x02\x0097"
        assert bad.count(marker) == 1
        bad = bad.replace(marker, b"(\x00\x08\x00IS\x02\x001A")
        assert (await stow(client, good, bad)).status_code == 200
        r = await client.get(f"/dicom-web/studies/{STUDY}/metadata")
        assert r.status_code == 200, r.text

        def refuse(name: str) -> object:
            raise ValueError(name)

        models = json.loads(r.text, parse_constant=refuse)
        by_sop = {m["00080018"]["Value"][0]: m for m in models}
        assert len(by_sop) == 2
        assert by_sop[SOP]["00280008"] == {"vr": "IS", "Value": ["1A"]}
        # its frames cannot be counted: a clear error naming the value, not an unhandled 500
        r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1")
        assert r.status_code == 500
        error = r.json()["error"]
        assert error["code"] == "unreadable_instance"
        assert "Number of Frames (0028,0008) is '1A'" in error["message"]

    web(body)


def test_float_pixel_data_has_its_own_bulkdata_uri_and_rows_alone_none(web: Callable[..., Any]) -> None:
    """PS3.18 F.2.6 / PS3.3 C.7.6.24: a Parametric Map's Float Pixel Data (7FE0,0008) is listed with a
    BulkDataURI that serves its bytes; no Pixel Data (7FE0,0010) URI is made up for it, nor for an instance
    with Rows and no pixel data at all (both used to get a 7FE00010 URI that answered 404)."""
    import numpy as np
    import pydicom

    study = generate_uid()
    floats = np.arange(16, dtype="<f4").reshape(4, 4)

    def instance(pixels: str) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(part10(study_uid=study)))
        del ds.PixelData
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.BitsAllocated = 32
        if pixels == "float":
            ds.FloatPixelData = floats.tobytes()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, instance("float"), instance("none"))
        assert r.status_code == 200, r.text
        models = (await client.get(f"/dicom-web/studies/{study}/metadata")).json()
        assert len(models) == 2
        with_floats = [m for m in models if "7FE00008" in m]
        assert len(with_floats) == 1 and all("7FE00010" not in m for m in models), models
        element = with_floats[0]["7FE00008"]
        assert element["vr"] == "OF"
        got = await client.get(
            element["BulkDataURI"], headers={"Accept": "multipart/related; type=application/octet-stream"}
        )
        assert got.status_code == 200, got.text
        [part] = _parts(got)
        assert part.body == floats.tobytes()

    web(body)


def test_a_default_that_cannot_be_decoded_goes_as_stored_and_a_named_syntax_is_406(
    web: Callable[..., Any], tmp_path: Path
) -> None:
    """JPEG-LS lossless must be decompressed for the Default (PS3.18 8.7.3.4); when its stream is damaged
    the instance goes as stored (better than nothing), while a client that named Explicit VR Little
    Endian gets the 406 that says how to get it as stored -- in WADO-RS and WADO-URI alike."""
    import pydicom
    from pydicom.encaps import encapsulate

    from minipacs.core.model import Origin

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        path, ds = fresh_copy("jpeg_ls", tmp_path / "src")
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not a JPEG-LS stream \xff\xd9"])
        ds.save_as(path, enforce_file_format=True)
        await archive.import_file(path, Origin("import"))
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        r = await client.get(url)
        assert r.status_code == 200, r.text
        [part] = _parts(r)
        assert pydicom.dcmread(io.BytesIO(part.body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        named = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
        r = await client.get(url, headers={"Accept": named})
        assert r.status_code == 406 and "transfer-syntax=*" in r.text
        params = {
            "requestType": "WADO",
            "studyUID": str(ds.StudyInstanceUID),
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
            "contentType": "application/dicom",
        }
        r = await client.get("/dicom-web/wado", params=params)
        assert r.status_code == 200
        assert pydicom.dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        r = await client.get("/dicom-web/wado", params={**params, "transferSyntax": "1.2.840.10008.1.2.1"})
        assert r.status_code == 406 and "transferSyntax=1.2.840.10008.1.2.4.80" in r.text

    web(body)


def test_a_person_name_with_an_empty_value_among_several(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.5 6.4 lets a multi-valued person name hold an empty value (Other Patient Names ``A\\\\B``);
    PS3.18 F.2.5 writes it as null. pydicom 3 fails on it, so the instance's metadata was a 500 and its
    study's metadata a 206 without it: a viewer never saw the instance. Now null in the metadata (JSON and
    XML, schema-valid) and in a search's answer (which wrote ``{"Alphabetic": ""}``)."""
    import pydicom

    from tests.native_schema import schema_errors

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for names, expected in (
            ("Roe^Jane\\\\Poe^Edgar", [{"Alphabetic": "Roe^Jane"}, None, {"Alphabetic": "Poe^Edgar"}]),
            ("\\Poe", [None, {"Alphabetic": "Poe"}]),
        ):
            study, series, sop = generate_uid(), generate_uid(), generate_uid()
            with pydicom.config.disable_value_validation():
                data = part10(study_uid=study, series_uid=series, sop_uid=sop, OtherPatientNames=names)
            assert (await stow(client, data)).status_code == 200
            r = await client.get(f"/dicom-web/studies/{study}/metadata")
            assert r.status_code == 200, r.text
            assert r.json()[0]["00101001"] == {"vr": "PN", "Value": expected}
            r = await client.get(f"/dicom-web/studies/{study}/metadata", headers={"Accept": "application/dicom+xml"})
            assert r.status_code == 200 and b'<PersonName number="2"' in r.content
            part = r.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
            assert schema_errors([part], tmp_path) == ""
            r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": study, "includefield": "00101001"})
            assert r.json()[0]["00101001"] == {"vr": "PN", "Value": expected}, r.text

    web(body)
