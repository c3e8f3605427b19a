"""A structural walk of a whole dataset before pydicom reads it (PS3.5 §7.1, §7.5).

pydicom reads nested sequences recursively (10,000 levels: RecursionError), trusts value
lengths (a lying length: dozens of ERROR log lines, then a half-read dataset) and logs
truncation rather than refusing it. :func:`check_structure` walks every element header and
every item with an explicit stack, seeking over values, and raises MalformedDataset with one
sentence -- the first thing wrong -- for a dataset that ends early, a length that runs past
its parent, an item where an element belongs (or the reverse), or nesting deeper than
``max_depth`` sequences. Values are never read, so a 1 GB instance costs its headers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Final

from pydicom.datadict import dictionary_VR

from minipacs.dicom.header import MalformedDataset
from minipacs.dicom.vr import LONG_LENGTH_VR_BYTES

_UNDEFINED: Final = 0xFFFFFFFF
# PS3.5 §7.5: item and delimitation tags (no VR in any transfer syntax)
_ITEM: Final = 0xFFFEE000
_ITEM_DELIMITATION: Final = 0xFFFEE00D
_SEQUENCE_DELIMITATION: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010
#: Float Pixel Data, Double Float Pixel Data, Pixel Data: where "stop before pixels" stops.
PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})
_ENCAPSULATING_VRS: Final = frozenset({b"OB", b"OW"})


@dataclass
class _Frame:
    sequence: bool  # True: a sequence (items follow); False: a dataset (top level or an item)
    end: int | None  # where it ends, None: undefined length (ends at its delimitation item)
    limit: int  # where it must have ended at the latest: its end, else its parent's limit
    implicit: bool  # the VR is implicit inside (PS3.5 §6.2.2: UN of undefined length)
    fragments: bool = False  # encapsulated pixel data (PS3.5 A.4): its items are raw bytes


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _known_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private or unknown: pydicom treats it as UN
        return "UN"


def check_structure(
    fp: BinaryIO, end: int, *, implicit: bool, little_endian: bool, max_depth: int, stop_at_pixels: bool = False
) -> None:
    """Walk the dataset from ``fp``'s position to ``end``; raise MalformedDataset when it is broken.

    ``stop_at_pixels``: stop at top-level (pixel) data, as ``dcmread(stop_before_pixels=True)`` does.
    """
    order = "<" if little_endian else ">"
    tag_struct, u16, u32 = struct.Struct(order + "HH"), struct.Struct(order + "H"), struct.Struct(order + "I")
    stack = [_Frame(False, end, end, implicit)]
    depth = 0

    def read(size: int) -> bytes:
        data = fp.read(size)
        if len(data) < size:
            raise MalformedDataset("the dataset ends in the middle of a data element (the file is truncated)")
        return data

    while stack:
        frame = stack[-1]
        pos = fp.tell()
        if frame.end is not None and pos == frame.end:
            stack.pop()
            depth -= frame.sequence
            continue
        if pos + 8 > frame.limit:
            if len(stack) == 1:
                return  # fewer than 8 bytes of padding after the last element: pydicom ignores them too
            what = "sequence" if frame.sequence else "item"
            raise MalformedDataset(
                f"an undefined-length {what} runs past the end of what contains it (its delimitation item is missing)"
            )
        head = read(8)
        group, element = tag_struct.unpack_from(head)
        tag = group << 16 | element
        if frame.sequence:
            length = u32.unpack_from(head, 4)[0]
            if tag == _SEQUENCE_DELIMITATION and frame.end is None:
                stack.pop()
                depth -= 1
                continue
            if tag != _ITEM:
                raise MalformedDataset(f"found {_tag_text(tag)} inside a sequence where an item (FFFE,E000) belongs")
            if length == _UNDEFINED:
                if frame.fragments:
                    raise MalformedDataset("a pixel data fragment has an undefined length")
                stack.append(_Frame(False, None, frame.limit, frame.implicit))
                continue
            if pos + 8 + length > frame.limit:
                raise MalformedDataset(
                    f"an item claims {length} bytes, more than remain in its sequence (a wrong length)"
                )
            if frame.fragments:
                fp.seek(pos + 8 + length)
            else:
                stack.append(_Frame(False, pos + 8 + length, pos + 8 + length, frame.implicit))
            continue
        if tag == _ITEM_DELIMITATION and len(stack) > 1 and frame.end is None:
            stack.pop()
            continue
        if tag in (_ITEM, _ITEM_DELIMITATION, _SEQUENCE_DELIMITATION):
            raise MalformedDataset(f"found the item tag {_tag_text(tag)} where a data element belongs")
        if stop_at_pixels and len(stack) == 1 and tag in PIXEL_TAGS:
            return
        vr = b""
        if frame.implicit:
            length, start = u32.unpack_from(head, 4)[0], pos + 8
        else:
            vr = head[4:6]
            if not (vr.isalpha() and vr.isupper()):
                raise MalformedDataset(
                    f"data element {_tag_text(tag)} has no valid VR ({vr!r}) although the "
                    "transfer syntax is explicit VR"
                )
            if vr in LONG_LENGTH_VR_BYTES:
                length, start = u32.unpack(read(4))[0], pos + 12
            else:
                length, start = u16.unpack_from(head, 6)[0], pos + 8
        known = _known_vr(tag) if frame.implicit or vr == b"UN" else ""
        if length == _UNDEFINED:
            fragments = (
                vr in _ENCAPSULATING_VRS or tag == _PIXEL_DATA or (frame.implicit and known in ("OB", "OW", "OB or OW"))
            )
            inner_implicit = frame.implicit or vr == b"UN"
            child = _Frame(True, None, frame.limit, inner_implicit, fragments)
        elif start + length > frame.limit:
            raise MalformedDataset(
                f"data element {_tag_text(tag)} claims {length} bytes, more than remain "
                "(a wrong length, or the file is truncated)"
            )
        elif vr == b"SQ" or known == "SQ":
            child = _Frame(True, start + length, start + length, frame.implicit or vr == b"UN")
        else:
            fp.seek(start + length)
            continue
        depth += 1  # fragments count too (they are popped like a sequence) but hold no datasets
        if depth > max_depth and not child.fragments:
            raise MalformedDataset(f"sequences are nested more than {max_depth} levels deep (max_sequence_depth)")
        stack.append(child)


__all__ = ["PIXEL_TAGS", "check_structure"]
