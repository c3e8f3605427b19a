"""DICOM Part 10 files: read the File Meta Information (PS3.10 §7.1) without the dataset.

Stored instances are Part 10 files; the dataset part is streamed out of them
as it is, so all we need is where it starts and how it is encoded. The File Meta
Information is always explicit VR little endian (PS3.10 §7.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from minipacs.dicom.vr import LONG_LENGTH_VR_BYTES

#: PS3.10 §7.1: the 128-byte preamble (zeros when unused) and the "DICM" prefix.
PREAMBLE: Final = b"\x00" * 128 + b"DICM"
#: (0002,0000) UL, length 4: how every Part 10 file's meta group starts (PS3.10 Table 7.1-1).
GROUP_LENGTH_HEADER: Final = b"\x02\x00\x00\x00UL\x04\x00"
#: A File Meta Information Group Length above this is not plausible (ours are ~200 bytes).
MAX_GROUP_LENGTH: Final = 1 << 20
_HEAD: Final = len(PREAMBLE) + len(GROUP_LENGTH_HEADER) + 4  # 144: where the meta elements start


class NotPart10(ValueError):
    """The file is not a DICOM Part 10 file we can send."""


@dataclass(frozen=True)
class Part10File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int

    @property
    def label(self) -> str:
        return str(self.path)

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    @contextmanager
    def local_file(self) -> Iterator[Path]:
        yield self.path


def _group_length(head: bytes) -> int:
    """The File Meta Information Group Length from the first 144 bytes of a Part 10 file."""
    if len(head) < _HEAD or head[128:132] != b"DICM":
        raise NotPart10("no DICM prefix after the 128-byte preamble (not a DICOM Part 10 file)")
    if head[132:140] != GROUP_LENGTH_HEADER:
        raise NotPart10("File Meta Information Group Length (0002,0000) missing")
    group_length = int.from_bytes(head[140:144], "little")
    if group_length > MAX_GROUP_LENGTH:
        raise NotPart10(f"File Meta Information of {group_length} bytes is not plausible")
    return group_length


def dataset_offset_from(head: bytes) -> int:
    """Where the dataset begins, from the first 144 bytes of a Part 10 file (see ``dataset_offset_of``)."""
    return _HEAD + _group_length(head)


def dataset_offset_of(path: Path) -> int:
    """Where the dataset of a stored Part 10 file begins: 144 + File Meta Information Group Length (PS3.10 §7.1).

    One 144-byte read; the File Meta Information itself was checked when the file was stored.
    """
    with open(path, "rb", buffering=0) as fh:
        head = fh.read(_HEAD)
    return _HEAD + _group_length(head)


def walk_file_meta(data: bytes) -> tuple[int, dict[int, bytes]]:
    """The group 0002 elements at the start of ``data`` (PS3.10 §7.1, explicit VR little endian).

    Returns where they end (the first element of another group, or the end of ``data``)
    and each raw value by element number. Raises NotPart10 when an element runs past
    ``data``. Walks the elements rather than trusting the Group Length, which some
    writers get wrong.
    """
    offset = 0
    values: dict[int, bytes] = {}
    while offset + 8 <= len(data):
        group, element, vr = struct.unpack_from("<HH2s", data, offset)
        if group != 0x0002:
            break
        if vr in LONG_LENGTH_VR_BYTES:
            if offset + 12 > len(data):
                raise NotPart10("ends inside its File Meta Information")
            (length,) = struct.unpack_from("<L", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            raise NotPart10("ends inside its File Meta Information")
        values[element] = data[start : start + length]
        offset = start + length
    return offset, values


def uid_value(raw: bytes) -> str:
    """A UI value of the File Meta Information as text (PS3.5 §9.1 trailing NUL removed)."""
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def read_part10(path: Path) -> Part10File:
    """Read the File Meta Information (PS3.10 §7.1) without touching the dataset."""
    with open(path, "rb") as fh:
        group_length = _group_length(fh.read(_HEAD))
        meta = fh.read(group_length)
    if len(meta) != group_length:
        raise NotPart10("file ends inside the File Meta Information")
    end, raw = walk_file_meta(meta)
    if end + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, end)
        raise NotPart10(f"element ({group:04X},{element:04X}) inside the File Meta Information")
    values = {element: uid_value(raw[element]) for element in (0x0002, 0x0003, 0x0010) if element in raw}
    missing = [k for k in (0x0002, 0x0003, 0x0010) if not values.get(k)]
    if missing:
        raise NotPart10("File Meta Information lacks " + ", ".join(f"(0002,{e:04X})" for e in missing))
    return Part10File(path, values[0x0002], values[0x0003], values[0x0010], _HEAD + group_length)


__all__ = [
    "GROUP_LENGTH_HEADER",
    "MAX_GROUP_LENGTH",
    "PREAMBLE",
    "NotPart10",
    "Part10File",
    "dataset_offset_of",
    "read_part10",
    "uid_value",
    "walk_file_meta",
]
