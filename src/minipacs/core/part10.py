"""DICOM Part 10 files: read the File Meta Information (PS3.10 §7.1) without the dataset.

Stored instances are Part 10 files; the dataset part is streamed out of them
as it is, so all we need is where it starts and how it is encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_TAG_VR_LEN = struct.Struct("<HH2sH")


class NotPart10(ValueError):
    """The file is not a DICOM Part 10 file we can send."""


@dataclass(frozen=True)
class Part10File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


def read_part10(path: Path) -> Part10File:
    """Read the File Meta Information (PS3.10 §7.1) without touching the dataset."""
    with open(path, "rb") as fh:
        head = fh.read(132 + 12)
        if len(head) < 144 or head[128:132] != b"DICM":
            raise NotPart10("no DICM prefix after the 128-byte preamble (not a DICOM Part 10 file)")
        group, element, vr, length = _TAG_VR_LEN.unpack(head[132:140])
        if (group, element, vr) != (0x0002, 0x0000, b"UL") or length != 4:
            raise NotPart10("File Meta Information Group Length (0002,0000) missing")
        (group_length,) = struct.unpack("<L", head[140:144])
        if group_length > 1 << 20:
            raise NotPart10(f"File Meta Information of {group_length} bytes is not plausible")
        meta = fh.read(group_length)
        if len(meta) != group_length:
            raise NotPart10("file ends inside the File Meta Information")
    values = dict(_meta_elements(meta))
    missing = [k for k in (0x0002, 0x0003, 0x0010) if not values.get(k)]
    if missing:
        raise NotPart10("File Meta Information lacks " + ", ".join(f"(0002,{e:04X})" for e in missing))
    return Part10File(path, values[0x0002], values[0x0003], values[0x0010], 144 + group_length)


def _meta_elements(meta: bytes) -> Iterator[tuple[int, str]]:
    offset = 0
    while offset + 8 <= len(meta):
        group, element, vr = struct.unpack_from("<HH2s", meta, offset)
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack_from("<L", meta, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", meta, offset + 6)
            start = offset + 8
        if group != 0x0002:
            raise NotPart10(f"element ({group:04X},{element:04X}) inside the File Meta Information")
        if vr == b"UI":
            yield element, meta[start : start + length].decode("ascii", "replace").rstrip("\x00 ")
        offset = start + length


