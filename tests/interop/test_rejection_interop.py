"""Rejection notes (IHE IOCM; core/rejection.py) against a running `minipacs serve`, sent by DCMTK storescu:
a registered modality's note deletes the images it lists (findscu no longer finds them) and storescu
sending one of them again is answered 0xA771; the same note from a peer that is not registered deletes
nothing (rejection_notes = registered, the default)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.core.test_rejection import _save, rejection_note
from tests.dicomgen import write_ct
from tests.peers import dcmtk, minipacs_cmd, run, start_server

pytestmark = pytest.mark.interop


def _store(port: int, title: str, files: list[Path]) -> str:
    done = run([dcmtk("storescu"), "-d", "-aet", title, "-aec", "MINIPACS", "127.0.0.1", str(port), *map(str, files)])
    return done.stdout + done.stderr


def _found(port: int, study: str, series: str) -> set[str]:
    done = run(
        [dcmtk("findscu"), "-S", "-aet", "CT_ROOM_1", "-aec", "MINIPACS", "-k", "QueryRetrieveLevel=IMAGE"]
        + ["-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}", "-k", "SOPInstanceUID"]
        + ["127.0.0.1", str(port)]
    )
    text = done.stdout + done.stderr
    return {line.split("[", 1)[1].split("]", 1)[0].strip("\0 ") for line in text.splitlines() if "(0008,0018)" in line}


def test_a_registered_modalitys_note_deletes_and_a_strangers_does_not(tmp_path: Path) -> None:
    data = tmp_path / "server" / "data"
    added = run(minipacs_cmd("nodes", "add", "--data", str(data), "CT_ROOM_1", "127.0.0.1", "104"))
    assert added.returncode == 0, added.stdout + added.stderr
    study, series = str(generate_uid()), str(generate_uid())
    images = [write_ct(tmp_path / "in" / f"{n}.dcm", study_uid=study, series_uid=series) for n in range(3)]
    sops = [pydicom.dcmread(p).SOPInstanceUID for p in images]
    note = _save(rejection_note(study, [(series, sops[0]), (series, sops[1])]), tmp_path / "note.dcm")
    server = start_server(tmp_path / "server", env={"MINIPACS_ALLOW_UNREGISTERED": "echo,store,find"})
    try:
        _store(server.port, "CT_ROOM_1", images)
        assert _found(server.port, study, series) == set(sops)
        _store(server.port, "STRANGER", [note])  # stored, not applied: not a registered node
        time.sleep(1.0)
        assert set(sops) <= _found(server.port, study, series)
        again = _save(rejection_note(study, [(series, sops[0]), (series, sops[1])]), tmp_path / "again.dcm")
        _store(server.port, "CT_ROOM_1", [again])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sops[0] in _found(server.port, study, series):
            time.sleep(0.2)
        remaining = _found(server.port, study, series)
        assert sops[0] not in remaining and sops[1] not in remaining and sops[2] in remaining
        resent = _store(server.port, "CT_ROOM_1", [images[0]])
        assert "DIMSE Status                  : 0xa771" in resent, resent[-3000:]
        assert "A rejection note rejected this instance; it is not stored again" in resent
        assert sops[0] not in _found(server.port, study, series)
    finally:
        server.stop()
