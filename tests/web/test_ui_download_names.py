"""Download names that come from a Patient ID a modality chose (web/headers.py ``attachment``).

The UI's "Download ZIP", "Download media" and "Download DICOM" links name the file after the
resource. A Patient ID may hold ``"``, ``;``, ``/`` or characters outside Latin-1 (PS3.5 6.2 LO
in ISO_IR 192): the header must stay one well-formed RFC 6266 value whatever it holds.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.web.headers import attachment
from tests.web.conftest import part10


def disposition(header: str) -> tuple[str, str | None]:
    """(filename, filename*) of an RFC 6266 §4.1 value: a quoted-string without escapes, an RFC 8187 ext-value."""
    ext_value = r"(?:; filename\*=UTF-8''([A-Za-z0-9%._~-]+))?"
    match = re.fullmatch(r'attachment; filename="([ !#-\[\]-~]*)"' + ext_value, header)
    assert match, header
    star = match[2]
    return match[1], unquote(star) if star else None


@pytest.mark.parametrize(
    ("patient_id", "ascii_name", "utf8_name"),
    [
        ("P1", "P1.zip", None),
        ("张三", "__.zip", "张三.zip"),
        ('a"b;c', "a_b;c.zip", None),  # a '"' ended the quoted name: the rest became a broken parameter
        ("a/b", "a_b.zip", None),  # a path separator is no part of a file name
        ("Müller", "M_ller.zip", "Müller.zip"),
        ("ab\u202egpj.exe", "ab_gpj.exe.zip", None),  # an RTL override would show "ab" + "exe.jpg"
    ],
)
def test_patient_zip_name(web: Any, patient_id: str, ascii_name: str, utf8_name: str | None) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data = part10(patient_id=patient_id, SpecificCharacterSet="ISO_IR 192")
        r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        for suffix, name, want in (
            ("archive", "zip", (ascii_name, utf8_name)),
            ("media", "dicomdir.zip", (ascii_name.replace(".zip", "-dicomdir.zip"), None)),
        ):
            r = await client.get(f"/api/patients/{quote(patient_id, safe='')}/{suffix}")
            if "\u202e" in patient_id:  # not a printable Patient ID: refused before any download
                assert r.status_code == 400, r.text
                continue
            assert r.status_code == 200, (suffix, r.text)
            got = disposition(r.headers["content-disposition"])
            if suffix == "media":
                assert got[0] == want[0] and (got[1] is None) == (utf8_name is None), got
            else:
                assert got == want, got
            assert name in got[0]

    web(body)


def test_attachment_names_are_one_safe_component() -> None:
    """The rule itself, for names the URL rules let through and those they do not (the instance download
    is named after its UID, which is digits and dots)."""
    assert attachment("ab\u202egpj.exe", ".zip", "patient") == 'attachment; filename="ab_gpj.exe.zip"'
    assert attachment("..", ".zip", "patient") == 'attachment; filename="patient.zip"'
    assert attachment("a\r\nSet-Cookie: x=1", ".zip", "p") == 'attachment; filename="a__Set-Cookie_ x=1.zip"'
    assert attachment("\\" * 3, ".dcm", "instance") == 'attachment; filename="___.dcm"'
    long = attachment("x" * 500, ".zip", "p")
    assert long == f'attachment; filename="{"x" * 64}.zip"'
    uid = generate_uid()
    assert attachment(uid, ".dcm", "instance") == f'attachment; filename="{uid}.dcm"'
