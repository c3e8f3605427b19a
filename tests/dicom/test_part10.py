"""dicom/part10.py: the File Meta Information of Part 10 files (PS3.10 §7.1)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from minipacs.dicom.part10 import (
    GROUP_LENGTH_HEADER,
    PREAMBLE,
    NotPart10,
    dataset_offset_of,
    read_part10,
    walk_file_meta,
)

TS = b"1.2.840.10008.1.2.1\x00"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"SV", b"UV"):
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _meta(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return PREAMBLE + GROUP_LENGTH_HEADER + struct.pack("<I", len(body)) + body


GOOD = (
    _element(1, b"OB", b"\x00\x01"),
    _element(2, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
    _element(3, b"UI", b"1.2.3.4"),
    _element(0x10, b"UI", TS),
)


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    return path


def test_read_part10(tmp_path: Path) -> None:
    meta = _meta(*GOOD)
    path = _file(tmp_path, meta + b"\x08\x00\x16\x00")
    found = read_part10(path)
    assert (found.sop_class_uid, found.sop_instance_uid, found.transfer_syntax_uid) == (
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4",
        "1.2.840.10008.1.2.1",
    )
    assert found.dataset_offset == len(meta) == dataset_offset_of(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 200, "no DICM prefix"),
        (PREAMBLE + b"\x02\x00\x01\x00OB" + b"\x00" * 20, "Group Length \\(0002,0000\\) missing"),
        (PREAMBLE + GROUP_LENGTH_HEADER + struct.pack("<I", (1 << 20) + 1), "not plausible"),
        (PREAMBLE + GROUP_LENGTH_HEADER + struct.pack("<I", 100) + b"\x02\x00", "file ends inside"),
        (_meta(*GOOD[:3]), "lacks \\(0002,0010\\)"),
        (_meta(*GOOD, struct.pack("<HH2sH", 8, 0x16, b"UI", 2) + b"12"), "element \\(0008,0016\\) inside"),
        (_meta(*GOOD[:3], struct.pack("<HH2sH", 2, 0x10, b"UI", 40) + TS), "ends inside its File Meta"),
    ],
)
def test_not_part10(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(NotPart10, match=message):
        read_part10(_file(tmp_path, data))


def test_long_length_vrs_in_the_meta_group(tmp_path: Path) -> None:
    """PS3.5 Table 7.1-1: SV and UV have a 32-bit length too (the old copy here lacked them)."""
    meta = _meta(*GOOD, _element(0x0100, b"UV", b"\x00" * 8))
    assert read_part10(_file(tmp_path, meta)).dataset_offset == len(meta)


def test_walk_stops_at_the_dataset_whatever_the_group_length_says() -> None:
    body = b"".join(GOOD)
    end, values = walk_file_meta(body + b"\x08\x00\x16\x00UI\x02\x0012")
    assert end == len(body)
    assert values[0x0010] == TS
    with pytest.raises(NotPart10, match="ends inside"):
        walk_file_meta(body[:-3])
