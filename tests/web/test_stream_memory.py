"""Issue 10: a big STOW-RS into a real ``minipacs serve`` keeps the server's memory flat (peak RSS
< 150 MB, the kernel's VmHWM) and the instance is stored whole and retrievable by WADO-RS.

200 MiB of Pixel Data here (a few seconds); bench/bench_memory.py --stow sends 1 GiB and records
the figure in bench/RESULTS.md. The client streams the body from the file (a generator), so the
test process stays flat too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

from tests.dicomgen import make_ct
from tests.peers import free_port, start_server

MB = 1024 * 1024
FRAMES = 400  # 512 x 512 x 16 bit: 200 MiB
PIXEL_BYTES = 512 * 512 * 2 * FRAMES
BOUNDARY = "minipacs-test-big"


def make_big(path: Path, study: str, tail: bytes) -> str:
    """A valid Part 10 file with ``PIXEL_BYTES`` of OW Pixel Data, sparse but for ``tail`` at its end."""
    sop = generate_uid()
    ds = make_ct(study_uid=study, series_uid=generate_uid(), sop_uid=sop, rows=512, cols=512)
    del ds.PixelData
    ds.NumberOfFrames = str(FRAMES)
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES))  # PS3.5 §7.1.2
        fh.truncate(fh.tell() + PIXEL_BYTES)
        fh.seek(-len(tail), os.SEEK_END)
        fh.write(tail)
    return sop


def stow_body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as fh:
        while piece := fh.read(MB):
            yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def vmhwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_200_mib_stow_keeps_the_server_flat_and_is_retrievable(tmp_path: Path) -> None:
    study, tail = generate_uid(), os.urandom(MB)
    big = tmp_path / "big.dcm"
    sop = make_big(big, study, tail)
    http_port = free_port()
    server = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=120) as client:
            r = client.post(
                "/dicom-web/studies",
                content=stow_body(big),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
            )
            assert r.status_code == 200, r.text
            stored_peak = vmhwm_bytes(server.proc.pid)
            url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
            assert url.endswith(sop)
            size, last = 0, b""
            with client.stream("GET", url.removeprefix(base), headers={"Accept": "multipart/related"}) as got:
                assert got.status_code == 200
                for piece in got.iter_bytes(MB):
                    size += len(piece)
                    last = (last + piece)[-2 * MB :]
            retrieved_peak = vmhwm_bytes(server.proc.pid)
    finally:
        server.stop()
    assert stored_peak < 150e6, f"server peak RSS {stored_peak / 1e6:.1f} MB while storing (limit 150 MB)"
    assert retrieved_peak < 150e6, f"server peak RSS {retrieved_peak / 1e6:.1f} MB after WADO-RS (limit 150 MB)"
    assert size > PIXEL_BYTES
    assert tail in last  # the end of the Pixel Data came back as it was sent
