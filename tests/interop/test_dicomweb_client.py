"""dicomweb-client (a client we did not write) against a running `minipacs serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from tests.dicomgen import make_ct
from tests.peers import free_port, wait_for_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


@contextmanager
def serving(tmp_path: Path) -> Iterator[DICOMwebClient]:
    """``minipacs serve`` on free ports (fsync off) and a dicomweb-client of it; the server must stop
    cleanly on SIGTERM."""
    port, http_port = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=SRC,
        MINIPACS_PORT=str(port),
        MINIPACS_HOST="127.0.0.1",
        MINIPACS_HTTP_PORT=str(http_port),
        MINIPACS_FSYNC="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "minipacs.cli.main", "serve", "--data", str(tmp_path / "d")],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", http_port, proc=proc)
        yield DICOMwebClient(f"http://127.0.0.1:{http_port}/dicom-web")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()


@pytest.mark.interop
def test_dicomweb_client_round_trip(tmp_path: Path) -> None:
    with serving(tmp_path) as client:
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
        # dicomweb-client sends "Host: 127.0.0.1" without the port: the BulkDataURI must still name it
        (pixels,) = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
        assert pixels == instances[0].PixelData


@pytest.mark.interop
def test_dicomweb_client_frames_and_transcoding_of_compressed_instances(tmp_path: Path) -> None:
    import numpy as np
    import pydicom
    from pydicom.encaps import generate_frames

    from tests.compressed import COMPRESSED, fresh_copy

    with serving(tmp_path) as client:
        for name in ("jpeg_baseline", "jpeg_ls", "jpeg2000_lossless", "rle_2frames"):
            _file, ts, count = COMPRESSED[name]
            _path, ds = fresh_copy(name, tmp_path / "src" / name)
            client.store_instances([ds])
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            numbers = list(range(1, count + 1))
            stored = list(generate_frames(ds.PixelData, number_of_frames=count))
            pixels = ds.pixel_array if count > 1 else [ds.pixel_array]
            decoded = [np.asarray(f).astype(f.dtype.newbyteorder("<")).tobytes() for f in pixels]
            # the client's default (*/*): the Default of PS3.18 8.7.3.3, Explicit VR Little Endian, so a
            # lossless-only syntax decompressed and a lossy one as stored (Orthanc's DICOMweb decompresses
            # even lossy ones for */*)
            lossy = ts == "1.2.840.10008.1.2.4.50"
            assert client.retrieve_instance_frames(*uids, frame_numbers=numbers) == (stored if lossy else decoded), name
            # frames as stored: by the syntax's own media type
            media = {
                "1.2.840.10008.1.2.4.50": "image/jpeg",
                "1.2.840.10008.1.2.4.80": "image/jls",
                "1.2.840.10008.1.2.4.90": "image/jp2",
                "1.2.840.10008.1.2.5": "image/dicom-rle",
            }[ts]
            assert client.retrieve_instance_frames(*uids, frame_numbers=numbers, media_types=((media, ts),)) == stored
            # frames decompressed: application/octet-stream (Explicit VR Little Endian)
            got = client.retrieve_instance_frames(
                *uids, frame_numbers=numbers, media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),)
            )
            assert got == decoded, name
            # the instance: as stored by default, decompressed when asked
            as_stored = client.retrieve_instance(*uids)
            assert as_stored.file_meta.TransferSyntaxUID == ts and as_stored.PixelData == ds.PixelData
            plain = client.retrieve_instance(*uids, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
            assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert plain.SOPInstanceUID == ds.SOPInstanceUID
            assert np.array_equal(plain.pixel_array, ds.pixel_array), name
            assert isinstance(plain, pydicom.Dataset)


@pytest.mark.interop
def test_dicomweb_client_lists_ordered_matches_and_a_series_image_past_its_reports(tmp_path: Path) -> None:
    """What the conformance sweep found with dicomweb-client against a running server: a list given as a
    search filter is sent as the UID key repeated (a 400 before; PS3.4 C.2.2.2.2 UID list now); every
    match lists its attributes in tag order (PS3.18 F.2.2: the Retrieve URL came last); a series whose
    middle instance is a Structured Report renders its image (PS3.18 10.4.1.1.3: was a 406)."""
    from tests.dicomgen import make_sr

    with serving(tmp_path) as client:
        study, other, series, sop = generate_uid(), generate_uid(), generate_uid(), generate_uid()
        image = make_ct(study, series, sop, InstanceNumber=1)
        reports = [
            make_sr(study, series, generate_uid(), (study, series, sop), SeriesNumber=2, InstanceNumber=number)
            for number in (2, 3)
        ]
        result = client.store_instances([image, *reports, make_ct(other, generate_uid(), generate_uid())])
        assert len(result.ReferencedSOPSequence) == 4
        found = client.search_for_studies(search_filters={"StudyInstanceUID": [study, other, "1.2.99"]})
        assert sorted(match["0020000D"]["Value"][0] for match in found) == sorted([study, other])
        for match in [*found, *client.search_for_series(study), *client.search_for_instances(study)]:
            assert list(match) == sorted(match)
        rendered = client.retrieve_series_rendered(study, series, media_types=("image/png",))
        assert rendered.startswith(b"\x89PNG")
