"""The doctor over HTTP (issue 15): GET /api/diagnostics (the findings), POST /api/nodes/{id}/doctor
(the steps, step 5 watching the running archive's association log), POST /api/diagnostics/check, and
the Diagnostics page; admin only."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from tests.peers import free_port
from tests.web.test_rest_nodes import TIMEOUTS, USERS, Env, auth, run

ADA, OLI = auth("ada", "a-pass"), auth("oli", "o-pass")


async def _seed_log(env: Env) -> None:
    """Two viewers calling as VIEWER from two addresses, only the first registered."""
    await env.nodes.add(Node("VIEWER", "10.0.2.12", 104))
    now = dt.datetime.now(dt.UTC)
    for minute, host in enumerate(("10.0.2.12", "10.0.3.12", "10.0.3.12")):
        start = now - dt.timedelta(minutes=10 - minute)
        await env.archive.record_association(
            AssociationRecord(start, "acceptor", "VIEWER", "MINIPACS", host, 40000, True, ended_at=start)
        )


def test_findings_over_rest_and_on_the_page_admin_only(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await _seed_log(env)
        assert (await env.client.get("/api/diagnostics", headers=OLI)).status_code == 403
        r = await env.client.get("/api/diagnostics", headers=ADA)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["associations"] == 3 and doc["ae_title"] == "MINIPACS"
        (seed,) = [f for f in doc["findings"] if f["kind"] == "title-several-addresses"]
        assert seed["title"] == "AE title 'VIEWER' calls us from 2 addresses: 10.0.2.12, 10.0.3.12"
        assert "also when 10.0.3.12 asked for them" in seed["details"]["c_move"]
        page = await env.client.get("/ui/diagnostics", headers=ADA)
        assert page.status_code == 200
        assert "AE title &#39;VIEWER&#39; calls us from 2 addresses" in page.text
        assert f'class="doctor" data-node="{env.remote.id}"' in page.text
        assert ">Diagnostics</a>" in page.text  # in the navigation bar for an admin
        assert (await env.client.get("/ui/diagnostics", headers=OLI)).status_code == 403
        assert ">Diagnostics</a>" not in (await env.client.get("/ui/nodes", headers=OLI)).text

    run(tmp_path, body, users=USERS)


def test_node_doctor_steps_and_the_way_back(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        assert (await env.client.post(f"/api/nodes/{env.remote.id}/doctor", headers=OLI)).status_code == 403
        r = await env.client.post(f"/api/nodes/{env.remote.id}/doctor", headers=ADA)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["ok"] is True and [s["number"] for s in doc["steps"]] == [1, 2, 3, 4]
        assert "Study Root C-MOVE" in doc["steps"][3]["details"]["models"]

        gone = await env.nodes.add(Node("GONE", "127.0.0.1", free_port()))
        r = await env.client.post(f"/api/nodes/{gone.id}/doctor", headers=ADA, json={})
        (step,) = r.json()["steps"]
        assert step["outcome"] == "failed" and "refused the TCP connection" in step["verdict"]
        bad = await env.client.post(f"/api/nodes/{gone.id}/doctor", headers=ADA, json={"move_test": "yes"})
        assert bad.status_code == 400
        assert (await env.client.post(f"/api/nodes/{gone.id}/doctor", headers=ADA, json=[])).status_code == 400

        sent = 0

        async def endless() -> AsyncIterator[bytes]:  # a chunked body (no Content-Length) of 64 MiB
            nonlocal sent
            for _ in range(1024):
                sent += 1
                yield b" " * 65536

        big = await env.client.post(f"/api/nodes/{gone.id}/doctor", headers=ADA, content=endless())
        assert big.status_code == 413 and "1048576 bytes" in big.text, big.text
        assert sent <= 20, f"{sent} pieces of 64 KiB read before the 413: the body was read whole"

        # the way back: our listener logs its associations, as the running archive does
        ours = DicomServer(
            "MINIPACS",
            [StorageSCP(env.archive)],
            host="127.0.0.1",
            port=0,
            timeouts=TIMEOUTS,
            association_logger=env.archive.record_association,
        )
        await ours.start()
        try:
            await NodeRegistry(env.remote_archive).add(Node("MINIPACS", "127.0.0.1", ours.port))
            r = await env.client.post(f"/api/nodes/{env.remote.id}/doctor", headers=ADA, json={"move_test": True})
        finally:
            await ours.close(grace=2.0)
        back = r.json()["steps"][-1]
        assert (back["number"], back["outcome"]) == (5, "ok"), back
        assert back["verdict"].startswith("the images came back: 1 instance(s)")
        assert "calling as 'REMOTE'" in back["verdict"]

        r = await env.client.post("/api/diagnostics/check", headers=ADA)
        assert r.status_code == 200
        doc = r.json()
        assert {n["ae_title"]: n["ok"] for n in doc["nodes"]} == {"REMOTE": True, "GONE": False}
        assert len(doc["listeners"]) == 1

    run(tmp_path, body, users=USERS)
