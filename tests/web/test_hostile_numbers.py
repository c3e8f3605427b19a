"""Numbers from the client that Python will not turn into an int: every route family answers them
with a 4xx and a sentence, never a 500, and answers the next request as before.

``int()`` refuses more than 4300 digits (ValueError), ``str.isdigit`` takes "²" (a Latin-1 byte in a
header) that ``int()`` refuses, JSON's 1e400 is infinity, which ``int()`` refuses with OverflowError,
and urllib refuses a Host port that is not 0-65535 (ValueError). Each family through the real ASGI
app: DICOMweb, the REST API and its JSON bodies, uploads, the web UI. docs/HOSTILE_INPUT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httpx
import pytest

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_hostile_control_api import refused, web  # noqa: F401 - fixture: the app with its AE registry

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
#: More digits than int() converts (sys.get_int_max_str_digits(): 4300).
HUGE = "9" * 5000
#: Header values as the wire carries them: Starlette decodes headers as Latin-1, b"\xb2" is "²".
SUPERSCRIPT_TWO = b"\xb2"
JSON = {"Content-Type": "application/json"}
WORKLIST_ENTRY = (
    '{"00100020": {"vr": "LO", "Value": ["P1"]}, "00400100": {"vr": "SQ", "Value": [{"00080060": '
    '{"vr": "CS", "Value": ["CT"]}}]}, %s}'
)


async def still_answers(client: httpx.AsyncClient) -> None:
    """After the refusal the server goes on: a search, the study, the stats."""
    r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": STUDY})
    assert r.status_code == 200 and len(r.json()) == 1, r.text[:200]
    assert (await client.get("/api/stats")).status_code == 200
    assert (await client.get("/ui/")).status_code == 200


def run(web: Callable[..., Any], method: str, url: str, status: int, said: str, **request: Any) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        assert r.status_code == 200, r.text
        r = await client.request(method, url, **request)
        if r.headers["content-type"].startswith("text/html"):  # a UI page: the sentence is in the page
            assert r.status_code == status and said in r.text, (r.status_code, r.text[:300])
        else:
            assert said in refused(r, status)
        await still_answers(client)

    web(body)


# ------------------------------------------------------------------ uploads: Content-Length (web/intake.py)

STOW: Final = 'multipart/related; type="application/dicom"; boundary=XYZ'
#: Each upload endpoint, with a Content-Type it takes.
UPLOADS = [
    ("/api/instances", "application/dicom"),
    ("/dicom-web/studies", STOW),
    (f"/dicom-web/studies/{STUDY}", STOW),
]


@pytest.mark.parametrize(("url", "media"), UPLOADS)
@pytest.mark.parametrize(
    ("declared", "status", "said"),
    [
        (HUGE.encode(), 413, "5000-digit number of bytes"),  # was int(): ValueError, a 500
        (SUPERSCRIPT_TWO, 400, "not a number of bytes"),  # was isdigit() then int(): a 500
        (b"-1", 400, "RFC 9110"),
    ],
    ids=["5000-digits", "superscript", "negative"],
)
def test_upload_content_length(
    web: Callable[..., Any], url: str, media: str, declared: bytes, status: int, said: str
) -> None:
    """RFC 9110 §8.6 Content-Length = 1*DIGIT; an invalid one is 400 (RFC 9112 §6.3), a larger one than
    max_upload_bytes 413 before a byte of the body is read."""
    run(web, "POST", url, status, said, headers={"Content-Length": declared, "Content-Type": media})


# ------------------------------------------------------------------ JSON bodies (web/jsonbody.py and their users)


@pytest.mark.parametrize(("method", "url"), [("POST", "/api/rules"), ("POST", "/api/nodes"), ("POST", "/api/worklist")])
@pytest.mark.parametrize(
    ("declared", "status", "said"),
    [(HUGE.encode(), 413, "5000-digit number of bytes"), (SUPERSCRIPT_TWO, 400, "not a number of bytes")],
    ids=["5000-digits", "superscript"],
)
def test_json_body_content_length(
    web: Callable[..., Any],
    method: str,
    url: str,
    declared: bytes,
    status: int,
    said: str,
) -> None:
    run(web, method, url, status, said, headers={"Content-Length": declared, **JSON})


@pytest.mark.parametrize(
    ("port", "said"), [("\u00b2", "outside 1..65535"), (HUGE, "outside 1..65535"), ("-1", "outside 1..65535")]
)
def test_node_port_that_is_no_number(web: Callable[..., Any], port: str, said: str) -> None:
    """A node's port as a JSON string: "²" and 5000 digits passed str.isdigit and int() raised (a 500)."""
    run(web, "POST", "/api/nodes", 400, said, json={"ae_title": "PEER", "host": "127.0.0.1", "port": port})


@pytest.mark.parametrize(
    ("element", "status", "said"),
    [
        ('"00201208": {"vr": "IS", "Value": [1e400]}', 400, "too large for its element's VR"),  # OverflowError
        ('"00280010": {"vr": "US", "Value": [1e400]}', 400, "too large for its element's VR"),
        ('"00189089": {"vr": "FD", "Value": [' + "9" * 4000 + "]}", 400, "too large for its element's VR"),
        ('"00201208": {"vr": "IS", "Value": [' + HUGE + "]}", 400, "not JSON"),  # the decoder's own limit
        ('"00201208": {"vr": "IS", "Value": [Infinity]}', 400, "RFC 8259"),
        ('"00081110": {"vr": "SQ", "Value": [' + "[" * 5000 + "]" * 5000 + "]}", 400, "nests more than"),
    ],
    ids=["IS-1e400", "US-1e400", "FD-4000-digits", "IS-5000-digits", "Infinity", "deep"],
)
def test_worklist_numbers(web: Callable[..., Any], element: str, status: int, said: str) -> None:
    """POST /api/worklist: pydicom's from_json raises OverflowError for an IS/US of infinity or an FD of
    4000 digits, and Python's decoder RecursionError for deep nesting: both were 500s. The body is now
    read as every control body is (web/jsonbody.py: bounded, depth-limited, no NaN or Infinity)."""
    run(web, "POST", "/api/worklist", status, said, content=(WORKLIST_ENTRY % element).encode(), headers=JSON)


def test_worklist_body_is_bounded_before_it_is_read(web: Callable[..., Any]) -> None:
    """The worklist read the whole body (request.body()) before it looked at its size."""
    big = (WORKLIST_ENTRY % ('"00081030": {"vr": "LO", "Value": ["%s"]}' % ("x" * (2 << 20)))).encode()
    run(web, "POST", "/api/worklist", 413, "at most", content=big, headers=JSON)


# ------------------------------------------------------------------ DICOMweb: Host header and query parameters


@pytest.mark.parametrize(
    "url", ["/dicom-web/studies", f"/dicom-web/studies/{STUDY}/metadata", f"/dicom-web/studies/{STUDY}/series"]
)
@pytest.mark.parametrize(
    "host",
    [b"testserver:" + HUGE.encode(), b"testserver:" + SUPERSCRIPT_TWO, b"testserver:-1", b"testserver:99999", b"[::1"],
    ids=["5000-digits", "superscript", "negative", "over-65535", "open-bracket"],
)
def test_dicomweb_host_port_that_is_no_port(web: Callable[..., Any], url: str, host: bytes) -> None:
    """The Retrieve URL / BulkDataURI root comes from the Host header; urllib's port parse raised
    ValueError (a 500). RFC 9112 §3.2: an invalid Host is answered 400."""
    run(web, "GET", url, 400, "is not host[:port]", headers={"Host": host})


@pytest.mark.parametrize(
    ("url", "params", "said"),
    [
        ("/dicom-web/studies", {"limit": HUGE}, "whole number"),
        ("/dicom-web/studies", {"offset": HUGE}, "whole number"),
        (f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/{HUGE}", {}, "comma-separated"),
        (
            "/dicom-web/wado",
            {"requestType": "WADO", "studyUID": STUDY, "seriesUID": SERIES, "objectUID": SOP, "frameNumber": HUGE},
            "frameNumber",
        ),
        ("/api/studies", {"limit": HUGE}, "whole number"),
        ("/api/associations", {"limit": HUGE}, "whole number"),
        ("/api/corrections", {"limit": HUGE}, "whole number"),
        ("/api/audit", {"limit": HUGE}, "whole number"),
        ("/ui/", {"size": HUGE}, "size must be"),
        ("/ui/", {"offset": HUGE}, "offset must be"),
    ],
)
def test_query_parameters_of_thousands_of_digits(
    web: Callable[..., Any],
    url: str,
    params: dict[str, str],
    said: str,
) -> None:
    """Guards that hold: every number parameter goes through search.ascii_digits (at most 18 digits)."""
    run(web, "GET", url, 400, said, params=params)
