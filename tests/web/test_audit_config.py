"""Configuration changes in the audit trail: DICOM nodes (PS3.15 A.5.3.11 Security Alert, EventTypeCode
110128 Network Configuration) and auto-routing rules (110131 Software Configuration), over REST (the UI's
pages call the same routes) and from `minipacs nodes`. Who, from where, what went in and what it became."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx

from minipacs.config import Settings
from minipacs.core.atna import audit_message
from minipacs.web.app import create_app
from minipacs.web.routing import Endpoint, declared
from minipacs.web.types import AppContext
from tests.web.test_rest_rules import ADMIN, OPERATOR, run

RULE = {"name": "ct-to-ai", "when": "instance", "send_to": ["AI_NODE"]}


def test_node_and_rule_changes_are_audited_with_who_and_what(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Any) -> None:
        node = {"ae_title": "CT01", "host": "127.0.0.1", "port": 11112, "description": "scanner"}
        assert (await client.post("/api/nodes", json=node, headers=ADMIN)).status_code == 201
        made = (await client.get("/api/nodes", headers=ADMIN)).json()
        ct = next(n for n in made if n["ae_title"] == "CT01")
        assert (await client.put(f"/api/nodes/{ct['id']}", json={"port": 104}, headers=ADMIN)).status_code == 200
        assert (await client.delete("/api/nodes/CT01", headers=ADMIN)).status_code == 200
        assert (await client.post("/api/rules", json=RULE, headers=ADMIN)).status_code == 201
        assert (await client.delete("/api/rules/ct-to-ai", headers=ADMIN)).status_code == 204
        # not changes: refused (bad input, not allowed) and reads
        assert (await client.post("/api/nodes", json={"ae_title": ""}, headers=ADMIN)).status_code == 400
        assert (await client.post("/api/nodes", json=node, headers=OPERATOR)).status_code == 403
        assert (await client.delete("/api/rules/none-such", headers=ADMIN)).status_code == 404
        await archive.audit.flush()
        rows = sorted(
            (r for r in await archive.audit.query(actor="ada") if r["action"].endswith("_config")),
            key=lambda row: row["id"],
        )
        got = [(r["action"], r["actor_kind"], r["actor"], r["address"], r["detail"].split(": ", 1)[0]) for r in rows]
        assert got == [
            ("network_config", "user", "ada", "127.0.0.1", "POST /api/nodes -> 201"),
            ("network_config", "user", "ada", "127.0.0.1", f"PUT /api/nodes/{ct['id']} -> 200"),
            ("network_config", "user", "ada", "127.0.0.1", "DELETE /api/nodes/CT01 -> 200"),
            ("software_config", "user", "ada", "127.0.0.1", "POST /api/rules -> 201"),
            ("software_config", "user", "ada", "127.0.0.1", "DELETE /api/rules/ct-to-ai -> 204"),
        ], got
        assert '"ae_title":"CT01"' in rows[0]["detail"] and '"port":104' in rows[1]["detail"]  # what it became
        root = ET.fromstring(audit_message(rows[1], "MINIPACS"))
        ident = root.find("EventIdentification")
        assert ident is not None and ident.get("EventActionCode") == "E"
        assert [(c.get("csd-code"), c.get("originalText")) for c in ident] == [
            ("110113", "Security Alert"),
            ("110128", "Network Configuration"),
        ]
        users = [(p.get("UserID"), p.get("UserIsRequestor")) for p in root.iter("ActiveParticipant")]
        assert users == [("ada", "true"), ("MINIPACS", "false")]
        (subject,) = root.iter("ParticipantObjectIdentification")
        assert (subject.get("ParticipantObjectID"), subject.get("ParticipantObjectTypeCodeRole")) == (
            "/api/nodes",
            "13",
        )
        assert subject.findtext("ParticipantObjectDescription", "").startswith("PUT /api/nodes/")
        rule_root = ET.fromstring(audit_message(rows[3], "MINIPACS"))
        codes = [c.get("csd-code") for c in rule_root.find("EventIdentification") or []]
        assert codes == ["110113", "110131"]

    run(tmp_path, body)


def test_every_route_that_changes_nodes_or_rules_is_audited(tmp_path: Path) -> None:
    app = create_app(AppContext(Settings(data_dir=tmp_path / "routes"), archive=None, metadata=None))  # type: ignore[arg-type]
    changing = {
        (route.method, path): route.audits
        for path, route in declared(app.routes)
        if isinstance(route, Endpoint)
        and route.method in ("POST", "PUT", "PATCH", "DELETE")
        and (path.startswith("/api/rules") or (path.startswith("/api/nodes") and path.count("/") <= 3))
    }
    assert changing == {
        ("POST", "/api/nodes"): "network_config",
        ("PUT", "/api/nodes/{id}"): "network_config",
        ("DELETE", "/api/nodes/{ae_title}"): "network_config",
        ("POST", "/api/rules"): "software_config",
        ("PUT", "/api/rules/{name}"): "software_config",
        ("DELETE", "/api/rules/{name}"): "software_config",
    }


def test_the_nodes_command_is_audited(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "minipacs.cli.main", *args, "--data", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("nodes", "add", "CT02", "127.0.0.1", "11113").returncode == 0
    assert cli("nodes", "remove", "NONESUCH").returncode != 0  # nothing changed: no row
    assert cli("nodes", "remove", "CT02").returncode == 0
    shown = cli("audit", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = [r for r in json.loads(shown.stdout) if r["action"] == "network_config"]
    assert [(r["actor_kind"], r["detail"]) for r in reversed(rows)] == [
        ("cli", "minipacs nodes add CT02 127.0.0.1 11113"),
        ("cli", "minipacs nodes remove CT02"),
    ]
