"""Routing survives a crash: every instance a C-STORE acknowledged that a rule selects is forwarded,
exactly once, even when the server is killed before it routed it (docs/ROUTING.md, "After a crash").

A real ``minipacs serve`` (fsync on: the intake log) with one rule to DCMTK storescp (``+uf``: one file
per reception, so a second delivery of an instance shows as a second file); DCMTK storescu sends a
study; SIGKILL right after its acknowledgements, while the router still holds the burst back
(``routing_coalesce_seconds`` = 30: the window is deterministic here, 0.2 s by default); the server
started again on the same data folder forwards every acknowledged instance once; killed and started
once more after that, it forwards nothing again.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, free_port, run, start_server, wait_for_port

pytestmark = [pytest.mark.interop]

INSTANCES = 5
#: What the servers of these tests are given: a window no test run lasts, arrivals looked for often.
ENV = {"MINIPACS_ROUTING_COALESCE_SECONDS": "30", "MINIPACS_ROUTING_POLL_SECONDS": "0.1"}


@contextmanager
def storescp(port: int, out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [dcmtk("storescp"), "+uf", "-od", str(out), "-aet", "DEST", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def received(out: Path) -> Counter[str]:
    """SOP Instance UID -> how many times storescp received it (a file still being written is not counted)."""
    seen: Counter[str] = Counter()
    for path in out.iterdir():
        try:
            seen[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        except (InvalidDicomError, OSError, AttributeError, EOFError):
            continue
    return seen


def config(tmp: Path, dest_port: int, rule: str) -> Path:
    path = tmp / "minipacs.toml"
    path.write_text(
        'allow_unregistered = "echo,store"\n\n'
        f'[[nodes]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n\n'
        f'[[rules]]\nname = "fwd"\n{rule}send_to = ["DEST"]\n'
    )
    return path


def serve(tmp: Path, cfg: Path) -> ServerProcess:
    return start_server(tmp, "--config", str(cfg), env=ENV)


def kill(server: ServerProcess, run_no: int) -> None:
    server.proc.send_signal(signal.SIGKILL)  # Popen: never a reaped (reused) pid
    assert server.proc.wait(10) == -signal.SIGKILL
    server.log_path.rename(server.log_path.with_name(f"server-{run_no}.log"))  # the next start rewrites it


def wait_for(out: Path, sops: list[str], timeout: float, logs: Path) -> Counter[str]:
    deadline = time.monotonic() + timeout
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seen = received(out)
        if set(sops) <= set(seen):
            return seen
        time.sleep(0.1)
    text = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(logs.glob("server*.log")))
    raise AssertionError(f"only {len(set(sops) & set(seen))} of {len(sops)} instances forwarded:\n{text}")


@pytest.mark.parametrize(
    ("rule", "settle"),
    [
        pytest.param('when = "instance"\n', 0.0, id="instance"),
        pytest.param('when = "stable"\nstable_seconds = 1\n', 1.0, id="stable"),
    ],
)
def test_acknowledged_instances_are_forwarded_once_after_a_kill_9(tmp_path: Path, rule: str, settle: float) -> None:
    dest_port, out = free_port(), tmp_path / "dest"
    cfg = config(tmp_path, dest_port, rule)
    study, series = str(generate_uid()), str(generate_uid())
    files = [
        write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=study, series_uid=series, InstanceNumber=n + 1)
        for n in range(INSTANCES)
    ]
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with storescp(dest_port, out):
        server = serve(tmp_path, cfg)
        time.sleep(1.0)  # the router starts after the listener; its first pass would route at once, not hold
        try:
            res = run([dcmtk("storescu"), "-v", "-aec", "MINIPACS", "127.0.0.1", str(server.port), *map(str, files)])
            kill(server, 1)  # right after the last acknowledgement
        finally:
            server.stop()
        said = res.stdout + res.stderr
        assert res.returncode == 0 and said.count("Received Store Response (Success)") == INSTANCES, said
        assert received(out) == Counter(), "routed before the kill: this test did not crash inside the window"

        server = serve(tmp_path, cfg)
        try:
            wait_for(out, sops, 60, tmp_path)
            time.sleep(settle + 1.5)  # time for a second routing of the same instances, were there one
            kill(server, 2)
        finally:
            server.stop()
        assert received(out) == Counter({sop: 1 for sop in sops})

        server = serve(tmp_path, cfg)  # recovery of what was already routed: nothing goes twice
        try:
            time.sleep(settle + 2.0)
        finally:
            server.stop()
        assert received(out) == Counter({sop: 1 for sop in sops})
