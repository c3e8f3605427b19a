"""Real peers for tests: DCMTK binaries, free ports, a `minipacs serve` subprocess.

pynetdicom installs Python scripts named echoscu/storescp/... that shadow
DCMTK's on PATH, so DCMTK tools are taken from /usr/bin by absolute path and
checked to be DCMTK. In CI (CI=true) a missing peer FAILS the test; on a
developer machine it skips with the command that installs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.stored_files import dataset_of

DCMTK_DIR = Path("/usr/bin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_peer(what: str, install: str) -> None:
    message = f"{what} is not available; install it with: {install}"
    if in_ci():
        pytest.fail(message + " (in CI a missing peer is a failure)")
    pytest.skip(message)


def dcmtk(tool: str) -> str:
    """Absolute path of a DCMTK command-line tool."""
    path = DCMTK_DIR / tool
    if not path.exists():
        missing_peer(f"DCMTK {tool}", "apt-get install dcmtk")
    return str(path)


_PORTS_GIVEN: set[int] = set()

#: The lowest port :func:`free_port` hands out (below it: well-known and registered services).
PORTS_FROM = 10000


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports (a bind to port 0, an outgoing connection) begin."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker_ports() -> range | None:
    """This test process's own ports: a slice, one per pytest-xdist worker, of the ports below the kernel's
    ephemeral range. No other worker hands them out, and the kernel never gives them to a bind to port 0
    or to a connection, so a port probed free stays free until the server that asked for it binds it.
    None when the ephemeral range leaves too little room (then the kernel chooses, as before)."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    room = (_ephemeral_low() - PORTS_FROM) // workers
    if room < 500 or worker >= workers:
        return None
    start = PORTS_FROM + worker * room
    return range(start, start + room)


_WORKER_PORTS = _worker_ports()
_next_port = 0


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, never one this test run has handed out before (until this worker's
    slice wraps around, thousands of ports later).

    The kernel may hand the same ephemeral port to two binds in a row once the first socket is
    closed: a test that asks for an HTTP port and then a DICOM port could get one port twice, and,
    with the suite in parallel, another worker's server could take the port between the probe and
    the bind (a C-STORE then reached an HTTP server). So ports come from this worker's own slice.
    """
    global _next_port
    ports = _WORKER_PORTS
    if ports is not None:
        for _ in range(len(ports)):
            port = ports[_next_port % len(ports)]
            _next_port += 1
            if _bindable(host, port):
                _PORTS_GIVEN.add(port)
                return port
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no free port the test run has not used already")


def wait_for_port(host: str, port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    ae_title: str = "MINIPACS"
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def minipacs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "minipacs.cli.main", *args]


def start_server(
    tmp: Path, *extra: str, env: dict[str, str] | None = None, port: int | None = None, ae_title: str = "MINIPACS"
) -> ServerProcess:
    port = port or free_port()
    data = tmp / "data"
    log_path = tmp / "server.log"
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    full_env["MINIPACS_HTTP_PORT"] = "0"  # DICOM tests: no HTTP; web tests set their own port
    full_env.update(env or {})
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            minipacs_cmd(
                "-v",
                "serve",
                "--data",
                str(data),
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--aet",
                ae_title,
                *extra,
            ),
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = ServerProcess(proc, port, data, log_path, ae_title)
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
    except Exception:  # noqa: BLE001 - any start-up failure: stop it and show its log
        server.stop()
        raise RuntimeError("minipacs serve did not start:\n" + server.log_text()) from None
    return server


def run(cmd: list[str], timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, check=False)


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (everything after the File Meta Information)."""
    return dataset_of(path.read_bytes())


def leftover_transfers(data_dir: Path) -> list[Path]:
    """Unacknowledged transfer data left behind: any file in staging/, and any
    NON-EMPTY file in ready/ (where empty files wait for the next transfer)."""
    found = [p for p in (data_dir / "staging").iterdir()]
    ready = data_dir / "ready"
    if ready.is_dir():
        found += [p for p in ready.iterdir() if not p.is_file() or p.stat().st_size > 0]
    return found


def associate_seeing_rejection(ae: Any, *args: Any, **kwargs: Any) -> tuple[Any, tuple[int, int, int] | None]:
    """pynetdicom's ``ae.associate(*args, **kwargs)``, and the (result, source, reason) of the
    A-ASSOCIATE-RJ its upper layer read, if one came (else None).

    On a loaded machine pynetdicom's ACSE sometimes reports a rejection it did receive as an abort:
    its reader thread, having read the RJ, closes the connection and stops, and the ACSE then finds the
    upper layer dead before it looks at the RJ (seen with minipacs, which keeps the connection open
    after an RJ as PS3.8 Sta13 says, and with a hand-made acceptor). EVT_PDU_RECV fires as the PDU is
    read, before that race."""
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    seen: list[tuple[int, int, int]] = []

    def received(event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            seen.append((int(pdu.result), int(pdu.source), int(pdu.reason_diagnostic)))

    handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_PDU_RECV, received)]
    assoc = ae.associate(*args, evt_handlers=handlers, **kwargs)
    return assoc, (seen[0] if seen else None)


def scu_only(assoc: Any) -> Any:
    """Keep a pynetdicom requestor's reactor thread from taking DIMSE messages off its queue, so that
    every response reaches the ``send_c_*`` call waiting for it; returns ``assoc``.

    pynetdicom 3's ``send_c_*`` pause the reactor with a handshake that can let it run one more turn:
    it sets ``_is_paused`` before waiting on the checkpoint, so a call that clears the checkpoint
    right then sees it "paused", sends its request, and the reactor, going on, takes the response
    off the queue as an unexpected request ("Received unexpected C-STORE service message") while the
    call waits for it until its DIMSE timeout. The faster the server answers, the likelier it is:
    seen once in ~10 runs of the two-node race behind HAProxy. For an association that expects no
    request from the peer (no storage commitment report on it; C-GET's sub-operations are read by
    ``send_c_get`` itself), the reactor has nothing to take."""
    dimse = assoc.dimse
    blocking = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return blocking(block=True) if block else (None, None)

    dimse.get_msg = get_msg
    return assoc
