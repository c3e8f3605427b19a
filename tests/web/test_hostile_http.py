"""Issue 8 ("Hostile input"), the HTTP items: each limit at its edge, each fix with the input that broke it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


# ------------------------------------------------------------------ item 12: boundary case, non-ASCII digits

def test_form_upload_keeps_the_boundary_case(web: Callable[..., Any]) -> None:
    """A browser's FormData boundary has upper-case letters (----WebKitFormBoundaryAbC...); lower-casing
    it made every browser form upload a 400."""
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        boundary = "----WebKitFormBoundaryAbCdEfGh"
        data = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)
        content = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dcm\"\r\n"
                   f"Content-Type: application/dicom\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        r = await client.post("/api/instances", content=content,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 1 and await archive.count_instances() == 1

    web(body)


@pytest.mark.parametrize("url", [
    "/dicom-web/studies?limit=\u0661\u0660",  # Arabic-Indic 10
    "/dicom-web/studies?offset=\u0661",
    "/dicom-web/studies?limit=\u00b2",  # superscript two: isdigit() but not a number
    "/api/studies?limit=\u0661\u0660",
    "/api/associations?limit=\u0661\u0660",
    "/ui/?size=\u0661\u0660",
    f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/\u0661",
    f"/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}&frameNumber=\u0661",
])
def test_non_ascii_digits_are_not_numbers(web: Callable[..., Any], url: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.post("/api/instances", content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
                          headers={"Content-Type": "application/dicom"})
        r = await client.get(url)
        assert r.status_code == 400, (url, r.status_code, r.text[:200])
        # the same parameter in ASCII digits is accepted
        ascii_url = url.replace("\u0661", "1").replace("\u0660", "0").replace("\u00b2", "2")
        assert (await client.get(ascii_url)).status_code != 400, ascii_url

    web(body)
