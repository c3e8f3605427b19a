"""MSH-18 found when the bytes before it are not ASCII (HL7 v2.5 2.15.9.18, Table 0211; hl7/message.py
``declared_charset``), through the real MLLP listener.

MSH-18 is found by splitting the MSH bytes on the field separator before anything is decoded. In
GB 18030 the second byte of a two-byte character runs 0x40 .. 0xFE, so a sending facility in Chinese
may hold the bytes of '|' (亅 81 7C), '^' (乛 81 5E), '~' (亊 81 7E) or the escape character (乗 81 5C)
inside one character: a '|' there shifted every later field by one, MSH-18 was not found, and the
message was read as ISO 8859-1 (the Chinese name arrived as mojibake) or refused. Now the MSH segment
is read again in each multi-byte set, and the set whose reading's MSH-18 names itself is taken; when no
reading is consistent the message is refused (AR, ERR-3 103 at MSH-18), never guessed. '&' cannot occur:
0x26 is no GB 18030 second byte.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minipacs.core.worklist import Worklist
from minipacs.hl7.message import Message, declared_charset, parse
from minipacs.hl7.mllp import MLLPServer, frame
from tests.hl7.samples import OMG, orm, with_msh18
from tests.hl7.test_mllp import msa, read_ack, serve

CHINESE_NAME = "王^小明"


def with_facility(text: str, facility: str) -> str:
    """``text`` with MSH-4 Sending Facility ``facility`` (the samples send HOSP)."""
    return text.replace("|RIS|HOSP|", f"|RIS|{facility}|", 1)


def with_msh(text: str, fields: dict[int, str]) -> str:
    """``text`` with MSH-n set for each n of ``fields`` (the MSH segment padded as needed)."""
    msh, rest = text.split("\r", 1)
    parts = msh.split("|")  # parts[n - 1] is MSH-n
    parts += [""] * (max(fields) - len(parts))
    for number, value in fields.items():
        parts[number - 1] = value
    return "|".join(parts) + "\r" + rest


async def exchange(server: MLLPServer, data: bytes, codec: str) -> Message:
    """Send ``data`` framed; the ACK read in ``codec`` (the charset it comes in)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(frame(data))
        answer = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
        return parse(answer[1:-2].decode(codec))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("character", "separator"),
    [("亅", b"|"), ("乛", b"^"), ("亊", b"~"), ("乗", b"\\")],
    ids=["field", "component", "repetition", "escape"],
)
@pytest.mark.parametrize("msh18", ["GB 18030-2000", "GB 18030-2000~UNICODE UTF-8"], ids=["one", "repeated"])
def test_gb18030_facility_with_separator_bytes_is_read_in_gb18030(
    tmp_path: Path, character: str, separator: bytes, msh18: str
) -> None:
    facility = f"北京{character}医院"
    data = with_msh18(with_facility(orm(name=CHINESE_NAME), facility), msh18).encode("gb18030")
    assert b"\x81" + separator in data.split(b"\r")[0]  # the separator's byte is inside MSH-4
    assert declared_charset(data) == "GB 18030-2000"  # the first repetition governs

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        ack = await exchange(server, data, "gb18030")  # the ACK comes in GB 18030, saying so
        assert msa(ack)[:2] == ("AA", "CTLACC100"), msa(ack)
        msh = ack.first("MSH")
        assert (ack.value(msh, 6), ack.raw(msh, 18)) == (facility, msh18)  # receiving facility: the sender's
        [entry] = await worklist.by_accession("ACC100")
        assert str(entry.dataset.PatientName) == CHINESE_NAME
        assert entry.dataset.SpecificCharacterSet == "GB18030"

    serve(tmp_path, body)


def test_no_gb18030_character_holds_the_subcomponent_byte() -> None:
    """0x26 '&' is outside GB 18030's second-byte ranges (0x40 .. 0x7E, 0x80 .. 0xFE; 0x30 .. 0x39 in a
    four-byte character): the subcomponent separator cannot hide inside a character."""
    assert not any(_decodes(bytes([lead, 0x26])) for lead in range(0x81, 0xFF))
    assert all(_decodes(bytes([0x81, trail])) for trail in (0x7C, 0x5E, 0x7E, 0x5C))


def _decodes(data: bytes) -> bool:
    try:
        data.decode("gb18030")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("msh18", "codec", "dicom"),
    [
        ("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
        ("8859/1", "latin-1", "ISO_IR 100"),
        ("UNICODE UTF-8~8859/1", "utf-8", "ISO_IR 192"),  # the first repetition governs
        ("8859/1~UNICODE UTF-8", "latin-1", "ISO_IR 100"),
        ("", "utf-8", "ISO_IR 192"),  # none declared: UTF-8 when the bytes are UTF-8
        ("", "latin-1", "ISO_IR 100"),  # ... else ISO 8859-1
    ],
)
def test_single_byte_and_utf8_sets_with_a_non_ascii_facility(
    tmp_path: Path, msh18: str, codec: str, dicom: str
) -> None:
    name, facility = "Müller^Jürgen", "Hôpital Saint-Éloi"
    text = with_facility(orm(name=name), facility)
    data = (with_msh18(text, msh18) if msh18 else text).encode(codec)

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        ack = await exchange(server, data, codec if msh18 else "utf-8")  # no MSH-18: the ACK in UTF-8
        assert msa(ack)[:2] == ("AA", "CTLACC100"), msa(ack)
        assert ack.value(ack.first("MSH"), 6) == facility
        [entry] = await worklist.by_accession("ACC100")
        assert (str(entry.dataset.PatientName), entry.dataset.SpecificCharacterSet) == (name, dicom)

    serve(tmp_path, body)


@pytest.mark.parametrize(
    "fields",
    [
        # the raw split's MSH-18 is MSH-17 (GB 18030); read in GB 18030, MSH-18 says 8859/1
        {17: "GB 18030-2000", 18: "8859/1"},
        # the raw split's MSH-18 is MSH-17 (GB 18030); read in GB 18030, there is no MSH-18
        {17: "GB 18030-2000"},
        # read in GB 18030, MSH-18 says GB 18030 ... but so the raw split says UTF-8, in which the bytes are invalid
        {17: "UNICODE UTF-8", 18: "UNICODE UTF-8"},
    ],
    ids=["says-another", "says-nothing", "gb-bytes-declared-utf8"],
)
def test_an_msh18_no_reading_agrees_with_is_refused(tmp_path: Path, fields: dict[int, str]) -> None:
    data = with_msh(with_facility(orm(name=CHINESE_NAME), "亅院"), fields).encode("gb18030")

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        ack = await exchange(server, data, "utf-8")
        code, _, text = msa(ack)
        err = ack.first("ERR")
        assert code == "AR" and err is not None, msa(ack)
        if fields.get(18) == "UNICODE UTF-8":  # the set named, the bytes do not fit it: as before
            assert "is not valid UNICODE UTF-8" in text and ack.value(err, 3) == "102", text
        else:
            assert text.startswith("the character set of the message could not be determined"), text
            assert ack.value(err, 3) == "103"
        assert (ack.value(err, 2), ack.value(err, 2, 3)) == ("MSH", "18")
        assert await worklist.list() == []
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # the listener serves on
        writer.write(frame(OMG))
        assert msa(await read_ack(reader))[0] == "AA"
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body)


def test_iso_2022_code_switching_is_refused_not_read_as_garbage(tmp_path: Path) -> None:
    """HL7 v2.5 2.15.9.18 / 2.15.9.20: MSH-18 repeated with MSH-20 'ISO 2022-1994' means ESC sequences switch
    sets inside the message (Japanese: ESC $ B to JIS X 0208). minipacs reads one set: AR 103 at MSH-20."""
    name = "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
    text = with_msh(orm(name=name), {18: "ASCII~ISO IR87", 20: "ISO 2022-1994"})

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        ack = await exchange(server, text.encode("ascii"), "ascii")
        code, control, reason = msa(ack)
        assert (code, control) == ("AR", "CTLACC100") and "ISO 2022 code switching" in reason, reason
        err = ack.first("ERR")
        assert (ack.value(err, 2), ack.value(err, 2, 3), ack.value(err, 3)) == ("MSH", "20", "103")
        assert await worklist.list() == []

    serve(tmp_path, body)
