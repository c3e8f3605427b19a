"""Rejection notes (IHE IOCM; core/rejection.py) against a running `minipacs serve`, sent by DCMTK storescu:
a registered modality's note is answered Success and deletes the images it lists (findscu no longer finds
them), and storescu sending one of them again is answered 0xA771; the same note from a peer that is not
registered (rejection_notes = registered, the default), or from anyone with rejection_notes = off, is
answered 0xA775 with an Error Comment that says why, is not stored, and deletes nothing."""

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


def _status(output: str) -> list[str]:
    """The DIMSE Status lines of storescu -d, one per C-STORE-RSP."""
    return [
        line.split("DIMSE Status", 1)[1].split(":", 1)[1].strip()
        for line in output.splitlines()
        if "DIMSE Status" in line
    ]


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
    note_series = str(generate_uid())
    note_ds = rejection_note(study, [(series, sops[0]), (series, sops[1])], series=note_series)
    note = _save(note_ds, tmp_path / "note.dcm")
    server = start_server(tmp_path / "server", env={"MINIPACS_ALLOW_UNREGISTERED": "echo,store,find"})
    try:
        stored = _store(server.port, "CT_ROOM_1", images)
        assert _status(stored) == ["0x0000: Success"] * 3, stored[-3000:]
        assert _found(server.port, study, series) == set(sops)
        refused = _store(server.port, "STRANGER", [note])  # answered a failure: not a registered node
        assert _status(refused) == ["0xa775: Refused: Out of resources"], refused[-3000:]  # DCMTK names the A7xx
        assert "Only registered nodes may reject here; nothing was rejected" in refused
        assert _found(server.port, study, series) == set(sops)
        assert _found(server.port, study, note_series) == set()  # the note was not stored
        again = _save(rejection_note(study, [(series, sops[0]), (series, sops[1])]), tmp_path / "again.dcm")
        assert _status(_store(server.port, "CT_ROOM_1", [again])) == ["0x0000: Success"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sops[0] in _found(server.port, study, series):
            time.sleep(0.2)
        remaining = _found(server.port, study, series)
        assert sops[0] not in remaining and sops[1] not in remaining and sops[2] in remaining
        resent = _store(server.port, "CT_ROOM_1", [images[0]])
        assert "DIMSE Status                  : 0xa771" in resent, resent[-3000:]
        assert "A rejection note rejected this instance; it is not stored again" in resent
        assert sops[0] not in _found(server.port, study, series)
        assert "rejection note" in server.log_text() and "is not a registered node" in server.log_text()
    finally:
        server.stop()


def test_with_rejection_notes_off_a_note_is_answered_0xA775_and_not_stored(tmp_path: Path) -> None:
    data = tmp_path / "server" / "data"
    added = run(minipacs_cmd("nodes", "add", "--data", str(data), "CT_ROOM_1", "127.0.0.1", "104"))
    assert added.returncode == 0, added.stdout + added.stderr
    study, series, note_series = str(generate_uid()), str(generate_uid()), str(generate_uid())
    image = write_ct(tmp_path / "in" / "ct.dcm", study_uid=study, series_uid=series)
    sop = pydicom.dcmread(image).SOPInstanceUID
    note = _save(rejection_note(study, [(series, sop)], series=note_series), tmp_path / "note.dcm")
    server = start_server(tmp_path / "server", env={"MINIPACS_REJECTION_NOTES": "off"})
    try:
        assert _status(_store(server.port, "CT_ROOM_1", [image])) == ["0x0000: Success"]
        refused = _store(server.port, "CT_ROOM_1", [note])
        assert _status(refused) == ["0xa775: Refused: Out of resources"], refused[-3000:]  # DCMTK names the A7xx
        assert "Rejection notes are not accepted here; nothing was rejected" in refused
        assert _found(server.port, study, series) == {sop}
        assert _found(server.port, study, note_series) == set()
    finally:
        server.stop()
