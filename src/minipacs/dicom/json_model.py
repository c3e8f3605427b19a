"""The PS3.18 Annex F JSON model of a stored header, built straight from its bytes (the common case).

The archive keeps every instance's PS3.18 JSON metadata (core/metadata.py). Built with pydicom
(``dcmread`` then ``Dataset.to_json_dict``) it cost ~1 ms of CPU per small instance on the build
machines: more than receiving and storing the instance. :func:`json_model` walks the encoded
dataset once and builds the same Python objects itself, ~10x faster.

It covers what nearly every instance is, and gives up (returns None) on anything else, so the caller
falls back to pydicom, which stays the reference:

* little-endian datasets, explicit or implicit VR (implicit: public tags whose VR the data dictionary
  gives without ambiguity); not deflated, not big endian;
* text that is 7-bit ASCII without escape sequences, under no Specific Character Set or one whose
  repertoire keeps ASCII as it is (:data:`ASCII_CHARSETS`); anything else may decode differently;
* no UN element (pydicom may re-read it under a known VR), no group 0002 or group length element
  in the dataset, no element of undefined length but a sequence, no person name with component
  groups (``=``), numbers that are plain decimal strings (PS3.5 Table 6.2-1 DS and IS);
* the walk stops where ``dcmread(stop_before_pixels=True)`` stops, at (7FE0,0008), (7FE0,0009) or
  (7FE0,0010) on the top level; any structural surprise (a length past the end, a misplaced
  delimiter, tags out of order) gives up too, and the pydicom path then says what is wrong.

One case goes beyond pydicom, which fails on it: a person name with an empty value among several
values is written with a null for it (PS3.18 F.2.5).

The values follow pydicom 3's readers (pydicom/values.py) and ``DataElement.to_json_dict``, padding
rules included (PS3.5 6.2); ``tests/dicom/test_json_model.py`` holds the two to the same JSON text
over generated datasets of every VR, and a deliberately changed rule fails it.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from pydicom.datadict import dictionary_VR

#: Specific Character Set values under which ASCII bytes decode to the same text (PS3.3 C.12.1.1.2).
ASCII_CHARSETS: Final = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6", "ISO 2022 IR 100"})

_U16: Final = struct.Struct("<H").unpack_from
_U32: Final = struct.Struct("<I").unpack_from
_IMPLICIT_HEAD: Final = struct.Struct("<HHI").unpack_from  # group, element, 32-bit length
_EXPLICIT_HEAD: Final = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 16-bit length
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_CHARSET_TAG: Final = 0x00080005
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_NUMBER_FORMATS: Final = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H", "UV": "Q"}
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
_KNOWN_VRS: Final = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "SQ", "ST", "TM", "UC", "UI", "UR", "UT"}
    | _BINARY_VRS
    | set(_NUMBER_FORMATS)
)
_DS: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_IS: Final = re.compile(r"[+-]?\d+\Z")
#: pydicom's threshold test for BulkDataURI: the raw length against (threshold // 4) * 3.
_MAX_INLINE_DIVISOR: Final = 4


class _GiveUp(Exception):
    """Not a case this builder covers: the caller falls back to pydicom."""


def _implicit_vr(tag: int) -> str:
    if tag & 0x10000 or tag & 0xFFFF == 0:  # private or group length: pydicom's own rules apply
        raise _GiveUp
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        raise _GiveUp from None
    if vr not in _KNOWN_VRS:  # "US or SS", "OB or OW", ...: resolved from context by pydicom
        raise _GiveUp
    return vr


def _text(raw: bytes) -> str:
    if not raw.isascii() or b"\x1b" in raw:
        raise _GiveUp
    return raw.decode("ascii")


def _value(vr: str, raw: bytes) -> Any:
    """The element's value as pydicom's reader leaves it, after ``to_json_dict``: a list (its "Value"),
    or None when the element is empty (no "Value")."""
    if vr in _NUMBER_FORMATS:
        fmt = _NUMBER_FORMATS[vr]
        size = struct.calcsize(fmt)
        if len(raw) % size:
            raise _GiveUp
        if not raw:
            return None
        values = struct.unpack(f"<{len(raw) // size}{fmt}", raw)
        return [float(v) for v in values] if vr in _FLOAT_VRS else [int(v) for v in values]
    if vr == "AT":
        if len(raw) % 4:
            raise _GiveUp
        if not raw:
            return None
        return [format(_U16(raw, i)[0] << 16 | _U16(raw, i + 2)[0], "08X") for i in range(0, len(raw), 4)]
    if vr == "PN":
        text = _text(raw.rstrip(b"\x00 "))
        if "=" in text:
            raise _GiveUp
        if not text:
            return None
        # an empty name among several (``A\\B``, legal: PS3.5 6.4) is null (PS3.18 F.2.5: "If a
        # multi-valued attribute has one or more empty values these are represented as null array
        # elements"). pydicom 3 fails on it, and the instance's metadata was a 500 (the instance left
        # out of its study's) when this walk gave up on it
        return [{"Alphabetic": part} if part else None for part in text.split("\\")]
    text = _text(raw)
    items: list[str]
    if vr == "AE":
        items = [part.strip() for part in text.split("\\")]
    elif vr in ("LO", "SH", "UC"):
        items = [part.rstrip("\0 ") for part in text.split("\\")]
    elif vr in ("LT", "ST", "UT"):
        items = [text.rstrip("\0 ")]
    elif vr == "UR":
        items = [text.rstrip()]
    elif vr == "UI":
        items = text.rstrip("\0 ").split("\\")
    elif vr in ("DS", "IS"):
        stripped = text.strip().rstrip(" \x00")
        if not stripped:
            return None
        pattern = _DS if vr == "DS" else _IS
        parts = stripped.split("\\")
        if not all(pattern.match(part) for part in parts):
            raise _GiveUp
        if vr == "IS":
            return [int(part) for part in parts]
        if all(lossless_decimal(part.strip()) for part in parts):
            return [float(part) for part in parts]
        return [part.strip() or None for part in parts]  # PS3.18 F.2.3: strings, so no value changes
    else:  # AS, CS, DA, DT, TM: pydicom's convert_string
        items = text.rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return None
    return items


def lossless_decimal(text: str) -> bool:
    """Whether the Decimal String value ``text`` (a valid one) is a finite JSON number that means the same:
    a double keeps ~15-17 significant digits, a DS may have 16 ('9999999999999999' became 1e16). PS3.18
    F.2.3 lets such a value be a string instead, so no value changes on its way to a viewer."""
    number = float(text)
    return math.isfinite(number) and Decimal(text) == Decimal(repr(number))


def _element(vr: str, raw: bytes, tag: int, bulk: Callable[[int], str], bulk_threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {"vr": vr}
    if vr in _BINARY_VRS:
        if raw:
            if len(raw) > (bulk_threshold // _MAX_INLINE_DIVISOR) * 3:
                out["BulkDataURI"] = bulk(tag)
            else:
                out["InlineBinary"] = base64.b64encode(raw).decode("ascii")
        return out
    value = _value(vr, raw)
    if value is not None:
        out["Value"] = value
    return out


class _Walk:
    def __init__(
        self, data: bytes, implicit: bool, bulk: Callable[[int], str], bulk_threshold: int, max_depth: int
    ) -> None:
        self.data = data
        self.max_depth = max_depth
        self.depth = 0
        self.implicit = implicit
        self.bulk = bulk
        self.bulk_threshold = bulk_threshold

    def dataset(self, pos: int, end: int, *, top: bool, in_item: bool) -> tuple[dict[str, Any], int, int]:
        """(model, position after it, the pixel data tag it stopped at or 0) of the elements from ``pos``
        to ``end`` (or to an item delimiter when ``in_item`` and the item has an undefined length)."""
        data = self.data
        model: dict[str, Any] = {}
        previous = -1
        while pos < end:
            if pos + 8 > end:
                raise _GiveUp
            if self.implicit:
                group, element, length = _IMPLICIT_HEAD(data, pos)
                vr_bytes = b""
            else:
                group, element, vr_bytes, length = _EXPLICIT_HEAD(data, pos)
            tag = group << 16 | element
            if tag == _ITEM_END:
                if not in_item or _U32(data, pos + 4)[0] != 0:
                    raise _GiveUp
                return model, pos + 8, 0
            if top and tag in _PIXEL_TAGS:
                return model, pos, tag
            if tag <= previous or group in (0x0000, 0x0002, 0xFFFE) or element == 0:
                raise _GiveUp
            previous = tag
            if self.implicit:
                vr = _implicit_vr(tag)
                pos += 8
            else:
                vr = vr_bytes.decode("latin-1")
                if vr not in _KNOWN_VRS:
                    raise _GiveUp
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise _GiveUp
                    length = _U32(data, pos + 8)[0]
                    pos += 12
                else:
                    pos += 8
            key = f"{tag:08X}"
            if vr == "SQ":
                items, pos = self.sequence(pos, length, end)
                model[key] = {"vr": "SQ", "Value": items}
                continue
            if length == _UNDEFINED or pos + length > end:
                raise _GiveUp
            if tag == _CHARSET_TAG:
                charset = data[pos : pos + length].decode("latin-1").strip(" \x00")
                if charset not in ASCII_CHARSETS:
                    raise _GiveUp
            model[key] = _element(vr, data[pos : pos + length], tag, self.bulk, self.bulk_threshold)
            pos += length
        if in_item:  # an undefined-length item without its delimiter: a reader may go on looking for it
            raise _GiveUp
        return model, pos, 0

    def sequence(self, pos: int, length: int, end: int) -> tuple[list[dict[str, Any]], int]:
        self.depth += 1
        if self.depth > self.max_depth:  # refused by the reader's limit: the fallback says so
            raise _GiveUp
        try:
            return self._items(pos, length, end)
        finally:
            self.depth -= 1

    def _items(self, pos: int, length: int, end: int) -> tuple[list[dict[str, Any]], int]:
        data = self.data
        undefined = length == _UNDEFINED
        stop = end if undefined else pos + length
        if stop > end:
            raise _GiveUp
        items: list[dict[str, Any]] = []
        while True:
            if pos == stop and not undefined:
                return items, pos
            if pos + 8 > stop:
                raise _GiveUp
            group, element, item_length = _IMPLICIT_HEAD(data, pos)  # items and delimiters: tag + 32-bit length
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                if not undefined or item_length != 0:
                    raise _GiveUp
                return items, pos
            if tag != _ITEM:
                raise _GiveUp
            if item_length == _UNDEFINED:
                item, pos, _ = self.dataset(pos, stop, top=False, in_item=True)
            else:
                if pos + item_length > stop:
                    raise _GiveUp
                item, after, _ = self.dataset(pos, pos + item_length, top=False, in_item=False)
                if after != pos + item_length:
                    raise _GiveUp
                pos = after
            if _CHARSET_KEY in item:  # an item with its own character set: pydicom's rules
                raise _GiveUp
            items.append(item)


_CHARSET_KEY: Final = f"{_CHARSET_TAG:08X}"


def json_model(
    data: bytes,
    dataset_offset: int,
    *,
    implicit_vr: bool,
    encapsulated: bool,
    bulk: Callable[[int], str],
    bulk_threshold: int,
    max_depth: int,
    whole: bool = True,
) -> dict[str, Any] | None:
    """The PS3.18 JSON model of the little-endian dataset at ``dataset_offset`` of ``data`` up to its
    pixel data, as ``core/metadata.py`` builds it with pydicom: ``bulk(tag)`` gives a BulkDataURI,
    binary values longer than pydicom's reading of ``bulk_threshold`` get one. Sequences nested deeper
    than ``max_depth`` are not covered (the readers refuse them, core/inflate.py). The pixel data element
    the walk stops at (Pixel Data, Float or Double Float Pixel Data) gets its BulkDataURI; a dataset
    without one gets none, Rows or not. ``whole=False``: ``data``
    is only the start of the file, so the walk must reach pixel data within it. None: not covered
    here (see the module docstring), or ``data`` ends before the walk reached what it needs."""
    walk = _Walk(data, implicit_vr, bulk, bulk_threshold, max_depth)
    try:
        model, _, pixel_tag = walk.dataset(dataset_offset, len(data), top=True, in_item=False)
    except (_GiveUp, struct.error, UnicodeDecodeError, ValueError):
        return None
    if not whole and not pixel_tag:
        return None
    if pixel_tag:
        model[f"{pixel_tag:08X}"] = pixel_element(pixel_tag, encapsulated, bulk(pixel_tag))
    return model


def pixel_element(tag: int, encapsulated: bool, uri: str) -> dict[str, Any]:
    """The PS3.18 JSON of the top-level pixel data element ``tag`` the header stopped at: Float (OF) or
    Double Float (OD) Pixel Data (PS3.3 C.7.6.24), or Pixel Data, OB when ``encapsulated``, else OW."""
    vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(tag, "OB" if encapsulated else "OW")
    return {"vr": vr, "BulkDataURI": uri}


__all__ = ["ASCII_CHARSETS", "json_model", "pixel_element"]
