"""core/transcode.py: Part 10 transcoding and frames of stored instances, on pydicom's test files."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.encaps import generate_frames

from minipacs.core.transcode import NoSuchFrame, TranscodeError, can_transcode, pixel_frames, transcode_part10
from tests.compressed import COMPRESSED, dcmcjpeg_12bit, dcmdjpeg_pixels, fresh_copy
from tests.dicomgen import write_ct
from tests.peers import dcmtk

ELE = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_transcode_part10_decompresses_and_keeps_the_instance(tmp_path: Path, name: str) -> None:
    path, ds = fresh_copy(name, tmp_path)
    out = pydicom.dcmread(io.BytesIO(transcode_part10(path, ELE)))
    assert out.preamble == b"\x00" * 128
    assert out.file_meta.TransferSyntaxUID == ELE
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert np.array_equal(out.pixel_array, ds.pixel_array)


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_pixel_frames_as_stored_and_decoded(tmp_path: Path, name: str) -> None:
    path, ds = fresh_copy(name, tmp_path)
    count = COMPRESSED[name][2]
    numbers = list(range(count, 0, -1))  # any order, as asked
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    assert pixel_frames(path, numbers, decode=False) == [stored[n - 1] for n in numbers]
    pixels = ds.pixel_array if count > 1 else ds.pixel_array[np.newaxis]
    assert pixel_frames(path, numbers, decode=True) == [pixels[n - 1].tobytes() for n in numbers]


@pytest.mark.interop
@pytest.mark.parametrize("made_by", ["pydicom's JPEG-lossy.dcm", "dcmcjpeg +ee, 2 frames"])
def test_12_bit_jpeg_extended_decodes_as_dcmtk_does(tmp_path: Path, made_by: str) -> None:
    """Issue 12 item 8: JPEG Extended (Process 2 & 4) with 12-bit samples, pixels equal to DCMTK's dcmdjpeg."""
    path = fresh_copy("jpeg_extended_12bit", tmp_path)[0] if made_by.startswith("pydicom") else dcmcjpeg_12bit(tmp_path)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51" and stored.BitsStored == 12
    expected = dcmdjpeg_pixels(path, tmp_path / "dcmtk")
    assert expected.max() > 255  # really 12-bit values
    out = pydicom.dcmread(io.BytesIO(transcode_part10(path, ELE)))
    assert out.file_meta.TransferSyntaxUID == ELE and out.SOPInstanceUID == stored.SOPInstanceUID
    assert out.BitsStored == 12 and out.BitsAllocated == 16
    assert np.array_equal(out.pixel_array, expected)
    count = int(stored.get("NumberOfFrames", 1) or 1)
    frames = expected if count > 1 else expected[np.newaxis]
    assert pixel_frames(path, list(range(1, count + 1)), decode=True) == [f.astype("<u2").tobytes() for f in frames]


def test_corrupt_12_bit_jpeg_extended_is_a_transcode_error(tmp_path: Path) -> None:
    path, _ds = fresh_copy("jpeg_extended_12bit", tmp_path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xd8\xff")  # the JPEG bitstream: keep SOI, garble the rest
    data[start + 2 : start + 400] = b"\x00" * 398
    path.write_bytes(bytes(data))
    with pytest.raises(TranscodeError, match="cannot be decompressed"):
        pixel_frames(path, [1], decode=True)
    with pytest.raises(TranscodeError, match="python-gdcm"):
        transcode_part10(path, ELE)


def test_native_frames_are_sliced_without_decoding(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "ct.dcm", study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    ds = pydicom.dcmread(path)
    assert pixel_frames(path, [1], decode=False) == [ds.PixelData] == pixel_frames(path, [1], decode=True)


def test_frame_errors(tmp_path: Path) -> None:
    path, _ds = fresh_copy("rle_2frames", tmp_path)
    with pytest.raises(NoSuchFrame, match="frame 3 does not exist; the instance has 2"):
        pixel_frames(path, [1, 3], decode=False)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    with pytest.raises(NoSuchFrame, match="no pixel data"):
        pixel_frames(tmp_path / "nopixels.dcm", [1], decode=True)


def test_undecodable_pixels_are_a_transcode_error(tmp_path: Path) -> None:
    path, ds = fresh_copy("jpeg2000_lossless", tmp_path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the JPEG 2000 codestream: keep SOC/SIZ markers, garble the rest
    data[start + 4 : start + 400] = b"\xff" * 396
    path.write_bytes(bytes(data))
    with pytest.raises(TranscodeError, match="cannot be decompressed"):
        pixel_frames(path, [1], decode=True)
    with pytest.raises(TranscodeError, match="python-gdcm"):
        transcode_part10(path, ELE)
    assert pixel_frames(path, [1], decode=False)  # as stored still works


@pytest.mark.parametrize(
    "source,target,expected",
    [
        ("1.2.840.10008.1.2.4.90", ELE, True),
        ("1.2.840.10008.1.2", ELE, True),
        (ELE, "1.2.840.10008.1.2.4.50", False),  # never compress
        (ELE, "1.2.840.10008.1.2.1.99", False),  # deflate
        ("1.2.3.private", ELE, False),
    ],
)
def test_can_transcode(source: str, target: str, expected: bool) -> None:
    assert can_transcode(source, target) is expected


# pydicom's big endian test files (PS3.5 A.3, retired but still sent): 8-bit RGB in OW, 16-bit OW, 8-bit OB,
# 1-bit OB; and 32-bit in OW (rtdose_expb.dcm), which pydicom decodes as 32-bit big endian words where
# PS3.5 Table 6.2-1 and DCMTK swap within each 16-bit word: compared with DCMTK only.
BIG_ENDIAN_FILES = [
    "MR_small_bigendian.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "ExplVR_BigEnd.dcm",
    "liver_expb_1frame.dcm",
]


@pytest.mark.parametrize("name", BIG_ENDIAN_FILES)
@pytest.mark.parametrize("target", [ELE, "1.2.840.10008.1.2"])
def test_big_endian_to_little_endian_keeps_the_pixels(name: str, target: str) -> None:
    """PS3.5 Table 6.2-1: OW "requires byte swapping within each word when changing byte ordering" (and
    OL, OF, OD, OV within each of their words). pydicom writes such values as it read them: from
    Explicit VR Big Endian to a little-endian syntax the pixels came out byte-swapped."""
    path = Path(pydicom.data.get_testdata_file(name))
    original = pydicom.dcmread(path)
    assert original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    out = pydicom.dcmread(io.BytesIO(transcode_part10(path, target)))
    assert out.file_meta.TransferSyntaxUID == target
    assert np.array_equal(out.pixel_array, original.pixel_array)


@pytest.mark.interop
@pytest.mark.parametrize("name", [*BIG_ENDIAN_FILES, "rtdose_expb.dcm"])
@pytest.mark.filterwarnings("ignore:.*Invalid value for VR UI")  # rtdose_expb.dcm's own UIDs; a warning in the server
def test_big_endian_to_little_endian_as_dcmconv_does(tmp_path: Path, name: str) -> None:
    """The same conversion byte for byte against DCMTK's dcmconv +te: the pixel data equal DCMTK's."""
    path = Path(pydicom.data.get_testdata_file(name))
    expected = tmp_path / "dcmconv.dcm"
    result = subprocess.run([dcmtk("dcmconv"), "+te", str(path), str(expected)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    dcmtk_pixels = pydicom.dcmread(expected).PixelData
    ours = pydicom.dcmread(io.BytesIO(transcode_part10(path, ELE)))
    assert ours.PixelData == dcmtk_pixels


def test_decompressing_drops_the_extended_offset_table(tmp_path: Path) -> None:
    """PS3.3 C.7.6.3 (Table C.7-11c): Extended Offset Table (7FE0,0001) and its Lengths (7FE0,0002) may
    only be present with encapsulated pixel data. pydicom's decompress kept them, so a C-GET/C-MOVE to a
    peer taking only native syntaxes received a native dataset with an offset table into nothing."""
    from pydicom.encaps import encapsulate_extended

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    ds["PixelData"].is_undefined_length = True
    path = tmp_path / "eot.dcm"
    ds.save_as(path)
    assert pixel_frames(path, [2, 1], decode=False) == [frames[1], frames[0]]
    for target in (ELE, "1.2.840.10008.1.2"):
        out = pydicom.dcmread(io.BytesIO(transcode_part10(path, target)))
        assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
        assert np.array_equal(out.pixel_array, pydicom.dcmread(path).pixel_array)
