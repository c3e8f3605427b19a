"""dicom/values.py: character sets (PS3.5 §6.1), DA/TM/DT (PS3.5 Table 6.2-1), PN."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from minipacs.dicom.values import (
    as_date,
    as_time,
    codecs_for,
    datetime_bound,
    datetime_utc_bound,
    decode_text,
    normalise_name,
    time_bound,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240131", dt.date(2024, 1, 31)),
        ("2024.01.31", dt.date(2024, 1, 31)),
        ("20240230", None),
        ("2024013", None),
        ("", None),
        ("abcdefgh", None),
        ("２０２４０１３１", None),
        ("2024..0131", None),  # the ACR-NEMA form has its dots at 5 and 8
    ],
)
def test_as_date(text: str, expected: dt.date | None) -> None:
    assert as_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", dt.time(10)),
        ("1015", dt.time(10, 15)),
        ("101530", dt.time(10, 15, 30)),
        ("101530.25", dt.time(10, 15, 30, 250000)),
        ("10:15:30", dt.time(10, 15, 30)),
        ("235960", dt.time(23, 59, 59)),
        ("2515", None),
        ("1", None),
        ("101530.1234567", None),
        ("ab", None),
        # the two copies disagreed: as_time read seconds 61-99 as :59, time_bound refused them;
        # PS3.5 Table 6.2-1 allows SS 00-60.
        ("101561", None),
        ("106000", None),
        ("240000", None),
    ],
)
def test_as_time(text: str, expected: dt.time | None) -> None:
    assert as_time(text) == expected
    assert time_bound(text, False) == expected


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("20240131", True),
        ("2024.01.31", False),  # ACR-NEMA form: read when stored, not accepted where we validate
        ("20240230", False),
        ("２０２４０１３１", False),  # core/mpps.py's regex took any Unicode digit
    ],
)
def test_strict_date(text: str, ok: bool) -> None:
    assert (as_date(text, strict=True) is not None) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10", True),
        ("1015", True),
        ("101530", True),
        ("101560", True),
        ("101530.123456", True),
        ("10:15:30", False),
        ("10.5", False),  # PS3.5 Table 6.2-1: a fraction only after SS
        ("1015.5", False),
        ("101530.", False),
        ("101530.1234567", False),
        ("１０１５", False),
    ],
)
def test_strict_time(text: str, ok: bool) -> None:
    assert (as_time(text, strict=True) is not None) is ok


def test_bounds() -> None:
    assert time_bound("10", True) == dt.time(10, 59, 59, 999999)
    assert time_bound("1015", False) == dt.time(10, 15)
    assert time_bound("101530.5", True) == dt.time(10, 15, 30, 599999)
    assert datetime_bound("202402", True) == dt.datetime(2024, 2, 29, 23, 59, 59, 999999)
    assert datetime_bound("2024", False) == dt.datetime(2024, 1, 1)
    assert datetime_bound("2024x", False) is None
    # the last day, month and year of the calendar end where it ends (they raised OverflowError)
    end = dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert datetime_bound("99991231", True) == datetime_bound("999912", True) == datetime_bound("9999", True) == end
    assert datetime_bound("202312", True) == dt.datetime(2023, 12, 31, 23, 59, 59, 999999)
    assert datetime_bound("２０２４", False) is None


def test_datetime_utc_bound_counts_the_offset() -> None:
    """PS3.4 C.2.2.2.5.3 d: a DT names a moment; its offset from UTC moves it."""
    assert datetime_utc_bound("20240105101010+0100", False) == dt.datetime(2024, 1, 5, 9, 10, 10)
    assert datetime_utc_bound("20240105101010-0530", False) == dt.datetime(2024, 1, 5, 15, 40, 10)
    assert datetime_utc_bound("20240105+0100", True) == dt.datetime(2024, 1, 5, 22, 59, 59, 999999)
    assert datetime_utc_bound("00010101+0100", False) == dt.datetime(1, 1, 1)  # kept at the limit
    assert datetime_utc_bound("99991231+0000", True) == dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert datetime_utc_bound("2024x", False) is None


def test_datetime_utc_bound_takes_a_value_without_offset_as_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Etc/GMT-2")  # POSIX sign: two hours east of UTC
    time.tzset()
    try:
        assert datetime_utc_bound("20240105101010", False) == dt.datetime(2024, 1, 5, 8, 10, 10)
        assert datetime_utc_bound("20240105101010+0200", False) == dt.datetime(2024, 1, 5, 8, 10, 10)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_normalise_name() -> None:
    assert normalise_name("Müller^Jürgen") == normalise_name("MÜLLER^JÜRGEN") == "müller^jürgen"
    assert normalise_name("STRASSE") == normalise_name("straße")


def test_decode_text_padding_per_vr() -> None:
    codecs = codecs_for("")
    assert decode_text(b"  Doe^John ", "PN", codecs) == "Doe^John"
    assert decode_text(b"  indented text ", "LT", codecs) == "  indented text"
    assert decode_text(b"1.2.3\x00", "UI", codecs) == "1.2.3"
    # PS3.5 §9.1: only a trailing NUL pads a UID; one inside stays for validation to refuse
    assert decode_text(b"1.2\x003\x00", "UI", codecs) == "1.2\x003"
    assert decode_text(b"CT\x00\x00", "CS", codecs) == "CT"


def test_decode_text_character_sets() -> None:
    assert decode_text("Müller".encode("latin-1"), "PN", codecs_for("ISO_IR 100")) == "Müller"
    assert decode_text("Müller".encode(), "LO", codecs_for("ISO_IR 192")) == "Müller"
    # CS is default repertoire: the character set does not apply
    assert decode_text("Ü".encode("latin-1"), "CS", codecs_for("ISO_IR 100")) == "\ufffd"
    # PS3.5 §6.1.2.5.3 / Annex H: ISO 2022 escapes, reset at each '=' of a PN
    raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
    assert decode_text(raw, "PN", codecs_for("\\ISO 2022 IR 87")) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert codecs_for("UNKNOWN") == codecs_for("")


#: Each single-byte Defined Term of PS3.3 Table C.12-2 (and GB18030/GBK, Table C.12-5) with a name in
#: its repertoire and the Python codec that writes the bytes the test feeds in.
SINGLE_BYTE_AND_STAND_ALONE = [
    ("ISO_IR 100", "Müller^Jürgen", "latin-1"),
    ("ISO_IR 101", "Dvořák^Šárka", "iso8859_2"),
    ("ISO_IR 109", "Ġużeppi^Ħabib", "iso8859_3"),
    ("ISO_IR 110", "Šķēle^Ģirts", "iso8859_4"),
    ("ISO_IR 144", "Иванов^Пётр", "iso8859_5"),
    ("ISO_IR 127", "قباني^نزار", "iso8859_6"),
    ("ISO_IR 126", "Διονυσιος", "iso8859_7"),
    ("ISO_IR 138", "כהן^דוד", "iso8859_8"),
    ("ISO_IR 148", "Çağlar^Şükrü", "iso8859_9"),
    ("ISO_IR 203", "Œuvray^Zoë €", "iso8859_15"),
    ("ISO_IR 166", "สมชาย^ใจดี", "tis_620"),
    ("ISO_IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ", "shift_jis"),
    ("GB18030", "张三^李四", "gb18030"),
    ("GBK", "王五^赵六", "gbk"),
    ("ISO_IR 192", "Ωμέγα^Œuvray 张三", "utf-8"),
]


@pytest.mark.parametrize(("charset", "name", "codec"), SINGLE_BYTE_AND_STAND_ALONE)
def test_every_single_byte_and_stand_alone_character_set_is_read(charset: str, name: str, codec: str) -> None:
    """PS3.3 C.12.1.1.2: the value in that set's bytes reads back as the name (Latin-9, ISO_IR 203, is
    not in pydicom 3.0's table: without ours it read as Latin-1, "€" as "¤")."""
    assert decode_text(name.encode(codec), "PN", codecs_for(charset)) == name


def test_latin_9_under_iso_2022_code_extensions() -> None:
    """PS3.3 Table C.12-3: ISO 2022 IR 203 is designated to G1 by ESC 02/13 06/02; pydicom reads and
    writes it once values.py has taught it the term."""
    raw = b"JANE^DOE=\x1b-b\xbcdipe\xa4"
    assert decode_text(raw, "PN", codecs_for("ISO 2022 IR 6\\ISO 2022 IR 203")) == "JANE^DOE=Œdipe€"
    assert b"\x1b-b\xbcuvray^Zo\xeb" in _pn_as_pydicom_writes_it(["ISO 2022 IR 6", "ISO 2022 IR 203"], "Œuvray^Zoë")


def test_gb2312_under_iso_2022_code_extensions_as_in_ps3_5_annex_k() -> None:
    """PS3.5 K.2 (Example 1): GB2312 designated to G1 by ESC 02/04 02/09 04/01 after each delimiter.
    pydicom 3.0 left the escape sequence in the text it read and wrote none."""
    raw = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab="
    assert decode_text(raw, "PN", codecs_for("\\ISO 2022 IR 58")) == "Zhang^XiaoDong=张^小东="
    assert raw[:-1] in _pn_as_pydicom_writes_it(["", "ISO 2022 IR 58"], "Zhang^XiaoDong=张^小东")


def _pn_as_pydicom_writes_it(charset: list[str], name: str) -> bytes:
    """A data set of Specific Character Set ``charset`` and Patient Name ``name``, explicit VR LE."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "raw",
    [b"Yamada=\x1b$ZAB", b"\x1b", b"ab\x1b(", b"Yamada=\x1b$B\xff\xfe\x1b(B"],
)
def test_a_broken_iso_2022_escape_is_read_not_raised(raw: bytes) -> None:
    """PS3.5 §6.1.2.5: an unknown or truncated escape sequence, or bytes the designated set cannot
    decode, in a value under ISO 2022 code extensions: pydicom warns, an exception where warnings are
    errors (as here), which made ingest fail; the text is read in the first character set instead."""
    text = decode_text(raw, "PN", codecs_for("\\ISO 2022 IR 87"))
    assert text.startswith(raw[:2].decode("latin-1").strip("\x1b"))
