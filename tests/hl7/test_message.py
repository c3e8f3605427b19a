"""HL7 v2 parsing, escapes (HL7 v2.5 2.7) and MSH-18 character sets (Table 0211): hl7/message.py."""

from __future__ import annotations

import pytest

from minipacs.hl7.errors import HL7Error
from minipacs.hl7.message import (
    CHARSETS,
    Encoding,
    declared_charset,
    escape,
    parse,
    parse_bytes,
    unescape,
)
from tests.hl7.samples import NAME, orm, with_msh18

_msh18 = with_msh18


# ------------------------------------------------------------------ escapes and parsing

ESCAPES = [  # HL7 v2.5 2.7.1 .. 2.7.4
    ("a\\F\\b", "a|b"),
    ("a\\S\\b", "a^b"),
    ("a\\T\\b", "a&b"),
    ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"),
    ("\\X4D\\\\X75\\ller", "Muller"),
    ("M\\XC3BC\\ller", "Müller"),
    ("M\\XFC\\ller", "Müller"),  # not UTF-8: Latin-1
    ("line\\.br\\two", "line\ntwo"),
    ("\\H\\bold\\N\\", "bold"),  # highlighting dropped: its backslashes would split a DICOM value
    ("a\\.sp\\b\\.sp 2\\c", "a\nb\nc"),  # skip lines: a line break
    ("a\\.in 4\\b\\.ce\\c\\.fi\\", "abc"),  # other formatting dropped
    ("a\\Zlocal\\b", "ab"),  # locally defined
    ("a\\C2842\\b\\M2442\\", "ab"),  # character set switches (the bytes were read per MSH-18)
    ("a\\Q\\b", "a\\Q\\b"),  # not an HL7 escape: kept as sent
    ("lone \\ escape", "lone \\ escape"),
]


@pytest.mark.parametrize(("raw", "text"), ESCAPES)
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw) == text


def test_escape_round_trips_delimiters() -> None:
    text = "a|b^c&d~e\\f"
    assert escape(text) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert unescape(escape(text)) == text
    enc = Encoding("#", "!", "$", "?", "%")
    assert unescape(escape(text + "#!$?%", enc), enc) == text + "#!$?%"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators_cr_lf_crlf(sep: str) -> None:
    message = parse(orm(sep=sep))
    assert [s.name for s in message.segments] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]
    assert message.message_type == ("ORM", "O01") and message.control_id == "CTLACC100"


def test_msh_fields_are_numbered_from_msh1() -> None:
    message = parse(orm())
    msh = message.first("MSH")
    assert message.value(msh, 1) == "|" and message.value(msh, 2) == "^~\\&"
    assert message.value(msh, 3) == "RIS" and message.value(msh, 12) == "2.3.1"


def test_repetitions_components_and_null() -> None:
    message = parse('MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rPID|||ID1^^^H1~ID2^^^H2||""\r')
    pid = message.first("PID")
    assert message.value(pid, 3) == "ID1" and message.value(pid, 3, 4, repetition=1) == "H2"
    assert message.value(pid, 5) == "" and message.value(pid, 40) == ""


BROKEN = [  # (text, MSA code, words in the reason)
    ("", "AR", "empty"),
    ("PID|||1\r", "AR", "MSH"),
    ("\x00\x01garbage\xff", "AR", "MSH"),
    ("MSH|ab|x\r", "AR", "encoding characters"),
    ("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rthis is not a segment\r", "AR", "not an HL7 segment"),
    ("MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rMSH|^~\\&|A\r", "AR", "second MSH"),
]


@pytest.mark.parametrize(("text", "code", "words"), BROKEN)
def test_unparseable_messages_are_rejected_with_a_reason(text: str, code: str, words: str) -> None:
    with pytest.raises(HL7Error, match=words) as info:
        parse(text)
    assert info.value.ack_code == code


@pytest.mark.parametrize(
    ("msh18", "payload", "code", "words"),
    [
        ("UNICODE UTF-16", NAME.encode("latin-1"), 103, "not supported"),
        ("BIG-5", NAME.encode("latin-1"), 103, "not supported"),
        ("UNICODE UTF-8", NAME.encode("latin-1"), 102, "byte 0xFC at offset"),
        ("ASCII", NAME.encode("utf-8"), 102, "not valid ASCII"),
    ],
)
def test_msh18_unsupported_or_not_matching_the_bytes_is_rejected(
    msh18: str, payload: bytes, code: int, words: str
) -> None:
    data = _msh18(orm(name="@NAME@"), msh18).encode("ascii").replace(b"@NAME@", payload)
    with pytest.raises(HL7Error, match=words) as info:
        parse_bytes(data)
    assert (info.value.ack_code, info.value.error_code, info.value.location) == ("AR", code, "MSH-18")


@pytest.mark.parametrize("code", sorted(CHARSETS))
def test_msh18_is_read_from_the_raw_bytes(code: str) -> None:
    data = _msh18(orm(), code).encode("ascii")
    assert declared_charset(data) == code and parse_bytes(data).charset == CHARSETS[code]


def test_gb18030_bytes_that_look_like_separators_are_read_as_the_characters_they_are_part_of() -> None:
    """GB18030's second bytes run from 0x40 to 0xFE: 乗 is 81 5C, 乛 81 5E, 亅 81 7C, 亊 81 7E, which are
    the escape, component, field and repetition characters as single bytes. The message is decoded per
    MSH-18 before it is split, so the name stays whole."""
    name = "乗乛^亅亊"
    data = with_msh18(orm(name=name), "GB 18030-2000").encode("gb18030")
    assert b"\x81|" in data and b"\x81\\" in data  # the separators' bytes are there
    message = parse_bytes(data)
    assert message.raw(message.first("PID"), 5) == name
