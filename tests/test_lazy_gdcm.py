"""minipacs/lazy_gdcm.py: python-gdcm stays unloaded until a frame needs it, and then decodes as usual.

The pytest process imported pydicom before minipacs (conftest), so GDCM is loaded here the usual
way; the deferred path is exercised in fresh processes: a Python that imports minipacs first, and
a real ``minipacs serve`` whose memory map is read from /proc.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from minipacs import lazy_gdcm
from tests.compressed import dcmcjpeg_12bit, dcmdjpeg_pixels, fresh_copy
from tests.peers import free_port, start_server

# In a fresh process: minipacs first, then every module a server imports; GDCM must not be loaded.
# Then decode each file given (pydicom's JPEG Lossless has no plugin here but GDCM's; JPEG Extended
# 12-bit goes through minipacs's own GDCM plugin) and print the pixels' checksums.
PROBE = """
import json, sys
import minipacs, minipacs.bootstrap, minipacs.core.transcode, minipacs.web.render
from minipacs import lazy_gdcm
from minipacs.core import decoders
decoders.register()
before = lazy_gdcm.loaded()
import pydicom
out = [pydicom.dcmread(path).pixel_array.astype("int64").tolist() for path in sys.argv[1:]]
print(json.dumps({"before": before, "after": lazy_gdcm.loaded(), "pixels": out}))
"""


def gdcm_mapped(pid: int) -> bool:
    return "_gdcm" in Path(f"/proc/{pid}/maps").read_text()


def test_gdcm_is_loaded_at_the_first_decode_and_decodes_as_dcmtk_does(tmp_path: Path) -> None:
    lossless, ds = fresh_copy("jpeg_lossless", tmp_path / "in")  # 1.2.840.10008.1.2.4.70
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    twelve = dcmcjpeg_12bit(tmp_path / "in12")
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(lossless), str(twelve)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert (found["before"], found["after"]) == (False, True)
    assert np.array_equal(np.array(found["pixels"][0]), pydicom.dcmread(lossless).pixel_array)  # loaded as usual
    assert np.array_equal(np.array(found["pixels"][1]), dcmdjpeg_pixels(twelve, tmp_path / "dcmtk"))


def test_the_stand_in_answers_pydicoms_import_time_questions_only_while_importing() -> None:
    stand_in = lazy_gdcm.DeferredGDCM("3.0.10")
    assert stand_in.Version.GetVersion() == "3.0.10"
    assert hasattr(stand_in.DataElement, "SetByteStringValue")
    with pytest.raises(AttributeError):
        stand_in.__path__  # noqa: B018 - "from gdcm import X" must not load it
    lazy_gdcm.release(stand_in)
    import gdcm

    assert stand_in.Version is gdcm.Version  # the real ones now
    assert stand_in.DataElement is gdcm.DataElement


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_a_running_server_maps_gdcm_only_when_it_renders_a_jpeg_lossless_frame(tmp_path: Path) -> None:
    lossless, _ = fresh_copy("jpeg_lossless", tmp_path / "in")
    http_port = free_port()
    server = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http_port)})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as client:
            stored = client.post("/api/instances", content=lossless.read_bytes())
            assert stored.status_code in (200, 201), stored.text
            assert not gdcm_mapped(server.proc.pid)  # stored and indexed: no frame decoded
            ds = pydicom.dcmread(lossless)
            url = (
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/rendered"
            )
            rendered = client.get(url, headers={"Accept": "image/png"})
            assert rendered.status_code == 200, rendered.text
            assert rendered.content.startswith(b"\x89PNG")
            assert gdcm_mapped(server.proc.pid)
    finally:
        server.stop()
