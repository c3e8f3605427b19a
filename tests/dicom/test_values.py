"""dicom/values.py: character sets (PS3.5 §6.1), DA/TM/DT (PS3.5 Table 6.2-1), PN."""

from __future__ import annotations

import datetime as dt
import time
import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from minipacs.dicom.values import (
    as_date,
    as_time,
    can_encode,
    codecs_for,
    datetime_bound,
    datetime_utc_bound,
    decode_text,
    encode_text,
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


def _hex(text: str) -> bytes:
    """Bytes written as PS3.5 writes them in Annexes H-K: "05/09 06/01" (column/row) or "0x59 0x61"."""
    parts = text.split()
    if "/" in parts[0]:
        return bytes(int(high) * 16 + int(low) for high, low in (part.split("/") for part in parts))
    return bytes(int(part, 16) for part in parts)


_J_TEXT = "The first line includes中文.\r\nThe second line includes中文, too.\r\nThe third line.\r\n"
_J_ASCII = (
    "0x54 0x68 0x65 0x20 0x66 0x69 0x72 0x73 0x74 0x20 0x6c 0x69 0x6e 0x65 0x20 0x69 0x6e 0x63 0x6c 0x75 0x64 0x65"
    " 0x73 {zhongwen} 0x2e 0x0d 0x0a 0x54 0x68 0x65 0x20 0x73 0x65 0x63 0x6f 0x6e 0x64 0x20 0x6c 0x69 0x6e 0x65 0x20"
    " 0x69 0x6e 0x63 0x6c 0x75 0x64 0x65 0x73 {zhongwen} 0x2c 0x20 0x74 0x6f 0x6f 0x2e 0x0d 0x0a 0x54 0x68 0x65 0x20"
    " 0x74 0x68 0x69 0x72 0x64 0x20 0x6c 0x69 0x6e 0x65 0x2e 0x0d 0x0a"
)

#: The examples of PS3.5 Annexes H, I, J and K: (example, Specific Character Set, VR, text, encoded
#: representation as the standard prints it, without the trailing padding of K.2).
PS3_5_EXAMPLES = [
    (
        "H.3-1",
        "\\ISO 2022 IR 87",
        "PN",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "05/09 06/01 06/13 06/01 06/04 06/01 05/14 05/04 06/01 07/02 06/15 07/05 03/13 01/11 02/04 04/02 03/11 03/03"
        " 04/05 04/04 01/11 02/08 04/02 05/14 01/11 02/04 04/02 04/02 04/00 04/15 03/10 01/11 02/08 04/02 03/13 01/11"
        " 02/04 04/02 02/04 06/04 02/04 05/14 02/04 04/00 01/11 02/08 04/02 05/14 01/11 02/04 04/02 02/04 03/15 02/04"
        " 06/13 02/04 02/06 01/11 02/08 04/02",
    ),
    (
        "H.3-2",
        "ISO 2022 IR 13\\ISO 2022 IR 87",
        "PN",
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        "13/04 12/15 12/00 13/14 05/14 12/00 13/11 11/03 03/13 01/11 02/04 04/02 03/11 03/03 04/05 04/04 01/11 02/08"
        " 04/10 05/14 01/11 02/04 04/02 04/02 04/00 04/15 03/10 01/11 02/08 04/10 03/13 01/11 02/04 04/02 02/04 06/04"
        " 02/04 05/14 02/04 04/00 01/11 02/08 04/10 05/14 01/11 02/04 04/02 02/04 03/15 02/04 06/13 02/04 02/06 01/11"
        " 02/08 04/10",
    ),
    (
        "I.2-1",
        "\\ISO 2022 IR 149",
        "PN",
        "Hong^Gildong=洪^吉洞=홍^길동",
        "04/08 06/15 06/14 06/07 05/14 04/07 06/09 06/12 06/04 06/15 06/14 06/07 03/13 01/11 02/04 02/09 04/03 15/11"
        " 15/03 05/14 01/11 02/04 02/09 04/03 13/01 12/14 13/04 13/07 03/13 01/11 02/04 02/09 04/03 12/08 10/11 05/14"
        " 01/11 02/04 02/09 04/03 11/01 14/06 11/05 11/15",
    ),
    (
        "J.2-1",
        "ISO_IR 192",
        "LT",
        _J_TEXT,
        _J_ASCII.format(zhongwen="0xe4 0xb8 0xad 0xe6 0x96 0x87"),
    ),
    (
        "J.3-1",
        "GB18030",
        "PN",
        "Wang^XiaoDong=王^小东=",
        "0x57 0x61 0x6e 0x67 0x5e 0x58 0x69 0x61 0x6f 0x44 0x6f 0x6e 0x67 0x3d 0xcd 0xf5 0x5e 0xd0 0xa1 0xb6 0xab 0x3d",
    ),
    ("J.4-1", "GB18030", "LT", _J_TEXT, _J_ASCII.format(zhongwen="0xd6 0xd0 0xce 0xc4")),
    (
        "K.2-1",
        "\\ISO 2022 IR 58",
        "PN",
        "Zhang^XiaoDong=张^小东=",
        "0x5A 0x68 0x61 0x6E 0x67 0x5E 0x58 0x69 0x61 0x6F 0x44 0x6F 0x6E 0x67 0x3D 0x1B 0x24 0x29 0x41 0xD5 0xC5 0x5E"
        " 0x1B 0x24 0x29 0x41 0xD0 0xA1 0xB6 0xAB 0x3D",
    ),
    (
        "K.3-1",
        "\\ISO 2022 IR 58",
        "LT",
        "1.第一行文字。\r\n2.第二行文字。\r\n3.第三行文字。\r\n",
        "0x31 0x2e 0x1B 0x24 0x29 0x41 0xB5 0xDA 0xD2 0xBB 0xD0 0xD0 0xCE 0xC4 0xD7 0xD6 0xA1 0xA3 0x0D 0x0A"
        " 0x32 0x2e 0x1B 0x24 0x29 0x41 0xB5 0xDA 0xB6 0xFE 0xD0 0xD0 0xCE 0xC4 0xD7 0xD6 0xA1 0xA3 0x0D 0x0A"
        " 0x33 0x2e 0x1B 0x24 0x29 0x41 0xB5 0xDA 0xC8 0xFD 0xD0 0xD0 0xCE 0xC4 0xD7 0xD6 0xA1 0xA3 0x0D 0x0A",
    ),
]


@pytest.mark.parametrize(
    ("example", "charset", "vr", "text", "encoded"), PS3_5_EXAMPLES, ids=[e[0] for e in PS3_5_EXAMPLES]
)
def test_the_ps3_5_examples_are_written_and_read_byte_for_byte(
    example: str, charset: str, vr: str, text: str, encoded: str
) -> None:
    """PS3.5 Annexes H, I, J, K: the text is written as the standard's bytes (escape sequences, the
    return to value 1's G0 before each delimiter, a new G1 designation in each name component and
    after each CR LF: PS3.5 6.1.2.5.3) and those bytes read back as the text."""
    raw = _hex(encoded)
    assert encode_text(text, vr, charset) == raw
    assert decode_text(raw, vr, codecs_for(charset)) == text


#: A name in the repertoire of each ISO 2022 Defined Term (PS3.3 Tables C.12-3 and C.12-4).
ISO_2022_NAMES = [
    ("ISO 2022 IR 100", "Müller^Jürgen"),
    ("ISO 2022 IR 101", "Dvořák^Šárka"),
    ("ISO 2022 IR 109", "Ġużeppi^Ħabib"),
    ("ISO 2022 IR 110", "Šķēle^Ģirts"),
    ("ISO 2022 IR 144", "Иванов^Пётр"),
    ("ISO 2022 IR 127", "قباني^نزار"),
    ("ISO 2022 IR 126", "Διονυσιος"),
    ("ISO 2022 IR 138", "כהן^דוד"),
    ("ISO 2022 IR 148", "Çağlar^Şükrü"),
    ("ISO 2022 IR 203", "Œuvray^Zoë €"),
    ("ISO 2022 IR 166", "สมชาย^ใจดี"),
    ("ISO 2022 IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
    ("ISO 2022 IR 87", "山田^太郎=やまだ"),
    ("ISO 2022 IR 159", "丂^丄"),  # JIS X 0212 only: not in JIS X 0208
    ("ISO 2022 IR 149", "洪^吉洞=홍^길동"),
    ("ISO 2022 IR 58", "张^小东"),
]


@pytest.mark.parametrize(("term", "name"), ISO_2022_NAMES)
@pytest.mark.parametrize("first", ["", "ISO 2022 IR 6", "ISO 2022 IR 100"])
def test_every_iso_2022_term_is_written_so_that_we_and_pydicom_read_it_back(first: str, term: str, name: str) -> None:
    """Each Defined Term with code extensions, after an empty value 1, ISO 2022 IR 6 or ISO 2022 IR 100:
    the name written by encode_text reads back the same here and in pydicom, and under value 1 IR 6 no
    byte above 0x7F goes out without a G1 designation before it."""
    charset = f"{first}\\{term}" if term != first else first
    mixed = f"Doe^{name}" if first != "ISO 2022 IR 100" else f"Müller^{name}"
    raw = encode_text(mixed, "PN", charset)
    assert decode_text(raw, "PN", codecs_for(charset)) == mixed
    assert str(_pn_read_by_pydicom(charset, raw)) == mixed
    if first != "ISO 2022 IR 100":
        for component in raw.split(b"^"):
            high = next((i for i, byte in enumerate(component) if byte > 0x7F), None)
            assert high is None or b"\x1b" in component[:high], (component, raw)


def _pn_read_by_pydicom(charset: str, raw: bytes) -> object:
    ds = Dataset()
    ds.SpecificCharacterSet = charset.split("\\")
    padded = raw + b" " * (len(raw) % 2)
    ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(padded), padded, 0, False, True)
    return ds.PatientName


@pytest.mark.parametrize(
    ("charset", "text", "why"),
    [
        ("ISO_IR 13", "山田^太郎", "JIS X 0201 has no kanji (Python's Shift JIS codec writes them)"),
        ("ISO 2022 IR 13", "山田", "JIS X 0201 has no kanji"),
        ("ISO 2022 IR 6\\ISO 2022 IR 87", "ﾔﾏﾀﾞ", "JIS X 0208 has full-width katakana only"),
        ("ISO 2022 IR 6\\ISO 2022 IR 149", "똠", "EUC-KR writes it as an eight-byte make-up sequence"),
        ("ISO 2022 IR 6\\ISO 2022 IR 87", "Müller", "G0 ASCII and JIS X 0208: no ü"),
        ("", "Müller", "the default repertoire is ASCII"),
        ("ISO_IR 6", "Müller", "the default repertoire is ASCII"),
        ("ISO 2022 IR 6\\ISO 2022 IR 100", "a\x1bb", "an ESC would start an escape sequence"),
        ("ISO_IR 100", "€", "Latin-1 has no euro sign"),
    ],
)
def test_what_a_character_set_cannot_hold_is_refused_never_replaced(charset: str, text: str, why: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_text(text, "PN", charset)
    assert not can_encode([text], charset), why


def test_latin_letters_under_a_japanese_or_chinese_g1_are_designated_not_written_as_latin_1() -> None:
    """pydicom names Latin-1 for ISO 2022 IR 6 and wrote "José" under ``ISO 2022 IR 6\\ISO 2022 IR 58`` as
    Latin-1 bytes with no escape sequence; GB 2312 holds é (pinyin), designated to G1 like any other."""
    assert encode_text("José", "PN", "ISO 2022 IR 6\\ISO 2022 IR 58") == b"Jos\x1b$)A\xa8\xa6"
    assert encode_text("Müller", "PN", "ISO 2022 IR 6\\ISO 2022 IR 100") == b"M\x1b-A\xfcller"
    assert encode_text("Ünal^Ça", "PN", "ISO 2022 IR 6\\ISO 2022 IR 100") == b"\x1b-A\xdcnal^\x1b-A\xc7a"
    assert encode_text("Ünal^Ça", "PN", "ISO 2022 IR 100") == b"\xdcnal^\xc7a"  # value 1's G1 needs none


def test_a_term_we_do_not_know_holds_ascii_alone() -> None:
    assert can_encode(["Doe^John"], "ISO_IR 999")
    assert not can_encode(["Müller"], "ISO_IR 999")


@pytest.mark.parametrize(
    ("term", "text", "codec"),
    [
        ("ISO-IR 144", "Иванов^Пётр", "iso8859_5"),  # misspelled Defined Terms, as pydicom corrects them
        ("ISO IR 126", "Διονυσιος", "iso8859_7"),
        ("ISO 2022-IR 100", "Müller", "latin-1"),
        ("UTF-8", "Müller^Иванов", "utf-8"),  # a Python codec name: pydicom's fallback
        ("iso_ir 144", "Иванов", "iso8859_5"),
        ("latin1", "Müller", "latin-1"),
        ("ISO_IR 999", "Müller", "latin-1"),  # unknown: the default repertoire, high bytes as Latin-1
        ("iso_ir 192", "MÃ¼ller", "latin-1"),  # not a Python codec name either: read as pydicom reads it
    ],
)
def test_a_misspelled_or_unknown_term_is_read_as_pydicom_reads_it_for_the_metadata(
    term: str, text: str, codec: str
) -> None:
    """The index (dicom/header.py) and the query keys read (0008,0005) as the PS3.18 metadata, built by
    pydicom, does. "ISO-IR 144" was read as Latin-1 into the index and as Cyrillic into the metadata:
    QIDO and C-FIND answered "¸ÒÐÝÞÒ" while WADO-RS metadata said "Иванов", and a Cyrillic key found nothing."""
    raw = "Müller".encode() if term == "iso_ir 192" else text.encode(codec)
    assert decode_text(raw, "PN", codecs_for(term)) == text
    ds = Dataset()
    ds[0x00080005] = RawDataElement(Tag(0x00080005), "CS", len(term), term.encode(), 0, False, True)
    padded = raw + b" " * (len(raw) % 2)
    ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(padded), padded, 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the term it corrects
        assert str(ds.PatientName) == text


@pytest.mark.parametrize("term", ["utf-16", "utf-32", "utf-7", "rot13", "base64", "idna", "hex", "unicode_escape"])
def test_a_codec_name_that_would_change_ascii_or_refuse_bytes_is_read_as_the_default(term: str) -> None:
    """Python codecs that turn ASCII into other text (UTF-16), are no text encodings (rot13, base64: a
    LookupError when decoding) or refuse errors="replace" (IDNA): the default repertoire instead, so a
    hostile (0008,0005) can neither garble the ASCII values nor make ingest raise."""
    assert codecs_for(term) == codecs_for("")
    assert decode_text(b"Doe^John\xfc", "PN", codecs_for(term)) == "Doe^Johnü"


def test_bytes_invalid_in_the_declared_set_read_as_replacement_characters() -> None:
    """The choice for a value whose bytes the declared set cannot decode (Latin-1 bytes under ISO_IR 192,
    a lone GB18030 lead byte): U+FFFD where they stand, the rest as declared, nothing raised, so the
    instance is stored as sent and indexed (pydicom's metadata shows the same text)."""
    assert decode_text(b"M\xfcller^J\xfcrgen", "PN", codecs_for("ISO_IR 192")) == "M\ufffdller^J\ufffdrgen"
    assert decode_text(b"Wang=\xcd", "PN", codecs_for("GB18030")) == "Wang=\ufffd"
