"""REST for other nodes, in process, against real peers on loopback: DCMTK storescp as the send
target, and a second in-process minipacs (DicomServer on its own archive) as the remote for echo,
query and retrieve. Our own DICOM listener (storage) runs too, as the C-MOVE destination."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import job_queue, open_archive, outbound
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.users import Role, User, hash_password
from minipacs.net.dul import Timeouts
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from minipacs.services.verification import VerificationSCP
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.dicomgen import write_ct
from tests.peers import dataset_bytes, dcmtk, free_port, wait_for_port

TIMEOUTS = Timeouts(acse=5.0, dimse=10.0, idle=30.0)
FAST = {"n": 2**4}
USERS = (
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
)


def auth(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@dataclass
class Env:
    client: httpx.AsyncClient
    archive: Archive  # ours
    nodes: NodeRegistry
    remote_archive: Archive
    remote: Node  # the remote minipacs as registered with us
    study: str  # a study stored at the remote
    series: list[str]
    remote_files: dict[str, Path]  # SOP Instance UID -> source file
    ctx: AppContext
    tmp: Path

    async def job(self, job_id: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
        for _ in range(400):
            r = await self.client.get(f"/api/jobs/{job_id}", headers=headers or {})
            assert r.status_code == 200
            if r.json()["state"] in ("done", "failed"):
                return dict(r.json())
            await asyncio.sleep(0.025)
        raise AssertionError("job did not finish")


@asynccontextmanager
async def environment(tmp: Path, users: tuple[User, ...] = ()) -> AsyncIterator[Env]:
    settings = Settings(
        data_dir=tmp / "local",
        fsync=False,
        ae_title="MINIPACS",
        users=users,
        connect_timeout=5.0,
        acse_timeout=5.0,
        dimse_timeout=10.0,
        # a peer that is down: tried twice, quickly
        job_max_attempts=2,
        job_retry_seconds=0.05,
        job_retry_max_seconds=0.1,
        job_poll_seconds=0.05,
        job_progress_seconds=0.05,
    )
    archive = await open_archive(settings)
    metadata = MetadataStore(archive)
    metadata.attach()
    nodes = NodeRegistry(archive)
    remote_archive = await open_archive(Settings(data_dir=tmp / "remote", fsync=False))
    remote_nodes = NodeRegistry(remote_archive)
    study, series = str(generate_uid()), [str(generate_uid()), str(generate_uid())]
    files: dict[str, Path] = {}
    for i in range(4):
        sop = generate_uid()
        files[sop] = write_ct(
            tmp / "src" / f"{i}.dcm", study_uid=study, series_uid=series[i % 2], sop_uid=sop, InstanceNumber=i + 1
        )
        await remote_archive.import_file(files[sop], Origin("import"))
    ours = DicomServer(
        "MINIPACS", [VerificationSCP(), StorageSCP(archive)], host="127.0.0.1", port=0, timeouts=TIMEOUTS
    )
    remote = DicomServer(
        "REMOTE",
        [
            VerificationSCP(),
            StorageSCP(remote_archive, scu_role=True),
            QueryRetrieveFindSCP(remote_archive, ae_title="REMOTE"),
            MoveSCP(remote_archive, remote_nodes),
            GetSCP(remote_archive),
        ],
        host="127.0.0.1",
        port=0,
        timeouts=TIMEOUTS,
    )
    await ours.start()
    await remote.start()
    await remote_nodes.add(Node("MINIPACS", "127.0.0.1", ours.port))
    registered = await nodes.add(Node("REMOTE", "127.0.0.1", remote.port))
    calls = outbound(settings, archive)
    jobs = job_queue(settings, archive, nodes, calls)
    await jobs.start()
    ctx = AppContext(settings, archive, metadata, nodes, jobs=jobs, outbound=calls)
    transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 5555))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Env(client, archive, nodes, remote_archive, registered, study, series, files, ctx, tmp)
    finally:
        await jobs.close()
        await ours.close(grace=2.0)
        await remote.close(grace=2.0)
        await metadata.close()
        await archive.close()
        await remote_archive.close()


def run(tmp: Path, body: Callable[[Env], Coroutine[Any, Any, None]], **kw: Any) -> None:
    async def main() -> None:
        async with environment(tmp, **kw) as env:
            await body(env)

    asyncio.run(main())


# ------------------------------------------------------------------ echo, edit


def test_echo_ok_and_unreachable(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        r = await env.client.post(f"/api/nodes/{env.remote.id}/echo")
        assert r.status_code == 200
        assert r.json()["ok"] is True and r.json()["status"] == 0 and r.json()["ms"] >= 0
        r = await env.client.post("/api/nodes/REMOTE/echo")  # an AE title only one node has
        assert r.json()["ok"] is True
        gone = await env.nodes.add(Node("GONE", "127.0.0.1", free_port()))
        r = await env.client.post(f"/api/nodes/{gone.id}/echo")
        assert r.status_code == 200 and r.json()["ok"] is False
        assert "cannot connect" in r.json()["message"] and "GONE" in r.json()["message"]

    run(tmp_path, body)


def test_edit_node(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        r = await env.client.put(
            f"/api/nodes/{env.remote.id}", json={"description": "the other PACS", "permissions": ["echo", "find"]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["description"] == "the other PACS" and r.json()["permissions"] == ["echo", "find"]
        assert r.json()["port"] == env.remote.port and r.json()["id"] == env.remote.id
        other = await env.nodes.add(Node("OTHER", "127.0.0.2", 104))
        r = await env.client.put(f"/api/nodes/{other.id}", json={"ae_title": "REMOTE", "host": "127.0.0.1"})
        assert r.status_code == 400 and "already registered" in r.json()["error"]["message"]
        for bad in ({"port": 70000}, {"ae_title": "X" * 17}, {"colour": "red"}, {"tls": "maybe"}):
            r = await env.client.put(f"/api/nodes/{other.id}", json=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_node", (bad, r.text)
        r = await env.client.put(f"/api/nodes/{other.id}", content=b"[1,2]")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert await env.nodes.get(other.id or 0) == other
        listed = (await env.client.get("/api/nodes")).json()
        assert {n["id"] for n in listed} == {env.remote.id, other.id}

    run(tmp_path, body)


# ------------------------------------------------------------------ send to DCMTK storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Any:
    out = tmp_path / "storescp-out"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", port.__str__()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_send_study_and_series_to_storescp(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    port, out = storescp

    async def body(env: Env) -> None:
        for path in env.remote_files.values():  # the same instances, stored with us this time
            await env.archive.import_file(path, Origin("import"))
        node = await env.nodes.add(Node("STORESCP", "127.0.0.1", port))
        r = await env.client.post("/api/send", json={"node": node.id, "level": "series", "uids": [env.series[0]]})
        assert r.status_code == 202, r.text
        job = await env.job(r.json()["id"])
        assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 2, 2, 0), job
        r = await env.client.post("/api/send", json={"node": "STORESCP", "level": "studies", "uids": env.study})
        job = await env.job(r.json()["id"])
        assert (job["state"], job["done"], job["failed"]) == ("done", 4, 0), job
        assert "sent 4 of 4" in job["message"]
        arrived = sorted(dataset_bytes(p) for p in out.iterdir())  # storescp names files by SOP Instance UID
        assert arrived == sorted(dataset_bytes(p) for p in env.remote_files.values())
        jobs = (await env.client.get("/api/jobs")).json()
        assert [j["kind"] for j in jobs] == ["send", "send"] and jobs[1]["total"] == 2

    run(tmp_path, body)


def test_send_to_nobody_is_a_failed_job(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        path = next(iter(env.remote_files.values()))
        await env.archive.import_file(path, Origin("import"))
        gone = await env.nodes.add(Node("GONE", "127.0.0.1", free_port()))
        r = await env.client.post("/api/send", json={"node": gone.id, "level": "study", "uids": [env.study]})
        job = await env.job(r.json()["id"])
        assert job["state"] == "failed" and job["failed"] == 1 and "cannot send to 'GONE'" in job["message"]
        assert job["attempts"] == 2 and "gave up after 2 attempt(s)" in job["message"], job
        assert "cannot send to 'GONE'" in job["last_error"] and job["runner"] == env.ctx.jobs.runner  # type: ignore[union-attr]

    run(tmp_path, body)


# ------------------------------------------------------------------ query, retrieve


def test_query_remote(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/query", json={"level": "study", "keys": {"PatientID": "P1"}}
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert r.json()["count"] == 1 and results[0]["0020000D"]["Value"] == [env.study]
        assert results[0]["00100020"]["Value"] == ["P1"]
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/query",
            json={"level": "SERIES", "keys": {"StudyInstanceUID": env.study, "Modality": ""}},
        )
        assert {m["0020000E"]["Value"][0] for m in r.json()["results"]} == set(env.series)
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/query", json={"level": "image", "keys": {"StudyInstanceUID": env.study}}
        )
        assert r.status_code == 502 and r.json()["error"]["code"] == "remote_refused"  # no SeriesInstanceUID
        assert "0xA900" in r.json()["error"]["message"]
        keys = {"StudyInstanceUID": env.study, "SeriesInstanceUID": env.series[0]}
        r = await env.client.post(f"/api/nodes/{env.remote.id}/query", json={"level": "image", "keys": keys})
        assert r.json()["count"] == 2
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/query",
            json={"level": "series", "keys": {"StudyInstanceUID": env.study}, "limit": 1},
        )
        assert r.json()["count"] == 1 and r.json()["truncated"] is True
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/query", json={"level": "study", "keys": {"PatientID": "NOBODY"}}
        )
        assert r.json()["count"] == 0

    run(tmp_path, body)


@pytest.mark.parametrize("method", ["move", "get"])
def test_retrieve_into_archive(tmp_path: Path, method: str) -> None:
    async def body(env: Env) -> None:
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/retrieve", json={"level": "series", "uids": [env.series[1]], "method": method}
        )
        assert r.status_code == 202, r.text
        job = await env.job(r.json()["id"])
        assert (job["state"], job["done"], job["failed"]) == ("done", 2, 0), job
        assert await env.archive.count_instances() == 2
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/retrieve", json={"level": "study", "uids": [env.study], "method": method}
        )
        job = await env.job(r.json()["id"])
        assert job["state"] == "done" and job["done"] == 4, job
        assert await env.archive.count_instances() == 4
        stored = (await env.client.get("/api/instances")).json()
        assert {s["SOPInstanceUID"] for s in stored} == set(env.remote_files)

    run(tmp_path, body)


def test_retrieve_series_naming_their_study(tmp_path: Path) -> None:
    """The StudyInstanceUID above a series-level retrieve (PS3.4 C.4.2.2.1), as strict peers need it."""

    async def body(env: Env) -> None:
        r = await env.client.post(
            f"/api/nodes/{env.remote.id}/retrieve",
            json={"level": "series", "uids": [env.series[0]], "study": env.study},
        )
        assert r.status_code == 202, r.text
        job = await env.job(r.json()["id"])
        assert (job["state"], job["completed"], job["warning"], job["failed"]) == ("done", 2, 0, 0), job
        assert await env.archive.count_instances() == 2

    run(tmp_path, body)


def test_move_when_the_remote_does_not_know_us(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        env.ctx.settings = Settings(data_dir=env.tmp / "local", ae_title="STRANGER", connect_timeout=5.0)
        env.ctx.outbound = outbound(env.ctx.settings, env.archive)  # bootstrap gives the web how we call out
        ours = env.ctx.jobs
        assert ours is not None
        await ours.close()  # ... and the job queue its handlers, calling out as STRANGER
        env.ctx.jobs = job_queue(env.ctx.settings, env.archive, env.nodes, env.ctx.outbound)
        await env.ctx.jobs.start()
        try:
            r = await env.client.post(
                f"/api/nodes/{env.remote.id}/retrieve", json={"level": "study", "uids": [env.study]}
            )
            job = await env.job(r.json()["id"])
        finally:
            await env.ctx.jobs.close()
        assert job["state"] == "failed" and "0xA801" in job["message"] and "STRANGER" in job["message"]
        assert await env.archive.count_instances() == 0

    run(tmp_path, body)


# ------------------------------------------------------------------ hostile input

BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("echo", "/api/nodes/999/echo", {}, 404, "not_found"),
    ("query", "/api/nodes/NOSUCH/query", {"level": "study"}, 404, "not_found"),
    ("retrieve", "/api/nodes/999/retrieve", {"level": "study", "uids": ["1.2.3"]}, 404, "not_found"),
    ("put", "/api/nodes/999", {"port": 104}, 404, "not_found"),
    ("send", "/api/send", {"node": 999, "level": "study", "uids": ["1.2.3"]}, 404, "not_found"),
    ("send", "/api/send", {"node": "{remote}", "level": "frame", "uids": ["1.2.3"]}, 400, "invalid_level"),
    ("send", "/api/send", {"node": "{remote}", "level": ["study"], "uids": ["1.2.3"]}, 400, "invalid_level"),
    (
        "send",
        "/api/send",
        {"node": "{remote}", "level": "study", "uids": ["../../etc/passwd"]},
        400,
        "invalid_identifier",
    ),
    ("send", "/api/send", {"node": "{remote}", "level": "study", "uids": ["1.2.*"]}, 400, "invalid_identifier"),
    ("send", "/api/send", {"node": "{remote}", "level": "study", "uids": []}, 400, "invalid_uids"),
    ("send", "/api/send", {"node": "{remote}", "level": "study", "uids": [1, 2]}, 400, "invalid_uids"),
    ("send", "/api/send", {"node": "{remote}", "level": "study", "uids": ["1." + "2" * 70]}, 400, "invalid_identifier"),
    ("send", "/api/send", {"node": "{remote}", "level": "study", "uids": ["1.2.3.4.5"]}, 404, "not_found"),
    ("send", "/api/send", {"node": None, "level": "study", "uids": ["1.2.3"]}, 400, "invalid_node"),
    ("send", "/api/send", {"node": "{remote}", "level": "patient", "uids": ["A", "B"]}, 400, "invalid_uids"),
    (
        "retrieve",
        "/api/nodes/{remote}/retrieve",
        {"level": "study", "uids": ["1.2.3"], "method": "steal"},
        400,
        "invalid_method",
    ),
    (
        "retrieve",
        "/api/nodes/{remote}/retrieve",
        {"level": "series", "uids": ["1.2.3'; DROP TABLE x"]},
        400,
        "invalid_identifier",
    ),
    ("retrieve", "/api/nodes/{remote}/retrieve", {"level": "bogus", "uids": ["1.2.3"]}, 400, "invalid_level"),
    (
        "retrieve",
        "/api/nodes/{remote}/retrieve",
        {"level": "series", "uids": ["1.2.3"], "study": "../etc"},
        400,
        "invalid_identifier",
    ),
    ("query", "/api/nodes/{remote}/query", {"level": "study", "keys": {"NotAKeyword": "x"}}, 400, "invalid_keys"),
    ("query", "/api/nodes/{remote}/query", {"level": "study", "keys": ["PatientID"]}, 400, "invalid_keys"),
    ("query", "/api/nodes/{remote}/query", {"level": "study", "keys": {"NumberOfFrames": "many"}}, 400, "invalid_keys"),
    ("query", "/api/nodes/{remote}/query", {"level": "study", "limit": 0}, 400, "invalid_limit"),
    ("query", "/api/nodes/{remote}/query", {"level": "volume"}, 400, "invalid_level"),
]


@pytest.mark.parametrize(("kind", "path", "payload", "status", "code"), BAD_REQUESTS)
def test_hostile_input_is_a_clear_4xx_and_changes_nothing(
    tmp_path: Path, kind: str, path: str, payload: dict[str, Any], status: int, code: str
) -> None:
    async def body(env: Env) -> None:
        before = await env.nodes.list()
        url = path.replace("{remote}", str(env.remote.id))
        data = {k: str(env.remote.id) if v == "{remote}" else v for k, v in payload.items()}
        method = env.client.put if kind == "put" else env.client.post
        r = await method(url, json=data)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and len(r.json()["error"]["message"]) > 10
        assert (await env.client.get("/api/jobs")).json() == []
        assert await env.nodes.list() == before
        assert await env.archive.count_instances() == 0

    run(tmp_path, body)


def test_broken_bodies(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        for content in (b"not json", b"[]", b"\xff\xfe", b'"text"'):
            r = await env.client.post("/api/send", content=content)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        for missing in ("0123456789abcdef", "12345"):
            r = await env.client.get(f"/api/jobs/{missing}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    run(tmp_path, body)


def test_ambiguous_ae_title_asks_for_the_id(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.nodes.add(Node("REMOTE", "127.0.0.9", 104))
        r = await env.client.post("/api/nodes/REMOTE/echo")
        assert r.status_code == 409 and "name the node by its id" in r.json()["error"]["message"]

    run(tmp_path, body)


def test_roles(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        viewer, operator, admin = auth("vic", "v-pass"), auth("oli", "o-pass"), auth("ada", "a-pass")
        rid = env.remote.id
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            ("post", f"/api/nodes/{rid}/echo", {}),
            ("post", f"/api/nodes/{rid}/query", {"level": "study"}),
            ("post", f"/api/nodes/{rid}/retrieve", {"level": "study", "uids": [env.study]}),
            ("post", "/api/send", {"node": rid, "level": "study", "uids": [env.study]}),
            ("put", f"/api/nodes/{rid}", {"description": "changed"}),
        ]
        for verb, url, payload in attempts:
            r = await env.client.request(verb.upper(), url, json=payload, headers=viewer)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", url
        r = await env.client.put(f"/api/nodes/{rid}", json={"description": "changed"}, headers=operator)
        assert r.status_code == 403
        assert (await env.client.get("/api/jobs", headers=viewer)).json() == []
        assert (await env.nodes.get(rid or 0)) == env.remote
        assert await env.archive.count_instances() == 0
        r = await env.client.post(f"/api/nodes/{rid}/echo", headers=operator)
        assert r.json()["ok"] is True
        r = await env.client.post(
            f"/api/nodes/{rid}/retrieve",
            json={"level": "study", "uids": [env.study], "method": "get"},
            headers=operator,
        )
        assert r.status_code == 202
        assert (await env.job(r.json()["id"], viewer))["state"] == "done"
        r = await env.client.put(f"/api/nodes/{rid}", json={"description": "changed"}, headers=admin)
        assert r.status_code == 200

    run(tmp_path, body, users=USERS)


def test_openapi_lists_the_new_operations(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        paths = (await env.client.get("/api/openapi.json")).json()["paths"]
        for path in (
            "/api/nodes/{id}/echo",
            "/api/nodes/{id}/query",
            "/api/nodes/{id}/retrieve",
            "/api/send",
            "/api/jobs/{id}",
            "/api/worklist",
            "/api/worklist/{id}",
        ):
            assert path in paths
        assert "put" in paths["/api/nodes/{id}"]

    run(tmp_path, body)
