"""Defects found by fuzzing the HTTP edge (tools/fuzz_web.py): each input once answered 500 or worse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_auth import USERS
from tests.web.test_hostile_control_api import refused, web  # noqa: F401 - fixture: the app with its AE registry

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


@pytest.mark.parametrize(
    "query",
    [
        "includefield=FFFEE000",  # Item: VR "NONE" in the data dictionary
        "includefield=SequenceDelimitationItem",
        "FFFEE0DD=",
        "Item=1",
        "includefield=7FE00010",  # Pixel Data: "OB or OW"
        "includefield=SmallestImagePixelValue",  # "US or SS"
        "includefield=60003000",  # Overlay Data, a repeating group: "OB or OW"
        "ReferencedSeriesSequence.FFFEE000=",
    ],
)
def test_a_key_without_one_vr_is_a_400_not_a_broken_json_model(web: Callable[..., Any], query: str) -> None:
    """QIDO-RS answered 200 with ``"FFFEE000": {"vr": "NONE"}`` or ``"7FE00010": {"vr": "OB or OW"}``:
    PS3.18 F.2.3 says "vr" is one of the VRs of PS3.5 Table 6.2-1, so clients (pydicom's from_json) cannot read
    that answer. Items and delimiters are no attributes (PS3.5 7.5), and a key whose VR the dictionary leaves
    open (PS3.5 Annex A: Pixel Data is OB or OW by transfer syntax) has none an identifier could carry: both
    are refused as an unknown attribute is."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(f"/dicom-web/instances?{query}")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unknown_attribute"
        assert "VR" in r.json()["error"]["message"]

    web(body)


JSON = {"Content-Type": "application/json"}
WORKLIST_ENTRY = (
    '{"00100020": {"vr": "LO", "Value": ["P1"]}, "00100010": {"vr": "PN", "Value": [%s]}, '
    '"00400100": {"vr": "SQ", "Value": [{"00080060": {"vr": "CS", "Value": ["CT"]}}]}}'
)


@pytest.mark.parametrize(
    ("method", "url", "raw"),
    [
        ("POST", "/api/nodes", '{"ae_title": "PEER", "host": "a\\udfffb", "port": 104}'),
        ("POST", "/api/nodes", '{"ae_title": "PEER", "host": "127.0.0.1", "port": 104, "description": "\\ud800"}'),
        ("POST", "/api/worklist", WORKLIST_ENTRY % '"Doe\\ud800^John"'),
        ("POST", "/api/worklist", WORKLIST_ENTRY % '{"Alphabetic": "\\udc00"}'),
        ("POST", "/api/patients/P1/modify", '{"changes": {"PatientName": "\\ud800"}}'),
        ("POST", "/api/rules", '{"\\ud800": 1}'),  # a member name
    ],
)
def test_a_json_string_with_an_unpaired_surrogate_is_a_400(
    web: Callable[..., Any], method: str, url: str, raw: str
) -> None:
    """Python's json accepts ``"\\ud800"`` (RFC 8259 8.2: an unpaired surrogate's behaviour is "unpredictable"),
    but it is no character UTF-8 can encode (RFC 3629 3), so it failed later: POST /api/nodes answered 500 from
    SQLite's UnicodeEncodeError, and a worklist entry was stored that made every GET /api/worklist a 500
    afterwards. Refused where every JSON body is read (web/jsonbody.py), with nothing stored."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        assert "surrogate" in refused(await client.request(method, url, content=raw.encode(), headers=JSON))
        assert (await client.get("/api/worklist")).json() == []
        assert (await client.get("/api/nodes")).json() == []
        assert (await client.get("/api/worklist")).status_code == 200

    web(body)


def test_a_surrogate_pair_is_one_character_and_taken(web: Callable[..., Any]) -> None:
    """Both halves of a pair (RFC 8259 7: "\\ud83d\\ude00") make one character, which is fine."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/worklist",
            content=(WORKLIST_ENTRY % '{"Alphabetic": "Doe\\ud83d\\ude00^John"}').encode(),
            headers=JSON,
        )
        assert r.status_code == 201, r.text
        assert r.json()["dataset"]["00100010"]["Value"] == [{"Alphabetic": "Doe\U0001f600^John"}]

    web(body)


@pytest.mark.parametrize("permissions", ["true", "1", "1.5", "null", "{}"])
def test_node_permissions_that_are_no_list_are_a_400(web: Callable[..., Any], permissions: str) -> None:
    """``"permissions": true`` reached ``list(True)`` in core/nodes.py ``parse_permissions``: TypeError, a 500.
    Permissions are a comma-separated string or a list of operation names (docs/HOSTILE_INPUT.md)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        raw = '{"ae_title": "PEER", "host": "127.0.0.1", "port": 104, "permissions": ' + permissions + "}"
        assert "permissions" in refused(await client.post("/api/nodes", content=raw.encode(), headers=JSON))
        assert (await client.get("/api/nodes")).json() == []

    web(body)


def test_a_login_name_with_an_unpaired_surrogate_is_a_400(web: Callable[..., Any]) -> None:
    """POST /ui/login with JSON ``{"name": "\\ud800"}`` answered 500: the user name is hashed as UTF-8 for the
    lockout (web/auth.py), which no unpaired surrogate can be (RFC 8259 8.2, RFC 3629 3). The login reads its
    JSON itself (it also takes a form), so it now makes the same check as web/jsonbody.py."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for raw in (b'{"name": "\\ud800", "password": "x"}', b'{"name": "admin", "password": "a\\udc00"}'):
            r = await client.post("/ui/login", content=raw, headers=JSON)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_json"
        r = await client.post("/ui/login", content=b'{"name": "nobody", "password": "x"}', headers=JSON)
        assert r.status_code == 401

    web(body, users=USERS)


@pytest.mark.parametrize(
    "query",
    ["PatientName=%00", "PatientName=Doe%00*", "StudyDescription=a%0Ab", "PatientID=%7F", "AccessionNumber=%1F"],
)
def test_a_query_value_with_a_control_character_is_a_400_not_universal_matching(
    web: Callable[..., Any], query: str
) -> None:
    """PS3.5 6.1.2-6.1.3: no DICOM text value holds NUL or a C0 control other than ESC (LT, ST and UT
    also the format effectors). ``PatientName=%00`` was read as an empty value, universal matching, and
    answered every study; ``Doe%00*`` as ``Doe*``. ESC stays allowed (ISO 2022 code extension)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(f"/dicom-web/studies?{query}")
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_key_value"
        assert "control character" in r.json()["error"]["message"]
        r = await client.get("/dicom-web/studies?PatientName=%1B%24B%3B3%45%44%1B%28B*")  # ESC $ B ... ESC ( B
        assert r.status_code in (200, 204), r.text

    web(body)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("/dicom-web/studies?PatientID=A&PatientID=B", "PatientID"),
        ("/dicom-web/studies?PatientID=P1&00100020=B", "PatientID"),  # by keyword and by tag: one key
        # UIDs given twice are one UID list (test_qido.py), but not a UID and an empty value ("any")
        (f"/dicom-web/studies?StudyInstanceUID={STUDY}&StudyInstanceUID=", "StudyInstanceUID"),
        ("/dicom-web/studies?limit=1&limit=5", "limit"),
        ("/dicom-web/studies?offset=0&offset=1", "offset"),
        ("/dicom-web/studies?fuzzymatching=false&fuzzymatching=true", "fuzzymatching"),
        ("/api/search?level=studies&PatientID=A&PatientID=B", "PatientID"),
        ("/api/search?level=studies&level=series", "level"),
        ("/api/studies?complete=true&complete=false", "complete"),
        ("/api/studies?PatientID=A&PatientID=A", "PatientID"),  # even the same value twice
    ],
)
def test_a_search_key_given_twice_is_a_400_naming_it(web: Callable[..., Any], query: str, named: str) -> None:
    """PS3.18 8.3.4.1: a match is one attribute and one value, a UID list one comma-separated value; a key
    given twice has no meaning in PS3.4 C.2.2.2 (several values are Multiple Value Matching, C.2.2.2.8,
    only on request). ``PatientID=A&PatientID=B`` kept the last value silently: an answer to a question
    the client did not ask. Now 400 naming the key (PS3.18 8.3: an invalid value is a 400)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(query)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "repeated_parameter" and named in error["message"], error
        if named == "StudyInstanceUID":  # the way to ask for several
            assert "one comma-separated value (StudyInstanceUID=1.2.3,1.2.4)" in error["message"], error

    web(body)


def test_parameters_that_add_up_may_repeat(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.3: ``includefield`` may be given several times; ``labels`` (ours) add up; a UID list
    is one comma-separated value."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stow(client, part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
        r = await client.get(
            f"/dicom-web/studies?includefield=StudyDescription&includefield=00081030&StudyInstanceUID={STUDY},1.2.9"
        )
        assert r.status_code == 200 and len(r.json()) == 1, r.text
        assert (await client.get("/api/studies?labels=a&labels=b")).status_code == 200

    web(body)
