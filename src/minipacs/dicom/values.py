"""Values as text: character sets (PS3.5 §6.1), DA/TM/DT (PS3.5 Table 6.2-1) and PN.

Dates and times come in two strictnesses. ``strict``: exactly PS3.5 Table 6.2-1,
for attributes we validate (MPPS). Lenient (the default, for indexing and
matching what others stored): also the forms PS3.5 Table 6.2-1 recommends
accepting for compatibility with ACR-NEMA ("YYYY.MM.DD", "HH:MM:SS.frac").
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom import charset as _pydicom_charset
from pydicom.charset import decode_bytes, python_encoding

from minipacs.dicom.vr import CHARSET_VRS, LEADING_SPACES_KEPT_VRS

#: PS3.3 Table C.12-2 and C.12-3 Defined Terms pydicom 3.0 lacks: Latin alphabet No. 9 (ISO 8859-15,
#: ISO-IR 203; its ISO 2022 escape sequence ESC 02/13 06/02 designates it to G1). Without them a
#: Latin-9 value is read as Latin-1 ("€" as "¤", "Œ" as "¼") and written with "?" in their place.
#: Added to pydicom's own tables, so that every reader and writer in the process (ours, and
#: pydicom's for identifiers and corrections) knows them; :func:`codecs_for` reads the same table.
_LATIN_9: Final = "iso8859_15"
_MISSING_TERMS: Final = {"ISO_IR 203": _LATIN_9, "ISO 2022 IR 203": _LATIN_9}
for _term, _codec in _MISSING_TERMS.items():
    python_encoding.setdefault(_term, _codec)
_pydicom_charset.CODES_TO_ENCODINGS.setdefault(_pydicom_charset.ESC + b"-b", _LATIN_9)
_pydicom_charset.ENCODINGS_TO_CODES.setdefault(_LATIN_9, _pydicom_charset.ESC + b"-b")
#: pydicom 3.0 leaves GB2312 (ISO 2022 IR 58, PS3.3 Table C.12-4; PS3.5 Annex K) to Python's codec "with
#: its escape sequence", but that codec (EUC-CN) knows none: read, a value kept "ESC $ ) A" in its text;
#: written, it had no escape sequence at all. Handled like the other designations (the sequence
#: stripped before decoding, written before the G1 bytes), both work.
_pydicom_charset.handled_encodings = tuple(  # type: ignore[assignment] # pydicom types it as 3 names
    e for e in _pydicom_charset.handled_encodings if e != "iso_ir_58"
)

# PS3.5 §6.1.2.5.3: characters before which an ISO 2022 code element returns to the default,
# per VR kind: PN ('\\', '^', '='), other text ('\\', CR, LF, TAB, FF).
PN_DELIMITERS: Final = frozenset({0x5C, 0x5E, 0x3D})
TEXT_DELIMITERS: Final = frozenset({0x5C, 0x0D, 0x0A, 0x09, 0x0C})
_DEFAULT_CODEC: Final = python_encoding[""]
#: Defined Terms whose repertoire is ASCII alone (PS3.3 C.12.1.1.2): G0 of ISO-IR 6.
_ASCII_TERMS: Final = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


# ------------------------------------------------------------------ writing text in a character set


def _jis_x_0201_katakana(char: str) -> bytes | None:
    """ISO-IR 13, JIS X 0201 katakana: one byte 0xA1-0xDF (Shift JIS keeps them there)."""
    raw = _try_encode(char, "shift_jis")
    return raw if raw is not None and len(raw) == 1 and 0xA1 <= raw[0] <= 0xDF else None


def _jis_designated(prefix: bytes, codec: str) -> Callable[[str], bytes | None]:
    """A two-byte G0 set Python's ISO 2022 codec writes as ``prefix`` + 2 bytes + ESC ( B: those 2 bytes.
    The codec is the one pydicom reads the set back with, so what we write reads back the same."""

    def encode(char: str) -> bytes | None:
        raw = _try_encode(char, codec)
        if raw is None or not raw.startswith(prefix) or len(raw) != len(prefix) + 5:
            return None
        return raw[len(prefix) : len(prefix) + 2]

    return encode


def _two_byte_g1(codec: str) -> Callable[[str], bytes | None]:
    """A two-byte G1 set (KS X 1001, GB 2312) as its EUC codec writes it: both bytes 0xA1-0xFE (EUC-KR's
    eight-byte "make-up" sequences for hangul outside KS X 1001 are no ISO-IR 149 characters)."""

    def encode(char: str) -> bytes | None:
        raw = _try_encode(char, codec)
        return raw if raw is not None and len(raw) == 2 and raw[0] >= 0xA1 and raw[1] >= 0xA1 else None

    return encode


def _one_byte_g1(codec: str) -> Callable[[str], bytes | None]:
    """A 96-character single-byte set in G1 (ISO 8859 parts, TIS 620): one byte 0xA0-0xFF."""

    def encode(char: str) -> bytes | None:
        raw = _try_encode(char, codec)
        return raw if raw is not None and len(raw) == 1 and raw[0] >= 0xA0 else None

    return encode


def _ascii(char: str) -> bytes | None:
    """ISO-IR 6; ESC is refused: written as it is, it would start an escape sequence (PS3.5 6.1.2.5)."""
    return char.encode("ascii") if char.isascii() and char != "\x1b" else None


def _try_encode(char: str, codec: str) -> bytes | None:
    try:
        return char.encode(codec)
    except UnicodeEncodeError:
        return None


@dataclass(frozen=True, slots=True)
class CodeElement:
    """One graphic character set that a Defined Term designates: the escape sequence that designates
    it (PS3.3 Tables C.12-3 and C.12-4), whether to G1 (bytes with the high bit set) or G0, and the
    bytes of a character in it (None: not in the set)."""

    name: str
    escape: bytes
    g1: bool
    encode: Callable[[str], bytes | None]


_ESC: Final = b"\x1b"
_ISO_IR_6: Final = CodeElement("ISO-IR 6", _ESC + b"(B", False, _ascii)
#: ISO-IR 14 (JIS X 0201 romaji) is ASCII but for 05/12 (YEN SIGN) and 07/14 (OVERLINE); pydicom and
#: DCMTK read it as ASCII (05/12 is the value delimiter in SH, LO, PN and UC; PS3.5 H.1.1 Note 3).
_ISO_IR_14: Final = CodeElement("ISO-IR 14", _ESC + b"(J", False, _ascii)
_SINGLE_BYTE_G1: Final = {  # PS3.3 Table C.12-3: G1 escape sequence and codec of each 96-character set
    "100": (b"-A", "latin_1"),
    "101": (b"-B", "iso8859_2"),
    "109": (b"-C", "iso8859_3"),
    "110": (b"-D", "iso8859_4"),
    "144": (b"-L", "iso8859_5"),
    "127": (b"-G", "iso8859_6"),
    "126": (b"-F", "iso8859_7"),
    "138": (b"-H", "iso8859_8"),
    "148": (b"-M", "iso8859_9"),
    "203": (b"-b", _LATIN_9),
    "166": (b"-T", "tis_620"),
}
#: PS3.3 Tables C.12-3 and C.12-4: the code elements each Defined Term with code extensions designates.
ISO_2022_TERMS: Final[Mapping[str, tuple[CodeElement, ...]]] = {
    "ISO 2022 IR 6": (_ISO_IR_6,),
    **{
        f"ISO 2022 IR {number}": (_ISO_IR_6, CodeElement(f"ISO-IR {number}", _ESC + escape, True, _one_byte_g1(codec)))
        for number, (escape, codec) in _SINGLE_BYTE_G1.items()
    },
    "ISO 2022 IR 13": (_ISO_IR_14, CodeElement("ISO-IR 13", _ESC + b")I", True, _jis_x_0201_katakana)),
    "ISO 2022 IR 87": (CodeElement("ISO-IR 87", _ESC + b"$B", False, _jis_designated(_ESC + b"$B", "iso2022_jp")),),
    "ISO 2022 IR 159": (
        CodeElement("ISO-IR 159", _ESC + b"$(D", False, _jis_designated(_ESC + b"$(D", "iso2022_jp_2")),
    ),
    "ISO 2022 IR 149": (CodeElement("ISO-IR 149", _ESC + b"$)C", True, _two_byte_g1("euc_kr")),),
    "ISO 2022 IR 58": (CodeElement("ISO-IR 58", _ESC + b"$)A", True, _two_byte_g1("gb2312")),),
}


def uses_code_extensions(specific_character_set: str) -> bool:
    """Whether text under this Specific Character Set is written with ISO 2022 escape sequences
    (PS3.5 6.1.2.5): several values, or one Defined Term of PS3.3 Tables C.12-3/C.12-4."""
    return "\\" in specific_character_set or specific_character_set.strip().startswith("ISO 2022")


def encode_text(text: str, vr: str, specific_character_set: str) -> bytes:
    """``text`` in the bytes of ``specific_character_set``, unpadded; UnicodeEncodeError when a
    character is outside its repertoire (the caller chooses another set, never writes a "?").

    Without code extensions: the one set's codec (ISO_IR 13: JIS X 0201 bytes only, not the Shift JIS
    kanji Python's codec would write; no set or ISO_IR 6: ASCII). With them (PS3.5 6.1.2.5), each
    character is written in the first designated set that holds it, else in the first set of the
    Defined Terms that does, after the escape sequence that designates it. Before every delimiter
    (PN: ``^ = \\``; other text: ``\\`` CR LF TAB FF, PS3.5 6.1.2.5.3) and at the end of the value the
    G0 set of value 1 is designated again when another one is (PS3.5 Annex H: ESC ( B after kanji),
    and a G1 set other than value 1's counts as gone, designated again where next used (Annexes I and K:
    ESC $ ) C in each name component)."""
    if not uses_code_extensions(specific_character_set):
        term = specific_character_set.strip()
        if term in _ASCII_TERMS:
            return text.encode("ascii")
        if term == "ISO_IR 13":
            return _encode_jis_x_0201(text)
        return text.encode(codecs_for(term)[0])
    terms = [term.strip() for term in specific_character_set.split("\\")]
    first = ISO_2022_TERMS.get(terms[0], ())
    # value 1 is in effect at the start and after each delimiter (PS3.5 6.1.2.5.3): its G0 when a single-byte
    # set (ISO-IR 6, or ISO-IR 14 for ISO 2022 IR 13), its single-byte G1; a multi-byte set named first is
    # designated where used, like any other
    initial_g0 = _ISO_IR_14 if _ISO_IR_14 in first else _ISO_IR_6
    initial_g1 = next((e for e in first if e.g1), None) if _ISO_IR_6 in first or _ISO_IR_14 in first else None
    # value 1's sets first (an empty value 1 is ISO-IR 6, PS3.5 6.1.2.5.1), then the others in order
    elements = [initial_g0, *(e for term in terms for e in ISO_2022_TERMS.get(term, ()))]
    delimiters = PN_DELIMITERS if vr == "PN" else TEXT_DELIMITERS
    out = bytearray()
    g0, g1 = initial_g0, initial_g1
    for index, char in enumerate(text):
        if ord(char) in delimiters:
            if g0 is not initial_g0:
                out += initial_g0.escape
            g0, g1 = initial_g0, initial_g1
            out += char.encode("ascii")
            continue
        found = _first_holding(char, (g0, g1, *elements))
        if found is None:
            raise UnicodeEncodeError(specific_character_set, text, index, index + 1, "not in its repertoire")
        element, raw = found
        if element.g1 and element is not g1:
            out += element.escape
            g1 = element
        elif not element.g1 and element is not g0:
            out += element.escape
            g0 = element
        out += raw
    if g0 is not initial_g0:
        out += initial_g0.escape
    return bytes(out)


def _first_holding(char: str, elements: Iterable[CodeElement | None]) -> tuple[CodeElement, bytes] | None:
    for element in elements:
        if element is not None and (raw := element.encode(char)) is not None:
            return element, raw
    return None


def _encode_jis_x_0201(text: str) -> bytes:
    """ISO_IR 13 without code extensions: ISO-IR 14 in G0 (read as ASCII), ISO-IR 13 katakana in G1."""
    out = bytearray()
    for index, char in enumerate(text):
        raw = _ascii(char) or _jis_x_0201_katakana(char)
        if raw is None:
            raise UnicodeEncodeError("ISO_IR 13", text, index, index + 1, "not in JIS X 0201")
        out += raw
    return bytes(out)


def can_encode(texts: Iterable[str], specific_character_set: str) -> bool:
    """Whether every text is in the repertoire of ``specific_character_set`` as :func:`encode_text`
    writes it (a term we do not know holds ASCII alone)."""
    if not _known(specific_character_set):
        return all(text.isascii() for text in texts)
    try:
        for text in texts:
            encode_text(text, "LO", specific_character_set)
    except UnicodeEncodeError:
        return False
    return True


def _known(specific_character_set: str) -> bool:
    return all(
        term.strip() in python_encoding or term.strip() in ISO_2022_TERMS for term in specific_character_set.split("\\")
    )


def codecs_for(specific_character_set: str) -> list[str]:
    """PS3.3 C.12.1.1.2 Defined Terms → Python codecs, each as :func:`codec_of` reads it."""
    return [codec_of(term.strip()) for term in specific_character_set.split("\\")]


#: Misspelled Defined Terms seen in the wild: "ISO-IR 144", "ISO IR 100"; "ISO 2022-IR 87", "ISO_2022_IR 149".
_MISSPELLED_SINGLE: Final = re.compile(r"ISO[^_]IR")
_MISSPELLED_ISO_2022: Final = re.compile(r"(?=ISO.2022.IR.)(?!ISO 2022 IR )")
#: What a Python codec named in (0008,0005) must leave as it is to be used: the delimiters and ASCII.
_ASCII_PROBE: Final = "AZaz09 ^=\\+-."
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))


@functools.lru_cache(maxsize=256)  # bounded: the term comes from the network
def codec_of(term: str) -> str:
    """The Python codec of one Specific Character Set term, read as pydicom reads it, so that the index
    (dicom/header.py), the query keys and the PS3.18 metadata (pydicom's) see the same text:

    * a Defined Term of PS3.3 C.12.1.1.2 (with ISO_IR 203, values.py's addition);
    * a misspelled one as the term it spells ("ISO-IR 144" as ISO_IR 144: it was read as Latin-1 into the
      index and as Cyrillic into the metadata, and a Cyrillic key found nothing);
    * the name of a Python codec that keeps ASCII as it is ("UTF-8", "latin1", "iso_ir 144") as that
      codec: pydicom's fallback;
    * anything else (an unknown term, a codec such as UTF-16 that would turn ASCII into other text, a
      name that is no text encoding) as the default repertoire, bytes past 0x7F as Latin-1 (pydicom's
      default: nothing is lost, an ASCII value reads right).

    The stored bytes are never changed; DCMTK refuses to convert such a file (dcmdump +U8).
    """
    found = python_encoding.get(term)
    if found is not None:
        return found
    if _MISSPELLED_SINGLE.match(term):
        return python_encoding.get("ISO_IR" + term[6:], _DEFAULT_CODEC)
    if _MISSPELLED_ISO_2022.match(term):
        return python_encoding.get("ISO 2022 IR " + term[12:], _DEFAULT_CODEC)
    try:
        keeps_ascii = _ASCII_PROBE.encode(term) == _ASCII_PROBE.encode() and (
            _ASCII_PROBE.encode().decode(term) == _ASCII_PROBE
        )
        _HIGH_BYTES.decode(term, errors="replace")  # and reads any byte (IDNA's codec refuses "replace")
    except (LookupError, UnicodeError, TypeError, ValueError):  # no codec, or none for text
        return _DEFAULT_CODEC
    return term if keeps_ascii else _DEFAULT_CODEC


def decode_text(raw: bytes, vr: str, codecs: Sequence[str]) -> str:
    """One element's raw value as text, PS3.5 §6.2 padding removed.

    The Specific Character Set applies to the VRs of PS3.5 §6.1.2.3 (ISO 2022 escapes
    switch code elements, PS3.5 §6.1.2.5); the rest are ASCII. A UI keeps a NUL inside
    the value (PS3.5 §9.1: only a trailing NUL pads; UID validation refuses it); other
    VRs lose every NUL. ST, LT, UT and UC keep their leading spaces.
    """
    if vr in CHARSET_VRS:
        if 0x1B in raw:  # ISO 2022 escape sequences (PS3.5 §6.1.2.5)
            delimiters = PN_DELIMITERS if vr == "PN" else TEXT_DELIMITERS
            try:
                text = decode_bytes(raw, list(codecs), set(delimiters))
            except (UserWarning, ValueError, LookupError):
                # an unknown or broken escape sequence: pydicom warns (an exception where warnings
                # are errors) or raises; the value is read in the first character set instead
                text = raw.decode(codecs[0], errors="replace")
        else:
            text = raw.decode(codecs[0], errors="replace")
    else:
        text = raw.decode("ascii", errors="replace")
    if vr == "UI":
        return text.rstrip("\x00 ").lstrip(" ")
    text = text.replace("\x00", "")
    return text.rstrip(" ") if vr in LEADING_SPACES_KEPT_VRS else text.strip(" ")


# ------------------------------------------------------------------ DA


def as_date(value: str, *, strict: bool = False) -> dt.date | None:
    """PS3.5 Table 6.2-1 DA "YYYYMMDD" (lenient: also the ACR-NEMA "YYYY.MM.DD"); else None."""
    digits = value.replace(".", "") if len(value) == 10 and not strict else value
    if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
        return None
    if not strict and len(value) == 10 and (value[4], value[7]) != (".", "."):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def date_bound(text: str, upper: bool) -> dt.date | None:
    """A DA as the first (and last: a date is one day) day it stands for (PS3.4 C.2.2.2.5)."""
    return as_date(text)


# ------------------------------------------------------------------ TM


def time_bound(text: str, upper: bool) -> dt.time | None:
    """A TM as the first (``upper``: last) instant it stands for; None when it is no TM.

    PS3.5 Table 6.2-1 TM "HH[MM[SS[.F{1,6}]]]", HH 00-23, MM 00-59, SS 00-60 (a leap
    second is read as :59). Reduced precision is a span: "10" is 10:00:00 up to
    10:59:59.999999. Lenient: also "HH:MM:SS" and a fraction after HH or HHMM.
    """
    return _time(text, upper, strict=False)


def as_time(value: str, *, strict: bool = False) -> dt.time | None:
    """PS3.5 Table 6.2-1 TM as the instant it starts at; anything else → None (see time_bound)."""
    return _time(value, False, strict=strict)


def _time(text: str, upper: bool, *, strict: bool) -> dt.time | None:
    clean = text if strict else text.replace(":", "")
    whole, dot, fraction = clean.partition(".")
    if len(whole) not in (2, 4, 6) or not whole.isascii() or not whole.isdigit():
        return None
    if fraction and (not fraction.isascii() or not fraction.isdigit() or len(fraction) > 6):
        return None
    if strict and dot and (len(whole) != 6 or not fraction):
        return None
    hour, minute, second = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hour > 23 or minute > 59 or second > 60:
        return None
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    if upper:
        if len(whole) < 4:
            minute = 59
        if len(whole) < 6:
            second = 59
        micro = int(fraction.ljust(6, "9")) if fraction else 999999
    return dt.time(hour, minute, min(second, 59), micro)


# ------------------------------------------------------------------ DT

_DT_RE: Final = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$", re.ASCII)


def datetime_bound(text: str, upper: bool) -> dt.datetime | None:
    """DT "YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]": the first or last instant it stands for.

    The offset is dropped: the bound is the wall-clock time as written. Matching compares
    moments, offsets counted: :func:`datetime_utc_bound`.
    """
    found = _DT_RE.match(text)
    if found is None:
        return None
    parts = found.groups()
    year = int(parts[0])
    given = [p for p in parts[1:6] if p is not None]
    defaults_low = [1, 1, 0, 0, 0]
    try:
        month, day, hour, minute, second = [int(p) for p in given] + defaults_low[len(given) :]
        low = dt.datetime(year, month, day, hour, minute, second, int((parts[6] or "0").ljust(6, "0")))
    except ValueError:
        return None
    if not upper:
        return low
    units = ["year", "month", "day", "hour", "minute", "second"]
    unit = units[len(given)] if parts[6] is None else "fraction"
    return _end_of(low, unit, parts[6] or "")


def datetime_utc_bound(text: str, upper: bool) -> dt.datetime | None:
    """DT as :func:`datetime_bound` gives it, moved to UTC (a naive datetime): by the value's own
    offset from UTC ("&ZZXX"), else by this machine's local time zone; None when it is no DT.

    PS3.4 C.2.2.2.5.3 d: "The offset from Universal Coordinated Time, if present in the Value of
    the Attribute, shall be taken into account for the purposes of the match": 20240105101010+0100
    is the moment 20240105091010+0000 is. A value without an offset is local time (PS3.5 Table
    6.2-1 DT; we negotiate no timezone query adjustment, PS3.4 C.2.2.2.1.3), as DCMTK reads it;
    two such values compare as written. A bound moved past year 1 or 9999 stays at the limit.
    """
    moment = datetime_bound(text, upper)
    if moment is None:
        return None
    offset = _DT_RE.match(text).group(8)  # type: ignore[union-attr]  # datetime_bound matched it
    try:
        if offset is None:
            return moment.astimezone(dt.UTC).replace(tzinfo=None)
        sign = -1 if offset[0] == "-" else 1
        shift = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return moment - sign * shift
    except (OverflowError, OSError, ValueError):  # past the calendar's ends: keep the bound where it is
        return moment


def _end_of(start: dt.datetime, unit: str, fraction: str) -> dt.datetime:
    if unit == "year":
        return start.replace(month=12, day=31, hour=23, minute=59, second=59, microsecond=999999)
    if unit == "month":
        if start.month == 12:  # December ends the year (and 9999-12 has no following month)
            return start.replace(day=31, hour=23, minute=59, second=59, microsecond=999999)
        following = start.replace(month=start.month + 1, day=1)
        return following - dt.timedelta(microseconds=1)
    step = {
        "day": dt.timedelta(days=1),
        "hour": dt.timedelta(hours=1),
        "minute": dt.timedelta(minutes=1),
        "second": dt.timedelta(seconds=1),
    }.get(unit)
    if step is not None:
        return start + (step - dt.timedelta(microseconds=1))  # never past 9999-12-31T23:59:59.999999
    return start.replace(microsecond=int(fraction.ljust(6, "9")))


# ------------------------------------------------------------------ PN


def normalise_name(value: str) -> str:
    """Form of a name (PN) used for case-insensitive matching: NFKC, casefolded, and without
    what PS3.5 6.2.1.1 makes insignificant — trailing empty components (``Doe^John^^``) and
    trailing empty component groups (``Wang^XiaoDong=王^小東=``) — in each value."""
    values = []
    for name in value.split("\\"):
        groups = [group.rstrip(" ^") for group in name.split("=")]
        while len(groups) > 1 and not groups[-1]:
            groups.pop()
        values.append("=".join(groups))
    return unicodedata.normalize("NFKC", "\\".join(values)).casefold()


__all__ = [
    "ISO_2022_TERMS",
    "PN_DELIMITERS",
    "TEXT_DELIMITERS",
    "as_date",
    "as_time",
    "can_encode",
    "codec_of",
    "codecs_for",
    "date_bound",
    "datetime_bound",
    "datetime_utc_bound",
    "decode_text",
    "encode_text",
    "normalise_name",
    "time_bound",
    "uses_code_extensions",
]
