"""What the SCU commands do and say when a peer misbehaves (issue 12 items 14 and 17), against
pynetdicom as the acceptor: a store goes on after an abort, on a new association, and lists every
file not sent; statuses come with their meaning and the Error Comment; ``--json`` for echo,
store, move, get and import."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, free_port, minipacs_cmd, run

pytestmark = pytest.mark.interop


def _files(folder: Path, count: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    return [
        write_ct(
            folder / f"f{i:03d}.dcm", study_uid=study, series_uid=series, sop_uid=generate_uid(), InstanceNumber=i + 1
        )
        for i in range(count)
    ]


@contextmanager
def pynetdicom_scp(on_store: Any, **handlers: Any) -> Iterator[tuple[int, Any]]:
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="PYNETSCP")
    for ctx in AllStoragePresentationContexts:
        ae.add_supported_context(ctx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    port = free_port()
    evt_handlers = [(evt.EVT_C_STORE, on_store)] + [(getattr(evt, name), h) for name, h in handlers.items()]
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=evt_handlers)
    try:
        yield port, ae
    finally:
        scp.shutdown()


def test_store_goes_on_after_an_abort_on_a_new_association(tmp_path: Path) -> None:
    """Item 17: the peer aborts on the 3rd of 10 files; the file in flight is listed as not sent with
    the reason, the other 9 go on a new association at once (no 30 s wait), exit 1."""
    files = _files(tmp_path / "in", 10)
    received: list[str] = []
    associations: set[int] = set()
    count = [0]
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            count[0] += 1
            associations.add(id(event.assoc))
            if count[0] == 3:
                event.assoc.abort()
                return 0xC000
            received.append(event.request.AffectedSOPInstanceUID)
        return 0

    with pynetdicom_scp(on_store) as (port, _ae):
        start = time.monotonic()
        res = run(
            minipacs_cmd(
                "store", "127.0.0.1", str(port), "-aec", "PYNETSCP", "--no-progress", "--json", str(tmp_path / "in")
            )
        )
        took = time.monotonic() - start
    assert res.returncode == 1, res.stdout + res.stderr
    assert took < 20, took
    doc = json.loads(res.stdout)
    assert doc["sent"] == 9 and doc["files"] == 10 and doc["associations"] == 2
    assert len(doc["associations_broken"]) == 1 and "abort" in doc["associations_broken"][0]
    (failed,) = doc["failed"]
    assert failed["path"] == str(files[2]) and failed["status"] is None
    assert "broke off while it was being sent" in failed["reason"]
    assert len(received) == 9 and len(associations) == 2
    assert f"failed {files[2]}: the association broke off" in res.stderr


def test_store_lists_every_file_not_sent_when_no_new_association_comes(tmp_path: Path) -> None:
    """Item 17: after the abort the peer refuses new associations: every file not sent is listed
    with why, exit 3 (no association)."""
    files = _files(tmp_path / "in", 6)
    count = [0]
    box: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        count[0] += 1
        if count[0] == 2:
            box["ae"].require_calling_aet = ["SOMEONE_ELSE"]  # from now on: A-ASSOCIATE-RJ
            event.assoc.abort()
            return 0xC000
        return 0

    with pynetdicom_scp(on_store) as (port, ae):
        box["ae"] = ae
        res = run(
            minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "PYNETSCP", "--no-progress", str(tmp_path / "in"))
        )
    assert res.returncode == 3, res.stdout + res.stderr
    assert "sent 1 of 6" in res.stdout
    for path in files[2:]:
        assert f"failed {path}: not sent: no new association after the last one broke off" in res.stderr
    assert f"failed {files[1]}: the association broke off" in res.stderr


def test_store_and_echo_print_the_status_meaning_and_the_comment(tmp_path: Path) -> None:
    """Item 14, SCU half: a refusal is shown as code, meaning and the peer's Error Comment."""
    _files(tmp_path / "in", 2)

    def on_store(event: Any) -> Dataset:
        rsp = Dataset()
        rsp.Status = 0xA700
        rsp.ErrorComment = "disk full on the SCP"
        return rsp

    def on_echo(event: Any) -> Dataset:
        rsp = Dataset()
        rsp.Status = 0x0122
        rsp.ErrorComment = "echo is not for you"
        return rsp

    with pynetdicom_scp(on_store, EVT_C_ECHO=on_echo) as (port, _ae):
        store = run(
            minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "PYNETSCP", "--no-progress", str(tmp_path / "in"))
        )
        echo = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "PYNETSCP"))
        echo_json = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "PYNETSCP", "--json"))
    assert store.returncode == 1
    assert "0xA700 Failure: Refused: Out of Resources (disk full on the SCP)" in store.stderr
    assert echo.returncode == 1
    assert "0x0122 Failure: SOP class not supported (echo is not for you)" in echo.stdout
    (response,) = json.loads(echo_json.stdout)["responses"]
    assert response["status"] == 0x0122 and response["error_comment"] == "echo is not for you"
    assert response["meaning"] == "0x0122 Failure: SOP class not supported"


def test_worklist_query_prints_the_status_meaning(server: ServerProcess) -> None:
    """Item 14: `worklist query` said only "status 0xC001"; now its meaning and the comment."""
    res = run(
        minipacs_cmd(
            "worklist", "query", "127.0.0.1", str(server.port), "-aec", "MINIPACS", "-k", "PatientBirthDate=notadate"
        )
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0xC001 Failure: Unable to process: a key value cannot be matched (" in res.stderr


def test_json_of_echo_and_import_and_of_a_failed_store(tmp_path: Path) -> None:
    """Item 17: --json documents; on failure too (with "error")."""
    files = _files(tmp_path / "in", 3)
    (tmp_path / "in" / "junk.txt").write_text("not DICOM")
    res = run(minipacs_cmd("import", "--data", str(tmp_path / "data"), "--no-progress", "--json", str(tmp_path / "in")))
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["command"] == "import" and doc["stored"] == 3 and doc["duplicates"] == 0
    assert [r["path"] for r in doc["rejected"]] == [str(tmp_path / "in" / "junk.txt")]
    port = free_port()  # nobody listens
    res = run(minipacs_cmd("store", "127.0.0.1", str(port), "--json", "--no-progress", str(files[0])))
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["command"] == "store" and doc["sent"] == 0 and doc["exit_code"] == 3 and "cannot connect" in doc["error"]
    res = run(minipacs_cmd("echo", "127.0.0.1", str(port), "--json"))
    assert res.returncode == 3 and json.loads(res.stdout)["exit_code"] == 3
