"""The Query/Retrieve page and the Nodes page's edit controls, in process: what each role is shown,
and that node values from the registry are escaped. (The talking is app.js's: see
test_ui_remote_browser.py.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.metadata import MetadataStore
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.test_ui import USERS, basic

ADMIN, VIEWER = basic("ada", "a-pass"), basic("vic", "v-pass")
HOSTILE = '"><script>alert(1)</script>'


def run(tmp: Path, body: Callable[[httpx.AsyncClient, NodeRegistry], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = Settings(data_dir=tmp / "data", fsync=False, users=USERS, ae_title="OURPACS")
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        nodes = NodeRegistry(archive)
        ctx = AppContext(settings, archive, metadata, nodes)
        transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, nodes)
        finally:
            await metadata.close()
            await archive.close()

    asyncio.run(main())


def test_remote_page_for_an_operator_or_admin(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, nodes: NodeRegistry) -> None:
        r = await client.get("/ui/remote", headers=ADMIN)
        assert r.status_code == 200 and "No DICOM nodes are registered" in r.text
        assert 'id="remote-query"' not in r.text
        first = await nodes.add(Node("PACS_A", "127.0.0.1", 104, description=HOSTILE))
        second = await nodes.add(Node("PACS_B", "127.0.0.2", 11112))
        r = await client.get("/ui/remote", headers=ADMIN)
        assert r.status_code == 200 and 'href="/ui/remote"' in r.text
        assert f'<option value="{first.id}">PACS_A (127.0.0.1:104)' in r.text
        assert "<script>alert" not in r.text and "&#34;&gt;&lt;script&gt;" in r.text
        for name in ("name", "pid", "from", "to", "modality", "accession"):
            assert f'name="{name}"' in r.text, name
        assert '<option value="series">' in r.text
        assert 'id="retrieve-button"' in r.text and "C-MOVE to us (OURPACS)" in r.text
        r = await client.get("/ui/remote", params={"node": str(second.id)}, headers=ADMIN)
        assert re.search(rf'<option value="{second.id}" selected>PACS_B', r.text)

    run(tmp_path, body)


def test_remote_page_for_a_viewer_has_no_retrieve_controls(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, nodes: NodeRegistry) -> None:
        node = await nodes.add(Node("PACS_A", "127.0.0.1", 104))
        r = await client.get("/ui/remote", headers=VIEWER)
        # issue 12 item 24: no search form, retrieve controls or menu link that would only answer 403
        assert r.status_code == 200 and 'id="remote-query"' not in r.text and 'href="/ui/remote"' not in r.text
        assert 'id="retrieve"' not in r.text and "retrieve-button" not in r.text
        assert "Your role may not query or retrieve" in r.text
        r = await client.post(f"/api/nodes/{node.id}/query", json={"level": "study", "keys": {}}, headers=VIEWER)
        assert r.status_code == 403 and "viewer role" in r.text
        r = await client.post(
            f"/api/nodes/{node.id}/retrieve", json={"level": "study", "uids": ["1.2.3"]}, headers=VIEWER
        )
        assert r.status_code == 403 and "viewer role, which may not do this" in r.json()["error"]["message"]
        assert (await client.get("/ui/remote")).status_code == 401

    run(tmp_path, body)


def test_nodes_page_edit_controls_and_warnings(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, nodes: NodeRegistry) -> None:
        first = await nodes.add(
            Node("PACS_A", "127.0.0.1", 104, description=HOSTILE, permissions=frozenset({"echo", "find"}))
        )
        await nodes.add(Node("PACS_A", "127.0.0.2", 104))
        r = await client.get("/ui/nodes", headers=ADMIN)
        assert r.status_code == 200
        assert "is used by 2 nodes" in r.text  # the duplicate title is still a warning
        button = re.search(rf'<button type="button" class="edit-node" data-node="{first.id}"[^>]*>', r.text)
        assert button is not None, r.text
        assert 'data-port="104"' in button.group(0) and 'data-permissions="echo, find"' in button.group(0)
        assert "<script>alert" not in r.text and 'data-description="&#34;&gt;&lt;script&gt;' in button.group(0)
        assert '<section id="edit-node-section" hidden>' in r.text and 'id="add-node"' in r.text
        assert f'href="/ui/remote?node={first.id}"' in r.text
        assert 'class="echo"' in r.text and 'class="query"' in r.text
        r = await client.get("/ui/nodes", headers=VIEWER)
        assert r.status_code == 200 and "is used by 2 nodes" in r.text
        assert 'class="echo"' not in r.text and 'class="query"' not in r.text  # they answer a viewer 403
        r = await client.post(f"/api/nodes/{first.id}/echo", headers=VIEWER)
        assert r.status_code == 403 and "viewer role" in r.text
        assert "edit-node" not in r.text and "add-node" not in r.text and "remove-node" not in r.text
        r = await client.put(f"/api/nodes/{first.id}", json={"port": 105}, headers=VIEWER)
        assert r.status_code == 403
        r = await client.put(f"/api/nodes/{first.id}", json={"port": 105}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["port"] == 105
        assert 'data-port="105"' in (await client.get("/ui/nodes", headers=ADMIN)).text

    run(tmp_path, body)


def test_static_script_has_the_remote_and_edit_code(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, nodes: NodeRegistry) -> None:
        js = (await client.get("/ui/static/app.js", headers=VIEWER)).text
        for needle in ('"/retrieve"', '"/query"', "pollJob", '"PUT"', "edit-node"):
            assert needle in js, needle

    run(tmp_path, body)
