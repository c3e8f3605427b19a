"""Rendered resources (PS3.18 8.3.5, 10.4.1.1.3) and WADO-URI images (PS3.18 9): the parameters do what they say."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow

STUDY, SERIES, SOP = "1.2.5.1", "1.2.5.1.1", "1.2.5.1.1.1"
BASE = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
WADO = {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": SOP}
# value = row * 64 + column: 0 at the top left, 4095 at the bottom right (12 bits stored)
GRADIENT = np.arange(64 * 64, dtype="<u2").reshape(64, 64)


async def _store(client: httpx.AsyncClient) -> None:
    data = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, PixelData=GRADIENT.tobytes())
    assert (await stow(client, data)).status_code == 200


def _pixels(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_viewport_crops_flips_and_scales(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.5.1.3: crop to sx,sy,sw,sh, flip for a negative sw/sh, scale to fit vw x vh without distortion."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)
        png = {"Accept": "image/png"}
        window = "2048,4096,linear-exact"
        full = _pixels(await client.get(BASE + "/rendered", params={"window": window}, headers=png))
        assert full.shape == (64, 64)
        r = await client.get(BASE + "/rendered", params={"window": window, "viewport": "32,32,0,0,32,32"}, headers=png)
        assert np.array_equal(_pixels(r), full[:32, :32])
        r = await client.get(BASE + "/rendered", params={"window": window, "viewport": "32,32,,,-32,32"}, headers=png)
        assert np.array_equal(_pixels(r), full[:32, :32][:, ::-1])
        r = await client.get(BASE + "/rendered", params={"window": window, "viewport": "32,32,32,32"}, headers=png)
        assert np.array_equal(_pixels(r), full[32:, 32:])  # sw, sh default to the edges
        assert _pixels(await client.get(BASE + "/rendered", params={"viewport": "128,128"})).shape == (128, 128)
        assert _pixels(await client.get(BASE + "/rendered", params={"viewport": "16,64"})).shape == (16, 16)
        assert _pixels(await client.get(BASE + "/thumbnail", params={"viewport": "20,20"})).shape == (20, 20)
        for bad in ("64", "0,64", "64,64,a", "64,64,0,0,0,10", "64,64,1,2,3,4,5", "99999,64", "64,64,100,100"):
            r = await client.get(BASE + "/rendered", params={"viewport": bad})
            assert r.status_code == 400, (bad, r.text)
        r = await client.get(BASE + "/thumbnail", params={"viewport": "32,32,0,0,16,16"})  # thumbnails: vw,vh only
        assert r.status_code == 400

    web(body)


def test_window_functions(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.5.1.4 window=center,width,function with the VOI LUT functions of PS3.3 C.11.2.1.2."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)
        png = {"Accept": "image/png"}
        exact = _pixels(await client.get(BASE + "/rendered", params={"window": "2048,4096,linear-exact"}, headers=png))
        sigmoid = _pixels(await client.get(BASE + "/rendered", params={"window": "2048,4096,sigmoid"}, headers=png))
        assert exact[0, 0] == 0 and exact[32, 0] in (127, 128)  # value 2048 = the center
        assert sigmoid[0, 0] == 30 and sigmoid[32, 0] in (127, 128)  # 255 / (1 + e^2) at value 0
        narrow = _pixels(await client.get(BASE + "/rendered", params={"window": "100,1,linear"}, headers=png))
        assert narrow[1, 35] == 0 and narrow[1, 37] == 255  # 99 (x <= c - 0.5) is black, 101 white
        for bad in ("40,400,bogus", "40", "40,0,linear", "a,400,linear", "40,nan,linear"):
            r = await client.get(BASE + "/rendered", params={"window": bad})
            assert r.status_code == 400, (bad, r.text)

    web(body)


def test_quality_accept_parameter_and_annotation(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.5.1.2 quality (1-100), 8.3.3.1 the accept parameter, RFC 9110 q-values, 8.3.5.1.1 annotation."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)
        low = await client.get(BASE + "/rendered", params={"quality": "5"})
        high = await client.get(BASE + "/rendered", params={"quality": "100"})
        assert low.status_code == high.status_code == 200 and len(low.content) < len(high.content)
        for bad in ("0", "101", "abc", ""):
            assert (await client.get(BASE + "/rendered", params={"quality": bad})).status_code == 400
        r = await client.get(BASE + "/rendered", params={"accept": "image/png"})
        assert r.headers["content-type"] == "image/png"
        r = await client.get(BASE + "/rendered", headers={"Accept": "image/jpeg;q=0, image/png"})
        assert r.headers["content-type"] == "image/png"
        r = await client.get(BASE + "/rendered", headers={"Accept": "image/png;q=0.4, image/jpeg;q=0.8"})
        assert r.headers["content-type"] == "image/jpeg"
        r = await client.get(BASE + "/rendered", headers={"Accept": "image/gif"})  # Table 8.7.4-1: Required
        assert r.headers["content-type"] == "image/gif" and r.content[:4] == b"GIF8"
        r = await client.get(BASE + "/rendered", headers={"Accept": "video/mp4"})  # none of ours: the Default
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        r = await client.get(BASE + "/rendered", params={"annotation": "patient,technique"})
        assert r.status_code == 200
        assert r.headers["warning"].endswith("The following annotation values are not supported: patient,technique")
        assert (await client.get(BASE + "/rendered", params={"annotation": "burn"})).status_code == 400

    web(body)


@pytest.mark.parametrize(
    "params,shape",
    [
        ({"rows": "32"}, (32, 32)),
        ({"columns": "16"}, (16, 16)),
        ({"rows": "32", "columns": "8"}, (8, 8)),  # each a maximum, the aspect ratio kept
        ({"region": "0,0,0.5,0.25"}, (16, 32)),
        ({"region": "0.5,0.5,1,1", "rows": "128"}, (128, 128)),  # the region, then scaled
    ],
)
def test_wado_uri_rows_columns_region(web: Callable[..., Any], params: dict[str, str], shape: tuple[int, int]) -> None:
    """PS3.18 9 (WADO-URI): rows and columns bound the image, region crops it (fractions of the image)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)
        r = await client.get("/wado", params={**WADO, "contentType": "image/png", **params})
        assert _pixels(r).shape == shape

    web(body)


def test_wado_uri_parameters_checked(web: Callable[..., Any]) -> None:
    """PS3.18 9: windowWidth goes with windowCenter, frameNumber counts from 1, contentType is a list with
    q-values; anonymize=yes is refused rather than answered with the identified instance."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)
        for extra in (
            {"windowCenter": "40"},
            {"windowWidth": "400"},
            {"frameNumber": "0"},
            {"rows": "0"},
            {"region": "0.5,0,0.2,1"},
            {"imageQuality": "0"},
            {"anonymize": "yes", "contentType": "application/dicom"},
            {"anonymize": "no"},  # 9.4.2.3: any other value is a 400 too
            {"frameNumber": "2"},  # 9.5.2.1: past the last frame (there is one): 400, not 404
            {"contentType": "application/dicom", "windowCenter": "40", "windowWidth": "400"},  # 9.5.1.2.6
            {"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.1.x"},  # 9.4.2.4: no UID
        ):
            r = await client.get("/wado", params={**WADO, **extra})
            assert r.status_code == 400, (extra, r.text)
        r = await client.get("/wado", params={**WADO, "contentType": "application/dicom;q=0.5,image/png"})
        assert r.headers["content-type"] == "image/png"
        r = await client.get("/wado", params={**WADO, "contentType": "image/*"})
        assert r.headers["content-type"] == "image/jpeg"
        r = await client.get("/wado", params={**WADO, "contentType": "image/gif"})  # Table 8.7.4-1: Required
        assert r.status_code == 200 and r.content[:4] == b"GIF8"
        r = await client.get("/wado", params={**WADO, "contentType": "text/html"})  # none of ours: the Default
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        r = await client.get("/wado", params={**WADO, "imageQuality": "10"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"

    web(body)


def _rgb16(folder: Path) -> str:
    """A 16-bit RGB image (values to 65535): its samples used to wrap around when cut to 8 bits."""
    rgb = np.zeros((32, 32, 3), dtype="<u2")
    rgb[..., 0] = np.arange(32 * 32, dtype="<u2").reshape(32, 32) * 64
    rgb[..., 1], rgb[..., 2] = 65535 - rgb[..., 0], 40000
    ds = part10_dataset(rows=32, cols=32, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelData = 16, 16, 15, rgb.tobytes()
    path = folder / "rgb16.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def part10_dataset(**kw: Any) -> Any:
    from pydicom.uid import generate_uid

    from tests.dicomgen import make_ct

    return make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid(), **kw)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "SC_ybr_full_422_uncompressed.dcm", "MR_small.dcm", "rgb16"])
def test_rendering_matches_dcmtk(web: Callable[..., Any], tmp_path: Path, name: str) -> None:
    """PS3.18 10.4.1.1.3: every Photometric Interpretation is rendered -- PALETTE COLOR through its lookup
    tables (it came out as grey indices), 16-bit colour by its top bits (it wrapped around) -- as DCMTK's
    dcmj2pnm renders it (with its first VOI window if any)."""
    import subprocess

    import pydicom
    from pydicom.data import get_testdata_file

    from tests.peers import dcmtk

    source = _rgb16(tmp_path) if name == "rgb16" else str(get_testdata_file(name))
    ds = pydicom.dcmread(source)
    window = ["+Wi", "1"] if "WindowCenter" in ds else ["+Wm"]
    subprocess.run([dcmtk("dcmj2pnm"), "+on", *window, source, str(tmp_path / "ref.png")], check=True)
    reference = np.asarray(Image.open(tmp_path / "ref.png").convert("RGB")).astype(float)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        with open(source, "rb") as fh:
            assert (await stow(client, fh.read())).status_code == 200
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        ours = _pixels(await client.get(url + "/rendered", headers={"Accept": "image/png"}))
        ours = np.asarray(Image.fromarray(ours).convert("RGB")).astype(float)
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).mean() < 1.0

    web(body)


def test_study_and_series_images_come_from_an_instance_with_pixels(web: Callable[..., Any]) -> None:
    """PS3.18 10.4.1.1.3-4: the rendered image and thumbnail of a study or series. The middle instance was
    the one rendered; in a series of an image and two Structured Reports (instance numbers 1, 2, 3) that is
    an SR, and the study's thumbnail was a 406 "no pixel data" though the study holds an image. The other
    instances are tried; a series with no image at all keeps its 406."""
    from pydicom.uid import generate_uid

    from tests.dicomgen import make_sr

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _store(client)  # the CT, SeriesNumber 2, InstanceNumber 3
        reports = []
        for number in (4, 5):
            sr = make_sr(STUDY, SERIES, generate_uid(), (STUDY, SERIES, SOP), SeriesNumber=2, InstanceNumber=number)
            out = io.BytesIO()
            sr.save_as(out, enforce_file_format=True)
            reports.append(out.getvalue())
        other = generate_uid()  # a series of reports only
        lone = make_sr(STUDY, other, generate_uid(), (STUDY, SERIES, SOP))
        out = io.BytesIO()
        lone.save_as(out, enforce_file_format=True)
        assert (await stow(client, *reports, out.getvalue())).status_code == 200
        single = np.asarray(Image.open(io.BytesIO((await client.get(f"{BASE}/thumbnail")).content)))
        for url in (f"/dicom-web/studies/{STUDY}", f"/dicom-web/studies/{STUDY}/series/{SERIES}"):
            for resource in ("thumbnail", "rendered"):
                r = await client.get(f"{url}/{resource}")
                assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (url, resource, r.text)
            assert np.array_equal(_pixels(await client.get(f"{url}/thumbnail")), single)
        r = await client.get(f"/dicom-web/studies/{STUDY}/series/{other}/thumbnail")
        assert r.status_code == 406 and r.json()["error"]["code"] == "no_pixels", r.text

    web(body)
