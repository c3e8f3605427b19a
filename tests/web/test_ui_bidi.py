"""Bidi controls in a value a modality sent must not reorder the page's own text (UAX #9, pages.isolate).

The ``<title>`` cannot hold markup: a Study Description ending in an open RIGHT-TO-LEFT OVERRIDE
(U+202E) turned the browser tab's " · minipacs" around, and a stray POP DIRECTIONAL ISOLATE
(U+2069) could close an isolate put around it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.web.pages import isolate
from tests.web.conftest import part10

PUSH = {"\u202a", "\u202b", "\u202d", "\u202e"}  # LRE RLE LRO RLO (UAX #9 X2-X5)
ISOLATE = {"\u2066", "\u2067", "\u2068"}  # LRI RLI FSI (X5a-X5c)
PDF, PDI = "\u202c", "\u2069"


def open_at_end(text: str) -> list[str]:
    """The directional status stack left open after ``text`` (UAX #9 X1-X7, without the depth limit)."""
    stack: list[str] = []
    for c in text:
        if c in PUSH or c in ISOLATE:
            stack.append(c)
        elif c == PDF and stack and stack[-1] in PUSH:  # X7: a PDF closes an embedding, never an isolate
            stack.pop()
        elif c == PDI and any(s in ISOLATE for s in stack):  # X6a: closes everything back to its isolate
            while stack.pop() not in ISOLATE:
                pass
    return stack


@pytest.mark.parametrize(
    "description",
    [
        "EVIL\u202e",  # an override left open
        "\u2069\u202eEVIL",  # a PDI to close our isolate, then an override
        "\u2067\u202bEVIL\u202c",  # an isolate and an embedding left open
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew: no controls, still isolated from " · minipacs"
    ],
)
def test_the_title_closes_what_a_value_opens(web: Any, description: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        study = generate_uid()
        data = part10(study_uid=study, SpecificCharacterSet="ISO_IR 192", StudyDescription=description)
        r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        r = await client.get(f"/ui/studies/{study}")
        assert r.status_code == 200
        match = re.search(r"<title>(.*?)</title>", r.text, re.S)
        assert match
        title = html.unescape(match[1])
        assert title.endswith(" · minipacs"), title
        assert open_at_end(title.removesuffix(" · minipacs")) == [], ascii(title)
        letters = "".join(c for c in description if c.isalpha())
        assert letters in title  # the value is still there, as text

    web(body)


def test_isolate() -> None:
    assert isolate("") == "" and isolate(None) == ""
    assert isolate("CT HEAD") == "\u2068CT HEAD\u2069"
    assert isolate("\u2069\u202eX\u200f") == "\u2068X\u2069"
