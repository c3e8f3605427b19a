"""One Range rule (RFC 9110 §14) for every route that takes Range: WADO-RS bulk data and frames
(web/bulkdata.py), the UI's static files and the OHIF viewer's files (Starlette's FileResponse, which
answered ``bytes=5-1`` 400 where bulk data answered 416, refused other units and malformed headers with
400 where bulk data ignored them, and answered several ranges with multipart/byteranges)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from minipacs.web.byteranges import RangeNotSatisfiable, byte_range
from tests.web.test_bulkdata import BASE, ICON, _with_icon
from tests.web.test_dicomweb import stow
from tests.web.test_ohif import client as ohif_client

#: Range header ({size}, {last}: the content's size, its last position) -> the answer: a slice of the
#: content (206), "unsatisfiable" (416), or "whole" (200).
CASES: list[tuple[str, slice | str]] = [
    ("bytes=10-19", slice(10, 20)),
    ("bytes=0-0", slice(0, 1)),
    ("bytes=-4", slice(-4, None)),
    ("bytes=4-", slice(4, None)),
    ("bytes=10-99999999", slice(10, None)),  # past the end: to the end (§14.1.2)
    ("bytes=-99999999", slice(0, None)),  # a suffix longer than the content: all of it, 206
    ("bytes={last}-", slice(-1, None)),
    ("bytes={size}-", "unsatisfiable"),  # starts past the end (§14.1.1, §15.5.17)
    ("bytes=-0", "unsatisfiable"),  # a suffix of nothing
    ("bytes=5-1", "unsatisfiable"),  # invalid (last-pos < first-pos): rejected, §14.2
    ("bytes=0-1,4-5", "whole"),  # several ranges: ignored, §14.2
    ("items=0-1", "whole"),  # another unit: ignored (§14.2)
    ("bytes=a-b", "whole"),
    ("bytes=-", "whole"),
    ("bytes=", "whole"),
    ("bytes=" + "9" * 19 + "-", "whole"),  # more digits than we read
    ("bytes=" + "9" * 5000 + "-", "whole"),  # int() of it was a 500
]


def _check(response: httpx.Response, content: bytes, expected: slice | str) -> None:
    if expected == "whole":
        assert response.status_code == 200 and response.content == content, response.status_code
    elif expected == "unsatisfiable":
        assert response.status_code == 416, response.status_code
        assert response.headers["content-range"] == f"bytes */{len(content)}"
    else:
        assert isinstance(expected, slice)
        assert response.status_code == 206 and response.content == content[expected], response.status_code
        start, stop, _ = expected.indices(len(content))
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(content)}"


def _header(template: str, size: int) -> str:
    return template.replace("{size}", str(size)).replace("{last}", str(size - 1))


@pytest.mark.parametrize(("template", "expected"), CASES)
def test_the_rule_itself(template: str, expected: slice | str) -> None:
    header = _header(template, len(ICON))
    if expected == "whole":
        assert byte_range(header, len(ICON)) is None
    elif expected == "unsatisfiable":
        with pytest.raises(RangeNotSatisfiable):
            byte_range(header, len(ICON))
    else:
        assert isinstance(expected, slice)
        start, stop, _ = expected.indices(len(ICON))
        assert byte_range(header, len(ICON)) == (start, stop - 1)


def test_bulk_data_and_the_ui_static_files_answer_every_range_alike(web: Callable[..., Any]) -> None:
    static = (Path(__file__).parents[2] / "src/minipacs/web/static/app.js").read_bytes()

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await stow(client, _with_icon())).status_code == 200
        for template, expected in CASES:
            octets = {"Accept": "application/octet-stream", "Range": _header(template, len(ICON))}
            _check(await client.get(BASE + "/bulkdata/00880200/0/7FE00010", headers=octets), ICON, expected)
            ranged = {"Range": _header(template, len(static))}
            _check(await client.get("/ui/static/app.js", headers=ranged), static, expected)

    web(body)


def test_the_ohif_files_answer_every_range_alike(tmp_path: Path) -> None:
    dist = tmp_path / "package" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<html></html>")
    (dist / "app.bundle.1.js").write_bytes(ICON)  # through StaticFiles
    (tmp_path / "app-config.js").write_bytes(ICON)  # our own FileResponse
    app = ohif_client(tmp_path).app

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for template, expected in CASES:
                for url in ("/ohif/app.bundle.1.js", "/ohif/app-config.js"):
                    response = await c.get(url, headers={"Range": _header(template, len(ICON))})
                    _check(response, ICON, expected)

    asyncio.run(run())
