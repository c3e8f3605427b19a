"""Value Representation families (PS3.5 §6.2, Table 6.2-1; §7.1.2, Table 7.1-1).

Each family is defined here once; encoders, readers and the matching rules use
these sets rather than spelling VRs out again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

# PS3.5 §6.2, Table 6.2-1: every Value Representation; in an explicit VR data element (PS3.5 §7.1.2)
# any other two bytes are an encoding error.
ALL_VRS: Final = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
        "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
    }
)  # fmt: skip

# PS3.5 §7.1.2, Table 7.1-1: explicit VRs whose element header has 2 reserved bytes and a
# 32-bit value length (every other explicit VR has a 16-bit length).
LONG_LENGTH_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: The same, as the two bytes a reader finds in the element header.
LONG_LENGTH_VR_BYTES: Final = frozenset(vr.encode("ascii") for vr in LONG_LENGTH_VRS)

# PS3.5 §6.1.2.3 and §6.1.3: VRs whose values the Specific Character Set (0008,0005) applies to.
CHARSET_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
# PS3.5 Table 6.2-1: string VRs limited to the default character repertoire.
ASCII_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
#: Every VR whose value is text.
STRING_VRS: Final = ASCII_VRS | CHARSET_VRS
# PS3.5 Table 6.2-1: text VRs whose leading spaces are part of the value (trailing ones pad).
LEADING_SPACES_KEPT_VRS: Final = frozenset({"ST", "LT", "UT", "UC"})
# PS3.5 Table 6.2-1: VRs holding dates and times.
DATE_TIME_VRS: Final = frozenset({"DA", "TM", "DT"})
# PS3.5 Table 6.2-1: binary integers -> their struct format (one value; byte order added by the caller).
INT_VR_FORMATS: Final[Mapping[str, str]] = {"US": "H", "UL": "L", "SS": "h", "SL": "l"}
# PS3.5 Table 6.2-1: the "other" VRs whose value is a stream of words -> the struct format of one word.
# Each word is in the transfer syntax's byte order: OW "requires byte swapping within each word when
# changing byte ordering", and so do OL, OF, OD and OV (OB and UN are bytes, no order).
WORD_VR_FORMATS: Final[Mapping[str, str]] = {"OW": "H", "OL": "I", "OF": "I", "OD": "Q", "OV": "Q"}
#: PS3.5 Table 6.2-1: VRs whose values are arrays of bytes or binary words: nothing a person can read in
#: place, so de-identification's "clean" can only remove them (core/deid.py, PS3.15 E.1 action C).
BYTE_ARRAY_VRS: Final = frozenset({"OB", "UN", *WORD_VR_FORMATS})
# PS3.5 Table 6.2-1: VRs whose values are bytes or binary numbers, not text (PS3.4 C.2.2.2: not matchable).
BINARY_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "US", "UL", "SS", "SL", "FL", "FD", "AT", "SV", "UV"}
)

#: The text of a placeholder value (de-identification's D action, core/deid.py).
PLACEHOLDER_TEXT: Final = "ANONYMIZED"
#: PS3.5 Table 6.2-1: a valid, never empty placeholder value of each VR (PS3.15 E.1 action D).
PLACEHOLDER_VALUES: Final[Mapping[str, str | int | float | bytes]] = {
    "AE": "ANONYMIZED",
    "AS": "000D",
    "AT": 0,
    "CS": PLACEHOLDER_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "FL": 0.0,
    "FD": 0.0,
    "IS": "0",
    "LO": PLACEHOLDER_TEXT,
    "LT": PLACEHOLDER_TEXT,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "PN": PLACEHOLDER_TEXT,
    "SH": PLACEHOLDER_TEXT,
    "SL": 0,
    "SS": 0,
    "ST": PLACEHOLDER_TEXT,
    "SV": 0,
    "TM": "000000",
    "UC": PLACEHOLDER_TEXT,
    "UL": 0,
    "UN": b"\x00\x00",
    "UR": PLACEHOLDER_TEXT,
    "US": 0,
    "UT": PLACEHOLDER_TEXT,
    "UV": 0,
}
#: VRs whose value is text (placeholders and cleaning replace it with text).
TEXT_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})

# PS3.5 6.1.2-6.1.3: a value holds no NUL and no C0 control but ESC (the ISO 2022 code extension escape,
# 6.1.2.5), nor DEL; LT, ST and UT may also hold the format effectors TAB, LF, FF and CR (6.1.3).
# One rule for every edge that reads query keys (QIDO-RS in web/search.py, DIMSE C-FIND in
# core/identifier.py): a key of only NUL read as empty was universal matching, answering everything.
FORMATTED_TEXT_VRS: Final = frozenset({"LT", "ST", "UT"})
_CONTROL: Final = r"\x00-\x1a\x1c-\x1f\x7f"
_UNFORMATTED_CONTROL: Final = r"\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f"
_CONTROL_TEXT: Final = re.compile(f"[{_CONTROL}]")
_CONTROL_BYTES: Final = re.compile(f"[{_CONTROL}]".encode("ascii"))
_FORMATTED_CONTROL_TEXT: Final = re.compile(f"[{_UNFORMATTED_CONTROL}]")
_FORMATTED_CONTROL_BYTES: Final = re.compile(f"[{_UNFORMATTED_CONTROL}]".encode("ascii"))


def control_character(value: str | bytes, vr: str) -> str | None:
    """The first control character ``value`` (of VR ``vr``) may not hold (PS3.5 6.1.2-6.1.3), or None.

    ``value`` may be the text, or the raw bytes of any character set DICOM uses (these control codes
    never occur inside one of their multi-byte characters). Padding is the caller's to remove: a UID's
    trailing NUL (PS3.5 9.1) is one here."""
    if isinstance(value, bytes):
        found_bytes = (_FORMATTED_CONTROL_BYTES if vr in FORMATTED_TEXT_VRS else _CONTROL_BYTES).search(value)
        return None if found_bytes is None else chr(found_bytes.group()[0])
    found = (_FORMATTED_CONTROL_TEXT if vr in FORMATTED_TEXT_VRS else _CONTROL_TEXT).search(value)
    return None if found is None else found.group()


__all__ = [
    "FORMATTED_TEXT_VRS",
    "PLACEHOLDER_TEXT",
    "PLACEHOLDER_VALUES",
    "TEXT_VRS",
    "WORD_VR_FORMATS",
    "ALL_VRS",
    "ASCII_VRS",
    "BINARY_VRS",
    "BYTE_ARRAY_VRS",
    "CHARSET_VRS",
    "DATE_TIME_VRS",
    "INT_VR_FORMATS",
    "LEADING_SPACES_KEPT_VRS",
    "LONG_LENGTH_VRS",
    "LONG_LENGTH_VR_BYTES",
    "STRING_VRS",
    "control_character",
]
