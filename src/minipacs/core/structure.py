"""A structural walk of a whole dataset: at ingest, and before pydicom reads a stored file (PS3.5 §7.1, §7.5).

Ingest (:func:`check_staged`, :class:`StructureWalk`): every dataset that comes in -- C-STORE,
STOW-RS, uploads, ``minipacs import`` -- is walked whole before it is stored: element headers,
lengths, items and delimitation items, pixel data included, values stepped over. A broken one is
refused with BrokenDataset, whose sentence of at most 64 characters (a DIMSE Error Comment is an
LO) names what is wrong and its offset in the dataset. The walk is one loop over a buffer read in
64 KiB windows (struct.unpack_from, frame state in locals): about 11 µs for the ~55 elements of a
9.5 kB instance, plus one read.

Stored files (:func:`check_structure`):

pydicom reads nested sequences recursively (10,000 levels: RecursionError), trusts value
lengths (a lying length: dozens of ERROR log lines, then a half-read dataset) and logs
truncation rather than refusing it. :func:`check_structure` walks every element header and
every item with an explicit stack, seeking over values, and raises MalformedDataset with one
sentence -- the first thing wrong -- for a dataset that ends early, a length that runs past
its parent, an item where an element belongs (or the reverse), or nesting deeper than
``max_depth`` sequences. Values are never read, so a 1 GB instance costs its headers.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from pydicom._dicom_dict import DicomDictionary  # PS3.6 as pydicom generates it (datadict re-exports it)
from pydicom.datadict import dictionary_VR

from minipacs.core.errors import BrokenDataset
from minipacs.dicom.header import HEADER_ATTRIBUTES, MalformedDataset, dataset_encoding
from minipacs.dicom.uids import transfer_syntax
from minipacs.dicom.vr import ALL_VRS, LONG_LENGTH_VR_BYTES, LONG_LENGTH_VRS

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
) -> int:
    """Walk the dataset from ``fp``'s position to ``end``; raise MalformedDataset when it is broken.

    ``stop_at_pixels``: stop at top-level (pixel) data, as ``dcmread(stop_before_pixels=True)`` does,
    and return its tag (Pixel Data, Float or Double Float Pixel Data); 0 when the walk reached the end.
    """
    order = "<" if little_endian else ">"
    tag_struct, u16, u32 = struct.Struct(order + "HH"), struct.Struct(order + "H"), struct.Struct(order + "I")
    # implicit VR is always little endian, the content of a UN of undefined length too (PS3.5 §6.2.2)
    le_tag, le_u32 = struct.Struct("<HH"), struct.Struct("<I")
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
                return 0  # fewer than 8 bytes of padding after the last element: pydicom ignores them too
            what = "sequence" if frame.sequence else "item"
            raise MalformedDataset(
                f"an undefined-length {what} runs past the end of what contains it (its delimitation item is missing)"
            )
        head = read(8)
        group, element = (le_tag if frame.implicit else tag_struct).unpack_from(head)
        tag = group << 16 | element
        if frame.sequence:
            length = (le_u32 if frame.implicit else u32).unpack_from(head, 4)[0]
            if tag == _SEQUENCE_DELIMITATION and frame.end is None:
                stack.pop()
                depth -= 1
                continue
            if tag == _SEQUENCE_DELIMITATION and not frame.fragments and pos + 8 + length <= frame.limit:
                fp.seek(pos + 8 + length)  # in a defined-length sequence: ignored (as ingest does)
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
        item_length = (le_u32 if frame.implicit else u32).unpack_from(head, 4)[0]
        if tag == _ITEM_DELIMITATION and pos + 8 + item_length <= frame.limit:
            after = pos + 8 + item_length
            if len(stack) > 1 or after == frame.limit:  # in a defined-length item, or last: ignored (as ingest does)
                fp.seek(after)
                continue
        if tag in (_ITEM, _ITEM_DELIMITATION, _SEQUENCE_DELIMITATION):
            raise MalformedDataset(f"found the item tag {_tag_text(tag)} where a data element belongs")
        if stop_at_pixels and len(stack) == 1 and tag in PIXEL_TAGS:
            return int(tag)
        vr = b""
        if frame.implicit:
            length, start = item_length, pos + 8
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
    return 0


# ---------------------------------------------------------------------------- the ingest walk

#: Frame kinds: a dataset (the top level or an item), a sequence of items, encapsulated pixel data.
_DATASET: Final = 0
_SEQUENCE: Final = 1
_FRAGMENTS: Final = 2
#: The limit of a dataset whose size is not known yet (a stream being inflated).
_UNBOUNDED: Final = 1 << 62
#: The top-level attributes the index keeps (dicom/header.py). One of them after a greater tag (PS3.5
#: §7.1: ascending order) is refused: the header read stops at the first tag past the last of them, so
#: the index would miss or differ from what DCMTK and pydicom read (they sort). Any other element out
#: of order is stored: both read it.
_HEADER_TAGS: Final = frozenset(tag for tag, _vr in HEADER_ATTRIBUTES.values())
#: Public tags whose VR is SQ (PS3.6 Table 6-1): in implicit VR the only way to tell a sequence.
_SQ_TAGS: Final = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
#: Public tags whose VR cannot have an undefined length: in implicit VR their dictionary VR tells.
#: PS3.5 §7.1.1 allows it for SQ and UN, and for OB or OW "depending on the negotiated Transfer
#: Syntax": Annex A.4 encapsulates one element, Pixel Data (7FE0,0010), which the walk takes first.
#: Any other OB or OW of undefined length has no encoding in the standard (DCMTK refuses the file:
#: "Illegal element with OB or OW Value Representation and undefined length").
_DEFINED_LENGTH_TAGS: Final = frozenset(
    tag for tag, entry in DicomDictionary.items() if not any(vr in entry[0] for vr in ("SQ", "UN", "NONE"))
)


def _vr_codes(vrs: frozenset[str], order: str) -> frozenset[int]:
    """The VR bytes as the 16-bit number ``order`` + "H" reads from them."""
    unpack = struct.Struct(order + "H").unpack
    return frozenset(unpack(vr.encode("ascii"))[0] for vr in vrs)


def _vr_text(code: int, order: str) -> str:
    raw = struct.pack(order + "H", code)
    return raw.decode("ascii") if raw.isalnum() else "0x" + raw.hex().upper()


#: PS3.5 Table 6.2-1: an Error Comment (0000,0902) is an LO; every sentence of the walk fits one.
ERROR_COMMENT_LENGTH: Final = 64
_ORDERS: Final = ("<", ">")
_LONG_CODES: Final = {order: _vr_codes(LONG_LENGTH_VRS, order) for order in _ORDERS}
_ALL_CODES: Final = {order: _vr_codes(ALL_VRS, order) for order in _ORDERS}
#: SQ, UN, OB, OW as ``order`` + "H" reads them.
_CODE: Final = {
    order: tuple(struct.unpack(order + "H", vr)[0] for vr in (b"SQ", b"UN", b"OB", b"OW")) for order in _ORDERS
}

#: Tag and 32-bit length; tag, VR and 16-bit length; a 32-bit length -- in each byte order.
_UNPACK: Final = {
    order: tuple(struct.Struct(order + fmt).unpack_from for fmt in ("HHI", "HHHH", "I")) for order in _ORDERS
}


def _fit(*sentences: str) -> str:
    """The first, most detailed, of ``sentences`` that fits a DIMSE Error Comment (an LO: 64 characters)."""
    for sentence in sentences:
        if len(sentence) <= ERROR_COMMENT_LENGTH:
            return sentence
    return sentences[-1][:ERROR_COMMENT_LENGTH]  # pragma: no cover - every last choice fits


def _runs_past(what: str, at: int, length: int, where: str, end: int) -> str:
    return _fit(
        f"{what} at {at}: length {length} runs past {where} at {end}",
        f"{what} at {at}: length {length} runs past {where}",
        f"{what} at {at} runs past {where}",
    )


def _too_deep(max_depth: int, at: int) -> str:
    return _fit(
        f"sequences nested over {max_depth} deep at {at} (max_sequence_depth)",
        f"sequences nested over {max_depth} deep (max_sequence_depth)",
    )


class StructureWalk:
    """Walk a dataset's element structure (PS3.5 §7.1, §7.5, A.4) as its bytes are fed, in order.

    Every data element header, item and delimitation item is read and every value length checked
    against what contains it; values are stepped over, never read. Raises MalformedDataset at the
    first thing wrong, with a sentence of at most 64 characters naming it and its offset (bytes
    from the first byte of the dataset): an element or item whose length runs past the end of the
    dataset or of its item or sequence (truncated pixel data among them), bytes after the last
    element that are no element (fewer than a header, or a header that does not parse), an explicit
    VR that is not one of PS3.5 Table 6.2-1, an item where an element belongs or the reverse, a
    missing delimitation item, a pixel data fragment of undefined length, or sequences nested deeper
    than ``max_depth``. A UN of undefined length holds implicit VR little endian (PS3.5 §6.2.2).

    ``size``: the dataset's length when known (a file): every length is checked as it is read.
    ``None`` (an inflating stream): the end is known at :meth:`finish`.
    ``encapsulated``: the transfer syntax encapsulates Pixel Data (PS3.5 A.4). In a native one
    (A.1, A.2, A.3, A.5) Pixel Data of undefined length is refused: its fragments would be read as
    native pixels; in an encapsulating one, top-level Pixel Data of a defined length (native pixels).
    None: a private syntax, which may hold either. Any other OB or OW of undefined length is refused in
    every syntax.
    """

    __slots__ = (
        "_buf",
        "_base",
        "_pos",
        "_stack",
        "_depth",
        "_max_depth",
        "_order",
        "_last",
        "_size",
        "_stray",
        "_encapsulated",
        "_native_refused",
        "_last_top",
    )

    def __init__(
        self,
        *,
        implicit: bool,
        little_endian: bool,
        max_depth: int,
        size: int | None = None,
        encapsulated: bool | None,
    ) -> None:
        end = _UNBOUNDED if size is None else size
        # a frame: (kind, end or -1 when undefined, limit, implicit, tag, offset, length) of what opened it
        self._stack: list[tuple[int, int, int, bool, int, int, int]] = [(_DATASET, end, end, implicit, 0, 0, 0)]
        self._buf: bytes | memoryview = b""
        self._base = 0  # dataset offset of _buf[0]
        self._pos = 0  # dataset offset of the next header
        self._depth = 0
        self._max_depth = max_depth
        self._encapsulated = encapsulated is not False  # fragments allowed
        self._native_refused = encapsulated is True  # defined-length top-level Pixel Data refused
        self._last_top = -1  # the greatest top-level tag so far
        self._order = "<" if little_endian else ">"
        self._last = (0, 0, 0)  # tag, offset, length of the last value stepped over past the data
        self._size = size
        self._stray = 0  # where an item delimitation item after the last element was

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the dataset."""
        held = self._base + len(self._buf)
        if self._pos >= held:  # stepping over a value: skip what of it arrived
            skip = self._pos - held
            self._buf = data[skip:] if skip < len(data) else b""
            self._base = held + min(skip, len(data))
        else:
            self._buf = bytes(self._buf[self._pos - self._base :]) + data
            self._base = self._pos
        self._walk(final=False)

    def finish(self) -> None:
        """The dataset ended: raise MalformedDataset if it ended inside something."""
        self._walk(final=True)

    def walk(self, data: bytes | memoryview, start: int = 0) -> None:
        """Walk ``data``, the dataset from offset ``start`` on: the whole of it, or a window of a file
        (with ``size`` known, the walk stops at the window's end; the next window starts at
        :attr:`next_offset`)."""
        self._buf, self._base = data, start
        self._walk(final=self._size is None)

    @property
    def next_offset(self) -> int:
        """Where the next header starts (the dataset offset a window of a file should begin at)."""
        return self._pos

    def wants_more(self) -> bool:
        """Whether the walk is not finished yet (a window of a file ended before the dataset)."""
        return bool(self._stack)

    # ------------------------------------------------------------------ the walk

    def _walk(self, final: bool) -> None:  # one loop with its state in locals, for speed
        buf, base, pos, stack = self._buf, self._base, self._pos, self._stack
        avail = base + len(buf)
        order = self._order
        hh_i, hh_hh, u32 = _UNPACK[order]
        # Implicit VR is always little endian: its transfer syntax, and the content of a UN of undefined
        # length even in Explicit VR Big Endian (PS3.5 §6.2.2); so are the items of that content.
        hh_i_le = _UNPACK["<"][0]
        if not stack:  # done; a stream that goes on after a last item delimitation item did not end there
            if pos < avail:
                raise MalformedDataset(f"(FFFE,E00D) at {self._stray} where a data element belongs")
            return
        long_vrs, all_vrs = _LONG_CODES[order], _ALL_CODES[order]
        sq_code, un_code, ob_code, ow_code = _CODE[order]
        sq_tags = _SQ_TAGS
        kind, end, limit, implicit = stack[-1][:4]
        last_top = self._last_top
        while True:
            if pos == end:  # a defined-length frame is complete
                stack.pop()
                if kind == _SEQUENCE:
                    self._depth -= 1
                if not stack:
                    break
                kind, end, limit, implicit = stack[-1][:4]
                continue
            if pos + 8 > limit:
                raise MalformedDataset(self._short(pos, limit))
            if pos + 8 > avail:
                if final:
                    self._ended(pos, avail)
                break
            p = pos - base
            if kind == _DATASET:
                if implicit:
                    group, element, length = hh_i_le(buf, p)
                    vr, head = 0, 8
                else:
                    group, element, vr, length = hh_hh(buf, p)
                    head = 8
                    if group == 0xFFFE:
                        pass  # no VR: handled below
                    elif vr in long_vrs:
                        if pos + 12 > limit:
                            raise MalformedDataset(self._short(pos, limit))
                        if pos + 12 > avail:
                            if final:
                                self._ended(pos, avail)
                            break
                        length, head = u32(buf, p + 8)[0], 12
                    elif vr not in all_vrs:
                        raise MalformedDataset(
                            f"{_tag_text(group << 16 | element)} at {pos}: invalid VR {_vr_text(vr, order)}"
                            " in explicit VR"
                        )
                if group == 0xFFFE:  # PS3.5 §7.5: items and delimiters have no VR
                    tag = group << 16 | element
                    if tag == _ITEM_DELIMITATION:
                        if end == -1 and len(stack) > 1:  # the end of an undefined-length item
                            pos += 8
                            stack.pop()
                            kind, end, limit, implicit = stack[-1][:4]
                            continue
                        after = pos + 8 + (length if implicit else u32(buf, p + 4)[0])
                        if len(stack) > 1 and after <= limit:
                            pos = after  # in a defined-length item: DCMTK and pydicom ignore it
                            continue
                        if len(stack) == 1 and after <= limit and (self._size is None or after == limit):
                            # after the last element: DCMTK and pydicom ignore it; anywhere else
                            # at the top level pydicom stops reading there (and DCMTK does not)
                            self._stray = pos
                            stack[0] = (_DATASET, after, after, implicit, tag, pos, 0)
                            end = limit = pos = after
                            continue
                    raise MalformedDataset(f"{_tag_text(tag)} at {pos} where a data element belongs")
                start = pos + head
                tag = group << 16 | element
                if len(stack) == 1:
                    if tag > last_top:
                        last_top = tag
                        if tag == _PIXEL_DATA and length != _UNDEFINED and self._native_refused:
                            # PS3.5 A.4: in an encapsulated syntax Pixel Data has undefined length and
                            # fragments; native pixels here made a file that says JPEG and holds none
                            raise MalformedDataset(
                                _fit(
                                    f"(7FE0,0010) at {pos}: native pixel data in an encapsulated syntax",
                                    f"(7FE0,0010) at {pos}: native in an encapsulated syntax",
                                )
                            )
                    elif tag in _HEADER_TAGS:
                        raise MalformedDataset(
                            _fit(
                                f"{_tag_text(tag)} at {pos} after {_tag_text(last_top)}: not ascending (PS3.5 7.1)",
                                f"{_tag_text(tag)} at {pos} after {_tag_text(last_top)}: not ascending",
                            )
                        )
                if length == _UNDEFINED:
                    if tag == _PIXEL_DATA:
                        if not self._encapsulated:
                            raise MalformedDataset(
                                _fit(
                                    f"(7FE0,0010) at {pos}: encapsulated pixel data, native syntax",
                                    f"(7FE0,0010) at {pos}: encapsulated in a native syntax",
                                )
                            )
                        frame = (_FRAGMENTS, -1, limit, implicit, tag, pos, length)  # PS3.5 A.4
                    elif (vr != sq_code and vr != un_code) if not implicit else tag in _DEFINED_LENGTH_TAGS:
                        # PS3.5 §7.1.1: undefined length is for SQ, UN and encapsulated Pixel Data only;
                        # DCMTK reads a UT of undefined length as 4 GB and stops, pydicom as text, and
                        # refuses an OB or OW of undefined length that is not Pixel Data
                        what = _vr_text(vr, order) if not implicit else DicomDictionary[tag][0]
                        raise MalformedDataset(f"{_tag_text(tag)} at {pos}: undefined length with VR {what}")
                    else:
                        self._depth += 1
                        if self._depth > self._max_depth:
                            raise MalformedDataset(_too_deep(self._max_depth, pos))
                        frame = (_SEQUENCE, -1, limit, implicit or vr == un_code, tag, pos, length)
                    stack.append(frame)
                    kind, end, pos = frame[0], -1, start
                    implicit = frame[3]
                    continue
                after = start + length
                if after > limit:
                    raise MalformedDataset(self._past(tag, pos, length, limit))
                if vr == sq_code or (implicit and tag in sq_tags):
                    self._depth += 1
                    if self._depth > self._max_depth:
                        raise MalformedDataset(_too_deep(self._max_depth, pos))
                    stack.append((_SEQUENCE, after, after, implicit, tag, pos, length))
                    kind, end, limit, pos = _SEQUENCE, after, after, start
                    continue
                if after > avail:
                    self._last = (tag, pos, length)
                pos = after
                continue
            # a sequence or encapsulated pixel data: items (FFFE,E000) up to its end or delimiter
            group, element, length = (hh_i_le if implicit else hh_i)(buf, p)
            tag = group << 16 | element
            if tag == _ITEM:
                if length == _UNDEFINED:
                    if kind == _FRAGMENTS:
                        raise MalformedDataset(f"(FFFE,E000) at {pos}: pixel data fragment of undefined length")
                    stack.append((_DATASET, -1, limit, implicit, tag, pos, length))
                    kind, end, pos = _DATASET, -1, pos + 8
                    continue
                after = pos + 8 + length
                if after > limit:
                    raise MalformedDataset(self._past(tag, pos, length, limit))
                if kind == _FRAGMENTS:
                    if after > avail:
                        self._last = (tag, pos, length)
                    pos = after
                    continue
                stack.append((_DATASET, after, after, implicit, tag, pos, length))
                kind, end, limit, pos = _DATASET, after, after, pos + 8
                continue
            if tag == _SEQUENCE_DELIMITATION and end == -1:
                pos += 8
                stack.pop()
                if kind == _SEQUENCE:
                    self._depth -= 1
                kind, end, limit, implicit = stack[-1][:4]
                continue
            if tag == _SEQUENCE_DELIMITATION and pos + 8 + length <= limit:
                pos += 8 + length  # in a defined-length sequence: DCMTK and pydicom ignore it
                continue
            opener = stack[-1]
            raise MalformedDataset(
                _fit(
                    f"{_tag_text(tag)} at {pos} where an item belongs (in {_tag_text(opener[4])})",
                    f"{_tag_text(tag)} at {pos} where an item belongs",
                )
            )
        self._pos = pos
        self._last_top = last_top

    # ------------------------------------------------------------------ sentences

    def _past(self, tag: int, at: int, length: int, limit: int) -> str:
        """An element or item whose value runs past ``limit``: the end of the dataset, or of the innermost
        defined-length item or sequence (an undefined-length one ends where its container does)."""
        stack = self._stack
        what = f"{_tag_text(stack[-1][4])} fragment" if stack[-1][0] == _FRAGMENTS else _tag_text(tag)
        where = "the end"
        for index in range(len(stack) - 1, 0, -1):
            if stack[index][1] != -1:
                where = "its item" if stack[index][0] == _DATASET else "its sequence"
                break
        return _runs_past(what, at, length, where, limit)

    def _short(self, pos: int, limit: int) -> str:
        """Fewer bytes than a header are left before ``limit`` (the end of the frame or its parent)."""
        kind, end, _limit, _implicit, tag, at, _length = self._stack[-1]
        if len(self._stack) == 1:
            return f"{limit - pos} bytes after the last element at {pos} are not an element"
        opener = _tag_text(tag)
        if end == -1:
            closing = "(FFFE,E00D)" if kind == _DATASET else "(FFFE,E0DD)"
            return _fit(f"{opener} at {at}: no {closing} before the end at {limit}", f"{opener} at {at}: no {closing}")
        return f"{opener} at {at}: its last {limit - pos} bytes are not an {'element' if kind == _DATASET else 'item'}"

    def _ended(self, pos: int, avail: int) -> None:
        """The data ended (a stream at its end) before the walk did; a stream's last step."""
        if pos > avail:
            tag, at, length = self._last
            raise MalformedDataset(_runs_past(_tag_text(tag), at, length, "the end", avail))
        if len(self._stack) == 1:
            if pos == avail:
                self._stack.pop()
                return
            raise MalformedDataset(f"{avail - pos} bytes after the last element at {pos} are not an element")
        kind, end, _limit, _implicit, tag, at, length = self._stack[-1]
        opener = _tag_text(tag)
        if end == -1:
            closing = "(FFFE,E00D)" if kind == _DATASET else "(FFFE,E0DD)"
            raise MalformedDataset(
                _fit(f"{opener} at {at}: no {closing} before the end at {avail}", f"{opener} at {at}: no {closing}")
            )
        raise MalformedDataset(_runs_past(opener, at, length, "the end", avail))


#: Bytes read at a time: a whole small dataset, or the headers up to a large value (stepped over
#: by reading again after it: values are never read, so a 1 GB instance costs a few reads).
_WINDOW: Final = 64 * 1024


def walk_file(
    path: Path,
    dataset_offset: int,
    *,
    implicit: bool,
    little_endian: bool,
    max_depth: int,
    encapsulated: bool | None,
    window: int = _WINDOW,
) -> None:
    """:class:`StructureWalk` over the dataset of a file, from ``dataset_offset`` to the file's end,
    reading ``window`` bytes (at least a header's 12) at a time from where the next header starts."""
    window = max(window, 12)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size - dataset_offset
        walk = StructureWalk(
            implicit=implicit, little_endian=little_endian, max_depth=max_depth, size=size, encapsulated=encapsulated
        )
        while walk.wants_more():
            at = walk.next_offset
            data = os.pread(fd, window, dataset_offset + at)
            if not data:  # the file shrank under us
                raise MalformedDataset(f"the dataset ends at {at}, before its {size} bytes")
            walk.walk(data, at)
    finally:
        os.close(fd)


def walk_bytes(
    data: bytes,
    dataset_offset: int,
    *,
    implicit: bool,
    little_endian: bool,
    max_depth: int,
    encapsulated: bool | None,
) -> None:
    """:func:`walk_file` of a file already read whole into ``data``: the same walk, windows
    sliced from memory rather than read (so the same verdicts, offsets and sentences)."""
    size = len(data) - dataset_offset
    view = memoryview(data)
    walk = StructureWalk(
        implicit=implicit, little_endian=little_endian, max_depth=max_depth, size=size, encapsulated=encapsulated
    )
    while walk.wants_more():
        at = walk.next_offset
        window = view[dataset_offset + at :]
        if not window:
            raise MalformedDataset(f"the dataset ends at {at}, before its {size} bytes")
        walk.walk(window, at)


def encapsulates(transfer_syntax_uid: str) -> bool | None:
    """Whether a dataset of this transfer syntax holds encapsulated Pixel Data (PS3.5 A.4): the syntax
    says; None for a private one, which is read as explicit VR little endian (dataset_encoding) and may
    hold either."""
    known = transfer_syntax(transfer_syntax_uid)
    return known.encapsulated if known is not None else None


def check_staged(
    path: Path, dataset_offset: int, transfer_syntax_uid: str, max_depth: int, data: bytes | None = None
) -> None:
    """Walk the dataset of a staged file (ingest); raise BrokenDataset when it is broken.

    ``data``: the whole file, when the caller has read it already (it is then not read again).
    A deflated dataset (PS3.5 A.5) is walked while it is inflated, by core/inflate.py check_deflated,
    before the job reaches the writer; here it is skipped.
    """
    encoding = dataset_encoding(transfer_syntax_uid)
    if encoding.deflated:
        return
    encapsulated = encapsulates(transfer_syntax_uid)
    try:
        if data is not None:
            walk_bytes(
                data,
                dataset_offset,
                implicit=encoding.implicit_vr,
                little_endian=encoding.little_endian,
                max_depth=max_depth,
                encapsulated=encapsulated,
            )
            return
        walk_file(
            path,
            dataset_offset,
            implicit=encoding.implicit_vr,
            little_endian=encoding.little_endian,
            max_depth=max_depth,
            encapsulated=encapsulated,
        )
    except MalformedDataset as exc:
        raise BrokenDataset(str(exc)) from None


__all__ = [
    "ERROR_COMMENT_LENGTH",
    "PIXEL_TAGS",
    "StructureWalk",
    "check_staged",
    "check_structure",
    "encapsulates",
    "walk_bytes",
    "walk_file",
]
