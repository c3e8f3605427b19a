"""Issue 8 item 1: a hostile wildcard must not freeze the archive.

Keys that are not index columns (and every worklist key) are matched in Python. With a
backtracking regex, ``*a*a*a*a*a*a*a*a*b`` against a 64-character stored value froze DICOM
and HTTP for 72 s. PS3.4 C.2.2.2.4 wildcard matching needs no backtracking: these tests send
patterns far worse than that and require prompt answers while other clients are served.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.dicomgen import write_ct
from tests.peers import dcmtk, free_port, run, start_server

#: 40 stars: a backtracking matcher would need ~7^40 steps against the value below.
HOSTILE = "*a" * 40 + "*b"
STORED = "a" * 64


def test_matcher_is_linear_in_a_subprocess() -> None:
    """Run the matcher where a hang becomes a failure (a thread cannot be stopped)."""
    code = (
        "from minipacs.index.matching import Condition, Matching, python_matches\n"
        f"c = Condition(Matching.WILDCARD, ({(HOSTILE * 10)[:1024]!r},))\n"
        "assert not python_matches(c, 'LO', 'a' * 100_000)\n"
        "assert not python_matches(c, 'PN', 'a' * 100_000)\n"
        f"assert python_matches(Condition(Matching.WILDCARD, ('*a?a*b',)), 'LO', 'a' * 100_000 + 'b')\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(src)},
        timeout=20,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.interop
def test_hostile_cfind_and_qido_do_not_stall_other_clients(tmp_path: Path) -> None:
    http_port = free_port()
    server = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        ct = write_ct(tmp_path / "ct.dcm", rows=8, cols=8, InstitutionName=STORED)
        stored = run([dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port), str(ct)])
        assert stored.returncode == 0, stored.stderr
        find = subprocess.Popen(
            [
                dcmtk("findscu"),
                "-S",
                "-aec",
                server.ae_title,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID",
                "-k",
                f"InstitutionName={HOSTILE}",
                "127.0.0.1",
                str(server.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            qido = client.get("/dicom-web/studies", params={"InstitutionName": HOSTILE})
            assert qido.status_code in (200, 204)
            assert qido.status_code == 204 or qido.json() == []
            for _ in range(3):  # meanwhile every other client is answered at once
                started = time.monotonic()
                echo = run([dcmtk("echoscu"), "-aec", server.ae_title, "127.0.0.1", str(server.port)], timeout=30)
                assert echo.returncode == 0, echo.stderr
                assert time.monotonic() - started < 5
        out, _ = find.communicate(timeout=30)
        assert find.returncode == 0, out
        assert "Find Response: 1 (Pending)" not in out
        # and a pattern that does match is still found
        match = run(
            [
                dcmtk("findscu"),
                "-S",
                "-aec",
                server.ae_title,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "StudyInstanceUID",
                "-k",
                "InstitutionName=*a*a*a?a*",
                "127.0.0.1",
                str(server.port),
            ]
        )
        assert "Pending" in match.stdout + match.stderr
    finally:
        server.stop()


def test_hostile_worklist_query_keeps_the_event_loop_free(tmp_path: Path) -> None:
    """MWL keys are matched in Python on every open entry: off the loop, and linear."""
    import asyncio

    from pydicom.dataset import Dataset

    from minipacs.bootstrap import open_archive
    from minipacs.config import Settings
    from minipacs.core.worklist import Worklist
    from tests.worklist_data import entry

    async def scenario() -> tuple[list[Dataset], float]:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            worklist = Worklist(archive)
            for n in range(200):
                await worklist.add(entry(f"P{n}", STORED, f"ACC{n}", "CT", "CT01", "20240105", "083000"))
            query = Dataset()
            query.PatientName = "*a" * 31 + "*b"  # 64 characters: a PN component's most
            query.ScheduledProcedureStepSequence = [Dataset()]
            gaps: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.create_task(ticker())
            found = await asyncio.wait_for(worklist.find(query), 20)
            done.set()
            await tick
            return found, max(gaps, default=0.0)
        finally:
            await archive.close()

    found, worst_gap = asyncio.run(scenario())
    assert found == []
    assert worst_gap < 0.5
