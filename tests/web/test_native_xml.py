"""WADO-RS Metadata and QIDO-RS results as PS3.19 XML (PS3.18 8.7.3.2, Tables 10.4.4-1 and 10.6.4-1):
multipart/related; type="application/dicom+xml", one Native DICOM Model document per instance or match,
valid against the A.1.6 schema and saying what the application/dicom+json answer says (F.3.1)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.core.archive import Archive
from tests.dicom.test_xml_model import _expected
from tests.dicomgen import make_ct
from tests.native_schema import from_native_xml, schema_errors
from tests.web.test_dicomweb import _parts, stow

STUDY, SERIES = "1.2.7.1", "1.2.7.1.1"
SOPS = ("1.2.7.1.1.1", "1.2.7.1.1.2")
XML = {"Accept": 'multipart/related; type="application/dicom+xml"'}


def _instance(sop: str) -> bytes:
    ds = make_ct(study_uid=STUDY, series_uid=SERIES, sop_uid=sop, PatientName="Doe^Jane^^Dr")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D1100", "SRT", "Head <& neck>"
    ds.AnatomicRegionSequence = Sequence([code])
    ds.add_new(0x00290010, "LO", "MINIPACS TEST")
    ds.add_new(0x00291001, "LO", "private value")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _xml_parts(r: httpx.Response) -> list[bytes]:
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom+xml"; boundary=')
    parts = _parts(r)
    assert all(part.content_type == "application/dicom+xml" for part in parts)
    return [part.body for part in parts]


@pytest.mark.parametrize(
    "path,count",
    [
        (f"/studies/{STUDY}/metadata", 2),
        (f"/studies/{STUDY}/series/{SERIES}/metadata", 2),
        (f"/studies/{STUDY}/series/{SERIES}/instances/{SOPS[0]}/metadata", 1),
    ],
)
def test_metadata_as_xml_says_what_the_json_says(
    web: Callable[..., Any], tmp_path: Path, path: str, count: int
) -> None:
    """One valid document per instance; read back by F.3.1 it is the JSON metadata, BulkDataURIs included
    (which resolve), private attributes with their creator."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, *(_instance(sop) for sop in SOPS))).status_code == 200
        r = await client.get("/dicom-web" + path, headers=XML)
        assert r.status_code == 200 and r.headers["vary"] == "Accept"
        documents = _xml_parts(r)
        assert len(documents) == count
        assert schema_errors(documents, tmp_path) == ""
        as_json = (await client.get("/dicom-web" + path, headers={"Accept": "application/dicom+json"})).json()
        assert [from_native_xml(d) for d in documents] == [_expected(obj) for obj in as_json]
        text = documents[0].decode()
        assert '<DicomAttribute tag="00290001" vr="LO" privateCreator="MINIPACS TEST">' in text
        assert '<Value number="1">Head &lt;&amp; neck&gt;</Value>' in text
        uri = from_native_xml(documents[0])["7FE00010"]["BulkDataURI"]
        assert (await client.get(uri.removeprefix("http://testserver"))).status_code == 200

    web(body)


def test_search_results_as_xml(web: Callable[..., Any], tmp_path: Path) -> None:
    """QIDO-RS (Table 10.6.4-1): a document per match with its Retrieve URL; limit's Warning kept; no match
    is 204 (a multipart body needs a part, RFC 2046 5.1.1); JSON stays the answer to everything else."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, *(_instance(sop) for sop in SOPS))).status_code == 200
        r = await client.get(f"/dicom-web/studies/{STUDY}/instances", headers=XML)
        documents = _xml_parts(r)
        assert schema_errors(documents, tmp_path) == ""
        found = [from_native_xml(d) for d in documents]
        assert sorted(m["00080018"]["Value"][0] for m in found) == sorted(SOPS)
        assert all(m["00081190"]["Value"][0].endswith(m["00080018"]["Value"][0]) for m in found)
        r = await client.get("/dicom-web/studies?limit=1", headers=XML)
        assert len(_xml_parts(r)) == 1  # one study, so no Warning
        r = await client.get(f"/dicom-web/studies/{STUDY}/instances?limit=1", headers=XML)
        assert len(_xml_parts(r)) == 1 and "additional results" in r.headers["warning"]
        r = await client.get("/dicom-web/studies?PatientID=nobody", headers=XML)
        assert r.status_code == 204 and r.content == b""
        r = await client.get("/dicom-web/studies?PatientID=nobody")
        assert r.status_code == 200 and r.json() == []
        r = await client.get("/dicom-web/studies", params={"accept": XML["Accept"]})  # PS3.18 8.3.3.1
        assert len(_xml_parts(r)) == 1

    web(body)


HOSTILE_ACCEPTS = [
    "application/dicom+xml;q=" + "9" * 5000,
    "application/dicom+xml;q=1e400, application/dicom+json;q=-1",
    "application/dicom+xml;q=0.5;q=0.9;;;=;",
    'multipart/related; type="application/dicom+xml' + ", " * 20000,
    ", ".join(["multipart/related; type=application/dicom+xml; q=0.001"] * 3000),
    '\x7f\x01/\x02; type="\\',
    "text/html, application/xhtml+xml, */*;q=0.8",
    "application/x-unknown; type=*; boundary=;; q=nan",
    "*/*; q=inf, */*; q=-inf",
]


@pytest.mark.parametrize("accept", HOSTILE_ACCEPTS)
def test_hostile_accept_headers_are_never_a_server_error(web: Callable[..., Any], accept: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _instance(SOPS[0]))).status_code == 200
        for path in (f"/studies/{STUDY}/metadata", "/studies", f"/studies/{STUDY}/series"):
            for how in ({"headers": {"Accept": accept}}, {"params": {"accept": accept}}):
                if "params" in how and len(accept) > 20000:  # httpx refuses a query past 64 KiB itself
                    continue
                r = await client.get("/dicom-web" + path, **how)  # type: ignore[arg-type]
                assert r.status_code < 500, (path, r.status_code, r.text[:200])

    web(body)
