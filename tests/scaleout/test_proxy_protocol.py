"""A real HAProxy with ``send-proxy`` (version 1) and ``send-proxy-v2`` in front of one `minipacs serve`
set to ``proxy_protocol_from = ["127.0.0.1"]`` (docs/SCALE-OUT.md, "Who connected"): associations
from 127.0.0.2 through the balancer are logged as from 127.0.0.2 (not HAProxy's 127.0.0.1), the
registered-host check (check_calling_host) judges the client's address, a connection from the
balancer's address without a header is closed with a log line, and a PROXY header from an address
not listed is not believed (it is a malformed PDU, nothing more).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelMove, Verification

from minipacs.bootstrap import open_archive
from minipacs.config import load_settings
from tests.dicomgen import write_ct
from tests.peers import (
    ServerProcess,
    associate_seeing_rejection,
    dcmtk,
    free_port,
    minipacs_cmd,
    run,
    start_server,
    wait_for_port,
)
from tests.scaleout.test_haproxy import haproxy_running, wait_until

pytestmark = pytest.mark.interop

#: pynetdicom's waits: generous, for a loaded CI machine.
TIMEOUT = 60
CLIENT = "127.0.0.2"


def haproxy_config(v1: int, v2: int, backend: int) -> str:
    """Two frontends on the one node: PROXY version 1 on one, version 2 (with health checks) on the other."""
    return f"""global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend dicom_v1
    bind 127.0.0.1:{v1}
    default_backend node_v1
frontend dicom_v2
    bind 127.0.0.1:{v2}
    default_backend node_v2
backend node_v1
    server node 127.0.0.1:{backend} send-proxy check check-send-proxy inter 500ms
backend node_v2
    server node 127.0.0.1:{backend} send-proxy-v2 check inter 500ms
"""


@contextmanager
def haproxy(tmp: Path, backend: int) -> Iterator[tuple[int, int]]:
    v1, v2 = free_port(), free_port()
    with haproxy_running(tmp, "haproxy", haproxy_config(v1, v2, backend), [v1, v2]):
        yield v1, v2


def scu(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    return ae


def echo(port: int, title: str, source: str = CLIENT) -> str:
    """A C-ECHO from ``source``: "0x0000", "rejected" or "aborted"."""
    ae = scu(title)
    ae.add_requested_context(Verification)
    assoc, rj = associate_seeing_rejection(ae, "127.0.0.1", port, ae_title="MINIPACS", bind_address=(source, 0))
    if rj is not None and not assoc.is_established:
        return "rejected"
    if not assoc.is_established:
        return "aborted"
    try:
        return f"{int(assoc.send_c_echo().Status):#06x}"
    finally:
        assoc.release()


def store(port: int, title: str, path: Path) -> int:
    ae = scu(title)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS", bind_address=(CLIENT, 0))
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(pydicom.dcmread(path)).Status)
    finally:
        assoc.release()


def move(port: int, title: str, study: str, destination: str) -> int:
    """C-MOVE of ``study`` to ``destination`` from 127.0.0.2; the final status."""
    ae = scu(title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS", bind_address=(CLIENT, 0))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    final = -1
    try:
        for status, _identifier in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove):
            if status and status.Status not in (0xFF00, 0xFF01):
                final = int(status.Status)
    finally:
        assoc.release()
    return final


async def audit_rows(data: Path, study: str) -> list[dict[str, Any]]:
    """The audit trail's rows about ``study``, read from the stopped node's index."""
    archive = await open_archive(load_settings(env={}, overrides={"data_dir": data}))
    try:
        return await archive.audit.query(study_uid=study)
    finally:
        await archive.close()


def association_log(srv: ServerProcess) -> list[dict[str, Any]]:
    out = run([*minipacs_cmd("log", "--data", str(srv.data_dir), "-n", "100", "--json")])
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_haproxy_send_proxy_v1_and_v2_name_the_client(tmp_path: Path) -> None:
    # two destinations titled VIEWER: a C-MOVE to VIEWER goes to the one on the requester's host
    viewer, elsewhere = free_port(), free_port()
    received = tmp_path / "received"
    received.mkdir()
    config = tmp_path / "minipacs.toml"
    config.write_text(
        'proxy_protocol_from = ["127.0.0.1"]\n'
        "check_calling_host = true\n"
        "allow_unregistered = []\n"
        "[[nodes]]\n"
        'ae_title = "MODALITY"\nhost = "127.0.0.2"\nport = 104\npermissions = "echo,store,move"\n'
        "[[nodes]]\n"
        f'ae_title = "VIEWER"\nhost = "127.0.0.2"\nport = {viewer}\npermissions = "echo"\n'
        "[[nodes]]\n"
        f'ae_title = "VIEWER"\nhost = "127.0.0.3"\nport = {elsewhere}\npermissions = "echo"\n'
        "[[nodes]]\n"
        'ae_title = "ELSEWHERE"\nhost = "127.0.0.3"\nport = 104\npermissions = "echo"\n'
    )
    srv = start_server(tmp_path, "--config", str(config))
    ct = write_ct(tmp_path / "ct.dcm")
    study = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "VIEWER", "-od", str(received), str(viewer)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.2", viewer, proc=storescp)
        with haproxy(tmp_path, srv.port) as (v1, v2):
            assert echo(v1, "MODALITY") == "0x0000"  # send-proxy (text)
            assert echo(v2, "MODALITY") == "0x0000"  # send-proxy-v2 (binary)
            assert store(v2, "MODALITY", ct) == 0
            # the C-MOVE destination is chosen by the requester's host: 127.0.0.2's VIEWER, not 127.0.0.3's
            assert move(v1, "MODALITY", study, "VIEWER") == 0
            assert len(list(received.iterdir())) == 1
            # check_calling_host judges the client, not the balancer: ELSEWHERE is registered on 127.0.0.3
            assert echo(v2, "ELSEWHERE") == "rejected"
            assert echo(v1, "ELSEWHERE", source="127.0.0.3") == "0x0000"
            # the balancer's own address without a PROXY header (DCMTK echoscu from 127.0.0.1, straight to the
            # node): closed, with a log line saying why
            direct = run([dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "MINIPACS", "127.0.0.1", str(srv.port)])
            assert direct.returncode != 0 and "Association Request Failed" in direct.stdout + direct.stderr, direct
            # a PROXY header from an address not listed is not believed: DICOM's framing error
            with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT, source_address=(CLIENT, 0)) as s:
                s.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 5555 104\r\n")
                answer = s.recv(64)
                assert answer[:1] in (b"", b"\x07"), answer  # closed, or an A-ABORT
            # HAProxy's health checks (send-proxy-v2: version 2 LOCAL, every 0.5 s) come and go quietly
            time.sleep(2.0)

            def logged() -> list[dict[str, Any]] | None:
                records = association_log(srv)
                return records if len([r for r in records if r["calling_aet"]]) >= 6 else None

            records = wait_until(logged, timeout=60)
    finally:
        storescp.terminate()
        storescp.wait(10)
        assert srv.stop() == 0, srv.log_text()
    assert records, srv.log_text()
    named = [r for r in records if r["calling_aet"]]
    by_title: dict[str, list[tuple[str, bool]]] = {}
    for r in named:
        by_title.setdefault(r["calling_aet"].strip(), []).append((r["peer_host"], r["accepted"]))
    assert sorted(by_title["MODALITY"]) == [("127.0.0.2", True)] * 4, by_title
    assert sorted(by_title["ELSEWHERE"]) == [("127.0.0.2", False), ("127.0.0.3", True)], by_title
    refused = next(r for r in named if r["calling_aet"].strip() == "ELSEWHERE" and not r["accepted"])
    assert "registered only on" in refused["reject_reason"], refused
    assert "10.9.9.9" not in json.dumps(records)
    # the audit trail: its "retrieved" row of the C-MOVE names the modality's address, not the balancer
    audit = asyncio.run(audit_rows(srv.data_dir, study))
    assert audit and {row["address"] for row in audit} == {"127.0.0.2"}, audit
    text = srv.log_text()
    refusals = [line for line in text.splitlines() if "no valid PROXY header" in line]
    # the echo without a header (an A-ASSOCIATE-RQ starts 01 00); the test's own port probe said nothing at all
    assert any("did not start with a PROXY header (first bytes 01 00" in line for line in refusals), text
    assert all("01 00" in line or "(0 of 12 bytes)" in line for line in refusals), refusals
    # HAProxy's health checks (v2 LOCAL, every 0.5 s) are neither refused nor associations: the only
    # connections without an A-ASSOCIATE-RQ are the test's two port probes through HAProxy and the forged header
    silent = [line for line in text.splitlines() if "no A-ASSOCIATE-RQ" in line]
    assert len(silent) == 3 and "unrecognized PDU type 0x50" in silent[-1], silent
    assert "Traceback" not in text, text


def test_proxy_protocol_from_must_be_addresses(tmp_path: Path) -> None:
    """A host name is refused at start (exit 2, in words): the header's sender is checked by address."""
    value = "balancer.example"
    out = run(
        [*minipacs_cmd("log", "--data", str(tmp_path / "data"))],
        env={"MINIPACS_PROXY_PROTOCOL_FROM": f"127.0.0.1,{value}"},
    )
    assert out.returncode == 2, out
    assert f"proxy_protocol_from: {value!r} is not an IP address or network" in out.stderr
