"""Hostile HL7 over the real MLLP listener (hl7/mllp.py, hl7/message.py): every input gets a clear ACK
or a closed connection with a log line, and never holds up another sender.

- A run of start blocks (<VT>) was cut one byte at a time, each with a log line: 64 KiB of them held
  the event loop (every HL7, DICOM and web connection of the process) for a second and wrote 65,536
  warnings. Now one cut per read, one line.
- A frame cut off by the end of its connection (no end block) was dropped without a word.
- An MSH that ends after MSH-2 was refused as "encoding characters not usable" (they were fine); an
  empty MSH-9 as "message type (empty)^ is not supported". Both now say what is missing (AR 101).
- Segment terminators LF and CRLF, and escape sequences at a field's end, are read (HL7 v2.5 2.7).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from minipacs.core.worklist import Worklist
from minipacs.hl7.message import Message
from minipacs.hl7.mllp import MLLPServer, frame
from tests.hl7.samples import OMG, orm
from tests.hl7.test_mllp import msa, read_ack, serve

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(server: MLLPServer) -> Streams:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def serves(server: MLLPServer) -> None:
    """Another sender, on a connection of its own, gets its order applied."""
    reader, writer = await connect(server)
    writer.write(frame(OMG))
    assert msa(await read_ack(reader))[:2] == ("AA", "CTL9")
    await close(writer)


def warnings_of(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_a_run_of_start_blocks_is_one_cut_not_one_per_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(b"\x0b" * 65536 + b"MSH|^~\\&|half a message" + frame(orm(accession="ACC1")))
        assert msa(await read_ack(reader))[:2] == ("AA", "CTLACC1")  # the last frame, whole, is answered
        await serves(server)
        assert [e.accession_number for e in await worklist.list()] == ["ACC1", "ACC9"]
        await close(writer)

    with caplog.at_level(logging.WARNING, logger="minipacs.hl7"):
        serve(tmp_path, body)
    dropped = warnings_of(caplog, "without their end block dropped")
    assert 1 <= len(dropped) <= 3, len(dropped)  # one per read of the flood (was one per byte)
    assert sum(int(line.split("byte(s) of ")[1].split(" frame")[0]) for line in dropped) == 65536


@pytest.mark.parametrize("ending", ["close", "idle"])
def test_a_frame_cut_off_by_the_end_of_its_connection_is_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """No end block, then the sender closes (or falls silent for idle_timeout): nothing is applied, the
    connection is closed, a line says how much was dropped, and another sender is served meanwhile."""
    text = orm(accession="ACC1").encode()

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(b"\x0b" + text)
        await writer.drain()
        await serves(server)  # the unfinished frame holds up no one
        if ending == "close":
            writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no ACK: there was no message
        await close(writer)
        assert [e.accession_number for e in await worklist.list()] == ["ACC9"]

    with caplog.at_level(logging.INFO, logger="minipacs.hl7"):
        serve(tmp_path, body, idle=0.5 if ending == "idle" else 30.0)
    [line] = warnings_of(caplog, "of a frame without its end block: dropped")
    assert f"with {len(text)} byte(s)" in line
    assert ("closed by the sender" if ending == "close" else "idle for 0.5s") in line


def test_oversized_frame_of_one_sender_does_not_disturb_another(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(b"\x0b" + orm(accession="ACC1").encode() + b"x" * 5000)  # over the limit, never ended
        await writer.drain()
        code, control, text = msa(await read_ack(reader))
        assert (code, control) == ("AR", "CTLACC1") and "hl7_max_message_bytes (2048 bytes)" in text
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await serves(server)
        await close(writer)

    serve(tmp_path, body, max_bytes=2048)


@pytest.mark.parametrize("terminator", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_segment_terminators(tmp_path: Path, terminator: str) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(frame(orm(sep=terminator)))
        assert msa(await read_ack(reader))[0] == "AA"
        [entry] = await worklist.by_accession("ACC100")
        assert entry.dataset.ScheduledProcedureStepSequence[0].Modality == "CT"  # OBR read whole
        await close(writer)

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Doe^John\\X41\\", "Doe^JohnA"),  # HL7 v2.5 2.7.3 hexadecimal
        ("Doe^John\\XC3A9\\", "Doe^John\u00e9"),
        ("Doe^John\\Zlocal\\", "Doe^John"),  # 2.7.5 locally defined: dropped
        ("Doe^John\\.br\\", "Doe^John"),  # 2.7.6 line break: a space, then trimmed
        ("Doe\\H\\^John\\N\\", "Doe^John"),  # 2.7.2 highlighting: dropped
        ("Doe^John\\", None),  # a lone escape character at the end: kept, and DICOM refuses it
        ("Doe^John\\X41", None),  # an escape never closed
        ("Doe^John\\X4\\", None),  # odd hex digits: not an escape
    ],
)
def test_escape_sequences_at_a_fields_end(tmp_path: Path, name: str, expected: str | None) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(frame(orm(name=name)))
        ack = await read_ack(reader)
        code, _, text = msa(ack)
        if expected is None:
            assert code == "AE" and "PID-5" in text and ack.value(ack.first("ERR"), 3) == "102", text
            assert await worklist.list() == []
        else:
            assert code == "AA", text
            [entry] = await worklist.by_accession("ACC100")
            assert str(entry.dataset.PatientName) == expected
        await close(writer)
        await serves(server)

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("payload", "control", "location", "words"),
    [
        (b"MSH|^~\\&\rPID|1||P1\r", "", "9", "the MSH segment ends after MSH-2"),
        (b"MSH|^~\\&", "", "9", "the MSH segment ends after MSH-2"),
        (b"MSH|^~\\&|", "", "9", "MSH-9 message type is empty"),
        (orm().replace("ORM^O01", "").encode(), "CTLACC100", "9", "MSH-9 message type is empty"),
        (orm().replace("ORM^O01", "^O01").encode(), "CTLACC100", "9", "MSH-9 message type is empty"),
        (orm().replace("|2.3.1", "|2.3.1|||||||ISO 2022-1994").encode(), "CTLACC100", "", None),  # MSH-20 alone
    ],
    ids=["msh2-then-segments", "msh2-alone", "msh9-absent", "msh9-empty", "msh9-only-event", "msh20-no-esc"],
)
def test_a_truncated_msh_is_refused_saying_what_is_missing(
    tmp_path: Path, payload: bytes, control: str, location: str, words: str | None
) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await connect(server)
        writer.write(b"\x0b" + payload + b"\x1c\x0d")
        ack: Message = await read_ack(reader)
        code, answered, text = msa(ack)
        if words is None:  # MSH-20 without any ESC in the message: nothing is switched, the order is taken
            assert code == "AA", text
        else:
            err = ack.first("ERR")
            assert (code, answered) == ("AR", control) and text.startswith(words), text
            assert (ack.value(err, 2, 3), ack.value(err, 3)) == (location, "101")
            assert await worklist.list() == []
        writer.write(frame(orm(accession="ACC2")))  # the connection serves on
        assert msa(await read_ack(reader))[:2] == ("AA", "CTLACC2")
        await close(writer)

    serve(tmp_path, body)
