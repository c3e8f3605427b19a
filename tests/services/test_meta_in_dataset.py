"""A C-STORE whose data set carries File Meta elements (group 0002) is stored without them.

Real senders: pynetdicom (a pydicom Dataset holding (0002,xxxx) elements encodes them into the
data set) in implicit and explicit VR, and DCMTK's storescu sending a file whose data set has a
(0002,0010) after its meta. The instance comes back by WADO-RS with its pixels where they were
(before, pydicom read it as JPEG Baseline, the data set's (0002,0010)), and DCMTK's dcmdump reads
it without "Invalid Element ... found in data set".
PS3.5 §7.1 and PS3.4 C.4.1.1.3: a Data Set holds no element of a group below 0008.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.dicomgen import make_ct
from tests.peers import dcmtk, free_port, start_server

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def fetch(http_port: int, ds: pydicom.Dataset, folder: Path) -> Path:
    """The stored instance as WADO-RS returns it (its stored transfer syntax), written to a file."""
    url = (
        f"http://127.0.0.1:{http_port}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    got = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert got.status_code == 200, got.text
    body = got.content
    start = body.index(b"DICM") - 128
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(body[start : body.rindex(b"\r\n--")])
    return path


def check_clean(path: Path, sent: pydicom.Dataset) -> None:
    read = pydicom.dcmread(path)
    # WADO-RS answers an instance stored in implicit VR in explicit VR (PS3.18 8.7.3.5.2): never the
    # JPEG Baseline the sender's data set named
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not [element for element in read if element.tag.group < 8]
    assert read.PixelData == sent.PixelData and read.PatientName == sent.PatientName
    dumped = subprocess.run([dcmtk("dcmdump"), "+E", str(path)], capture_output=True, text=True, timeout=60)
    assert dumped.returncode == 0 and "Invalid Element" not in dumped.stderr, dumped.stderr


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    http_port = free_port()
    running = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        yield running, http_port
    finally:
        running.stop()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_pynetdicom_meta_elements_in_the_data_set_are_dropped(server, tmp_path: Path, syntax: str) -> None:  # type: ignore[no-untyped-def]
    running, http_port = server
    ds = make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.add_new(0x00020002, "UI", ds.SOPClassUID)
    ds.add_new(0x00020010, "UI", JPEG_BASELINE)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", running.port, ae_title="MINIPACS")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    check_clean(fetch(http_port, ds, tmp_path), ds)
    log = running.log_path.read_text()
    assert f"SOP Instance {ds.SOPInstanceUID} from SENDER: its data set began with 2 element(s)" in log


def test_dcmtk_storescu_of_a_file_with_meta_in_its_data_set(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running, http_port = server
    ds = make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    raw = buffer.getvalue()
    start = 144 + struct.unpack_from("<I", raw, 140)[0]  # after (0002,0000) and the group it counts
    value = JPEG_BASELINE.encode()  # 22 bytes: even
    sent = tmp_path / "meta-in-data-set.dcm"
    sent.write_bytes(raw[:start] + struct.pack("<HHI", 0x0002, 0x0010, len(value)) + value + raw[start:])
    env = dict(os.environ, TCP_NODELAY="1")
    store = subprocess.run(
        [dcmtk("storescu"), "-xi", "-aet", "DCMTKSCU", "-aec", "MINIPACS", "127.0.0.1", str(running.port), str(sent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert store.returncode == 0, store.stderr
    check_clean(fetch(http_port, ds, tmp_path), ds)
