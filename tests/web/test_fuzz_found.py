"""Defects found by fuzzing the HTTP edge (tools/fuzz_web.py): each input once answered 500 or worse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


async def stow(client: httpx.AsyncClient, data: bytes) -> None:
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--B--\r\n"
    headers = {"content-type": 'multipart/related; type="application/dicom"; boundary=B'}
    r = await client.post("/dicom-web/studies", content=body, headers=headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "url",
    [
        f"/dicom-web/studies/{STUDY}/instances?InstanceNumber=1e400",
        "/dicom-web/series?SeriesNumber=-1e309",
        "/dicom-web/studies?NumberOfStudyRelatedInstances=1E999",
        "/api/search?level=series&SeriesNumber=1e400",
    ],
)
def test_an_is_query_value_beyond_any_float_is_a_400(web: Callable[..., Any], url: str) -> None:
    """QIDO-RS (PS3.18 8.3.4.1) with an IS key whose value overflows a float: pydicom's IS() raises
    OverflowError, not ValueError, for '1e400' (int(float('inf'))), and the search answered 500.
    PS3.5 Table 6.2-1: an IS is at most 12 characters of an integer, so this is no IS: 400."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(url)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_key_value"

    web(body)
