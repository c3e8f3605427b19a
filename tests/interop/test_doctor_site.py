"""`minipacs doctor` on a minipacs peer: step 5 when the node answers C-MOVE success but sends our images
to another machine that uses our AE title (the seed, seen from the requester's side); the whole site
(no NODE): our listeners, every node, the registry's duplicate titles; bounded parallelism."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from pydicom.uid import generate_uid

from minipacs.services.doctor import Doctor, NodeReport, check_nodes
from minipacs.services.outbound import Address
from minipacs.services.retrieve_scu import FolderStorage
from minipacs.services.server import DicomServer
from tests.dicomgen import write_ct
from tests.peers import free_port, minipacs_cmd, run, start_server


def _doctor(data: Path, ae_title: str, port: int, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MINIPACS_AE_TITLE": ae_title, "MINIPACS_PORT": str(port), "MINIPACS_HOST": "127.0.0.1"}
    res = run(minipacs_cmd("doctor", "--data", str(data), *args), env=env)
    return res.returncode, res.stdout + res.stderr


def test_move_success_but_images_go_to_another_machine_with_our_title(tmp_path: Path) -> None:
    other_port, our_port = free_port(), free_port()
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    # the PACS knows DOCTOR at the address of another machine (the other viewer with our title)
    res = run(minipacs_cmd("nodes", "add", "--data", str(pacs_dir / "data"), "DOCTOR", "127.0.0.1", str(other_port)))
    assert res.returncode == 0, res.stderr
    ct = write_ct(tmp_path / "ct.dcm", study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    server = start_server(pacs_dir)
    try:
        res = run(minipacs_cmd("store", "127.0.0.1", str(server.port), "-aec", "MINIPACS", str(ct), "--no-progress"))
        assert res.returncode == 0, res.stdout + res.stderr
        mine = tmp_path / "mine"
        run(minipacs_cmd("nodes", "add", "--data", str(mine), "MINIPACS", "127.0.0.1", str(server.port)))

        other = FolderStorage(tmp_path / "other-viewer")

        async def check() -> tuple[int, str]:
            listener = DicomServer("DOCTOR", [other], host="127.0.0.1", port=other_port)
            await listener.start()
            try:
                return await asyncio.to_thread(
                    _doctor, mine, "DOCTOR", our_port, "MINIPACS", "--move-test", "--wait", "2"
                )
            finally:
                await listener.close()

        code, out = asyncio.run(check())
        assert other.received == 1  # the image went to the other machine ...
        assert code == 1, out  # ... and the doctor says so
        assert "the node answered C-MOVE success but no images arrived within 2 s" in out
        assert "it resolves our AE title to another address or cannot open a connection back" in out
        assert f"our address 127.0.0.1 and port {our_port}" in out
    finally:
        server.stop()


def test_whole_site_listeners_nodes_and_duplicate_titles(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    data = server.data_dir
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            run(minipacs_cmd("nodes", "add", "--data", str(data), "VIEWER", host, str(free_port(host))))
        code, out = _doctor(data, "MINIPACS", server.port, "--json")
        doc = json.loads(out[: out.rindex("}") + 1])
        assert code == 3, out  # the viewers are not running: no association
        (dicom,) = [r for r in doc["listeners"] if r["name"] == "DICOM listener"]
        assert dicom["ok"] and "our DICOM listener answers: C-ECHO answered" in dicom["verdict"]
        assert [n["host"] for n in doc["nodes"]] == ["127.0.0.2", "127.0.0.3"]
        assert all(n["steps"][0]["outcome"] == "failed" for n in doc["nodes"])
        assert any("AE title 'VIEWER' is used by 2 nodes" in w for w in doc["registry"])
    finally:
        server.stop()
    code, out = _doctor(data, "MINIPACS", server.port)
    assert f"nothing listens on our DICOM listener port {server.port}" in out
    assert "start it: minipacs serve" in out


class _Slow(Doctor):
    """A doctor whose check only counts how many run at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def check(self, node: object, *, move_test: bool = False, store_test: bool = False) -> NodeReport:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return NodeReport("X", "h", 1, False)


def test_check_nodes_runs_at_most_parallel_at_once() -> None:
    nodes = [Address(f"N{i}", "127.0.0.1", 1) for i in range(7)]
    for parallel in (1, 3, 7, 20):
        doctor = _Slow()
        start = time.perf_counter()
        reports = asyncio.run(check_nodes(doctor, nodes, parallel))
        assert len(reports) == 7
        assert doctor.most == min(parallel, 7), (parallel, doctor.most)
        assert time.perf_counter() - start >= 0.02 * -(-7 // parallel) * 0.9
