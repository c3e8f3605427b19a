"""/api/rules (admin) and /api/studies/{uid}/deliveries, in-process (core/rules.py, core/routing.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.jobs import JobContext, JobQueue
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.routing import receipt_row
from minipacs.core.rules import rules_from_tables
from minipacs.core.users import Role, User, hash_password
from minipacs.index import routing_repo
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.dicomgen import write_ct

FAST = {"n": 2**4}
USERS = (
    User("oli", hash_password("o-pass", **FAST), Role.OPERATOR),
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
)
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"ada:a-pass").decode()}
OPERATOR = {"Authorization": "Basic " + base64.b64encode(b"oli:o-pass").decode()}
CONFIG_RULES = [{"name": "from-file", "when": "instance", "send_to": ["AI_NODE"]}]


def run(tmp: Path, body: Any) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp / "data", fsync=False, users=USERS, rules=rules_from_tables(CONFIG_RULES))
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        nodes = NodeRegistry(archive)
        await nodes.add(Node("AI_NODE", "127.0.0.1", 11119))
        app = create_app(AppContext(settings, archive, metadata, nodes))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, archive)
        finally:
            await metadata.close()
            await archive.close()

    asyncio.run(main())


def test_rules_crud_admin_only_and_config_rules_read_only(tmp_path: Path) -> None:
    rule = {
        "name": "ct-to-ai",
        "when": "stable",
        "stable_seconds": 30,
        "level": "series",
        "match": {"Modality": ["CT", "MR"], "StudyDate": "20240101-20241231"},
        "calling_aet": "CT*",
        "send_to": ["AI_NODE"],
        "stow_to": ["http://127.0.0.1:9/dicom-web"],
    }

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        r = await client.post("/api/rules", json=rule, headers=OPERATOR)
        assert r.status_code == 403
        r = await client.post("/api/rules", json=rule, headers=ADMIN)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["source"] == "api" and made["read_only"] is False
        assert made["match"] == {"Modality": ["CT", "MR"], "StudyDate": "20240101-20241231"}
        assert made["level"] == "series" and made["stable_seconds"] == 30
        r = await client.post("/api/rules", json=rule, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "rule_conflict"
        r = await client.get("/api/rules", headers=ADMIN)
        listed = {x["name"]: x for x in r.json()}
        assert set(listed) == {"from-file", "ct-to-ai"} and listed["from-file"]["read_only"] is True
        r = await client.put("/api/rules/ct-to-ai", json={**rule, "stable_seconds": 5}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["stable_seconds"] == 5
        # the config file's rule cannot be changed here, and says where to change it
        r = await client.put("/api/rules/from-file", json=CONFIG_RULES[0], headers=ADMIN)
        assert r.status_code == 409 and "config file" in r.json()["error"]["message"]
        r = await client.delete("/api/rules/from-file", headers=ADMIN)
        assert r.status_code == 409
        r = await client.delete("/api/rules/ct-to-ai", headers=ADMIN)
        assert r.status_code == 204
        r = await client.get("/api/rules/ct-to-ai", headers=ADMIN)
        assert r.status_code == 404

    run(tmp_path, body)


def test_invalid_rules_are_refused_naming_the_rule_and_key(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "when": "instance", "send_to": ["NOWHERE"]}, "'NOWHERE', which is not a registered node"),
        ({"name": "x", "when": "sometimes", "send_to": ["AI_NODE"]}, "when 'sometimes' must be one of"),
        ({"name": "x", "when": "stable", "send_to": ["AI_NODE"]}, "needs stable_seconds"),
        ({"name": "x", "when": "instance", "send_to": ["AI_NODE"], "colour": 1}, "unknown key 'colour'"),
        ({"name": "x", "when": "instance", "match": {"Colour": "red"}, "send_to": ["AI_NODE"]}, "match key 'Colour'"),
        ({"name": "x", "when": "instance"}, "it does nothing"),
        ({"name": "x", "when": "scheduled", "send_to": ["AI_NODE"]}, "prefetch_from"),
        ({"name": "x", "when": "instance", "stow_to": ["ftp://a"]}, "not an http:// or https:// URL"),
        ({"name": "bad name!", "when": "instance", "send_to": ["AI_NODE"]}, "rule name"),
    ]

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        for rule, words in cases:
            r = await client.post("/api/rules", json=rule, headers=ADMIN)
            assert r.status_code == 400, (rule, r.text)
            message = r.json()["error"]["message"]
            assert words in message, (rule, message)
            if rule["name"] == "x":
                assert "rule 'x'" in message

    run(tmp_path, body)


def test_study_deliveries(tmp_path: Path) -> None:
    study, series = str(generate_uid()), str(generate_uid())
    sops = [str(generate_uid()) for _ in range(3)]

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        rows = [receipt_row(7, "ct-to-ai", "C-STORE", "AI_NODE", study, series, s) for s in sops]
        await archive.write(lambda conn: routing_repo.insert_deliveries(conn, rows))
        now = dt.datetime.now(dt.UTC)
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, 7, "sent", "", now, sops=sops[:2]))
        why = "cannot send to 'AI_NODE' at 127.0.0.1:11119: connection refused"
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, 7, "retrying", why, now, sops=sops[2:]))
        r = await client.get(f"/api/studies/{study}/deliveries", headers=OPERATOR)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert [d["status"] for d in doc["deliveries"]] == ["sent", "sent", "retrying"]
        assert doc["deliveries"][2]["reason"] == why and doc["deliveries"][2]["job"] == 7
        assert doc["summary"] == [
            {
                "rule": "ct-to-ai",
                "destination": "AI_NODE",
                "method": "C-STORE",
                "counts": {"sent": 2, "retrying": 1},
                "updated_at": doc["deliveries"][2]["updated_at"],
                "reason": why,
            }
        ]
        r = await client.get("/api/studies/not-a-uid/deliveries", headers=OPERATOR)
        assert r.status_code == 400

    run(tmp_path, body)


def test_rules_page_and_the_study_page_deliveries(tmp_path: Path) -> None:
    study, series, sop = str(generate_uid()), str(generate_uid()), str(generate_uid())
    source = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=series, sop_uid=sop)

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        r = await client.get("/ui/rules", headers=OPERATOR)
        assert r.status_code == 403
        r = await client.get("/ui/rules", headers=ADMIN)
        assert r.status_code == 200 and "from-file" in r.text and "config file (read-only)" in r.text
        assert 'id="add-rule"' in r.text and ">Rules</a>" in r.text
        await archive.import_file(source, Origin("import"))
        r = await client.get(f"/ui/studies/{study}", headers=OPERATOR)
        assert r.status_code == 200 and "No routing rule sent this study anywhere." in r.text
        rows = [receipt_row(9, "from-file", "C-STORE", "AI_NODE", study, series, sop)]
        await archive.write(lambda conn: routing_repo.insert_deliveries(conn, rows))
        why = "cannot send to 'AI_NODE' at 127.0.0.1:11119: <refused>"
        now = dt.datetime.now(dt.UTC)
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, 9, "retrying", why, now))
        r = await client.get(f"/ui/studies/{study}", headers=OPERATOR)
        assert r.status_code == 200
        page = r.text
        assert "<h2>Deliveries</h2>" in page and "1 retrying" in page and "(job 9)" in page
        assert "&lt;refused&gt;" in page and "<refused>" not in page  # the reason is escaped

    run(tmp_path, body)


def test_receipts_of_a_cancelled_job_say_failed(tmp_path: Path) -> None:
    study = str(generate_uid())

    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        queue = JobQueue(archive)

        async def never(job: JobContext) -> str:  # pragma: no cover - the job is cancelled before it runs
            return ""

        queue.register("route", never)
        job = await queue.submit("route", "rule x: 1 instance", {})
        rows = [receipt_row(job.id, "x", "C-STORE", "AI_NODE", study, "1.2", "1.2.3")]
        await archive.write(lambda conn: routing_repo.insert_deliveries(conn, rows))
        r = await client.get(f"/api/studies/{study}/deliveries", headers=OPERATOR)
        assert r.json()["deliveries"][0]["status"] == "queued"
        await queue.cancel(job.id)
        r = await client.get(f"/api/studies/{study}/deliveries", headers=OPERATOR)
        (receipt,) = r.json()["deliveries"]
        assert receipt["status"] == "failed" and receipt["reason"] == f"its job {job.id} was cancelled", receipt

    run(tmp_path, body)
