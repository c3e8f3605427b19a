"""Read the few header attributes the index needs from a staged dataset.

Only the top level is walked, in tag order, and reading stops at the first tag
past the last attribute we want (Columns, (0028,0011)) — long before Pixel Data
(7FE0,0010). Values we do not want are skipped, never read, and nested
sequences are stepped over item by item, so a 1 GB instance costs a few
kilobytes of reading. Deflated datasets (PS3.5 A.5) are inflated as a stream.

Why not ``pydicom.filereader.read_dataset``: it turns truncation and odd VRs into
process-wide warnings and reads ``pydicom.config`` globals, neither of which is
safe or quiet in a server thread. Character sets are still decoded with
pydicom's tables (PS3.5 §6.1, PS3.3 C.12.1.1.2).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from minipacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAX_TABLE,
    TransferSyntax,
    transfer_syntax,
)
from minipacs.dicom.values import codecs_for, decode_text
from minipacs.dicom.vr import LONG_LENGTH_VR_BYTES


class MalformedDataset(ValueError):
    """The dataset's encoding is broken; the message says where and how (core turns it into
    InvalidInstance)."""


# PS3.6 Table 6-1 (data element registry): what the index keeps, keyword → (tag, VR).
HEADER_ATTRIBUTES: Final[Mapping[str, tuple[int, str]]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "BodyPartExamined": (0x00180015, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
}

_KEYWORD_BY_TAG: Final = {tag: keyword for keyword, (tag, _vr) in HEADER_ATTRIBUTES.items()}
_KEYWORD_AND_VR_BY_TAG: Final = {tag: (keyword, vr) for keyword, (tag, vr) in HEADER_ATTRIBUTES.items()}
_LAST_WANTED_TAG: Final = max(_KEYWORD_BY_TAG)
#: A wanted value longer than this is ignored (no header attribute we keep comes close).
_MAX_VALUE_LENGTH: Final = 64 * 1024
#: Deeper sequence nesting than this is treated as hostile.
_MAX_DEPTH: Final = 32
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
# PS3.5 §7.5: item and delimitation tags (encoded without VR in every transfer syntax).
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITATION: Final = 0xFFFEE00D
_SEQUENCE_DELIMITATION: Final = 0xFFFEE0DD
_NO_VR_TAGS: Final = frozenset({_ITEM, _ITEM_DELIMITATION, _SEQUENCE_DELIMITATION})
_EXPLICIT_LE: Final = TRANSFER_SYNTAX_TABLE[EXPLICIT_VR_LITTLE_ENDIAN]


def dataset_encoding(transfer_syntax_uid: str) -> TransferSyntax:
    """The encoding of ``transfer_syntax_uid``; an unknown (private) one is read as explicit VR
    little endian, as every encapsulated syntax of PS3.5 A.4 is."""
    return transfer_syntax(transfer_syntax_uid) or _EXPLICIT_LE


@dataclass(frozen=True)
class InstanceHeader:
    """Decoded text of the HEADER_ATTRIBUTES present in a dataset, by keyword."""

    values: Mapping[str, str]

    def get(self, keyword: str) -> str:
        return self.values.get(keyword, "")


class _Source(Protocol):
    def read(self, size: int) -> bytes: ...
    def skip(self, size: int) -> None: ...
    def at_end(self) -> bool: ...


class _FileSource:
    """Forward reads and skips over an open file, knowing where it ends.

    Reads go through an in-memory window of the file (``_WINDOW`` bytes, refilled
    on demand), so the dozens of small reads of a header walk are slices of one
    buffer rather than one file-object call each.
    """

    _WINDOW: Final = 64 * 1024

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp = fp
        self._size = size
        self._base = fp.tell()  # file offset of _buf[0]
        self._buf = b""
        self._pos = 0  # read position inside _buf (may run past it after a skip)

    def read(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._buf):
            self._refill(size)
            end = self._pos + size
        data = self._buf[self._pos : end]
        self._pos = end
        return data

    def _refill(self, size: int) -> None:
        self._base += self._pos
        self._pos = 0
        self._fp.seek(self._base)
        self._buf = self._fp.read(max(size, self._WINDOW))
        if len(self._buf) < size:
            raise MalformedDataset("the dataset ends in the middle of a data element")

    def skip(self, size: int) -> None:
        if self._base + self._pos + size > self._size:
            raise MalformedDataset("a data element claims more bytes than the dataset has")
        self._pos += size

    def at_end(self) -> bool:
        return self._base + self._pos >= self._size


class _InflatingSource:
    """Forward reads over a raw deflate stream (PS3.5 A.5, RFC 1951), chunk by chunk."""

    _CHUNK: Final = 64 * 1024

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._eof = False

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._eof:
            raw = self._fp.read(self._CHUNK)
            try:
                if raw:
                    self._buffer += self._inflater.decompress(raw, self._CHUNK * 16)
                    while self._inflater.unconsumed_tail and len(self._buffer) < size:
                        tail = self._inflater.unconsumed_tail
                        self._buffer += self._inflater.decompress(tail, self._CHUNK * 16)
                else:
                    self._buffer += self._inflater.flush()
                    self._eof = True
            except zlib.error as exc:
                raise MalformedDataset(f"the deflated dataset cannot be inflated ({exc})") from exc

    def read(self, size: int) -> bytes:
        self._fill(size)
        if len(self._buffer) < size:
            raise MalformedDataset("the deflated dataset ends in the middle of a data element")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            step = min(size, self._CHUNK)
            self.read(step)
            size -= step

    def at_end(self) -> bool:
        self._fill(1)
        return not self._buffer


#: Tag and 32-bit length in implicit VR, which is always little endian (PS3.5 §6.2.2, A.1).
_IMPLICIT_TAG: Final = struct.Struct("<HH")
_IMPLICIT_U32: Final = struct.Struct("<I")


class _Walker:
    """Walks data elements of one encoding (PS3.5 §7.1)."""

    def __init__(self, source: _Source, encoding: TransferSyntax) -> None:
        self._src = source
        self._implicit = encoding.implicit_vr
        order = "<" if encoding.little_endian else ">"
        self._tag = struct.Struct(order + "HH")
        self._u16 = struct.Struct(order + "H")
        self._u32 = struct.Struct(order + "I")

    def _read_tag(self, implicit: bool = False) -> int:
        """A tag; ``implicit``: in implicit VR, which is always little endian -- its transfer syntax,
        and the content of a UN of undefined length in Explicit VR Big Endian too (PS3.5 §6.2.2)."""
        group, element = (_IMPLICIT_TAG if implicit else self._tag).unpack(self._src.read(4))
        return int(group << 16 | element)

    def _read_vr_length(self, tag: int, implicit: bool) -> tuple[bytes, int]:
        """VR (b"" when implicit) and value length after ``tag``: one 4-byte read, plus
        4 more for the explicit VRs with a 32-bit length."""
        head = self._src.read(4)
        if implicit:
            return b"", int(_IMPLICIT_U32.unpack(head)[0])
        if tag in _NO_VR_TAGS:
            return b"", int(self._u32.unpack(head)[0])
        vr = head[:2]
        if not (vr.isalpha() and vr.isupper()):
            raise MalformedDataset(
                f"data element {_tag_text(tag)} has no valid VR ({vr!r}) although the "
                "transfer syntax is explicit VR; the sender encoded it wrongly"
            )
        if vr in LONG_LENGTH_VR_BYTES:
            return vr, int(self._u32.unpack(self._src.read(4))[0])
        return vr, int(self._u16.unpack_from(head, 2)[0])

    def top_level(self) -> dict[int, bytes]:
        """Raw values of the wanted tags, stopping after the last wanted one."""
        found: dict[int, bytes] = {}
        previous = -1
        src, implicit, wanted = self._src, self._implicit, _KEYWORD_BY_TAG
        while not src.at_end():
            tag = self._read_tag()
            if tag > _LAST_WANTED_TAG:
                break
            if tag <= previous:
                raise _out_of_order(tag, previous)
            previous = tag
            vr, length = self._read_vr_length(tag, implicit)
            if length == _UNDEFINED_LENGTH:
                # PS3.5 §6.2.2: UN of undefined length holds implicit VR LE content.
                self._skip_sequence(1, implicit=implicit or vr == b"UN")
            elif tag in wanted and length <= _MAX_VALUE_LENGTH:
                found[tag] = src.read(length)
            else:
                src.skip(length)
        return found

    def _skip_sequence(self, depth: int, implicit: bool) -> None:
        """Step over the items of an undefined-length sequence (PS3.5 §7.5.2)."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset(f"sequences are nested more than {_MAX_DEPTH} levels deep")
        while True:
            tag = self._read_tag(implicit)
            length = int((_IMPLICIT_U32 if implicit else self._u32).unpack(self._src.read(4))[0])
            if tag == _SEQUENCE_DELIMITATION:
                return
            if tag != _ITEM:
                raise MalformedDataset(f"found {_tag_text(tag)} inside a sequence where an item (FFFE,E000) belongs")
            if length == _UNDEFINED_LENGTH:
                self._skip_item(depth, implicit)
            else:
                self._src.skip(length)

    def _skip_item(self, depth: int, implicit: bool) -> None:
        """Step over an undefined-length item up to its delimitation item."""
        while True:
            tag = self._read_tag(implicit)
            if tag == _ITEM_DELIMITATION:
                self._src.read(4)
                return
            vr, length = self._read_vr_length(tag, implicit)
            if length == _UNDEFINED_LENGTH:
                self._skip_sequence(depth + 1, implicit or vr == b"UN")
            else:
                self._src.skip(length)


def _out_of_order(tag: int, previous: int) -> MalformedDataset:
    return MalformedDataset(
        f"data element {_tag_text(tag)} follows {_tag_text(previous)}; PS3.5 §7.1 requires ascending tag order"
    )


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _decode(raw: bytes, vr: str, codecs: Sequence[str], little_endian: bool) -> str:
    """One value as text (dicom/values.py decode_text: PS3.5 §6.2 padding removed; a NUL inside a
    UID stays, so that UID validation refuses it and nothing is filed under another UID)."""
    if vr == "US":
        if len(raw) < 2:
            return ""
        return str(int.from_bytes(raw[:2], "little" if little_endian else "big"))
    return decode_text(raw, vr, codecs)


def read_header(path: Path, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """Parse the wanted attributes of the dataset starting at ``dataset_offset``.

    Raises MalformedDataset with a sentence when the header is malformed.
    """
    with open(path, "rb") as fp:
        return read_header_from(fp, dataset_offset, transfer_syntax_uid)


_LE_TAG: Final = struct.Struct("<HH").unpack_from
_LE_IMPLICIT: Final = struct.Struct("<HHI").unpack_from  # tag, 32-bit length
_LE_EXPLICIT: Final = struct.Struct("<HH2sH").unpack_from  # tag, VR, 16-bit length
_LE_U32: Final = struct.Struct("<I").unpack_from
#: What the general walker accepts as an explicit VR: two upper-case letters.
_VR_SHAPED: Final = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91))


def _top_level_le(data: bytes, pos: int, implicit: bool) -> dict[int, bytes] | None:
    """``_Walker.top_level`` over a little-endian dataset in memory: one unpack per element header,
    state in locals (a C-STORE's header, on the writer's critical path).

    The same values and the same errors, in the same order; None when it meets an undefined
    length (a sequence to step over), where the general walker takes over from the start."""
    found: dict[int, bytes] = {}
    previous = -1
    end = len(data)
    wanted, last, no_vr, long_vrs, vr_shaped = (
        _KEYWORD_BY_TAG,
        _LAST_WANTED_TAG,
        _NO_VR_TAGS,
        LONG_LENGTH_VR_BYTES,
        _VR_SHAPED,
    )
    while pos < end:
        if pos + 8 <= end:
            if implicit:
                group, element, length = _LE_IMPLICIT(data, pos)
                vr = b""
            else:
                group, element, vr, length = _LE_EXPLICIT(data, pos)
        elif pos + 4 <= end:  # a tag and no more: what the general walker reads before it fails
            group, element = _LE_TAG(data, pos)
            vr, length = b"", -1
        else:
            raise MalformedDataset("the dataset ends in the middle of a data element")
        tag = group << 16 | element
        if tag > last:
            break
        if tag <= previous:
            raise _out_of_order(tag, previous)
        if length < 0:
            raise MalformedDataset("the dataset ends in the middle of a data element")
        previous = tag
        pos += 8
        if not implicit:
            if tag in no_vr:
                length = _LE_U32(data, pos - 4)[0]
            elif vr not in vr_shaped:
                raise MalformedDataset(
                    f"data element {_tag_text(tag)} has no valid VR ({vr!r}) although the "
                    "transfer syntax is explicit VR; the sender encoded it wrongly"
                )
            elif vr in long_vrs:
                if pos + 4 > end:
                    raise MalformedDataset("the dataset ends in the middle of a data element")
                length = _LE_U32(data, pos)[0]
                pos += 4
        if length == _UNDEFINED_LENGTH:
            return None
        if tag in wanted and length <= _MAX_VALUE_LENGTH:
            if pos + length > end:
                raise MalformedDataset("the dataset ends in the middle of a data element")
            found[tag] = data[pos : pos + length]
        elif pos + length > end:
            raise MalformedDataset("a data element claims more bytes than the dataset has")
        pos += length
    return found


def read_header_bytes(data: bytes, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """:func:`read_header_from` of a whole file in memory (a C-STORE's, on the ingest path)."""
    encoding = dataset_encoding(transfer_syntax_uid)
    found = None
    if encoding.little_endian and not encoding.deflated:
        found = _top_level_le(data, dataset_offset, encoding.implicit_vr)
    if found is None:
        return read_header_from(io.BytesIO(data), dataset_offset, transfer_syntax_uid)
    return _header(found, encoding)


def read_header_from(fp: BinaryIO, dataset_offset: int, transfer_syntax_uid: str) -> InstanceHeader:
    """:func:`read_header` of a seekable binary file object (e.g. the first bytes of an upload in a BytesIO:
    what lies beyond its end reads as "the dataset ends in the middle of a data element")."""
    encoding = dataset_encoding(transfer_syntax_uid)
    try:
        size = fp.seek(0, 2)
        fp.seek(dataset_offset)
        source: _Source = _InflatingSource(fp) if encoding.deflated else _FileSource(fp, size)
        found = _Walker(source, encoding).top_level()
    except struct.error as exc:  # pragma: no cover - reads are length-checked first
        raise MalformedDataset(f"the dataset header is malformed ({exc})") from exc
    return _header(found, encoding)


def _header(found: dict[int, bytes], encoding: TransferSyntax) -> InstanceHeader:
    """The text of the raw values found."""
    charset_raw = found.get(HEADER_ATTRIBUTES["SpecificCharacterSet"][0], b"")
    charset = charset_raw.decode("ascii", errors="replace").rstrip("\x00 ")  # padding, NUL as some pad
    if "\x00" in charset:
        # PS3.5 6.2: a CS holds uppercase letters, digits, space and underscore. An unknown term is read
        # in the default repertoire (as pydicom does, with a warning); a NUL inside one makes pydicom's
        # read of the whole file fail (codecs.lookup: "embedded null character"), so the instance's
        # PS3.18 metadata, frames, rendering and transcoding would all fail, and its study's metadata.
        raise MalformedDataset("(0008,0005) holds a NUL inside a term (PS3.5 6.2)")
    codecs = codecs_for(charset.strip(" "))
    values: dict[str, str] = {}
    little_endian = encoding.little_endian
    for tag, raw in found.items():
        keyword, vr = _KEYWORD_AND_VR_BY_TAG[tag]
        text = _decode(raw, vr, codecs, little_endian) if vr == "US" else decode_text(raw, vr, codecs)
        if text:
            values[keyword] = text
    return InstanceHeader(values)


__all__ = [
    "HEADER_ATTRIBUTES",
    "InstanceHeader",
    "MalformedDataset",
    "dataset_encoding",
    "read_header",
    "read_header_bytes",
    "read_header_from",
]
