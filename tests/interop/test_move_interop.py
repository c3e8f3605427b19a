"""C-MOVE and C-GET against peers we did not write, in both directions, and the seed scenario.

DCMTK movescu/getscu -> minipacs serve (destination: DCMTK storescp, registered
in the AE registry); minipacs move/get -> DCMTK dcmqrscp and -> Orthanc. Every
received file must carry, byte for byte, the dataset that was stored.

The seed scenario (shared/seeds/000): two viewers share the AE title VIEWER,
listening on 127.0.0.2 and 127.0.0.3; each C-MOVEs the study to "VIEWER" from
its own address and gets its own images, nothing goes to the other; a third
requester on 127.0.0.4 is refused with 0xA801 and the server log names both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.dicomgen import write_ct
from tests.peers import (
    ServerProcess,
    dataset_bytes,
    dcmtk,
    free_port,
    minipacs_cmd,
    missing_peer,
    run,
    start_server,
    wait_for_port,
)

pytestmark = pytest.mark.interop

ORTHANC = Path("/usr/sbin/Orthanc")


def _study(
    folder: Path, count: int, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
) -> tuple[str, dict[str, Path]]:
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
            InstanceNumber=i + 1,
        )
    return study, files


def _by_sop(folder: Path) -> dict[str, Path]:
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(".part")
    }


def _assert_same(sent: dict[str, Path], got: dict[str, Path]) -> None:
    assert set(got) == set(sent)
    for sop, path in sent.items():
        assert dataset_bytes(got[sop]) == dataset_bytes(path), f"{sop} differs"


def _config(tmp: Path, nodes: list[tuple[str, str, int]], allow: str = "echo,store,find,move,get") -> Path:
    lines = [f'allow_unregistered = "{allow}"', "fsync = false", ""]
    for ae, host, port in nodes:
        lines += ["[[nodes]]", f'ae_title = "{ae}"', f'host = "{host}"', f"port = {port}", ""]
    path = tmp / "minipacs.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "storescp-out"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", "+B", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def _serve_with(tmp: Path, nodes: list[tuple[str, str, int]], files: Path) -> ServerProcess:
    server = start_server(tmp, "--config", str(_config(tmp, nodes)))
    res = run(minipacs_cmd("store", "127.0.0.1", str(server.port), "-aec", "MINIPACS", str(files)))
    if res.returncode != 0:
        server.stop()
        raise AssertionError(res.stdout + res.stderr)
    return server


# ---------------------------------------------------------------- DCMTK SCUs -> minipacs


def _getscu(port: int, study: str, out: Path, proposal: str) -> subprocess.CompletedProcess[str]:
    """DCMTK getscu of a whole study into ``out``; ``proposal``: +B (the stored syntax first), +xs..."""
    cmd = [dcmtk("getscu"), "-S", proposal, "-aet", "GETSCU", "-aec", "MINIPACS", "-od", str(out)]
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    return run([*cmd, *keys, "127.0.0.1", str(port)])


def test_dcmtk_movescu_to_minipacs(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    study, sent = _study(tmp_path / "in", 5, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    server = _serve_with(tmp_path, [("STORESCP", "127.0.0.1", port)], tmp_path / "in")
    try:
        res = run(
            [
                dcmtk("movescu"),
                "-S",
                "-aet",
                "MOVESCU",
                "-aec",
                "MINIPACS",
                "-aem",
                "STORESCP",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "127.0.0.1",
                str(server.port),
            ]
        )
        assert res.returncode == 0, res.stdout + res.stderr
        log = run(minipacs_cmd("log", "--data", str(server.data_dir), "--json"))
    finally:
        server.stop()
    _assert_same(sent, _by_sop(out))
    receipts = [op for rec in json.loads(log.stdout) for op in rec["operations"] if op.get("op") == "C-MOVE"]
    assert receipts[0]["destination_ae"] == "STORESCP"
    assert (receipts[0]["destination_host"], receipts[0]["destination_port"]) == ("127.0.0.1", port)
    assert receipts[0]["completed"] == 5


def test_dcmtk_movescu_unknown_destination(tmp_path: Path) -> None:
    study, _sent = _study(tmp_path / "in", 1)
    server = _serve_with(tmp_path, [], tmp_path / "in")
    try:
        res = run(
            [
                dcmtk("movescu"),
                "-v",
                "-S",
                "-aec",
                "MINIPACS",
                "-aem",
                "NOWHERE",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "127.0.0.1",
                str(server.port),
            ]
        )
    finally:
        server.stop()
    assert "Refused: MoveDestinationUnknown" in res.stdout + res.stderr
    assert "'NOWHERE' is not a registered node" in server.log_text()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_dcmtk_getscu_to_minipacs(tmp_path: Path, syntax: str) -> None:
    """getscu 3.6.7 offers Explicit VR Little Endian only for storage: stored bytes go
    as they are when they are in it, and are transcoded (same content) when not."""
    study, sent = _study(tmp_path / "in", 4, (syntax,))
    server = _serve_with(tmp_path, [], tmp_path / "in")
    out = tmp_path / "got"
    out.mkdir()
    try:
        res = _getscu(server.port, study, out, "+B")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        server.stop()
    if syntax == ExplicitVRLittleEndian:
        _assert_same(sent, _by_sop(out))
        return
    got = _by_sop(out)
    assert set(got) == set(sent)
    for sop, path in got.items():
        ds, original = pydicom.dcmread(path), pydicom.dcmread(sent[sop])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.PixelData == original.PixelData and ds.PatientName == original.PatientName


def test_dcmtk_getscu_preferring_jpeg_lossless_gets_native_instances(tmp_path: Path) -> None:
    """getscu +xs proposes [JPEG Lossless, Explicit VR LE, ...] in one context per storage class; we
    choose Explicit VR Little Endian there (we only send on it), so the native instances arrive, as
    stored, rather than failing for want of a JPEG Lossless copy (PS3.4 C.4.3.3.1)."""
    study, sent = _study(tmp_path / "in", 2)
    server = _serve_with(tmp_path, [], tmp_path / "in")
    out = tmp_path / "got"
    out.mkdir()
    try:
        res = _getscu(server.port, study, out, "+xs")
    finally:
        server.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_same(sent, _by_sop(out))


def test_dcmtk_getscu_of_a_big_endian_instance(tmp_path: Path) -> None:
    """An instance stored in Explicit VR Big Endian (PS3.5 A.3: retired, still sent: storescu -xb) and
    fetched by getscu, which offers Explicit VR Little Endian only: it is transcoded, and its 16-bit
    OW pixel data swapped within each word (PS3.5 Table 6.2-1), so DCMTK receives what its own
    dcmconv +te makes of the file -- not byte-swapped pixels."""
    original = Path(pydicom.data.get_testdata_file("MR_small_bigendian.dcm"))
    expected = tmp_path / "dcmconv.dcm"
    res = run([dcmtk("dcmconv"), "+te", str(original), str(expected)])
    assert res.returncode == 0, res.stdout + res.stderr
    server = start_server(tmp_path, "--config", str(_config(tmp_path, [])))
    out = tmp_path / "got"
    out.mkdir()
    try:
        res = run([dcmtk("storescu"), "-xb", "-aec", "MINIPACS", "127.0.0.1", str(server.port), str(original)])
        assert res.returncode == 0, res.stdout + res.stderr
        study = pydicom.dcmread(original, stop_before_pixels=True).StudyInstanceUID
        res = _getscu(server.port, study, out, "+B")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        server.stop()
    (got,) = _by_sop(out).values()
    ds, dcmtk_made = pydicom.dcmread(got), pydicom.dcmread(expected)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PixelData == dcmtk_made.PixelData
    assert (ds.pixel_array == pydicom.dcmread(original).pixel_array).all()


# ---------------------------------------------------------------- minipacs SCU -> DCMTK dcmqrscp


def _move_and_get_against_dcmqrscp(
    tmp_path: Path, *options: str, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
) -> None:
    study, sent = _study(tmp_path / "in", 4, syntaxes)
    db = tmp_path / "qrdb"
    db.mkdir()
    res = run([dcmtk("dcmqridx"), str(db), *map(str, sent.values())])
    assert res.returncode == 0, res.stdout + res.stderr
    qr_port, our_port = free_port(), free_port()
    cfg = tmp_path / "dcmqrscp.cfg"
    cfg.write_text(
        f"NetworkTCPPort = {qr_port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\nus = (MINIPACS, 127.0.0.1, {our_port})\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    proc = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(cfg), "--disable-host-lookup", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", qr_port, proc=proc)
        moved = tmp_path / "moved"
        res = run(
            minipacs_cmd(
                "move",
                "127.0.0.1",
                str(qr_port),
                "-aec",
                "DCMQR",
                "-aet",
                "MINIPACS",
                "--port",
                str(our_port),
                "--store-to",
                str(moved),
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "4 completed, 0 failed" in res.stdout
        res = run(
            minipacs_cmd(
                "move",
                "127.0.0.1",
                str(qr_port),
                "-aec",
                "DCMQR",
                "-aem",
                "NOWHERE",
                "--json",
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 1, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert (doc["command"], doc["status"]) == ("move", 0xA801), doc
        assert doc["meaning"] == "0xA801 Failure: Refused: Move Destination unknown"
        got = tmp_path / "got"
        res = run(
            minipacs_cmd(
                "get",
                "127.0.0.1",
                str(qr_port),
                "-aec",
                "DCMQR",
                "-aet",
                "MINIPACS",
                "--json",
                "--out",
                str(got),
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads(res.stdout)  # issue 12 item 17: --json
        assert (doc["command"], doc["status"], doc["completed"], doc["failed"]) == ("get", 0, 4, 0)
        assert doc["meaning"].startswith("0x0000 Success") and doc["failed_uids"] == []
    finally:
        proc.terminate()
        proc.wait(10)
    _assert_same(sent, _by_sop(moved))
    _assert_same(sent, _by_sop(got))


def test_minipacs_move_and_get_against_dcmqrscp(tmp_path: Path) -> None:
    _move_and_get_against_dcmqrscp(tmp_path)


def test_minipacs_move_and_get_against_implicit_only_dcmqrscp(tmp_path: Path) -> None:
    """Issue 12 item 1: dcmqrscp +xi accepts Implicit VR Little Endian only; the identifier of our
    C-MOVE/C-GET must be encoded in the syntax of the accepted context (PS3.5 10.1, PS3.7 9.3).
    (-xi: its sub-operations go in Implicit VR too, so the files arrive byte for byte.)"""
    _move_and_get_against_dcmqrscp(tmp_path, "+xi", "-xi", syntaxes=(ImplicitVRLittleEndian,))


# ---------------------------------------------------------------- minipacs SCU -> Orthanc


def test_minipacs_move_and_get_against_orthanc(tmp_path: Path) -> None:
    if not ORTHANC.exists():
        missing_peer("Orthanc", "apt-get install orthanc")
    study, sent = _study(tmp_path / "in", 4)
    dicom_port, http_port, our_port = free_port(), free_port(), free_port()
    storage = tmp_path / "orthanc-db"
    config = {
        "Name": "minipacs-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "Plugins": [],
        "DicomModalities": {"minipacs": ["MINIPACS", "127.0.0.1", our_port]},
        "StorageCompression": False,
    }
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen([str(ORTHANC), str(cfg)], stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", dicom_port, proc=proc, timeout=60)
        res = run(
            minipacs_cmd(
                "store", "127.0.0.1", str(dicom_port), "-aec", "ORTHANC", "-aet", "MINIPACS", str(tmp_path / "in")
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr
        moved = tmp_path / "moved"
        res = run(
            minipacs_cmd(
                "move",
                "127.0.0.1",
                str(dicom_port),
                "-aec",
                "ORTHANC",
                "-aet",
                "MINIPACS",
                "--port",
                str(our_port),
                "--store-to",
                str(moved),
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr + log_path.read_text(errors="replace")
        got = tmp_path / "got"
        res = run(
            minipacs_cmd(
                "get",
                "127.0.0.1",
                str(dicom_port),
                "-aec",
                "ORTHANC",
                "-aet",
                "MINIPACS",
                "--out",
                str(got),
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr + log_path.read_text(errors="replace")
    finally:
        proc.terminate()
        proc.wait(20)
    _assert_same(sent, _by_sop(moved))
    _assert_same(sent, _by_sop(got))


# ---------------------------------------------------------------- the seed scenario


def test_two_viewers_sharing_an_ae_title_each_get_their_own_images(tmp_path: Path) -> None:
    study, sent = _study(tmp_path / "in", 3)
    port2, port3 = free_port("127.0.0.2"), free_port("127.0.0.3")
    server = _serve_with(tmp_path, [("VIEWER", "127.0.0.2", port2), ("VIEWER", "127.0.0.3", port3)], tmp_path / "in")
    try:
        viewers = {}
        for host, port in (("127.0.0.2", port2), ("127.0.0.3", port3)):
            folder = tmp_path / f"viewer-{host}"
            viewers[host] = (
                folder,
                subprocess.Popen(
                    minipacs_cmd(
                        "move",
                        "127.0.0.1",
                        str(server.port),
                        "-aec",
                        "MINIPACS",
                        "-aet",
                        "VIEWER",
                        "--bind",
                        host,
                        "--port",
                        str(port),
                        "--store-to",
                        str(folder),
                        "--no-progress",
                        "-k",
                        f"StudyInstanceUID={study}",
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
                ),
            )
        for _host, (folder, proc) in viewers.items():
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output
            assert "3 completed, 0 failed" in output
            _assert_same(sent, _by_sop(folder))  # its own images, all of them, and only those
        # a third requester elsewhere: refused, and the log names both candidates
        res = run(
            minipacs_cmd(
                "move",
                "127.0.0.1",
                str(server.port),
                "-aec",
                "MINIPACS",
                "-aet",
                "OTHER",
                "--bind",
                "127.0.0.4",
                "-aem",
                "VIEWER",
                "--no-progress",
                "-k",
                f"StudyInstanceUID={study}",
            )
        )
        assert res.returncode == 1, res.stdout + res.stderr
        assert "0xA801" in res.stdout
        text = server.log_text()
    finally:
        server.stop()
    assert f"127.0.0.2:{port2}" in text and f"127.0.0.3:{port3}" in text
    refusals = [line for line in text.splitlines() if "C-MOVE refused with 0xA801" in line]
    assert len(refusals) == 1 and "127.0.0.4" in refusals[0]
    assert f"127.0.0.2:{port2}" in refusals[0] and f"127.0.0.3:{port3}" in refusals[0]
    # and neither viewer got anything twice: each folder holds exactly the study
    assert len(list((tmp_path / "viewer-127.0.0.2").glob("*.dcm"))) == 3
    assert len(list((tmp_path / "viewer-127.0.0.3").glob("*.dcm"))) == 3
    shutil.rmtree(tmp_path / "in")
