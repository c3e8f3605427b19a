"""Issue 8 item 15: control characters from HL7 escapes, and structural errors answered AR.

PS3.5 6.2: a string value may hold no control character but ESC (and LF, FF, CR, TAB in the
text VRs ST, LT, UT). None of the worklist attributes mapped from HL7 is a text VR, so line
formatting (``\\.br\\``) becomes a space and anything else (``\\X00\\``, ``\\X0B\\`` ...) refuses
the order with AE 102 naming the field. A message whose field separator is CR can never be
read, however often it is resent: AR with the reason, not "AE ... retry later".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.worklist import Worklist
from minipacs.hl7 import orders as hl7_orders
from minipacs.hl7.errors import HL7Error
from minipacs.hl7.message import Message, declared_charset, parse
from minipacs.hl7.orders import _groups, check_type, handle, to_dataset
from tests.hl7.samples import orm


def mapped(text: str) -> object:
    message = parse(text)
    check_type(message)
    patient, groups = _groups(message)
    return to_dataset(message, patient, groups[0])


def ack(data: bytes, tmp_path: Path) -> tuple[list[str], int]:
    """(ACK segments, worklist entries afterwards) of one message through the real handler."""

    async def main() -> tuple[list[str], int]:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            worklist = Worklist(archive)
            answer = (await handle(data, worklist)).decode("utf-8")
            return answer.rstrip("\r").split("\r"), len(await worklist.list())
        finally:
            await archive.close()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("escape", "code"),
    [
        ("\\X00\\", 0x00),
        ("\\X0B\\", 0x0B),
        ("\\X1B\\", 0x1B),
        ("\\X7F\\", 0x7F),
        ("\\X1C\\", 0x1C),
        ("\\XC285\\", 0x85),  # NEL, a C1 control, as UTF-8
    ],
)
def test_a_control_character_in_a_name_refuses_the_order(escape: str, code: int) -> None:
    with pytest.raises(HL7Error, match=f"PID-5 holds the control character U\\+{code:04X}") as caught:
        mapped(orm(name=f"Do{escape}e^John"))
    assert (caught.value.ack_code, caught.value.error_code, caught.value.location) == ("AE", 102, "PID-5")


def test_line_formatting_becomes_a_space_in_a_non_text_vr() -> None:
    ds = mapped(orm(obr4="X1^Knee\\.br\\ankle\\X09\\left\\X0D0A\\right^LOCAL"))
    assert ds.RequestedProcedureDescription == "Knee ankle left right"  # type: ignore[attr-defined]
    assert str(mapped(orm(name="Doe\\.br\\^John")).PatientName) == "Doe^John"  # type: ignore[attr-defined]


def test_printable_values_are_untouched_at_the_edges_of_the_ranges() -> None:
    ds = mapped(orm(name="Do\\X7E\\e^J\\XC2A0\\ohn"))  # '~' (0x7E) and NBSP (U+00A0) are printable
    assert str(ds.PatientName) == "Do~e^J\u00a0ohn"  # type: ignore[attr-defined]


def test_the_refusal_reaches_the_sender_and_changes_nothing(tmp_path: Path) -> None:
    segments, entries = ack(orm(name="Do\\X0B\\e^John").encode(), tmp_path)
    assert segments[1].startswith("MSA|AE|") and "U+000B" in segments[1]
    assert segments[2].startswith("ERR|PID^1^5^102&Data type error&HL70357|PID^1^5|102^")  # v2.3.1: ERR-1 too
    assert entries == 0


@pytest.mark.parametrize("separator", ["\r", "\n"])
def test_a_line_break_as_field_separator_is_ar_with_the_reason(tmp_path: Path, separator: str) -> None:
    text = orm().replace("|", separator)
    assert declared_charset(text.encode()) == ""  # used to raise ValueError (empty separator)
    with pytest.raises(HL7Error, match="MSH-1, the field separator, is a line break") as caught:
        parse(text)
    assert caught.value.ack_code == "AR"
    segments, entries = ack(text.encode(), tmp_path)
    assert segments[1].startswith("MSA|AR||MSH-1, the field separator, is a line break")
    assert "retry" not in "".join(segments)
    assert segments[2].startswith("ERR||MSH^1^1|102^")
    assert entries == 0


def test_any_parser_failure_is_ar_never_retry_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> Message:
        raise IndexError("a parser bug")

    monkeypatch.setattr(hl7_orders, "parse_bytes", broken)
    segments, _entries = ack(orm().encode(), tmp_path)
    assert segments[1].startswith("MSA|AR||the message cannot be parsed (IndexError: a parser bug)")
    assert "retry later" not in segments[1]
