"""Hostile input on the control API that landed together (rules, corrections, anonymize, labels,
compression, media, audit; docs/HOSTILE_INPUT.md): every refusal is a 4xx with a sentence, never a
500, and changes nothing -- no file rewritten, no correction logged, no rule stored, no job queued."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections, list_corrections
from minipacs.core.errors import InvalidCorrection
from minipacs.core.metadata import MetadataStore
from minipacs.core.nodes import NodeRegistry
from minipacs.core.users import Role, User, hash_password
from minipacs.web.app import create_app
from minipacs.web.jsonbody import MAX_JSON_BYTES, MAX_JSON_DEPTH
from minipacs.web.types import AppContext
from tests.index.pg import postgres_schema_url
from tests.stored_files import instance_path
from tests.web.conftest import Body, part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"
JSON = {"Content-Type": "application/json"}

#: Every new endpoint that takes a JSON body (method, path).
JSON_ENDPOINTS = [
    ("POST", "/api/rules"),
    ("PUT", "/api/rules/r1"),
    ("POST", "/api/patients/P1/modify"),
    ("POST", "/api/patients/merge"),
    ("POST", f"/api/series/{SERIES}/move"),
    ("POST", "/api/storage/compress"),
    ("POST", f"/api/studies/{STUDY}/anonymize"),
    ("POST", "/api/nodes"),
]


@pytest.fixture
def web(tmp_path: Path) -> Callable[..., Any]:
    """tests/web/conftest.py's ``web``, with the AE registry the server has (rules check ``send_to``)."""

    def run(body: Body, **settings: Any) -> Any:
        async def main() -> Any:
            config = Settings(data_dir=tmp_path / "data", fsync=False, **settings)
            archive = await open_archive(config)
            metadata = MetadataStore(archive)
            metadata.attach()
            app = create_app(AppContext(config, archive, metadata, NodeRegistry(archive)))
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    return await body(client, archive)
            finally:
                await metadata.close()
                await archive.close()

        return asyncio.run(main())

    return run


def files_of(archive: Archive) -> dict[str, str]:
    root = archive.settings.data_dir
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.dcm"))}


async def stored(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/instances", content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP))
    assert r.status_code == 200, r.text


def refused(r: httpx.Response, status: int = 400) -> str:
    """The refusal's sentence, after checking it is ``status`` with the error body every refusal has."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    message: str = r.json()["error"]["message"]
    assert len(message) > 10
    return message


# ------------------------------------------------------------------ bodies: size, depth, types


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
def test_oversized_and_deeply_nested_bodies_are_4xx_not_500(web: Callable[..., Any], method: str, path: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stored(client)
        before = files_of(archive)
        big = b'{"changes": {"PatientName": "' + b"x" * (10 * 1024 * 1024) + b'"}}'  # 10 MB
        assert refused(await client.request(method, path, content=big, headers=JSON), 413)
        deep = b"[" * 20_000 + b"]" * 20_000  # Python's decoder: RecursionError; under anonymize's 64 KiB
        assert "nests more than" in refused(await client.request(method, path, content=deep, headers=JSON))
        assert "not JSON" in refused(await client.request(method, path, content=b"\xff\xfe{", headers=JSON))
        for wrong in (b"[]", b'"x"', b"5", b"null", b"{"):
            assert refused(await client.request(method, path, content=wrong, headers=JSON))
        assert files_of(archive) == before and await list_corrections(archive) == []

    web(body)


def test_json_limits_at_the_edge(web: Callable[..., Any]) -> None:
    """MAX_JSON_BYTES bytes pass the size check and one more is 413; MAX_JSON_DEPTH levels pass the depth
    check and one more is refused; NaN (not RFC 8259 JSON) is refused."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        rule = json.dumps({"name": "r1", "when": "never", "send_to": ["NOWHERE"]}).encode()
        at = rule + b" " * (MAX_JSON_BYTES - len(rule))
        r = await client.post("/api/rules", content=at, headers=JSON)
        assert r.json()["error"]["code"] == "invalid_rule"  # read and parsed: refused for its content
        r = await client.post("/api/rules", content=at + b" ", headers=JSON)
        assert "at most 1048576" in refused(r, 413)

        def nested(levels: int) -> bytes:  # levels arrays/objects deep in all
            return b'{"name": "r1", "x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

        r = await client.post("/api/rules", content=nested(MAX_JSON_DEPTH), headers=JSON)
        assert "unknown key 'x'" in refused(r)
        r = await client.post("/api/rules", content=nested(MAX_JSON_DEPTH + 1), headers=JSON)
        assert f"nests more than {MAX_JSON_DEPTH}" in refused(r)
        r = await client.post("/api/patients/P1/modify", content=b'{"changes": {"PatientName": NaN}}', headers=JSON)
        assert "NaN is not a JSON number" in refused(r)
        assert (await client.get("/api/rules")).json() == []

    web(body)


# ------------------------------------------------------------------ corrections: values the VR cannot hold


@pytest.mark.parametrize(
    ("path", "body", "said"),
    [
        ("/api/patients/P1/modify", {"changes": {"PatientName": "A^B^C^D^E^F"}}, "at most 5 components"),
        ("/api/patients/P1/modify", {"changes": {"PatientBirthDate": "20240230"}}, "not a calendar date"),
        ("/api/patients/P1/modify", {"changes": {"PatientBirthDate": "2024-13-45"}}, "Invalid value for VR DA"),
        ("/api/patients/P1/modify", {"changes": {"PatientSex": "Q"}}, "one of F, M, O"),
        (  # the good value is not written either: all are checked before any file is
            "/api/patients/P1/modify",
            {"changes": {"PatientName": "Good^Name", "PatientBirthDate": "19991399"}},
            "PatientBirthDate",
        ),
        ("/api/patients/P1/modify", {"changes": {"PatientID": "P*"}}, "wildcard"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": "a\u2028b"}}, "line separator"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": "a\x00b"}}, "control character"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": "x" * 1000 * 1000}}, "exceeds the maximum"),
        ("/api/patients/P1/modify", {"changes": {f"K{i}": "x" for i in range(5000)}}, "cannot be corrected"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": None}}, "must be text"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": ["a"]}}, "must be text"),
        ("/api/patients/P1/modify", {"changes": []}, "give the new values"),
        ("/api/patients/P1/modify", {"changes": {"PatientName": "X"}, "force": True}, "unknown key(s) 'force'"),
        ("/api/patients/P1/modify", {"changes": {"StudyDate": "20240101"}}, "is a study attribute"),
        (f"/api/studies/{STUDY}/modify", {"changes": {"StudyDate": "20241345"}}, "Invalid value for VR DA"),
        (f"/api/studies/{STUDY}/modify", {"changes": {"StudyTime": "256199"}}, "Invalid value for VR TM"),
        (f"/api/series/{SERIES}/modify", {"changes": {"Modality": "ct"}}, "Invalid value for VR CS"),
        (f"/api/series/{SERIES}/modify", {"changes": {"SeriesNumber": "12a"}}, "Invalid value for VR IS"),
        ("/api/studies/1.2.abc/modify", {"changes": {"StudyDate": "20240101"}}, "not a valid UID"),
        ("/api/studies/1." + "2" * 70 + "/modify", {"changes": {"StudyDate": "20240101"}}, "characters"),
        ("/api/patients/*/modify", {"changes": {"PatientName": "X"}}, "without \\, * or ?"),
        ("/api/patients/P%00/modify", {"changes": {"PatientName": "X"}}, "printable"),
        ("/api/patients/merge", {"source": "P*", "target": "P1"}, "must be a Patient ID"),
        ("/api/patients/merge", {"source": "P1", "target": "P?"}, "must be a Patient ID"),
        ("/api/patients/merge", {"source": "P\x00", "target": "P1"}, "printable"),
        ("/api/patients/merge", {"source": "P1", "target": "x" * 65}, "1 to 64"),
        ("/api/patients/merge", {"source": ["P1"], "target": "P2"}, "non-empty string"),
        ("/api/patients/merge", {"source": "P1", "target": "P2", "keep": 1}, "unknown key(s) 'keep'"),
        (f"/api/series/{SERIES}/move", {"study": "1.2.*"}, "not a valid UID"),
        (f"/api/series/{SERIES}/move", {"study": "1.2.abc"}, "not a valid UID"),
        (f"/api/series/{SERIES}/move", {"study": "1." + "2" * 70}, "characters"),
        (f"/api/series/{SERIES}/move", {"study": 5}, "non-empty string"),
        (f"/api/series/{SERIES}/move", {"study": STUDY, "to": "x"}, "unknown key(s) 'to'"),
        ("/api/series/1.2.*/move", {"study": "9.9.9"}, "not a valid UID"),
    ],
)
def test_a_correction_the_dicom_model_cannot_hold_is_refused_before_any_file_is_rewritten(
    web: Callable[..., Any], path: str, body: Any, said: str
) -> None:
    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        await stored(client)
        before = files_of(archive)
        assert said in refused(await client.post(path, json=body))
        assert files_of(archive) == before
        assert await list_corrections(archive) == []

    web(run)


def test_a_name_latin_1_cannot_hold_makes_the_file_utf_8_not_question_marks(web: Callable[..., Any]) -> None:
    """The test file declares ISO_IR 100; 王 is not Latin-1: pydicom would write '?' with a warning
    (an error here). The rewritten file is ISO_IR 192 and keeps its other Latin-1 text."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, StudyDescription="Genou gauche é")
        assert (await client.post("/api/instances", content=data)).status_code == 200
        r = await client.post("/api/patients/P1/modify", json={"changes": {"PatientName": "王^小明"}})
        assert r.status_code == 200, r.text
        # the corrected copy, as the index names it (the replaced one stays keep_replaced_seconds beside it)
        ds = pydicom.dcmread(io.BytesIO((await instance_path(archive, SOP)).read_bytes()))
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == "王^小明" and ds.StudyDescription == "Genou gauche é"
        r = await client.post("/api/patients/P1/modify", json={"changes": {"PatientName": "Müller^Jörg"}})
        assert r.status_code == 200  # UTF-8 holds it: the set stays
        ds = pydicom.dcmread(io.BytesIO((await instance_path(archive, SOP)).read_bytes()))
        assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Müller^Jörg"

    web(body)


class _NoJobs:
    """A job queue that must not be used: a refused correction is refused before it is queued."""

    kinds = frozenset({"correct"})

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a correction with an invalid value was queued as a job")


def test_a_large_correction_with_a_bad_value_is_refused_not_queued(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stored(client)
        c = Corrections(archive, jobs=_NoJobs(), inline_max=0)  # type: ignore[arg-type]
        for params in (
            {"operation": "modify", "level": "patient", "target": "P1", "changes": {"PatientSex": "Q"}},
            {"operation": "merge", "source": "P1", "target": "P2", "demographics": {"PatientName": "a\x0bb"}},
        ):
            with pytest.raises(InvalidCorrection):
                await c.submit({**params, "actor": "x"})

    web(body)


# ------------------------------------------------------------------ labels, rules, compression, audit, media


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "said"),
    [
        ("PUT", f"/api/studies/{STUDY}/labels/" + "a" * 5000, None, 400, "1 to 64"),
        ("PUT", f"/api/studies/{STUDY}/labels/a';--", None, 400, "letters A-Z"),
        ("PUT", f"/api/studies/{STUDY}/labels/%C3%A9", None, 400, "letters A-Z"),
        ("PUT", "/api/studies/1.2.*/labels/ok", None, 400, "not a valid UID"),
        ("POST", "/api/rules", {"name": "a" * 100_000, "when": "instance", "send_to": ["X"]}, 400, "1 to 64"),
        ("POST", "/api/rules", {"name": "r1", "when": "instance", "stow_to": ["file:///etc/passwd"]}, 400, "http"),
        ("POST", "/api/rules", {"name": "r1", "when": "instance", "stow_to": ["gopher://h/"]}, 400, "http"),
        ("POST", "/api/rules", {"name": "r1", "when": "instance", "send_to": ["NOPE"]}, 400, "not a registered"),
        (
            "POST",
            "/api/rules",
            {"name": "r1", "when": "stable", "stable_seconds": -1, "stow_to": ["http://h/"]},
            400,
            "more than 0",
        ),
        (
            "POST",
            "/api/rules",
            {"name": "r1", "when": "stable", "stable_seconds": 604801, "stow_to": ["http://h/"]},
            400,
            "at most 604800",
        ),
        (
            "POST",
            "/api/rules",
            {"name": "r1", "when": "stable", "stable_seconds": "5", "stow_to": ["http://h/"]},
            400,
            "stable_seconds",
        ),
        (
            "POST",
            "/api/rules",
            {"name": "r1", "when": "instance", "match": {f"K{i}": "x" for i in range(5000)}, "stow_to": ["http://h/"]},
            400,
            "not an attribute the index holds",
        ),
        ("POST", "/api/storage/compress", {"study_uids": "1.2.3.4"}, 400, "list of 1 to"),
        ("POST", "/api/storage/compress", {"study_uids": [None]}, 400, "not a valid UID"),
        ("POST", "/api/storage/compress", {"study_uids": [STUDY], "syntax": {"a": 1}}, 400, "syntax must be"),
        ("POST", f"/api/studies/{STUDY}/anonymize", {"options": [{"a": 1}]}, 400, "list of option names"),
        ("POST", f"/api/studies/{STUDY}/anonymize", {"output": "../../x"}, 400, "one of archive, zip"),
        ("POST", "/api/patients/P%00/anonymize", {}, 400, "printable"),
        ("GET", "/api/audit?user=%00", None, 400, "printable"),
        ("GET", "/api/audit?patient=" + "x" * 65, None, 400, "at most 64"),
        ("GET", "/api/audit?limit=99999999999999999999", None, 400, "1 to 1000"),
        ("GET", "/api/audit?since=2024-13-45", None, 400, "ISO 8601"),
        ("GET", "/api/audit?since=9999-12-31T23:59:59-14:00", None, 400, "years 1 to 9999"),  # was an OverflowError
        ("GET", "/api/audit?until=0001-01-01T00:00:00%2B14:00", None, 400, "years 1 to 9999"),
        (
            "POST",
            "/api/rules",
            {"name": "r1", "when": "instance", "match": {"PatientID": "a\x00"}, "stow_to": ["http://h/"]},
            400,
            "control character",
        ),
        ("GET", "/api/corrections?target=a%00", None, 400, "printable"),
        # a superscript two is isdigit() to Python but not int(): these were 500s
        ("GET", "/api/corrections?limit=%C2%B2", None, 400, "whole number"),
        ("GET", "/api/audit?limit=%C2%B2", None, 400, "whole number"),
        ("GET", "/ui/audit?limit=%C2%B2", None, 400, "whole number"),
        ("GET", "/api/anonymization/mappings?limit=%C2%B2", None, 400, "whole number"),
        ("GET", "/api/worklist/%C2%B2", None, 404, "numeric id"),
        ("POST", "/api/nodes/%C2%B2/echo", None, 404, "GET /api/nodes lists them"),
        ("GET", "/api/patients/P%00/media", None, 400, "printable"),
        ("GET", "/api/studies/1.2.*/media", None, 400, "not a valid UID"),
    ],
)
def test_other_new_inputs_are_refused_with_a_sentence(
    web: Callable[..., Any], method: str, path: str, body: Any, status: int, said: str
) -> None:
    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        await stored(client)
        before = files_of(archive)
        r = await client.request(method, path, json=body) if body is not None else await client.request(method, path)
        assert said in refused(r, status)
        assert files_of(archive) == before and (await client.get("/api/rules")).json() == []
        assert (await client.get(f"/api/studies/{STUDY}/labels")).json() == []

    web(run)


# ------------------------------------------------------------------ who may call the new endpoints

#: The new endpoints that change something or show the audit/mappings, and the permission each declares.
GUARDED = [
    ("POST", "/api/backup", "admin"),
    ("GET", "/api/backup", "admin"),
    ("POST", "/api/rules", "admin"),
    ("PUT", "/api/rules/r1", "admin"),
    ("DELETE", "/api/rules/r1", "admin"),
    ("GET", "/api/rules", "admin"),
    ("POST", "/api/patients/P1/modify", "write"),
    ("POST", f"/api/studies/{STUDY}/modify", "write"),
    ("POST", f"/api/series/{SERIES}/modify", "write"),
    ("POST", "/api/patients/merge", "write"),
    ("POST", f"/api/series/{SERIES}/move", "write"),
    ("POST", f"/api/studies/{STUDY}/anonymize", "write"),
    ("GET", "/api/anonymization/mappings", "admin"),
    ("PUT", f"/api/studies/{STUDY}/labels/ok", "write"),
    ("DELETE", f"/api/studies/{STUDY}/labels/ok", "write"),
    ("POST", "/api/retention/run", "admin"),
    ("POST", "/api/storage/compress", "write"),
    ("GET", "/api/audit", "admin"),
    ("GET", "/ui/audit", "admin"),
]
FAST = {"n": 2**4}
USERS = (
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
)


def test_a_viewer_gets_403_on_every_new_mutating_endpoint(web: Callable[..., Any], tmp_path: Path) -> None:
    import base64

    def basic(name: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers=basic("oli", "o-pass"),
        )
        assert r.status_code == 200
        before = files_of(archive)
        for method, path, needed in GUARDED:
            r = await client.request(method, path, json={}, headers=basic("vic", "v-pass"))
            assert r.status_code == 403, (method, path, r.status_code)
            if needed == "admin":  # an operator may write, but not administer
                r = await client.request(method, path, json={}, headers=basic("oli", "o-pass"))
                assert r.status_code == 403, (method, path, r.status_code)
        assert files_of(archive) == before and await list_corrections(archive) == []

    web(body, users=USERS)


def test_a_nul_in_an_identifier_or_filter_is_400_on_postgresql(web: Callable[..., Any]) -> None:
    """PostgreSQL refuses a NUL in a query parameter (a DataError, which was a 500); SQLite does not."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await stored(client)
        for method, path, payload in [
            ("GET", "/api/audit?user=%00", None),
            ("GET", "/api/audit?patient=P%00", None),
            ("GET", "/api/corrections?target=P%00", None),
            ("POST", "/api/patients/P%00/modify", {"changes": {"PatientName": "X"}}),
            ("POST", "/api/patients/merge", {"source": "P\x00", "target": "P1"}),
        ]:
            r = await client.request(method, path, json=payload)
            assert "printable" in refused(r), path
        assert await list_corrections(archive) == []

    with postgres_schema_url() as url:
        web(body, index_url=url)
