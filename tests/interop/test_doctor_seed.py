"""The seed story (issue 15, ../shared/seeds/000_*.txt) on loopback: two viewers with the same AE title
connect from 127.0.0.2 and 127.0.0.3 (source address bound), both registered; one queries, the other
moves. `minipacs doctor --site` names the title, both addresses and what happens to a C-MOVE; the
running server logs a WARNING the first time it sees the finding, and only once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pydicom.uid import generate_uid

from minipacs.net.association import AssociationSettings
from minipacs.net.dul import Timeouts
from minipacs.services.outbound import Address, FindRequest, Outbound, OutboundSettings, RetrieveRequest
from minipacs.services.retrieve_scu import FolderStorage
from minipacs.services.server import DicomServer
from tests.dicomgen import write_ct
from tests.peers import free_port, minipacs_cmd, run, start_server


def _viewer(source: str) -> Outbound:
    return Outbound(
        OutboundSettings(
            AssociationSettings("VIEWER", timeouts=Timeouts(acse=10, dimse=20, idle=20)),
            connect_timeout=5,
            local_host=source,
        )
    )


def test_same_title_from_two_addresses_is_found_and_explained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port_a, port_b = free_port("127.0.0.2"), free_port("127.0.0.3")
    for host, port in (("127.0.0.2", port_a), ("127.0.0.3", port_b)):
        res = run(minipacs_cmd("nodes", "add", "--data", str(data), "VIEWER", host, str(port)))
        assert res.returncode == 0, res.stdout + res.stderr
    study = generate_uid()
    ct = write_ct(tmp_path / "ct.dcm", study_uid=study, series_uid=generate_uid(), sop_uid=generate_uid())
    server = start_server(tmp_path, env={"MINIPACS_DIAGNOSTICS_INTERVAL": "0.3"})
    try:
        res = run(minipacs_cmd("store", "127.0.0.1", str(server.port), "-aec", "MINIPACS", str(ct), "--no-progress"))
        assert res.returncode == 0, res.stdout + res.stderr
        pacs = Address("MINIPACS", "127.0.0.1", server.port)

        async def floors() -> int:
            # viewer A (127.0.0.2): worklist-style query only
            found = await _viewer("127.0.0.2").query(pacs, FindRequest.build({"StudyInstanceUID": ""}, level="STUDY"))
            assert len(found.matches) == 1
            # viewer B (127.0.0.3): C-MOVE to its own title, listening on its registered port
            inbox = FolderStorage(tmp_path / "inbox-b")
            listener = DicomServer("VIEWER", [inbox], host="127.0.0.3", port=port_b)
            await listener.start()
            try:
                result = await _viewer("127.0.0.3").retrieve(
                    pacs, RetrieveRequest.build({"StudyInstanceUID": study}, level="STUDY"), destination="VIEWER"
                )
            finally:
                await listener.close()
            assert (result.status, result.completed) == (0, 1)
            return inbox.received

        assert asyncio.run(floors()) == 1  # both registered: the move went to the requester's address

        res = run(minipacs_cmd("doctor", "--site", "--data", str(data), "--json"))
        assert res.returncode == 1, res.stdout + res.stderr  # a finding needs attention
        doc = json.loads(res.stdout)
        (seed,) = [f for f in doc["findings"] if f["kind"] == "title-several-addresses"]
        assert seed["details"]["ae_title"] == "VIEWER"
        hosts = {a["host"]: a for a in seed["details"]["addresses"]}
        assert set(hosts) == {"127.0.0.2", "127.0.0.3"}
        assert all(a["registered"] for a in hosts.values())
        assert hosts["127.0.0.2"]["first_seen"] <= hosts["127.0.0.2"]["last_seen"]
        assert "127.0.0.2" in seed["title"] and "127.0.0.3" in seed["title"]
        assert "a C-MOVE to it goes to the node at the requester's own address" in seed["details"]["c_move"]

        res = run(minipacs_cmd("doctor", "--site", "--data", str(data)))
        assert "AE title 'VIEWER' calls us from 2 addresses: 127.0.0.2, 127.0.0.3" in res.stdout, res.stdout
        assert "give each machine its own AE title" in res.stdout

        deadline = time.monotonic() + 15
        while "diagnostics: AE title 'VIEWER' calls us from 2 addresses" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.2)
        time.sleep(1.0)  # a few more rounds of the watch: still one warning
        assert server.log_text().count("diagnostics: AE title 'VIEWER' calls us from 2 addresses") == 1
    finally:
        server.stop()
