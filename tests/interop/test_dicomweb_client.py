"""dicomweb-client (a client we did not write) against a running `minipacs serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from tests.dicomgen import make_ct
from tests.peers import free_port, wait_for_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.interop
def test_dicomweb_client_round_trip(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=SRC, MINIPACS_PORT=str(port), MINIPACS_HOST="127.0.0.1",
               MINIPACS_HTTP_PORT=str(http_port), MINIPACS_FSYNC="false")
    proc = subprocess.Popen([sys.executable, "-m", "minipacs.cli.main", "serve", "--data", str(tmp_path / "d")],
                            env=env, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", http_port, proc=proc)
        client = DICOMwebClient(f"http://127.0.0.1:{http_port}/dicom-web")
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        result = client.store_instances([make_ct(study, series, sop)])
        assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
        found = client.search_for_studies(search_filters={"PatientID": "P1"})
        assert [s["0020000D"]["Value"][0] for s in found] == [study]
        instances = client.retrieve_study(study)
        assert [ds.SOPInstanceUID for ds in instances] == [sop]
        assert instances[0].pixel_array.shape == (64, 64)
        meta = client.retrieve_instance_metadata(study, series, sop)
        assert meta["00080018"]["Value"] == [sop]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
