"""`minipacs serve`: embedded defaults, and a clean stop on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.peers import free_port, leftover_transfers, wait_for_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_serve_with_no_configuration_uses_embedded_defaults(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=SRC,
        MINIPACS_PORT=str(port),
        MINIPACS_HOST="127.0.0.1",
        MINIPACS_HTTP_PORT=str(http_port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "minipacs.cli.main", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        ae = AE(ae_title="CHECKER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
        assert assoc.is_established
        assert assoc.acceptor.ae_title == "MINIPACS"
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        wait_for_port("127.0.0.1", http_port, proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/openapi.json", timeout=10) as rsp:
            assert rsp.status == 200 and json.load(rsp)["openapi"].startswith("3.")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    text = out.decode()
    assert f"web UI at http://127.0.0.1:{http_port}/" in text  # the ready line says where to look
    assert "issue" not in text.lower()  # no tracker talk in what a user reads on the first run
    assert (tmp_path / "minipacs-data" / "index.sqlite3").is_file()
    assert (tmp_path / "minipacs-data" / "storage").is_dir()


def test_ctrl_c_aborts_open_associations_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SRC, MINIPACS_HTTP_PORT="0")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minipacs.cli.main",
            "-v",
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ae = AE(ae_title="IDLER")
    ae.add_requested_context("1.2.840.10008.1.1")
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
        assert assoc.is_established
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - start
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted  # the idle association was ended by the server, not left hanging
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ae.shutdown()
    text = out.decode()
    assert proc.returncode == 0, text
    assert took < 15
    assert "stopped cleanly" in text
    assert "server shutting down" in text
    assert leftover_transfers(tmp_path / "d") == []


def test_a_port_in_use_stops_start_up_with_a_sentence(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=SRC)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "minipacs.cli.main",
                "serve",
                "--data",
                str(tmp_path / "d"),
                "--port",
                str(free_port()),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(busy),
                "--http-host",
                "127.0.0.1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 3, res.stderr
    assert f"cannot listen for HTTP on 127.0.0.1:{busy}" in res.stderr
    # and it says how to choose another port, in each of the three ways
    assert "`serve --http-port N`" in res.stderr and "`http_port = N`" in res.stderr
    assert "MINIPACS_HTTP_PORT=N" in res.stderr


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("toml", "unknown setting 'http_prot'; did you mean 'http_port'?"),
        ("env", "unknown environment variable MINIPACS_HTTP_PROT; did you mean MINIPACS_HTTP_PORT?"),
    ],
)
def test_a_misspelled_setting_stops_start_up(tmp_path: Path, where: str, said: str) -> None:
    """Issue 12 item 16: an unknown key is refused, naming it and the closest known one."""
    env = dict(os.environ, PYTHONPATH=SRC)
    args = [
        sys.executable,
        "-m",
        "minipacs.cli.main",
        "serve",
        "--data",
        str(tmp_path / "d"),
        "--port",
        str(free_port()),
        "--host",
        "127.0.0.1",
    ]
    if where == "toml":
        cfg = tmp_path / "minipacs.toml"
        cfg.write_text("http_prot = 8043\n")
        args += ["--config", str(cfg)]
    else:
        env["MINIPACS_HTTP_PROT"] = "8043"
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert said in res.stderr
