"""dicom/vr.py: the VR families agree with PS3.5 as pydicom encodes it."""

from __future__ import annotations

from pydicom import valuerep

from minipacs.dicom import vr


def _names(vrs: set[valuerep.VR]) -> frozenset[str]:
    return frozenset(str(v.value) for v in vrs)


def test_long_length_vrs_are_table_7_1_1() -> None:
    assert vr.LONG_LENGTH_VRS == _names(valuerep.EXPLICIT_VR_LENGTH_32)
    assert {v.encode() for v in vr.LONG_LENGTH_VRS} == vr.LONG_LENGTH_VR_BYTES
    # the old core/part10.py copy lacked SV and UV (64-bit integers, PS3.5 2019 and later)
    assert {"SV", "UV"} <= vr.LONG_LENGTH_VRS


def test_character_set_families() -> None:
    assert vr.CHARSET_VRS == _names(valuerep.CUSTOMIZABLE_CHARSET_VR)
    assert vr.ASCII_VRS == _names(valuerep.DEFAULT_CHARSET_VR)
    assert vr.STRING_VRS == _names(valuerep.STR_VR)
    assert vr.LEADING_SPACES_KEPT_VRS <= vr.CHARSET_VRS


def test_binary_and_integer_families() -> None:
    assert vr.BINARY_VRS.isdisjoint(vr.STRING_VRS)
    assert set(vr.INT_VR_FORMATS) <= vr.BINARY_VRS
    assert vr.STRING_VRS | vr.BINARY_VRS | {"SQ"} == _names(valuerep.STANDARD_VR)
    assert vr.DATE_TIME_VRS <= vr.ASCII_VRS


def test_word_vrs_and_their_word_sizes() -> None:
    """PS3.5 Table 6.2-1: OW 16-bit words; OL, OF 32-bit; OD, OV 64-bit; every one a long-length binary VR."""
    import struct

    from minipacs.dicom.vr import BINARY_VRS, LONG_LENGTH_VRS, WORD_VR_FORMATS

    sizes = {vr: struct.calcsize("<" + code) for vr, code in WORD_VR_FORMATS.items()}
    assert sizes == {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
    assert set(WORD_VR_FORMATS) <= BINARY_VRS & LONG_LENGTH_VRS


# PS3.5 6.1.2-6.1.3: no text value holds NUL or a C0 control other than ESC (ISO 2022, 6.1.2.5), nor DEL;
# LT, ST and UT may also hold the format effectors TAB, LF, FF and CR.
FORMAT_EFFECTORS = {"\t", "\n", "\f", "\r"}


def test_control_characters_every_c0_code_and_del() -> None:
    for code in [*range(0x20), 0x7F]:
        char = chr(code)
        for kind in ("PN", "LO", "CS", "UI", "LT", "ST", "UT"):
            allowed = char == "\x1b" or (kind in {"LT", "ST", "UT"} and char in FORMAT_EFFECTORS)
            for value in (f"A{char}B", char):
                found = vr.control_character(value, kind)
                assert (found is None) == allowed, (kind, hex(code))
                assert found is None or found == char
                found_bytes = vr.control_character(value.encode("latin-1"), kind)
                assert (found_bytes is None) == allowed, (kind, hex(code), "bytes")
    assert vr.control_character("Müller^Jürgen", "PN") is None
    assert vr.control_character(" ~", "LO") is None  # printable ASCII at both ends of the range
