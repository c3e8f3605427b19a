"""Issue 12 item 2: a deflated dataset whose deflate stream (PS3.5 A.5) is of odd length goes out
padded to even length with a trailing 0x00, in fragments that are all of even length (PS3.8 E.2).
DCMTK storescp aborts on an odd PDV; `minipacs store` then waited for a response that never came."""

from __future__ import annotations

import asyncio
import random
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from minipacs.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
from minipacs.net import association
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dul import Timeouts
from minipacs.services.storage_scu import read_sendable, store_file
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct
from tests.peers import dcmtk, free_port, minipacs_cmd, run, wait_for_port

pytestmark = pytest.mark.interop


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def write_odd_deflated(path: Path, rows: int) -> tuple[str, bytes]:
    """A Part 10 file in Deflated Explicit VR Little Endian whose deflate stream has odd length,
    written unpadded as a careless producer would; returns its SOP Instance UID and inflated dataset."""
    for attempt in range(200):
        sop = generate_uid()
        ds = make_ct(generate_uid(), generate_uid(), sop, rows=rows, cols=rows, patient_id=f"P{attempt}")
        ds.PixelData = random.Random(attempt).randbytes(len(ds.PixelData))  # noise: many fragments
        plain = encode_dataset(ds, ExplicitVRLittleEndian)
        stream = raw_deflate(plain)
        if len(stream) % 2:
            break
    else:  # pragma: no cover - 200 even lengths in a row does not happen
        raise AssertionError("no odd-length deflate stream found")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = UID(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1.1"
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
        fh.write(stream)
    return sop, plain


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    # +xa: accept every transfer syntax storescp knows, Deflated Explicit VR Little Endian included
    scp = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", "+xa", "-ta", "5", "-td", "5", str(port)]
    )
    try:
        wait_for_port("127.0.0.1", port, proc=scp)
        yield port, out
    finally:
        scp.terminate()
        scp.wait(10)


@pytest.mark.parametrize("max_pdu", [16384, 16385, 0])
def test_every_fragment_of_an_odd_deflate_stream_is_even(
    tmp_path: Path, storescp: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, max_pdu: int
) -> None:
    """Instrumented where P-DATA is framed: every PDV our association sends has even length, for a
    dataset of one PDV and of many (an odd Maximum Length included), and storescp stores it."""
    port, out = storescp
    path = tmp_path / "odd.dcm"
    sop, plain = write_odd_deflated(path, rows=16 if max_pdu == 0 else 256)
    lengths: list[tuple[bool, int]] = []
    framing = association.pdata_pdu_header

    def recording(context_id: int, is_command: bool, is_last: bool, data_length: int) -> bytes:
        lengths.append((is_command, data_length))
        return framing(context_id, is_command, is_last, data_length)

    monkeypatch.setattr(association, "pdata_pdu_header", recording)

    async def main() -> tuple[int, str]:
        settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=5, idle=5), max_pdu_send=max_pdu)
        rq = build_rq("SCU", "STORESCP", [(CT_IMAGE_STORAGE, [DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN])], settings)
        assoc = await connect("127.0.0.1", port, rq, settings)
        try:
            return await store_file(assoc, read_sendable(path))
        finally:
            await assoc.release()

    status, comment = asyncio.run(asyncio.wait_for(main(), 20))
    assert status == 0, comment
    data = [n for is_command, n in lengths if not is_command]
    assert data and all(n % 2 == 0 for n in data), lengths
    assert all(n % 2 == 0 for is_command, n in lengths), lengths
    if max_pdu:
        assert len(data) > 1  # the padding happens on the last of many fragments too
    (received,) = list(out.iterdir())
    stored = pydicom.dcmread(received)
    assert stored.SOPInstanceUID == sop
    assert stored.PixelData == pydicom.dcmread(path).PixelData


def test_minipacs_store_of_an_odd_deflate_stream_to_dcmtk_storescp(tmp_path: Path, storescp: tuple[int, Path]) -> None:
    port, out = storescp
    folder = tmp_path / "in"
    folder.mkdir()
    sop, _ = write_odd_deflated(folder / "odd.dcm", rows=64)
    res = run(
        minipacs_cmd("store", "127.0.0.1", str(port), "-aec", "STORESCP", str(folder)),
        timeout=25,
        env={"TCP_NODELAY": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sent 1 of 1" in res.stdout
    (received,) = list(out.iterdir())
    assert pydicom.dcmread(received).SOPInstanceUID == sop
