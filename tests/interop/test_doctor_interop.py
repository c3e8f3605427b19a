"""`minipacs doctor NODE` against real peers (issue 15): DCMTK dcmqrscp that does not know our AE
title (step 2 explains the rejection), that maps our AE title to the wrong port (step 5: the images
do not come back, and why), that is set up right (every step passes), and a port with nothing
listening (step 1 says so)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.uid import generate_uid

from tests.dicomgen import write_ct
from tests.peers import dcmtk, free_port, minipacs_cmd, run, wait_for_port


def _register(data: Path, title: str, port: int) -> None:
    res = run(minipacs_cmd("nodes", "add", "--data", str(data), title, "127.0.0.1", str(port)))
    assert res.returncode == 0, res.stdout + res.stderr


def _doctor(data: Path, our_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`minipacs doctor` as MINIPACS on ``our_port`` (settings through the environment)."""
    import os

    env = {**os.environ, "MINIPACS_PORT": str(our_port), "MINIPACS_HOST": "127.0.0.1"}
    return run(minipacs_cmd("doctor", "--data", str(data), *args), env=env)


@contextmanager
def _dcmqrscp(tmp_path: Path, *, known: bool, our_port: int, nodelay: bool = True) -> Iterator[int]:
    """dcmqrscp with one CT instance, as DCMQR; ``known``: MINIPACS is in its tables (at ``our_port``);
    ``nodelay``: started with TCP_NODELAY=1 (without it, this DCMTK build leaves Nagle on)."""
    import os

    db = tmp_path / "qrdb"
    db.mkdir()
    ct = write_ct(tmp_path / "ct.dcm", study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    res = run([dcmtk("dcmqridx"), str(db), str(ct)])
    assert res.returncode == 0, res.stdout + res.stderr
    port = free_port()
    peers = "us" if known else "other"
    (tmp_path / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\n"
        f"us = (MINIPACS, 127.0.0.1, {our_port})\n"
        "other = (SOMEONE, 127.0.0.1, 9)\n"
        "HostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (200, 1024mb) {peers}\nAETable END\n"
    )
    proc = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(tmp_path / "dcmqrscp.cfg"), "--disable-host-lookup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "TCP_NODELAY"} | ({"TCP_NODELAY": "1"} if nodelay else {}),
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_nothing_listening_step_1_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    _register(data, "GONE", port)
    res = _doctor(data, free_port(), "GONE")
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"refused the TCP connection on port {port}" in res.stdout
    assert "nothing is listening on that port" in res.stdout
    assert "stopped at step 1 (connect)" in res.stdout
    doc = json.loads(_doctor(data, free_port(), "GONE", "--json").stdout)
    (node,) = doc["nodes"]
    assert [(s["number"], s["outcome"]) for s in node["steps"]] == [(1, "failed")]


def test_dcmqrscp_that_does_not_know_us_explains_the_rejection(tmp_path: Path) -> None:
    data, our_port = tmp_path / "data", free_port()
    with _dcmqrscp(tmp_path, known=False, our_port=our_port) as port:
        _register(data, "DCMQR", port)
        res = _doctor(data, our_port, "DCMQR", "--json")
    assert res.returncode == 3, res.stdout + res.stderr
    (node,) = json.loads(res.stdout)["nodes"]
    steps = {s["name"]: s for s in node["steps"]}
    assert steps["connect"]["outcome"] == "ok"
    assoc = steps["associate"]
    assert assoc["outcome"] == "failed", assoc
    # dcmqrscp answers "called AE title not recognized" (PS3.8 Table 9-21, source 1, reason 7) when the calling
    # AE title is not among the peers of the called one: the verdict says so and names both titles.
    assert "rejected the association permanently: called AE title not recognized" in assoc["verdict"]
    assert assoc["cause"].startswith("the node does not know our AE title MINIPACS, or does not answer to the title")
    assert "DCMTK dcmqrscp among them" in assoc["cause"]
    assert (assoc["details"]["source"], assoc["details"]["reason"]) == (1, 7)
    assert assoc["fix"].startswith(f"register it there with our address 127.0.0.1 and port {our_port}")
    assert "echo" not in steps  # stopped at the first failure


def test_dcmqrscp_set_up_right_every_step_passes_and_images_come_back(tmp_path: Path) -> None:
    data, our_port = tmp_path / "data", free_port()
    with _dcmqrscp(tmp_path, known=True, our_port=our_port) as port:
        _register(data, "DCMQR", port)
        res = _doctor(data, our_port, "DCMQR", "--move-test", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (node,) = json.loads(res.stdout)["nodes"]
    steps = {s["number"]: s for s in node["steps"]}
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert all(s["outcome"] == "ok" for s in steps.values()), json.dumps(steps, indent=1)
    assert "Study Root C-MOVE" in steps[4]["details"]["models"]
    assert "CT Image Storage" in steps[4]["details"]["storage"]
    back = steps[5]
    assert back["verdict"].startswith("the images came back: 1 instance(s)"), back
    assert "from 127.0.0.1, calling as 'DCMQR'" in back["verdict"]


def test_dcmqrscp_with_our_title_on_a_wrong_port_step_5_says_images_do_not_come_back(tmp_path: Path) -> None:
    data, our_port, wrong = tmp_path / "data", free_port(), free_port()
    with _dcmqrscp(tmp_path, known=True, our_port=wrong) as port:
        _register(data, "DCMQR", port)
        res = _doctor(data, our_port, "DCMQR", "--move-test", "--wait", "3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "5 way back (C-MOVE)" in res.stdout
    assert "the node could not send the images to us" in res.stdout, res.stdout
    assert "nothing reached us" in res.stdout
    assert "resolves our AE title MINIPACS to another address or port" in res.stdout
    assert f"our address 127.0.0.1 and port {our_port}" in res.stdout
    assert "stopped at step 5" in res.stdout


def test_dcmtk_peer_without_tcp_nodelay_no_longer_slows_our_echo(tmp_path: Path) -> None:
    """This DCMTK dcmqrscp, without TCP_NODELAY=1 in its environment, writes each C-ECHO-RSP in two
    writes and sends the second only once the first is acknowledged. Our reader used to acknowledge
    after a whole PDU only, so each echo took ~44 ms (Linux's delayed ACK) and step 3 warned about
    Nagle; it now re-arms TCP_QUICKACK after every read (net/dul.py), so the echo is as fast as with
    TCP_NODELAY=1 and step 3 is ok. (The warning stays for platforms without TCP_QUICKACK.)"""
    data, our_port = tmp_path / "data", free_port()
    with _dcmqrscp(tmp_path, known=True, our_port=our_port, nodelay=False) as port:
        _register(data, "DCMQR", port)
        res = _doctor(data, our_port, "DCMQR", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (node,) = json.loads(res.stdout)["nodes"]
    echo = next(s for s in node["steps"] if s["number"] == 3)
    assert echo["outcome"] == "ok", echo
    assert echo["details"]["median_ms"] < 30, echo  # the delayed ACK (~40 ms) is gone
