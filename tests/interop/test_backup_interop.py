"""`minipacs backup` of a running `minipacs serve` while DCMTK storescu sends to it, then the backup
served as a data folder: DCMTK findscu finds every study it holds and getscu gets back the bytes that
were sent (the README's "Backup")."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.dicomgen import write_ct
from tests.peers import dataset_bytes, dcmtk, minipacs_cmd, run, start_server

pytestmark = pytest.mark.interop


def _send(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-aec", "MINIPACS", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"TCP_NODELAY": "1"},
    )


def test_a_backup_taken_while_storescu_sends_serves_what_it_holds(tmp_path: Path) -> None:
    before = str(generate_uid())
    during = str(generate_uid())
    first = [write_ct(tmp_path / "in1" / f"{i}.dcm", study_uid=before, rows=64, cols=64) for i in range(10)]
    second = [write_ct(tmp_path / "in2" / f"{i}.dcm", study_uid=during, rows=64, cols=64) for i in range(150)]
    (tmp_path / "live").mkdir()
    (tmp_path / "restored").mkdir()
    live = start_server(tmp_path / "live")
    try:
        assert _send(live.port, first).wait(60) == 0
        sending = _send(live.port, second)
        taken = run(minipacs_cmd("backup", "--data", str(live.data_dir), str(tmp_path / "restored" / "data"), "--json"))
        assert sending.wait(120) == 0
        again = run(minipacs_cmd("backup", "--data", str(live.data_dir), str(tmp_path / "restored" / "data"), "--json"))
    finally:
        live.stop()
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    report, later = json.loads(taken.stdout), json.loads(again.stdout)
    assert 10 <= report["instances"] <= 160 and report["copied"] == report["instances"]
    assert later["instances"] == 160 and later["copied"] == 160 - report["instances"] and later["removed"] == 0
    check = run(minipacs_cmd("check", "--data", str(tmp_path / "restored" / "data")))
    assert check.returncode == 0, check.stdout + check.stderr

    restored = start_server(tmp_path / "restored", env={"MINIPACS_ALLOW_UNREGISTERED": "echo,find,get"})
    try:
        found = run(
            [dcmtk("findscu"), "-S", "-aec", "MINIPACS", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
            + ["-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(restored.port)]
        )
        got = tmp_path / "got"
        got.mkdir()
        get = run(
            [dcmtk("getscu"), "-S", "-aet", "GETSCU", "-aec", "MINIPACS", "-od", str(got)]
            + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={before}", "127.0.0.1", str(restored.port)]
        )
    finally:
        restored.stop()
    assert found.returncode == 0, found.stderr
    assert before in found.stderr + found.stdout and during in found.stderr + found.stdout
    assert get.returncode == 0, get.stdout + get.stderr
    sent = sorted(dataset_bytes(p) for p in first)
    assert sorted(dataset_bytes(p) for p in got.iterdir()) == sent, get.stdout + get.stderr


def test_serve_backs_up_into_backup_dir_every_backup_interval_seconds(tmp_path: Path) -> None:
    """The wiring of the periodic job: `minipacs serve` with backup_dir queues a "backup" job every
    backup_interval_seconds, and its backup holds what was stored."""
    dest = tmp_path / "backup"
    files = [write_ct(tmp_path / "in" / f"{i}.dcm", rows=16, cols=16) for i in range(3)]
    (tmp_path / "live").mkdir()
    env = {"MINIPACS_BACKUP_DIR": str(dest), "MINIPACS_BACKUP_INTERVAL_SECONDS": "1"}
    live = start_server(tmp_path / "live", env=env)
    try:
        assert _send(live.port, files).wait(60) == 0
        deadline = time.monotonic() + 30
        held = 0
        while time.monotonic() < deadline and held < 3:
            time.sleep(0.5)
            if (dest / "index.sqlite3").exists():
                conn = sqlite3.connect(f"file:{dest / 'index.sqlite3'}?mode=ro", uri=True)
                try:
                    held = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
                finally:
                    conn.close()
    finally:
        live.stop()
    assert held == 3, live.log_text()
