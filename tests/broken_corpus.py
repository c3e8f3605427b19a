"""A corpus of broken datasets, built byte by byte, and the well-formed ones they are broken from.

Issue 10, "Never store a broken dataset": an element that runs past the end, truncated pixel data
(native and encapsulated), garbage after the last element, an invalid explicit VR, an item longer
than its sequence -- and their relatives (a value longer than its item, a missing delimitation item,
an item where an element belongs) -- in explicit and implicit VR, little and big endian, defined
and undefined lengths, deflated (PS3.5 §7.1, §7.5, A.4, A.5). Each :class:`Case` holds the
dataset as a peer would send it (no File Meta) and the Error Comment the walk must answer.

The encoder is our own, not pydicom's: pydicom will not write most of these.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid

from minipacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from minipacs.dicom.vr import LONG_LENGTH_VRS
from tests.dicomgen import CT_IMAGE_STORAGE

#: PS3.5 A.4.1: JPEG Baseline, an encapsulated transfer syntax (explicit VR little endian).
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
CONTENT_SEQUENCE = 0x0040A730  # SQ in PS3.6: walked into in implicit VR too
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Syntax:
    name: str
    uid: str
    implicit: bool = False
    big: bool = False
    deflated: bool = False

    @property
    def order(self) -> str:
        return ">" if self.big else "<"


EXPLICIT = Syntax("explicit", EXPLICIT_VR_LITTLE_ENDIAN)
IMPLICIT = Syntax("implicit", IMPLICIT_VR_LITTLE_ENDIAN, implicit=True)
BIG = Syntax("big-endian", EXPLICIT_VR_BIG_ENDIAN, big=True)
DEFLATED = Syntax("deflated", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, deflated=True)
ENCAPSULATED = Syntax("encapsulated", JPEG_BASELINE)
SYNTAXES = (EXPLICIT, IMPLICIT, BIG, DEFLATED)


class Encoder:
    """Data elements, sequences and items of one syntax (PS3.5 §7.1.2, §7.1.3, §7.5), any length allowed."""

    def __init__(self, syntax: Syntax) -> None:
        self.syntax = syntax
        self.o = syntax.order

    def tag(self, tag: int) -> bytes:
        return struct.pack(self.o + "HH", tag >> 16, tag & 0xFFFF)

    def el(self, tag: int, vr: str | bytes, value: bytes, length: int | None = None) -> bytes:
        """One element; ``length`` overrides the true value length (a lie)."""
        n = len(value) if length is None else length
        if self.syntax.implicit:
            return self.tag(tag) + struct.pack(self.o + "I", n) + value
        raw_vr = vr if isinstance(vr, bytes) else vr.encode("ascii")
        if raw_vr.decode("latin-1") in LONG_LENGTH_VRS:
            return self.tag(tag) + raw_vr + struct.pack(self.o + "HI", 0, n) + value
        return self.tag(tag) + raw_vr + struct.pack(self.o + "H", n) + value

    def text(self, tag: int, vr: str, value: str) -> bytes:
        raw = value.encode("ascii")
        return self.el(tag, vr, raw + (b"\x00" if vr == "UI" else b" ") * (len(raw) % 2))

    def us(self, tag: int, value: int) -> bytes:
        return self.el(tag, "US", struct.pack(self.o + "H", value))

    def delimiter(self, tag: int) -> bytes:
        return self.tag(tag) + struct.pack(self.o + "I", 0)

    def item(self, content: bytes, *, defined: bool = True, length: int | None = None, closed: bool = True) -> bytes:
        n = (len(content) if length is None else length) if defined else UNDEFINED
        end = b"" if defined or not closed else self.delimiter(ITEM_END)
        return self.tag(ITEM) + struct.pack(self.o + "I", n) + content + end

    def sq(
        self,
        tag: int,
        items: list[bytes],
        *,
        defined: bool = True,
        length: int | None = None,
        closed: bool = True,
        vr: str = "SQ",
    ) -> bytes:
        body = b"".join(items)
        if not defined:
            end = self.delimiter(SEQUENCE_END) if closed else b""
            return self.el(tag, vr, b"", UNDEFINED) + body + end
        return self.el(tag, vr, b"", len(body) if length is None else length) + body


def head(enc: Encoder, sop: str) -> bytes:
    """The top-level elements up to Columns (0028,0011): what the index reads."""
    return b"".join(
        (
            enc.text(0x00080016, "UI", CT_IMAGE_STORAGE),
            enc.text(0x00080018, "UI", sop),
            enc.text(0x00080060, "CS", "CT"),
            enc.text(0x00100010, "PN", "Broken^Dataset"),
            enc.text(0x00100020, "LO", "BROKEN1"),
            enc.text(0x0020000D, "UI", "1.2.826.0.1.3680043.8.498.4242"),
            enc.text(0x0020000E, "UI", "1.2.826.0.1.3680043.8.498.4243"),
            enc.us(0x00280010, 8),
            enc.us(0x00280011, 8),
        )
    )


def content(enc: Encoder, *, defined_sq: bool = True, defined_items: bool = True) -> bytes:
    """A Content Sequence (0040,A730) with a nested one, an empty item and an empty sequence."""
    leaf = enc.text(0x0040A040, "CS", "TEXT") + enc.text(0x0040A160, "UT", "a finding")
    inner = enc.sq(CONTENT_SEQUENCE, [enc.item(leaf, defined=defined_items)], defined=defined_sq)
    empty = enc.sq(0x0040A043, [], defined=defined_sq)  # Concept Name Code Sequence, no items
    return enc.sq(
        CONTENT_SEQUENCE,
        [enc.item(leaf + inner, defined=defined_items), enc.item(b"", defined=defined_items), enc.item(empty)],
        defined=defined_sq,
    )


PIXELS = bytes(range(128))  # 8 x 8 x 16 bit


def pixels(enc: Encoder, data: bytes = PIXELS, length: int | None = None) -> bytes:
    return enc.el(PIXEL_DATA, "OW", data, length)


def encapsulated(
    enc: Encoder, fragments: list[bytes], *, closed: bool = True, lengths: list[int] | None = None
) -> bytes:
    """PS3.5 A.4: undefined-length OB, an empty Basic Offset Table, then one fragment per frame."""
    items = [enc.item(b"")]
    for index, fragment in enumerate(fragments):
        items.append(enc.item(fragment, length=None if lengths is None else lengths[index]))
    return enc.sq(PIXEL_DATA, items, defined=False, closed=closed, vr="OB")


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@dataclass(frozen=True)
class Case:
    name: str
    syntax: Syntax
    sop: str
    data: bytes  # the dataset as sent (deflated for DEFLATED)
    expected: str  # a regular expression the Error Comment matches ("" for a well-formed dataset)

    @property
    def broken(self) -> bool:
        return bool(self.expected)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.syntax.name}"


# name -> (builder of the raw dataset for an encoder and a SOP Instance UID, expected comment, syntaxes)
Builder = Callable[[Encoder, str], bytes]


def _ok_full(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + content(e) + pixels(e)


def _ok_undefined(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + content(e, defined_sq=False, defined_items=False) + pixels(e)


def _ok_padding(e: Encoder, sop: str) -> bytes:
    # PS3.10 §7.2 / PS3.6: Data Set Trailing Padding (FFFC,FFFC), any bytes, is legal after the pixels
    return _ok_full(e, sop) + e.el(0xFFFCFFFC, "OB", b"\x00" * 64 + b"\xde\xad" * 32)


def _ok_un_undefined(e: Encoder, sop: str) -> bytes:
    # PS3.5 §6.2.2: UN of undefined length holds implicit VR little endian items
    implicit = Encoder(IMPLICIT)
    leaf = implicit.text(0x0040A040, "CS", "TEXT")
    return (
        head(e, sop)
        + implicit.sq(CONTENT_SEQUENCE, [implicit.item(leaf)], defined=False).replace(
            implicit.tag(CONTENT_SEQUENCE) + struct.pack("<I", UNDEFINED),
            e.tag(CONTENT_SEQUENCE) + b"UN" + struct.pack(e.o + "HI", 0, UNDEFINED),
        )
        + pixels(e)
    )


def _ok_encapsulated(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + content(e) + encapsulated(e, [b"\xff\xd8" + b"\x00" * 60 + b"\xff\xd9", b"\x01" * 20])


def _ok_stray_delimiters(e: Encoder, sop: str) -> bytes:
    """Delimiters PS3.5 §7.5 does not put there but DCMTK and pydicom both read past: a Sequence
    Delimitation Item closing a defined-length sequence, an Item Delimitation Item closing a
    defined-length item, and one after the last element."""
    leaf = e.text(0x0040A040, "CS", "TEXT")
    sq = e.sq(CONTENT_SEQUENCE, [e.item(leaf + e.delimiter(ITEM_END)), e.delimiter(SEQUENCE_END)])
    return head(e, sop) + sq + pixels(e) + e.delimiter(ITEM_END)


def _item_delimiter_mid_dataset(e: Encoder, sop: str) -> bytes:
    # pydicom stops reading the dataset there (no Pixel Data), DCMTK does not: readers would disagree
    return head(e, sop) + e.delimiter(ITEM_END) + content(e) + pixels(e)


def _past_end(e: Encoder, sop: str) -> bytes:
    # Pixel Spacing claims 5000 bytes; a few hundred follow
    return head(e, sop) + e.el(0x00280030, "DS", b"0.5\\0.5 ", 5000) + pixels(e)


def _pixels_truncated(e: Encoder, sop: str) -> bytes:
    return (head(e, sop) + content(e) + pixels(e))[:-50]


def _fragment_truncated(e: Encoder, sop: str) -> bytes:
    return _ok_encapsulated(e, sop)[:-18]  # its delimiter and the last 10 bytes of the last fragment


def _fragments_undelimited(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + encapsulated(e, [b"\x01" * 20], closed=False)


def _fragment_undefined(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + encapsulated(e, [b"\x01" * 20], lengths=[UNDEFINED])


def _garbage_short(e: Encoder, sop: str) -> bytes:
    return _ok_full(e, sop) + b"\x01\x02\x03\x04\x05"


def _garbage_not_element(e: Encoder, sop: str) -> bytes:
    return _ok_full(e, sop) + b"\xde\xad\xbe\xef" * 4


def _invalid_vr(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + e.el(0x00400254, b"Xy", b"PROCEDURE ") + pixels(e)


def _nul_vr(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + e.el(0x00400254, b"\x00\x00", b"PROCEDURE ") + pixels(e)


def _item_past_sequence(e: Encoder, sop: str) -> bytes:
    leaf = e.text(0x0040A040, "CS", "TEXT")
    items = [e.item(leaf, length=len(leaf) + 40)]  # the sequence below counts the true lengths
    return head(e, sop) + e.sq(CONTENT_SEQUENCE, items, length=len(items[0])) + pixels(e)


def _item_past_end(e: Encoder, sop: str) -> bytes:
    leaf = e.text(0x0040A040, "CS", "TEXT")
    return head(e, sop) + e.sq(CONTENT_SEQUENCE, [e.item(leaf, length=4000)], defined=False) + pixels(e)


def _element_past_item(e: Encoder, sop: str) -> bytes:
    leaf = e.el(0x0040A160, "UT", b"a finding ", 40)  # 40 > its item's 18 bytes, < what follows
    return head(e, sop) + e.sq(CONTENT_SEQUENCE, [e.item(leaf), e.item(leaf)]) + pixels(e)


def _sequence_undelimited(e: Encoder, sop: str) -> bytes:
    leaf = e.text(0x0040A040, "CS", "TEXT")
    return head(e, sop) + e.sq(CONTENT_SEQUENCE, [e.item(leaf)], defined=False, closed=False) + pixels(e)


def _item_undelimited(e: Encoder, sop: str) -> bytes:
    leaf = e.text(0x0040A040, "CS", "TEXT")
    return head(e, sop) + e.sq(CONTENT_SEQUENCE, [e.item(leaf, defined=False, closed=False)], defined=False) + pixels(e)


def _undefined_length_text(e: Encoder, sop: str) -> bytes:
    # PS3.5 §7.1.1: undefined length only for SQ, UN, OB, OW; pydicom reads this UT as its items' bytes
    text = e.tag(0x0040A160) + (b"" if e.syntax.implicit else b"UT\x00\x00") + struct.pack(e.o + "I", UNDEFINED)
    return head(e, sop) + text + e.item(e.text(0x00080100, "SH", "X1")) + e.delimiter(SEQUENCE_END) + pixels(e)


def _ob_undefined(e: Encoder, sop: str) -> bytes:
    # PS3.5 A.4 encapsulates Pixel Data only: DCMTK refuses this file ("Illegal element with OB or OW
    # Value Representation and undefined length"); Encapsulated Document (0042,0011) is OB
    fragments = e.sq(0x00420011, [e.item(b""), e.item(b"%PDF-1.4" + b"\x00" * 8)], defined=False, vr="OB")
    return head(e, sop) + fragments + pixels(e)


def _encapsulated_in_native(e: Encoder, sop: str) -> bytes:
    # fragments under a native syntax (PS3.5 A.1-A.3, A.5): readers take them for native pixels
    return _ok_encapsulated(e, sop)


def _header_attribute_late(e: Encoder, sop: str) -> bytes:
    # PS3.5 §7.1: ascending order. DCMTK (with a warning) and pydicom sort; the index's header read stops
    # at the first tag past (0028,0011), so it would hold no Patient ID where they read "LATE"
    return head(e, sop).replace(e.text(0x00100020, "LO", "BROKEN1"), b"") + e.text(0x00100020, "LO", "LATE") + pixels(e)


def _ok_other_element_late(e: Encoder, sop: str) -> bytes:
    # out of order too, past every attribute the index keeps: DCMTK and pydicom read it, it is stored
    return head(e, sop) + e.text(0x00280030, "DS", "0.5\\0.5") + e.text(0x00180050, "DS", "1.25") + pixels(e)


def _item_at_top(e: Encoder, sop: str) -> bytes:
    return head(e, sop) + e.item(e.text(0x0040A040, "CS", "TEXT")) + pixels(e)


def _native_in_encapsulated(e: Encoder, sop: str) -> bytes:
    # native pixels under JPEG Baseline (PS3.5 A.4: encapsulated, undefined length): the stored file would
    # say JPEG and hold none, and a retrieve's peer fail to decode it
    return head(e, sop) + content(e) + pixels(e)


TAG, AT = r"\([0-9A-F]{4},[0-9A-F]{4}\)", r"at \d+"
KINDS: dict[str, tuple[Builder, str, tuple[Syntax, ...]]] = {
    # well-formed: must be stored
    "ok": (_ok_full, "", SYNTAXES),
    "ok-undefined-lengths": (_ok_undefined, "", SYNTAXES),
    "ok-trailing-padding": (_ok_padding, "", SYNTAXES),
    "ok-un-undefined-length": (_ok_un_undefined, "", (EXPLICIT, BIG, DEFLATED)),
    "ok-encapsulated": (_ok_encapsulated, "", (ENCAPSULATED,)),
    "ok-stray-delimiters": (_ok_stray_delimiters, "", SYNTAXES),
    "ok-other-element-out-of-order": (_ok_other_element_late, "", SYNTAXES),
    # broken: must be refused, the comment naming what and where
    "element-past-end": (_past_end, r"^\(0028,0030\) at \d+: length 5000 runs past the end", SYNTAXES),
    "pixel-data-truncated": (_pixels_truncated, r"^\(7FE0,0010\) at \d+: length 128 runs past the end", SYNTAXES),
    "fragment-truncated": (
        _fragment_truncated,
        r"^\(7FE0,0010\) fragment at \d+: length 20 runs past",
        (ENCAPSULATED,),
    ),
    "fragments-undelimited": (_fragments_undelimited, r"^\(7FE0,0010\) at \d+: no \(FFFE,E0DD\)", (ENCAPSULATED,)),
    "fragment-undefined-length": (_fragment_undefined, r"^\(FFFE,E000\) at \d+: pixel data fragment", (ENCAPSULATED,)),
    "garbage-short": (_garbage_short, r"^[56] bytes after the last element at \d+ are not an element$", SYNTAXES),
    "garbage-not-an-element": (_garbage_not_element, rf"^{TAG} {AT}: (invalid VR|length)", SYNTAXES),
    "invalid-vr": (_invalid_vr, r"^\(0040,0254\) at \d+: invalid VR Xy in explicit VR$", (EXPLICIT, BIG, DEFLATED)),
    "nul-vr": (_nul_vr, r"^\(0040,0254\) at \d+: invalid VR 0x0000 in explicit VR$", (EXPLICIT, BIG, DEFLATED)),
    "item-past-sequence": (_item_past_sequence, r"^\(FFFE,E000\) at \d+: length \d+ runs past its sequence", SYNTAXES),
    # deflated, the end is unknown until the stream ends: the walk finds what follows the item inside it
    "item-past-end": (
        _item_past_end,
        r"^\(FFFE,E000\) at \d+: length 4000 runs past the end|^\(FFFE,E0DD\) at \d+ where a data element",
        SYNTAXES,
    ),
    "element-past-item": (_element_past_item, r"^\(0040,A160\) at \d+: length 40 runs past its item", SYNTAXES),
    "sequence-undelimited": (_sequence_undelimited, r"^\(7FE0,0010\) at \d+ where an item belongs", SYNTAXES),
    "item-undelimited": (_item_undelimited, r"^\(FFFE,E0DD\) at \d+ where a data element belongs", SYNTAXES),
    "item-delimiter-mid-dataset": (
        _item_delimiter_mid_dataset,
        r"^\(FFFE,E00D\) at \d+ where a data element belongs$",
        SYNTAXES,
    ),
    "item-at-top-level": (_item_at_top, r"^\(FFFE,E000\) at \d+ where a data element belongs", SYNTAXES),
    "undefined-length-text": (
        _undefined_length_text,
        r"^\(0040,A160\) at \d+: undefined length with VR UT$",
        SYNTAXES,
    ),
    "undefined-length-ob-not-pixel-data": (
        _ob_undefined,
        r"^\(0042,0011\) at \d+: undefined length with VR OB$",
        (*SYNTAXES, ENCAPSULATED),
    ),
    "header-attribute-out-of-order": (
        _header_attribute_late,
        r"^\(0010,0020\) at \d+ after \(0028,0011\): not ascending \(PS3\.5 7\.1\)$",
        SYNTAXES,
    ),
    "encapsulated-in-native-syntax": (
        _encapsulated_in_native,
        r"^\(7FE0,0010\) at \d+: encapsulated pixel data, native syntax$",
        SYNTAXES,
    ),
    "native-in-encapsulated-syntax": (
        _native_in_encapsulated,
        r"^\(7FE0,0010\) at \d+: native pixel data in an encapsulated syntax$",
        (ENCAPSULATED,),
    ),
}


def case(name: str, syntax: Syntax, sop: str | None = None) -> Case:
    builder, expected, _syntaxes = KINDS[name]
    sop = sop or generate_uid()
    raw = builder(Encoder(Syntax("explicit", EXPLICIT_VR_LITTLE_ENDIAN) if syntax.deflated else syntax), sop)
    return Case(name, syntax, sop, deflate(raw) if syntax.deflated else raw, expected)


def cases(broken: bool | None = None) -> list[Case]:
    """Every kind in every syntax it applies to (``broken``: only the broken or only the good ones)."""
    out = [case(name, syntax) for name, (_b, _e, syntaxes) in KINDS.items() for syntax in syntaxes]
    return [c for c in out if broken is None or c.broken == broken]


def part10(case: Case) -> bytes:
    """The case as a Part 10 file (PS3.10 §7.1): preamble, DICM, File Meta Information, the dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = case.sop
    meta.TransferSyntaxUID = case.syntax.uid
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + case.data


def matches(case: Case, comment: str) -> bool:
    return bool(re.search(case.expected, comment))


__all__ = ["KINDS", "SYNTAXES", "Case", "Encoder", "case", "cases", "matches", "part10"]
