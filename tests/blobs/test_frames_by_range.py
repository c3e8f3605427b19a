"""WADO-RS frames of a native instance are byte ranges found from the header alone
(core/transcode.py native_frame_ranges), the same bytes pixel_frames cuts from a whole-file read;
those of an encapsulated one asked for as stored are the ranges of their fragments' values, found from
the header and the item headers (encapsulated_frame_ranges, PS3.5 A.4)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from minipacs.core.inflate import DEFAULT_LIMITS
from minipacs.core.retrieve import StoredInstance
from minipacs.core.transcode import encapsulated_frame_ranges, native_frame_ranges, pixel_frames
from minipacs.web.bulkdata import read_frames as _frames
from tests.blobs.test_contract import s3_store
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.s3server import S3Server

FRAME = 16 * 20 * 2
MiB = 1024 * 1024


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


# ------------------------------------------------ encapsulated frames (PS3.5 A.4): fragments by range


def write_encapsulated(
    tmp: Path,
    frames: list[bytes],
    *,
    fragments_per_frame: int = 1,
    has_bot: bool = True,
    extended: bool = False,
    number_of_frames: int | None = None,
) -> Path:
    """A CT stored in a compressed syntax whose Pixel Data encapsulates ``frames`` (opaque bytes: the
    frames are handed out as stored, never decoded)."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, encapsulate_extended

    path = write_ct(tmp / "native.dcm", rows=16, cols=20, PixelData=os.urandom(FRAME))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.NumberOfFrames = number_of_frames or len(frames)
    if extended:
        data, table, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = table, lengths
    else:
        data = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    out = tmp / "encapsulated.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def frames_of(sizes: list[int]) -> list[bytes]:
    return [os.urandom(size) for size in sizes]


@pytest.mark.parametrize(
    ("sizes", "per_frame", "has_bot", "extended"),
    [
        ([1000], 1, False, False),  # single frame, empty BOT, one fragment
        ([1000], 3, False, False),  # single frame, empty BOT, its fragments joined
        ([1000], 2, True, False),  # single frame, filled BOT
        ([600, 1000, 200, 800], 1, False, False),  # multi-frame, empty BOT, one fragment each
        ([600, 1000, 200, 800], 1, True, False),  # multi-frame, filled BOT
        ([600, 1000, 200, 800], 3, True, False),  # multi-frame, filled BOT, three fragments a frame
        ([600, 1000, 200, 800], 1, False, True),  # Extended Offset Table
    ],
)
def test_encapsulated_frames_are_fragment_ranges(
    tmp_path: Path, sizes: list[int], per_frame: int, has_bot: bool, extended: bool
) -> None:
    frames = frames_of(sizes)
    path = write_encapsulated(tmp_path, frames, fragments_per_frame=per_frame, has_bot=has_bot, extended=extended)
    numbers = [len(frames), 1] + ([2] if len(frames) > 1 else [])
    data = path.read_bytes()
    with open(path, "rb") as fh:
        ranges = encapsulated_frame_ranges(fh, numbers)
    assert ranges is not None
    assert all(len(parts) == (per_frame if has_bot or len(frames) == 1 else 1) for parts in ranges)
    got = [b"".join(data[start:end] for start, end in parts) for parts in ranges]
    assert got == pixel_frames(path, numbers, decode=False)
    assert got == [frames[number - 1] for number in numbers]


def test_encapsulated_not_ranges_fall_back(tmp_path: Path) -> None:
    path = write_encapsulated(tmp_path, frames_of([600, 1000, 200]), has_bot=True)
    data = path.read_bytes()
    with open(path, "rb") as fh:
        assert encapsulated_frame_ranges(fh, [1]) is not None
        assert encapsulated_frame_ranges(fh, [4]) is None, "frame 4 of 3: pixel_frames says NoSuchFrame"
    assert encapsulated_frame_ranges(io.BytesIO(data[:-20]), [3]) is None, "truncated: no delimiter, cut fragment"
    assert encapsulated_frame_ranges(io.BytesIO(data[:-8]), [3]) is None, "no Sequence Delimitation Item"
    last = data.rindex(b"\xfe\xff\x00\xe0")  # the last fragment's item header: make its length run past the end
    past = data[: last + 4] + (len(data)).to_bytes(4, "little") + data[last + 8 :]
    assert encapsulated_frame_ranges(io.BytesIO(past), [3]) is None, "a fragment length past the end"
    assert encapsulated_frame_ranges(io.BytesIO(b"\0" * 200), [1]) is None, "not Part 10"
    native = write_ct(tmp_path / "n.dcm", rows=16, cols=20, PixelData=os.urandom(FRAME))
    with open(native, "rb") as fh:
        assert encapsulated_frame_ranges(fh, [1]) is None, "native: native_frame_ranges' job"


def test_ambiguous_fragments_fall_back(tmp_path: Path) -> None:
    """Empty Basic Offset Table, 3 frames in 6 fragments: only the JPEG markers would tell the frames."""
    path = write_encapsulated(tmp_path, frames_of([600, 1000, 200]), fragments_per_frame=2, has_bot=False)
    with open(path, "rb") as fh:
        assert encapsulated_frame_ranges(fh, [1]) is None
    fewer = write_encapsulated(tmp_path, frames_of([600, 1000]), has_bot=False, number_of_frames=3)
    with open(fewer, "rb") as fh:
        assert encapsulated_frame_ranges(fh, [1]) is None, "2 fragments for 3 frames"


class _CountedBody:
    """A GET's streaming body that adds the bytes read from it to ``counts``."""

    def __init__(self, body: Any, counts: dict[str, int]) -> None:
        self._body, self._counts = body, counts

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(size)
        self._counts["bytes"] += len(data)
        return data

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for chunk in self._body.iter_chunks(size):
            self._counts["bytes"] += len(chunk)
            yield chunk

    def close(self) -> None:
        self._body.close()


def test_s3_encapsulated_frame_is_read_by_range(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WADO-RS frames of a multi-frame encapsulated instance on S3 (moto): the frame's bytes, from a few
    ranged GETs that read far less than the object, and no download of the whole of it."""
    frames = frames_of([3 * MiB, 3 * MiB, 3 * MiB, 3 * MiB])
    path = write_encapsulated(tmp_path, frames, fragments_per_frame=2, has_bot=True)
    store = s3_store(s3_server, tmp_path)
    try:
        staged = tmp_path / "staged.part"
        shutil.copyfile(path, staged)
        store.put_from_staging(staged, "s/e/i.dcm")
        store.sync()
        item = StoredInstance(CT_IMAGE_STORAGE, "1.2.3", str(JPEG2000Lossless), "s/e/i.dcm", store)
        counts = {"gets": 0, "bytes": 0}
        get = store._get

        def counted_get(key: str, start: int, end: int = -1) -> tuple[Any, int]:
            counts["gets"] += 1
            body, size = get(key, start, end)
            return _CountedBody(body, counts), size

        def no_download(key: str) -> Any:
            raise AssertionError("the whole object was downloaded")

        monkeypatch.setattr(store, "_get", counted_get)
        monkeypatch.setattr(store, "local_file", no_download)
        assert _frames(item, [3], decode=False, limits=DEFAULT_LIMITS) == [frames[2]]
        # the header, each of frame 3's two item headers (fragments over 1 MiB: a seek each), its two fragments
        assert counts["gets"] <= 5, counts
        assert counts["bytes"] <= 3 * MiB + 3 * MiB, counts  # the frame, and the open file's 1 MiB buffer thrice
        assert counts["bytes"] < path.stat().st_size // 2, counts
        assert _frames(item, [4, 1], decode=False, limits=DEFAULT_LIMITS) == [frames[3], frames[0]]
    finally:
        store.close()
