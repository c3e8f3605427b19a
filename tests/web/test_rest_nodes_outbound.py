"""The web's calls to other nodes go through the ONE outbound path (services/outbound.py), handed
to the app at construction: web/ imports neither bootstrap nor net/, and a query's keys reach the
peer as the JSON gave them (structured keys, no "k=v" text in between). Issue 9 point 3."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.metadata import MetadataStore
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.peers import free_port, wait_for_port

SRC = Path(__file__).resolve().parents[2] / "src"
WEB = SRC / "minipacs" / "web"

#: Imports of net/ in web/: none (the vocabulary is in dicom/; nothing in web/ may open an association).
NET_VOCABULARY: set[tuple[str, str]] = set()


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_web_imports_neither_bootstrap_nor_the_wire() -> None:
    found = [
        (path.name, module)
        for path in sorted(WEB.glob("*.py"))
        for module in _imports(path)
        if module == "minipacs.bootstrap" or module.startswith("minipacs.net")
    ]
    assert [f for f in found if f[1] == "minipacs.bootstrap"] == []
    assert set(found) <= NET_VOCABULARY, found
    assert any(module == "minipacs.services.outbound" for module in _imports(WEB / "rest_nodes.py"))


BUILD_AND_CALL = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path

    import httpx

    from minipacs.web.app import create_app
    from minipacs.web.types import AppContext
    assert "minipacs.bootstrap" not in sys.modules, "importing the web app imported bootstrap"

    from minipacs.blobs.filesystem import FilesystemBlobStore
    from minipacs.config import Settings
    from minipacs.core.archive import Archive, ArchiveSettings
    from minipacs.core.metadata import MetadataStore
    from minipacs.index.database import IndexDatabase
    from minipacs.core.nodes import Node, NodeRegistry
    from minipacs.net.association import AssociationSettings
    from minipacs.services.outbound import Outbound, OutboundSettings
    from minipacs.services.qr_find import QueryRetrieveFindSCP
    from minipacs.services.server import DicomServer
    from minipacs.services.verification import VerificationSCP


    async def open_archive(settings: Settings) -> Archive:  # by hand: bootstrap must stay unimported
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        index = IndexDatabase.open(settings.resolved_index_url, fsync=False)
        blobs = FilesystemBlobStore(settings.data_dir / "storage", fsync=False)
        limits = ArchiveSettings(data_dir=settings.data_dir, fsync=False, max_dataset_bytes=settings.max_dataset_bytes,
                                 duplicate_policy=settings.duplicate_policy)
        return await Archive.start(limits, index, blobs)


    async def main(tmp: Path) -> None:
        remote_archive = await open_archive(Settings(data_dir=tmp / "remote", fsync=False))
        remote = DicomServer("REMOTE", [VerificationSCP(), QueryRetrieveFindSCP(remote_archive)], host="127.0.0.1",
                             port=0)
        await remote.start()
        settings = Settings(data_dir=tmp / "local", fsync=False, ae_title="WEBONLY")
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        nodes = NodeRegistry(archive)
        node = await nodes.add(Node("REMOTE", "127.0.0.1", remote.port))
        outbound = Outbound(OutboundSettings(AssociationSettings("WEBONLY"), connect_timeout=5.0), archive)
        app = create_app(AppContext(settings, archive, metadata, nodes, outbound=outbound))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                r = await client.post(f"/api/nodes/{node.id}/echo")
                assert r.status_code == 200 and r.json()["ok"] is True, r.text
                r = await client.post(f"/api/nodes/{node.id}/query", json={"level": "study", "keys": {}})
                assert r.status_code == 200 and r.json()["count"] == 0, r.text
        finally:
            await metadata.close()
            await archive.close()
            await remote.close(grace=1.0)
            await remote_archive.close()
        assert "minipacs.bootstrap" not in sys.modules, "serving the node endpoints imported bootstrap"
        print("served without bootstrap")


    asyncio.run(main(Path(sys.argv[1])))
""")


def test_web_app_serves_node_echo_and_query_without_bootstrap(tmp_path: Path) -> None:
    """In a fresh interpreter: build the app from an Outbound made by hand, echo and query a node."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", BUILD_AND_CALL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served without bootstrap" in done.stdout


# ------------------------------------------------------------------ keys reach the peer intact


@pytest.fixture
def recording_peer() -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """pynetdicom as a Study Root C-FIND SCP that keeps every identifier it receives and answers
    one match: the identifier itself."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    received: list[pydicom.Dataset] = []

    def on_find(event: Any) -> Iterator[tuple[int, pydicom.Dataset | None]]:
        identifier = event.identifier
        received.append(identifier)
        yield 0xFF00, identifier

    ae = AE(ae_title="RECORDER")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        wait_for_port("127.0.0.1", port)
        yield port, received
    finally:
        server.shutdown()


def _query(tmp: Path, port: int, payload: dict[str, Any]) -> httpx.Response:
    from minipacs.bootstrap import outbound

    async def main() -> httpx.Response:
        settings = Settings(
            data_dir=tmp / "local", fsync=False, connect_timeout=5.0, acse_timeout=5.0, dimse_timeout=10.0
        )
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        nodes = NodeRegistry(archive)
        node = await nodes.add(Node("RECORDER", "127.0.0.1", port))
        app = create_app(AppContext(settings, archive, metadata, nodes, outbound=outbound(settings, archive)))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.post(f"/api/nodes/{node.id}/query", json=payload)
        finally:
            await metadata.close()
            await archive.close()

    return asyncio.run(main())


def test_query_values_with_equals_and_backslash_reach_the_peer_intact(
    tmp_path: Path, recording_peer: tuple[int, list[pydicom.Dataset]]
) -> None:
    port, received = recording_peer
    keys = {
        "PatientName": "Yamada^Tarou=山田^太郎",  # PN component groups are separated by '='
        "AccessionNumber": "A=1",
        "ModalitiesInStudy": "CT\\MR",  # two values (PS3.5 6.4)
        "StudyDescription": None,
    }
    r = _query(tmp_path, port, {"level": "study", "keys": keys})
    assert r.status_code == 200, r.text
    [identifier] = received
    assert str(identifier.PatientName) == "Yamada^Tarou=山田^太郎"
    assert identifier.SpecificCharacterSet == "ISO_IR 192"
    assert identifier.AccessionNumber == "A=1"
    assert list(identifier.ModalitiesInStudy) == ["CT", "MR"]
    assert "StudyDescription" in identifier and identifier.StudyDescription in ("", None)
    assert identifier.QueryRetrieveLevel == "STUDY" and "StudyInstanceUID" in identifier  # default return keys
    [match] = r.json()["results"]
    assert match["00080050"]["Value"] == ["A=1"] and match["00080061"]["Value"] == ["CT", "MR"]


def test_a_key_name_holding_equals_is_refused_not_read_as_a_value(
    tmp_path: Path, recording_peer: tuple[int, list[pydicom.Dataset]]
) -> None:
    """Through "k=v" text, {"PatientID=EVIL": ""} became PatientID = "EVIL=": the key smuggled a value."""
    port, received = recording_peer
    r = _query(tmp_path, port, {"level": "study", "keys": {"PatientID=EVIL": ""}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_keys", r.text
    assert "PatientID=EVIL" in r.json()["error"]["message"]
    assert received == []


def test_without_an_outbound_path_the_node_calls_say_so(tmp_path: Path) -> None:
    async def main() -> list[httpx.Response]:
        settings = Settings(data_dir=tmp_path / "local", fsync=False)
        archive = await open_archive(settings)
        metadata = MetadataStore(archive)
        metadata.attach()
        nodes = NodeRegistry(archive)
        node = await nodes.add(Node("SOMEONE", "127.0.0.1", free_port()))
        transport = httpx.ASGITransport(
            app=create_app(AppContext(settings, archive, metadata, nodes)), client=("127.0.0.1", 5555)
        )
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return [
                    await client.post(f"/api/nodes/{node.id}/echo"),
                    await client.post(f"/api/nodes/{node.id}/query", json={"level": "study"}),
                ]
        finally:
            await metadata.close()
            await archive.close()

    for r in asyncio.run(main()):
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_outbound", r.text
