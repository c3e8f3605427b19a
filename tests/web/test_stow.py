"""STOW-RS conformance (PS3.18 10.5, Annex I): request media types, the response module, status and Warning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow_body

ROOT = "http://testserver/dicom-web"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=XYZ'


@pytest.mark.parametrize("kind", ["application/json", "text/plain"])
def test_metadata_and_bulkdata_requests_are_415(web: Callable[..., Any], kind: str) -> None:
    """PS3.18 Table 10.5.3-1: 415 when the origin server does not support the request's media type
    (metadata and bulk data as PS3.18 JSON or XML are taken: tests/web/test_stow_bulk.py); not a 409 that
    blames every part."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        payload = b"--XYZ\r\nContent-Type: application/dicom+json\r\n\r\n[{}]\r\n--XYZ--\r\n"
        headers = {"Content-Type": f'multipart/related; type="{kind}"; boundary=XYZ'}
        r = await client.post("/dicom-web/studies", content=payload, headers=headers)
        assert r.status_code == 415, r.text
        assert "application/dicom" in r.json()["error"]["message"]

    web(body)


def test_type_parameter_and_boundary_forms(web: Callable[..., Any]) -> None:
    """RFC 2046/2387: a quoted or unquoted boundary; no ``type`` parameter reads as application/dicom."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for content_type in (
            'multipart/related; type="application/dicom"; boundary="a b:c"',
            "multipart/related; boundary=a b:c",  # not a valid token, but unambiguous at the end
            "Multipart/Related; Type=Application/DICOM; Boundary=a b:c",
        ):
            data, _ = stow_body(part10(), boundary="a b:c")
            r = await client.post("/dicom-web/studies", content=data, headers={"Content-Type": content_type})
            assert r.status_code == 200, (content_type, r.text)
        assert await archive.count_instances() == 3

    web(body)


def test_an_empty_request_is_400(web: Callable[..., Any]) -> None:
    """PS3.18 10.5.1.4: the payload shall contain one or more representations."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/dicom-web/studies", content=b"--XYZ--\r\n", headers={"Content-Type": DICOM_TYPE})
        assert r.status_code == 400, r.text

    web(body)


def test_response_retrieve_url_and_warning(web: Callable[..., Any]) -> None:
    """PS3.18 Table I.1-1: the top-level Retrieve URL is Type 2 (the study's URL, or empty); 10.5.3:
    200 all stored, 202 some, 409 none, with a Warning naming the Failure Reasons (10.5.3.2)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data, headers = stow_body(part10(study_uid="1.2.7.1"), part10(study_uid="1.2.7.1"))
        r = await client.post("/dicom-web/studies", content=data, headers=headers)
        assert r.status_code == 200 and "warning" not in r.headers
        assert r.json()["00081190"] == {"vr": "UR", "Value": [f"{ROOT}/studies/1.2.7.1"]}
        data, headers = stow_body(part10(study_uid="1.2.7.2"), part10(study_uid="1.2.7.3"))
        r = await client.post("/dicom-web/studies", content=data, headers=headers)
        assert r.status_code == 200 and r.json()["00081190"] == {"vr": "UR"}  # two studies: no one URL
        data, headers = stow_body(part10(study_uid="1.2.7.4"), b"not dicom")
        r = await client.post("/dicom-web/studies/1.2.7.4", content=data, headers=headers)
        assert r.status_code == 202
        assert r.json()["00081190"] == {"vr": "UR", "Value": [f"{ROOT}/studies/1.2.7.4"]}
        assert r.headers["warning"] == f"299 {ROOT}: 1 of 2 instances were not stored (Failure Reason C000)"
        data, headers = stow_body(part10(study_uid="1.2.7.9"))
        r = await client.post("/dicom-web/studies/1.2.7.5", content=data, headers=headers)
        assert r.status_code == 409
        assert r.json()["00081190"] == {"vr": "UR", "Value": [f"{ROOT}/studies/1.2.7.5"]}
        assert r.headers["warning"].endswith("1 of 1 instances were not stored (Failure Reason A900)")

    web(body)


def test_the_response_in_xml_when_asked_for(web: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.18 10.5.3: the Store Instances Response as application/dicom+json (the Default) or
    application/dicom+xml, by the Accept header (or the ``accept`` parameter, 8.3.3.1). It was JSON whatever
    was asked; now an XML request gets one Native DICOM Model document (PS3.19 A.1, valid against its
    schema) saying what the JSON says, with the same status and Warning."""
    from tests.native_schema import from_native_xml, schema_errors

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data, headers = stow_body(part10(study_uid="1.2.7.6"), b"not dicom")
        r = await client.post("/dicom-web/studies/1.2.7.6", content=data, headers=headers)
        assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json", r.text
        as_json = r.json()
        for accept in ("application/dicom+xml", 'multipart/related; type="application/dicom+xml"'):
            data, headers = stow_body(part10(study_uid="1.2.7.6"), b"not dicom")
            r = await client.post("/dicom-web/studies/1.2.7.6", content=data, headers={**headers, "Accept": accept})
            assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+xml", r.text
            assert r.headers["warning"].endswith("1 of 2 instances were not stored (Failure Reason C000)")
            assert schema_errors([r.content], tmp_path) == ""
            got = from_native_xml(r.content)
            stored = got["00081199"]["Value"][0]
            expected = as_json["00081199"]["Value"][0]
            assert stored["00081150"] == expected["00081150"] and "/instances/" in stored["00081190"]["Value"][0]
            assert got["00081198"] == as_json["00081198"] and got["00081190"] == as_json["00081190"]
        data, headers = stow_body(part10(study_uid="1.2.7.6"))
        r = await client.post(
            "/dicom-web/studies", params={"accept": "application/dicom+xml"}, content=data, headers=headers
        )
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+xml", r.text
        for accept in ("application/dicom+json", "application/json", "*/*", "text/html"):
            data, headers = stow_body(part10(study_uid="1.2.7.6"))
            r = await client.post("/dicom-web/studies", content=data, headers={**headers, "Accept": accept})
            assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json", accept

    web(body)
