"""The server's log says what the server did, not what pydicom thinks of a file's values.

A stored instance with an invalid Integer String (NumberOfFrames '1A', as in pydicom's
badVR.dcm) and a 12-bit JPEG Extended one (which some of pydicom's decoders cannot decode, each
logging its traceback at ERROR before one that can is tried) are read through metadata,
rendering and decoded frames by a real `minipacs serve`. Before, its log got pydicom's
"Invalid value for VR IS" warnings (twice: logger and warnings module) and the decoders'
tracebacks, under requests that succeeded or answered a clear error. (``minipacs -d serve``
shows them.)
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.compressed import fresh_copy
from tests.dicomgen import write_ct
from tests.peers import free_port, minipacs_cmd, run, start_server, wait_for_port

pytestmark = pytest.mark.interop


def _get(port: int, path: str, accept: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_files_bad_values_stay_out_of_the_server_log(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    jpeg, jpeg_ds = fresh_copy("jpeg_extended_12bit", folder)
    bad = write_ct(folder / "bad.dcm", NumberOfFrames=97)
    raw = bad.read_bytes()
    marker = b"(\x00\x08\x00IS\x02\x0097"
    assert raw.count(marker) == 1
    bad.write_bytes(raw.replace(marker, b"(\x00\x08\x00IS\x02\x001A"))
    http = free_port()
    srv = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http)})
    try:
        wait_for_port("127.0.0.1", http, proc=srv.proc)
        stored = run(
            minipacs_cmd("store", "127.0.0.1", str(srv.port), "-aec", "MINIPACS", str(folder), "--no-progress")
        )
        assert stored.returncode == 0, stored.stdout + stored.stderr
        import pydicom

        bad_ds = pydicom.dcmread(bad, stop_before_pixels=True, force=True)
        for ds in (jpeg_ds, bad_ds):
            base = (
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            )
            assert _get(http, base + "/metadata") == 200
            _get(http, base + "/rendered")
            _get(http, base + "/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
            _get(
                http,
                base + "/frames/1",
                'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
            )
    finally:
        srv.stop()
    log = srv.log_text()
    noisy = [
        line for line in log.splitlines() if re.search(r"(DEBUG|INFO|WARNING|ERROR)\s+pydicom\b|UserWarning", line)
    ]
    assert noisy == [], "\n".join(noisy[:5])
