"""WADO-RS frames of a native instance are byte ranges found from the header alone
(core/transcode.py native_frame_ranges), the same bytes pixel_frames cuts from a whole-file read."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from minipacs.core.transcode import native_frame_ranges, pixel_frames
from tests.dicomgen import write_ct

FRAME = 16 * 20 * 2


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_frames_are_byte_ranges(tmp_path: Path, syntax: str) -> None:
    pixels = os.urandom(3 * FRAME)
    path = write_ct(tmp_path / "m.dcm", rows=16, cols=20, NumberOfFrames=3, PixelData=pixels, transfer_syntax=syntax)
    data = path.read_bytes()
    with open(path, "rb") as fh:
        ranges = native_frame_ranges(fh, [3, 1, 2])
    assert ranges is not None
    got = [data[start:end] for start, end in ranges]
    assert got == [pixels[2 * FRAME :], pixels[:FRAME], pixels[FRAME : 2 * FRAME]]
    assert got == pixel_frames(path, [3, 1, 2], decode=False)


def test_not_plain_ranges_fall_back(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "one.dcm", rows=16, cols=20, PixelData=os.urandom(FRAME))
    with open(path, "rb") as fh:
        assert native_frame_ranges(fh, [2]) is None, "frame 2 of 1: pixel_frames says NoSuchFrame"
    data = path.read_bytes()
    assert native_frame_ranges(io.BytesIO(data[: len(data) - 10]), [1]) is None, "truncated pixel data"
    assert native_frame_ranges(io.BytesIO(b"\0" * 200), [1]) is None, "not Part 10"


def test_encapsulated_frames_are_not_ranges(tmp_path: Path) -> None:
    from pydicom import dcmread

    path = write_ct(tmp_path / "c.dcm", rows=16, cols=20, PixelData=os.urandom(FRAME))
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    with open(tmp_path / "rle.dcm", "rb") as fh:
        assert native_frame_ranges(fh, [1]) is None
