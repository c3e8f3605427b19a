"""C-ECHO and C-STORE against peers we did not write, in both directions.

DCMTK echoscu/storescu -> minipacs serve; minipacs echo/store -> DCMTK storescp;
pynetdicom SCU -> minipacs; minipacs store -> pynetdicom SCP. Every stored file
must carry, byte for byte, the dataset that was sent.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dataset_bytes, dcmtk, free_port, minipacs_cmd, run, wait_for_port
from tests.stored_files import dataset_of, stored_bytes, stored_keys

pytestmark = pytest.mark.interop


def _study(folder: Path, count: int, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)) -> dict[str, Path]:
    """`count` CT files spread over the given transfer syntaxes; SOP Instance UID -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files: dict[str, Path] = {}
    for i in range(count):
        sop = generate_uid()
        files[sop] = write_ct(
            folder / f"f{i:03d}.dcm",
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            transfer_syntax=syntaxes[i % len(syntaxes)],
        )
    return files


def _stored(server: ServerProcess) -> dict[str, bytes]:
    """SOP Instance UID -> the stored Part 10 file's bytes, of every blob in storage (files and pack entries)."""
    storage = server.data_dir / "storage"
    found = {}
    for key in stored_keys(storage):
        data = stored_bytes(storage, key)
        found[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return found


def _assert_same_datasets(sent: dict[str, Path], stored: dict[str, bytes]) -> None:
    assert set(stored) == set(sent)
    for sop, path in sent.items():
        assert dataset_of(stored[sop]) == dataset_bytes(path), f"{sop} differs"


def test_dcmtk_echoscu_to_minipacs(server: ServerProcess) -> None:
    res = run([dcmtk("echoscu"), "-aec", "MINIPACS", "127.0.0.1", str(server.port)])
    assert res.returncode == 0, res.stderr


# storescu proposes all uncompressed syntaxes in one context and converts each
# file to the one accepted; we accept the requestor's first choice, so each
# flag below makes the file's own syntax come first and nothing is converted.
STORESCU_FIRST = {ExplicitVRLittleEndian: "-xe", ImplicitVRLittleEndian: "-xi", ExplicitVRBigEndian: "-xb"}


def test_dcmtk_storescu_to_minipacs(server: ServerProcess, tmp_path: Path) -> None:
    sent: dict[str, Path] = {}
    for n, (syntax, flag) in enumerate(STORESCU_FIRST.items()):
        folder = tmp_path / f"in{n}"
        files = _study(folder, 4, (syntax,))
        sent.update(files)
        res = run(
            [
                dcmtk("storescu"),
                "-aec",
                "MINIPACS",
                "-aet",
                "MODALITY1",
                flag,
                "+sd",
                "+r",
                "127.0.0.1",
                str(server.port),
                str(folder),
            ],
            env={"TCP_NODELAY": "1"},
        )
        assert res.returncode == 0, res.stdout + res.stderr
    _assert_same_datasets(sent, _stored(server))
    log = run(minipacs_cmd("log", "--data", str(server.data_dir)))
    assert log.returncode == 0, log.stderr
    assert log.stdout.count("MODALITY1 -> MINIPACS from 127.0.0.1") == 3
    assert "4 C-STORE stored" in log.stdout


def test_dcmtk_storescu_lossy_first_in_one_context_stores_the_image_unchanged(
    server: ServerProcess, tmp_path: Path
) -> None:
    """storescu +C -xy proposes [JPEG Baseline, Explicit VR LE, ...] in ONE context per SOP class and
    converts each file to the syntax accepted. Accepting the requestor's first choice there made it
    compress a native 8-bit image to lossy JPEG on the way (the store failed when its encoder refused);
    a lossy syntax is chosen only when nothing lossless is proposed beside it (net/presentation.py
    chosen_last), as DCMTK's storescp and Orthanc do, so the image arrives as it was, pixel for pixel."""
    sop = generate_uid()
    path = write_ct(
        tmp_path / "in" / "sc8.dcm",
        sop_uid=sop,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=bytes(range(256)) * 16,
    )
    res = run(
        [dcmtk("storescu"), "-v", "+v", "+C", "-xy", "-aec", "MINIPACS", "127.0.0.1", str(server.port), str(path)]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "-> JPEG" not in res.stdout + res.stderr  # storescu logs each conversion
    _assert_same_datasets({sop: path}, _stored(server))


def test_minipacs_echo_and_store_to_dcmtk_storescp(tmp_path: Path) -> None:
    sent = _study(tmp_path / "in", 8, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    import subprocess

    scp = subprocess.Popen([dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", "+B", str(port)])
    try:
        wait_for_port("127.0.0.1", port, proc=scp)
        echo = run(minipacs_cmd("echo", "127.0.0.1", str(port), "-aec", "STORESCP"))
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert "Success" in echo.stdout
        res = run(minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "STORESCP", str(tmp_path / "in")))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "sent 8 of 8" in res.stdout
    finally:
        scp.terminate()
        scp.wait(10)
    received = list(out.iterdir())
    assert len(received) == 8
    import pydicom

    by_sop = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes() for p in received}
    _assert_same_datasets(sent, by_sop)


def test_pynetdicom_scu_to_minipacs(server: ServerProcess, tmp_path: Path) -> None:
    import pydicom
    from pynetdicom import AE

    sent = _study(tmp_path / "in", 5)
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MINIPACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        for path in sent.values():
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status.Status == 0
    finally:
        assoc.release()
    _assert_same_datasets(sent, _stored(server))


def test_minipacs_store_to_pynetdicom_scp(tmp_path: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    sent = _study(tmp_path / "in", 6, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        # event.request.DataSet is the raw dataset as received, before decoding
        raw = event.request.DataSet.getvalue()
        with lock:
            received[event.request.AffectedSOPInstanceUID] = raw
        return 0x0000

    ae = AE(ae_title="PYNETSCP")
    for ctx in AllStoragePresentationContexts:
        ae.add_supported_context(ctx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        res = run(minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "PYNETSCP", str(tmp_path / "in")))
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        scp.shutdown()
    assert set(received) == set(sent)
    for sop, path in sent.items():
        assert received[sop] == dataset_bytes(path)


def _meta_disagrees(path: Path) -> tuple[str, str]:
    """Rewrite ``path`` so that its File Meta Information names another SOP Instance UID than its
    dataset; returns (dataset UID, File Meta UID)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=False)  # True would set the meta from the dataset again
    return str(ds.SOPInstanceUID), str(ds.file_meta.MediaStorageSOPInstanceUID)


def test_minipacs_store_announces_the_datasets_uid_to_minipacs(server: ServerProcess, tmp_path: Path) -> None:
    """Issue 12 item 6: the C-STORE-RQ names the dataset's SOP Instance UID, as DCMTK storescu does,
    not the File Meta Information's; minipacs as SCP would refuse a mismatch with 0xA900."""
    sent = _study(tmp_path / "in", 2)
    path = next(iter(sent.values()))
    dataset_uid, meta_uid = _meta_disagrees(path)
    res = run(
        minipacs_cmd("store", "127.0.0.1", str(server.port), "-aec", "MINIPACS", "--no-progress", str(tmp_path / "in"))
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sent 2 of 2" in res.stdout
    stored = _stored(server)
    assert dataset_uid in stored and meta_uid not in stored


def test_minipacs_store_announces_the_datasets_uid_to_dcmtk_storescp(tmp_path: Path) -> None:
    """Issue 12 item 6, against DCMTK storescp: it files the object under the announced UID."""
    import subprocess

    import pydicom

    sent = _study(tmp_path / "in", 1)
    dataset_uid, meta_uid = _meta_disagrees(next(iter(sent.values())))
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", str(port)])
    try:
        wait_for_port("127.0.0.1", port, proc=scp)
        res = run(minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "STORESCP", str(tmp_path / "in")))
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    (received,) = list(out.iterdir())
    assert received.name.endswith(dataset_uid), received.name
    assert pydicom.dcmread(received).file_meta.MediaStorageSOPInstanceUID == dataset_uid != meta_uid
