"""REST worklist entries: CRUD in PS3.18 JSON, hostile bodies, roles."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from minipacs.core.worklist import Worklist
from tests.worklist_data import entry

FAST = {"n": 2**4}
USERS = (
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
)


def auth(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def ps318(**kw: Any) -> dict[str, Any]:
    ds = entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", **kw)
    result: dict[str, Any] = ds.to_json_dict()
    return result


def test_add_list_read_remove(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/api/worklist", json=ps318())
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["status"] == "SCHEDULED" and created["summary"]["accession"] == "ACC1"
        assert created["dataset"]["00100020"] == {"vr": "LO", "Value": ["123456"]}
        assert created["dataset"]["00400100"]["Value"][0]["00080060"]["Value"] == ["CT"]
        assert r.headers["Location"] == f"/api/worklist/{created['id']}"
        r = await client.post("/api/worklist", json={"dataset": ps318(study_uid="1.2.3.4")})
        assert r.status_code == 201 and r.json()["dataset"]["0020000D"]["Value"] == ["1.2.3.4"]
        listed = (await client.get("/api/worklist")).json()
        assert len(listed) == 2 and len((await client.get("/api/worklist?open=1")).json()) == 2
        r = await client.get(f"/api/worklist/{created['id']}")
        assert r.status_code == 200 and r.json() == created
        r = await client.delete(f"/api/worklist/{created['id']}")
        assert r.status_code == 200 and r.json() == {"removed": 1}
        assert (await client.get(f"/api/worklist/{created['id']}")).status_code == 404
        assert len(await Worklist(archive).list()) == 1

    web(body)


def _without(key: str) -> dict[str, Any]:
    data = ps318()
    del data[key]
    return data


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"{}", 400, "invalid_json"),
        (b'{"00100020": {"vr": "XX", "Value": ["1"]}}', 400, "invalid_dataset"),
        (b'{"nonsense": {"vr": "LO", "Value": ["1"]}}', 400, "invalid_dataset"),
        (b'{"00100020": {"vr": "LO", "Value": "notalist"}}', 400, "invalid_dataset"),
        (b'{"00100020": {"vr": "LO", "Value": ["123"]}}', 400, "invalid_worklist_entry"),  # no procedure step
        (None, 400, "invalid_worklist_entry"),  # no PatientID
        (b"{" + b'"x":' * 10 + b"1" + b"}" * 10, 400, "invalid_json"),
    ],
)
def test_hostile_bodies_change_nothing(web: Callable[..., Any], content: bytes | None, status: int, code: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        import json

        data = content if content is not None else json.dumps(_without("00100020")).encode()
        r = await client.post("/api/worklist", content=data, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and len(r.json()["error"]["message"]) > 10
        assert await Worklist(archive).list() == []

    web(body)


def test_unknown_and_bad_ids(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.post("/api/worklist", json=ps318())
        for path in (
            "/api/worklist/999",
            "/api/worklist/ACC1",
            "/api/worklist/..%2F..",
            "/api/worklist/-1",
            "/api/worklist/" + "9" * 40,
        ):
            for method in ("GET", "DELETE"):
                r = await client.request(method, path)
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
        assert len(await Worklist(archive).list()) == 1

    web(body)


def test_viewer_may_read_only(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        viewer, operator = auth("vic", "v-pass"), auth("oli", "o-pass")
        r = await client.post("/api/worklist", json=ps318(), headers=viewer)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await client.post("/api/worklist", json=ps318(), headers=operator)
        assert r.status_code == 201
        pk = r.json()["id"]
        assert (await client.delete(f"/api/worklist/{pk}", headers=viewer)).status_code == 403
        assert len((await client.get("/api/worklist", headers=viewer)).json()) == 1
        assert (await client.get(f"/api/worklist/{pk}", headers=viewer)).status_code == 200
        assert (await client.get("/api/worklist")).status_code == 401
        assert (await client.delete(f"/api/worklist/{pk}", headers=operator)).status_code == 200

    web(body, users=USERS)


# ------------------------------------------------------------------ issue 12 item 7: one validation, IDs generated


def test_entry_without_procedure_ids_gets_both_type1_ids(web: Callable[..., Any]) -> None:
    """PS3.4 Table K.6-1: Requested Procedure ID and Scheduled Procedure Step ID are Type 1 return keys."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        data = ps318()
        del data["00401001"]  # Requested Procedure ID
        del data["00400100"]["Value"][0]["00400009"]  # Scheduled Procedure Step ID
        r = await client.post("/api/worklist", json=data)
        assert r.status_code == 201, r.text
        created = r.json()["dataset"]
        rp = created["00401001"]["Value"][0]
        assert len(rp) == 16 and created["00400100"]["Value"][0]["00400009"]["Value"] == [rp]
        r = await client.post("/api/worklist", json=ps318())  # given IDs stay as they are
        assert r.json()["dataset"]["00401001"]["Value"] == ["RPACC1"]

    web(body)


_CLI_BASE = ["worklist", "add", "--patient-id", "42", "--modality", "CT"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--start", "2026-12-07"], "--start"),  # would reach modalities as date '2026-12-' and time '07'
        (["--start", "20261207-0930"], "--start"),
        (["--sex", "Male"], "--sex"),
        (["--birth-date", "1980-01-01"], "--birth-date"),
        (["--accession", "A" * 17], "--accession"),  # SH: at most 16 characters
    ],
)
def test_cli_worklist_add_refuses_what_rest_refuses(
    web: Callable[..., Any], tmp_path: Any, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    from minipacs.cli.main import build_parser, main
    from minipacs.cli.worklist import _entry_dataset

    data = ["--data", str(tmp_path / "cli")]
    assert main([*_CLI_BASE, *data, *flags]) == 2
    err = capsys.readouterr().err
    assert "worklist entry refused" in err and named in err, err
    assert main(["worklist", "list", *data, "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    entry_ds = _entry_dataset(build_parser().parse_args([*_CLI_BASE, *flags]))

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/api/worklist", json=entry_ds.to_json_dict())
        assert r.status_code == 400, r.text
        assert await Worklist(archive).list() == []

    web(body)


def test_cli_worklist_add_and_rest_take_the_same_good_values(
    web: Callable[..., Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from minipacs.cli.main import build_parser, main
    from minipacs.cli.worklist import _entry_dataset

    flags = ["--start", "202612070930", "--sex", "M", "--birth-date", "19800101", "--accession", "A" * 16]
    assert main([*_CLI_BASE, "--data", str(tmp_path / "cli"), *flags]) == 0
    out = capsys.readouterr().out
    assert "requested procedure " in out and "requested procedure ," not in out
    entry_ds = _entry_dataset(build_parser().parse_args([*_CLI_BASE, *flags]))

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/api/worklist", json=entry_ds.to_json_dict())
        assert r.status_code == 201, r.text

    web(body)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"00100010": "x"}', "the element 00100010 must be an object"),
        (b'{"00100010": {"Value": ["x"]}}', 'needs "vr"'),
        (b'{"00100010": {"vr": "PN", "Value": "x"}}', 'the "Value" of 00100010 must be a list'),
        (b'{"00400100": {"vr": "SQ", "Value": ["a"]}}', "item 1 of the sequence 00400100"),
        (b'{"00400100": {"vr": "SQ", "Value": [{"zz": 1}]}}', "'00400100 item 1 > zz' is not a tag"),
        (b'{"00100020": {"vr": "LO", "Value": ["1"], "Other": 1}}', "'Other'"),
        (b'{"00100010": {"vr": "PN", "Value": [{"Alphabetic": {"a": 1}}]}}', "does not fit"),
    ],
)
def test_a_wrong_shape_is_named_not_python_text(web: Callable[..., Any], content: bytes, says: str) -> None:
    """Issue 12 item 24: a wrong PS3.18 JSON shape said "string indices must be integers"."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/api/worklist", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "invalid_dataset" and says in message, message
        for python in ("indices", "object has no attribute", "'str'", "'dict'", "NoneType", "subscriptable"):
            assert python not in message, message

    web(body)
