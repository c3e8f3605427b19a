"""WADO-RS and WADO-URI of a 12-bit JPEG Extended instance asked for uncompressed (issue 12 item 8).

Before, no installed decoder took 12-bit JPEG Extended, so these answered 406; the pixels must
now equal DCMTK's ``dcmdjpeg`` decode of the stored file.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.web.transfer import boundary_of, split_multipart
from tests.compressed import dcmdjpeg_pixels, fresh_copy

ELE = "1.2.840.10008.1.2.1"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


@pytest.mark.interop
def test_12_bit_jpeg_extended_instance_asked_for_explicit_vr_little_endian(
    web: Callable[..., Any], tmp_path: Path
) -> None:
    path, ds = fresh_copy("jpeg_extended_12bit", tmp_path / "src")
    expected = dcmdjpeg_pixels(path, tmp_path / "dcmtk")

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await archive.import_file(path, Origin("import"))
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        r = await client.get(
            url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'}
        )
        assert r.status_code == 200, r.text
        parts = split_multipart(r.content, boundary_of(r.headers["content-type"]))
        assert len(parts) == 1 and parts[0].content_type == f"application/dicom; transfer-syntax={ELE}"
        got = pydicom.dcmread(io.BytesIO(parts[0].body))
        assert got.file_meta.TransferSyntaxUID == ELE and got.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(got.pixel_array, expected)
        # WADO-URI (PS3.18 §9.4) transferSyntax parameter
        params = {
            "requestType": "WADO",
            "studyUID": str(ds.StudyInstanceUID),
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
            "contentType": "application/dicom",
            "transferSyntax": ELE,
        }
        r = await client.get("/dicom-web/wado", params=params)
        assert r.status_code == 200, r.text
        assert np.array_equal(pydicom.dcmread(io.BytesIO(r.content)).pixel_array, expected)
        # as stored, still
        r = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        parts = split_multipart(r.content, boundary_of(r.headers["content-type"]))
        assert parts[0].content_type == f"application/dicom; transfer-syntax={JPEG_EXTENDED}"

    web(body)
