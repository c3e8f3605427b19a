"""Shared helpers for the benchmark scripts: start/stop servers, /proc readers, machine info.

Every server started here is a child process that the caller stops in a
``finally`` (``stop()``): SIGINT first (minipacs shuts down cleanly on it),
then SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
SYNC = "/usr/bin/sync"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """True if some socket is in LISTEN on ``port`` (read from /proc/net/tcp, no connection made)."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def minipacs_cmd() -> list[str]:
    exe = shutil.which("minipacs")
    return [exe] if exe else [sys.executable, "-m", "minipacs.cli.main"]


def start_minipacs(
    data: Path, port: int, log: Path, env_extra: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """``minipacs serve`` on 127.0.0.1:port with a fresh ``data`` folder; returns once it listens."""
    if data.exists():
        shutil.rmtree(data)
    data.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MINIPACS_HTTP_PORT="0")  # the DICOM benchmarks need no HTTP
    env.update(env_extra or {})
    cmd = (
        (prefix or [])
        + minipacs_cmd()
        + ["serve", "--data", str(data), "--port", str(port), "--aet", "MINIPACS", "--host", "127.0.0.1"]
    )
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(proc, port, timeout=60.0)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_storescp(out: Path, port: int, log: Path, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """DCMTK ``storescp -od OUT +B PORT`` (plus ``extra``) with a fresh output folder."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [STORESCP, "-od", str(out), "+B", *(extra or []), str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(proc, port)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 30.0) -> int | None:
    """SIGINT, wait ``grace`` s, then SIGKILL. Safe to call twice or on an exited process."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def count_files(root: Path, suffix: str = "") -> int:
    n = 0
    for _dirpath, _dirs, files in os.walk(root):
        n += sum(1 for f in files if f.endswith(suffix))
    return n


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmPeak etc. from /proc/PID/status, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            m = re.match(r"(Vm\w+|RssAnon|RssFile|Threads):\s+(\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process (all threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sync_disk() -> None:
    """Flush dirty pages between runs so one run's writeback does not slow the next."""
    subprocess.run([SYNC], check=False, timeout=120)


def machine_info() -> dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    try:
        from importlib.metadata import version

        mp_version = version("minipacs")
    except Exception:  # noqa: BLE001
        mp_version = "?"
    dcmtk = subprocess.run([STORESCP, "--version"], capture_output=True, text=True, timeout=10).stdout
    return {
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "minipacs": mp_version,
        "dcmtk": dcmtk.splitlines()[0] if dcmtk else "?",
    }
