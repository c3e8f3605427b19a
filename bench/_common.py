"""Shared helpers for the benchmark scripts: start/stop servers, /proc readers, machine info.

Every server started here is a child process that the caller stops in a
``finally`` (``stop()``): SIGINT first (minipacs shuts down cleanly on it),
then SIGKILL if it does not exit in time. ``stop_all()`` stops whatever is
still running (the scripts call it on the way out, also on Ctrl-C / SIGTERM).

The benchmarks measure the source tree they live in: importing this module puts
``<repo>/src`` first on ``sys.path`` and on ``PYTHONPATH`` (inherited by every
``minipacs`` subprocess, which runs as ``sys.executable -m minipacs.cli.main``),
so an installed or editable minipacs elsewhere is not what gets measured
(``MINIPACS_BENCH_SRC=/other/src`` measures another tree with the same scripts).

Every DCMTK program and Orthanc gets ``TCP_NODELAY=1`` in its environment
(``peer_env()``): DCMTK (and Orthanc, which uses DCMTK's network layer) keep
Nagle's algorithm on without it.
"""

from __future__ import annotations

import json
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
REPO = BENCH.parent
#: The minipacs sources measured: this checkout's, or MINIPACS_BENCH_SRC (e.g. an older commit's
#: ``src/`` from ``git worktree add``, for a before/after comparison on the same machine).
SRC = Path(os.environ.get("MINIPACS_BENCH_SRC") or REPO / "src").resolve()
WORK = BENCH / "work"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
FINDSCU = "/usr/bin/findscu"
SYNC = "/usr/bin/sync"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
#: Debian package orthanc-postgresql (index plugin; the storage plugin is not used: files stay on disk).
ORTHANC_PG_INDEX = ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"
#: Debian package orthanc-dicomweb.
ORTHANC_DICOMWEB = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
#: PostgreSQL for the ``-pg`` targets: trust authentication, a fresh database per run.
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SRC), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SRC)]]
)

#: Every process started through ``spawn()``; ``stop_all()`` stops those still running.
_STARTED: list[subprocess.Popen[bytes]] = []


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DCMTK programs and Orthanc (and minipacs): ``TCP_NODELAY=1``."""
    env = dict(os.environ, TCP_NODELAY="1")
    env.update(extra or {})
    return env


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout+stderr to ``log``; remembered for ``stop_all()``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env if env is not None else peer_env(),
            preexec_fn=_default_sigint,  # a benchmark started in the background must still stop its servers
        )
    _STARTED.append(proc)
    return proc


def _default_sigint() -> None:
    """In the child: SIGINT back to its default (a shell's ``&`` makes it ignored, and ``stop()`` uses it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_all() -> None:
    """Stop every process started through ``spawn()`` that is still running."""
    while _STARTED:
        stop(_STARTED.pop())


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


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


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0, log: Path | None = None) -> None:
    """Return once ``port`` is in LISTEN; raise (with the end of ``log``) if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
            raise RuntimeError(f"server {proc.args!r} exited with {proc.returncode} before listening on {port}{tail}")
        if listening(port):
            return
        time.sleep(0.02)
    tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s{tail}")


def minipacs_cmd() -> list[str]:
    """``minipacs`` from this source tree (``PYTHONPATH`` set above), with the running interpreter."""
    return [sys.executable, "-m", "minipacs.cli.main"]


def start_minipacs(
    data: Path, port: int, log: Path, env_extra: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """``minipacs serve`` on 127.0.0.1:port with a fresh ``data`` folder; returns once it listens."""
    if data.exists():
        shutil.rmtree(data)
    data.parent.mkdir(parents=True, exist_ok=True)
    env = peer_env({"MINIPACS_HTTP_PORT": "0"})  # the DICOM benchmarks need no HTTP
    env.update(env_extra or {})
    cmd = (
        (prefix or [])
        + minipacs_cmd()
        + ["serve", "--data", str(data), "--port", str(port), "--aet", "MINIPACS", "--host", "127.0.0.1"]
    )
    proc = spawn(cmd, log, env)
    try:
        wait_listening(proc, port, timeout=60.0, log=log)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_storescp(out: Path, port: int, log: Path, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """DCMTK ``storescp -od OUT +B PORT`` (plus ``extra``) with a fresh output folder."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [STORESCP, "-od", str(out), "+B", *(extra or []), str(port)]
    proc = spawn(cmd, log, peer_env())
    try:
        wait_listening(proc, port, log=log)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_orthanc(
    run_dir: Path,
    port: int,
    http_port: int,
    *,
    plugins: list[Path] | None = None,
    config: dict[str, object] | None = None,
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """``/usr/sbin/Orthanc`` with a generated JSON config in ``run_dir`` (storage and SQLite index in
    ``run_dir/orthanc-db``), DICOM on 127.0.0.1:``port`` (Orthanc listens on all addresses; only
    127.0.0.1 is used), HTTP on ``http_port`` with remote access off; no plugins but ``plugins``;
    ``config`` overrides/extends the keys. Returns once both ports listen."""
    storage = run_dir / "orthanc-db"
    conf: dict[str, object] = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "StorageCompression": False,
        "Plugins": [str(p) for p in plugins or []],
    }
    conf.update(config or {})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "orthanc.json").write_text(json.dumps(conf, indent=1))
    log = run_dir / "orthanc.log"
    proc = spawn([ORTHANC, str(run_dir / "orthanc.json")], log, peer_env())
    try:
        wait_listening(proc, http_port, timeout=timeout, log=log)
        wait_listening(proc, port, timeout=timeout, log=log)
    except BaseException:
        stop(proc)
        raise
    return proc


def orthanc_pg_config(database: str) -> dict[str, object]:
    """The ``PostgreSQL`` section for the orthanc-postgresql index plugin (4.x) on ``database``."""
    return {
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": PG_HOST,
            "Port": PG_PORT,
            "Database": database,
            "Username": PG_USER,
            "Password": "",
            "EnableSsl": False,
            "Lock": False,
        }
    }


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg  # the index driver minipacs uses for PostgreSQL

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


def pg_create_database(name: str) -> str:
    """Create an empty database ``name`` (dropped first if left over); return minipacs' index URL for it."""
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def pg_drop_database(name: str) -> None:
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_table_count(name: str) -> int:
    """Tables in the public schema of ``name``: proof that a server really put its index there."""
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=name, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()
    return int(row[0]) if row else 0


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


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of the process (all threads) from /proc/PID/stat; with ``children``, plus
    cutime+cstime (its children that have exited and been waited for)."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime is field 14, stime 15, cutime 16, cstime 17
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


#: Where this benchmark's run folders go (one per run, never reused): see :func:`run_folder`.
_RUNS_ROOT: Path | None = None


def run_folder(name: str) -> Path:
    """A new, empty folder for one run, under ``WORK/runs/<this process>/``.

    Nothing is deleted while a benchmark measures. On ext4 without a journal (the build machines'
    root filesystem), a new inode is allocated by skipping every inode of its block group deleted in
    the last 60-360 s, and each skip looks up an inode-table block (``recently_deleted()`` in
    fs/ext4/ialloc.c): after the previous round's ``rm -rf`` of a few thousand files, creating a file
    cost 0.5-1 ms of kernel CPU instead of ~20 us (perf: ``recently_deleted`` and
    ``find_get_block_common`` at ~20% of all samples), which punished whichever server ran next.
    The runs are deleted by :func:`remove_runs` when the benchmark ends."""
    global _RUNS_ROOT
    if _RUNS_ROOT is None:
        _RUNS_ROOT = WORK / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path = _RUNS_ROOT / name
    n = 1
    while path.exists():
        n += 1
        path = _RUNS_ROOT / f"{name}.{n}"
    path.mkdir(parents=True)
    return path


def remove_runs() -> None:
    """Delete this benchmark's run folders (after the last measurement)."""
    if _RUNS_ROOT is not None:
        shutil.rmtree(_RUNS_ROOT, ignore_errors=True)


def sync_disk() -> None:
    """Flush dirty pages between runs so one run's writeback does not slow the next."""
    subprocess.run([SYNC], check=False, timeout=120)


def fsync_probe(n: int = 40, size: int = 9728) -> dict[str, float]:
    """What a durable write costs on this disk right now: ``n`` x (pwrite ``size`` bytes at the
    end of a file in WORK + fdatasync), median and 90th percentile in ms. Taken before and after a
    benchmark, it shows how much of the spread is the disk (other work on the machine)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f".fsync-probe-{os.getpid()}"
    block = os.urandom(size)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(n):
            start = time.perf_counter()
            os.pwrite(fd, block, i * size)
            os.fdatasync(fd)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"median_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9)]}


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
    orthanc = "?"
    if Path(ORTHANC).exists():
        out = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=10).stdout
        orthanc = out.splitlines()[0] if out else "?"
    commit = subprocess.run(
        ["git", "-C", str(SRC), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(SRC), "status", "--porcelain", "--untracked-files=no", "."],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    return {
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "minipacs": mp_version,
        "source": f"{SRC} at {commit or '?'}{' (src modified)' if dirty else ''}",
        "dcmtk": dcmtk.splitlines()[0] if dcmtk else "?",
        "orthanc": orthanc,
        "loadavg": load,
    }
