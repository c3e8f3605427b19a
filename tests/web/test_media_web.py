"""GET /api/{level}/{id}/media (a ZIP with a DICOMDIR) and the readable folder names of /archive."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from tests.web.conftest import part10


async def _store(client: httpx.AsyncClient, **kw: Any) -> None:
    with pydicom.config.disable_value_validation():  # hostile names on purpose
        content = part10(**kw)
    r = await client.post("/api/instances", content=content, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text


def test_media_zip_references_every_file(web: Callable[..., Any]) -> None:
    study, series = generate_uid(), generate_uid()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        sops = [generate_uid() for _ in range(3)]
        for n, sop in enumerate(sops):
            await _store(client, study_uid=study, series_uid=series, sop_uid=sop, InstanceNumber=n + 1)
        for level, uid in (("studies", study), ("series", series), ("patients", "P1")):
            r = await client.get(f"/api/{level}/{uid}/media")
            assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
            z = zipfile.ZipFile(io.BytesIO(r.content))
            names = z.namelist()
            assert names[:2] == ["DICOMDIR", "README"]
            ds = pydicom.dcmread(io.BytesIO(z.read("DICOMDIR")))
            types = [str(rec.DirectoryRecordType) for rec in ds.DirectoryRecordSequence]
            assert types == ["PATIENT", "STUDY", "SERIES", "IMAGE", "IMAGE", "IMAGE"]
            refs = {
                str(rec.ReferencedSOPInstanceUIDInFile): "/".join(rec.ReferencedFileID)
                for rec in ds.DirectoryRecordSequence
                if "ReferencedFileID" in rec
            }
            assert sorted(refs) == sorted(sops) and set(refs.values()) == set(names[2:])
            for sop, name in refs.items():
                assert pydicom.dcmread(io.BytesIO(z.read(name))).SOPInstanceUID == sop
        assert (await client.get(f"/api/studies/{generate_uid()}/media")).status_code == 404
        assert (await client.get(f"/api/instances/{sops[0]}/media")).status_code == 404
        page = await client.get(f"/ui/studies/{study}")
        assert f"/api/studies/{study}/media" in page.text and "Download media (DICOMDIR)" in page.text

    web(body)


def test_zip_download_has_readable_unique_folder_names(web: Callable[..., Any]) -> None:
    patient = "../Evil/Name^With\x01Ctl" + "x" * 40

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        first, second = generate_uid(), generate_uid()  # two studies: same date, same description
        for study in (first, second):
            await _store(
                client,
                study_uid=study,
                series_uid=generate_uid(),
                patient_id="PID7",
                patient_name=patient,
                StudyDescription="CT/HEAD.." + "y" * 60,
                SeriesDescription="AXIAL",
                SeriesNumber=3,
            )
        r = await client.get("/api/patients/PID7/archive")
        names = sorted(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
        assert len(names) == 2
        parts = [name.split("/") for name in names]
        for p in parts:
            assert len(p) == 4 and p[3] == "0001.dcm" and p[2] == "3 AXIAL"
            assert all(c and c not in (".", "..") and len(c) <= 70 for c in p)
            assert not any(ch < " " or ch in "\\:" for ch in "".join(p))
            assert p[0].startswith("_Evil_Name With_Ctl")
        assert parts[0][0] == parts[1][0]  # one patient folder
        assert {parts[0][1], parts[1][1]} == {"20240131 CT_HEAD.." + "y" * 46, "20240131 CT_HEAD.." + "y" * 46 + " (2)"}

    web(body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("..", "fallback"), ("a/b\\c", "a_b_c"), (" .x. ", "x"), ("\x00\x1f\x7f", "___"), ("é" * 80, "é" * 64)],
)
def test_safe_name(text: str, expected: str) -> None:
    from minipacs.core.media import safe_name

    assert safe_name(text, "fallback") == expected
