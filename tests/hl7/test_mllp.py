"""The HL7 MLLP listener over real loopback sockets; and a running `minipacs serve` taking
an order over MLLP that DCMTK findscu -W then finds on the worklist."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.worklist import CANCELLED, Worklist
from minipacs.hl7.message import Message, parse
from minipacs.hl7.mllp import MLLPServer, frame
from minipacs.hl7.orders import OrderReceiver
from tests.hl7.samples import NAME, OMG, orm, with_msh18
from tests.peers import dcmtk, free_port, start_server, wait_for_port

T = TypeVar("T")
Body = Callable[[MLLPServer, Worklist], Awaitable[T]]


def serve(tmp: Path, body: Body[T], **options: float) -> T:
    async def main() -> T:
        archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
        worklist = Worklist(archive)
        server = MLLPServer(
            OrderReceiver(worklist),
            host="127.0.0.1",
            port=0,
            max_message_bytes=int(options.get("max_bytes", 1 << 20)),
            idle_timeout=options.get("idle", 30.0),
            max_connections=int(options.get("connections", 64)),
        )
        await server.start()
        try:
            return await body(server, worklist)
        finally:
            await server.close()
            await archive.close()

    return asyncio.run(main())


async def read_ack(reader: asyncio.StreamReader) -> Message:
    data = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
    assert data.startswith(b"\x0b")
    return parse(data[1:-2].decode("utf-8"))


def msa(ack: Message) -> tuple[str, str, str]:
    seg = ack.first("MSA")
    return ack.value(seg, 1), ack.value(seg, 2), ack.value(seg, 3)


def test_nw_ack_aa_entry_visible_then_ca(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(orm()))
        code, control, text = msa(await read_ack(reader))
        assert (code, control) == ("AA", "CTLACC100") and "ACC100 scheduled" in text
        [entry] = await worklist.by_accession("ACC100")
        assert entry.dataset.PatientID == "PAT1" and entry.status == "SCHEDULED"
        writer.write(frame(orm("CA")))  # same connection keeps serving
        assert msa(await read_ack(reader))[0] == "AA"
        assert [e.status for e in await worklist.by_accession("ACC100")] == [CANCELLED]
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body)


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"garbage that is not HL7", "AR", "MSH"),
        (orm(pid3="").encode(), "AE", "PID-3"),
        (orm().replace("ORM^O01", "ADT^A08").encode(), "AR", "not supported"),
        (b"MSH|^~\\&|A\rPID|||P\r\xff\xfe", "AR", "not an HL7 segment"),
    ],
)
def test_malformed_is_naked_with_reason_changes_nothing_and_connection_serves_on(
    tmp_path: Path, payload: bytes, code: str, words: str
) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x0b" + payload + b"\x1c\x0d")
        ack = await read_ack(reader)
        assert msa(ack)[0] == code and words in msa(ack)[2]
        assert ack.first("ERR") is not None
        assert await worklist.list() == []
        writer.write(frame(OMG))
        assert msa(await read_ack(reader))[0] == "AA"
        assert len(await worklist.list()) == 1
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body)


def test_oversized_message_is_naked_and_connection_closed(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        big = orm(extra="NTE|1||" + "x" * 5000)
        writer.write(frame(big))
        ack = await read_ack(reader)
        code, control, text = msa(ack)
        assert code == "AR" and "hl7_max_message_bytes (2048 bytes)" in text
        assert control == "CTLACC100"  # HL7 v2.5 2.9.2: the sender learns which message was refused
        assert ack.value(ack.first("MSH"), 5) == "RIS"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
        assert await worklist.list() == []
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body, max_bytes=2048)


def test_two_messages_in_one_segment_and_one_split_across_segments(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(frame(orm(accession="ACC1")) + frame(orm(accession="ACC2")))
            data = frame(OMG)
            for start in range(0, len(data), 7):  # many small writes
                sock.sendall(data[start : start + 7])
                await asyncio.sleep(0.001)
            sock.settimeout(10)
            received = b""
            while received.count(b"\x1c\x0d") < 3:
                chunk = await asyncio.to_thread(sock.recv, 4096)
                assert chunk, "connection closed early"
                received += chunk
        acks = [parse(part.lstrip(b"\x0b").decode()) for part in received.split(b"\x1c\x0d") if part]
        assert [msa(a)[:2] for a in acks] == [("AA", "CTLACC1"), ("AA", "CTLACC2"), ("AA", "CTL9")]
        assert sorted(e.accession_number for e in await worklist.list()) == ["ACC1", "ACC2", "ACC9"]

    serve(tmp_path, body)


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        return data

    assert serve(tmp_path, body, idle=0.2) == b""


@pytest.mark.interop
def test_running_server_takes_order_over_mllp_findscu_w_sees_it(tmp_path: Path) -> None:
    findscu = dcmtk("findscu")
    hl7_port = free_port()
    srv = start_server(tmp_path, env={"MINIPACS_HL7_PORT": str(hl7_port)})
    try:
        wait_for_port("127.0.0.1", hl7_port)

        def send(text: str) -> Message:
            with socket.create_connection(("127.0.0.1", hl7_port), timeout=10) as sock:
                sock.sendall(frame(text))
                data = b""
                while not data.endswith(b"\x1c\x0d"):
                    chunk = sock.recv(4096)
                    assert chunk
                    data += chunk
            return parse(data[1:-2].decode())

        def query(out: Path) -> list[pydicom.Dataset]:
            out.mkdir()
            done = subprocess.run(
                [
                    findscu,
                    "-W",
                    "-aec",
                    "MINIPACS",
                    "-X",
                    "-od",
                    str(out),
                    "127.0.0.1",
                    str(srv.port),
                    "-k",
                    "PatientID=PAT1",
                    "-k",
                    "AccessionNumber",
                    "-k",
                    "PatientName",
                    "-k",
                    "ScheduledProcedureStepSequence[0].Modality",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

        assert msa(send(orm()))[0] == "AA"
        [found] = query(tmp_path / "q1")
        assert found.AccessionNumber == "ACC100" and str(found.PatientName) == "Doe^John^Q^Dr^Jr"
        assert found.ScheduledProcedureStepSequence[0].Modality == "CT"
        bad = send(orm(accession="ACC200", modality=""))
        assert msa(bad)[0] == "AE" and "modality" in msa(bad)[2]
        assert msa(send(orm("CA")))[0] == "AA"
        assert query(tmp_path / "q2") == []
    finally:
        assert srv.stop() == 0, srv.log_text()
    assert "HL7 MLLP listener on 127.0.0.1" in srv.log_text()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MINIPACS_HL7_PORT": "70000"}, "hl7_port 70000 is outside"),
        ({"MINIPACS_HL7_MAX_MESSAGE_BYTES": "10"}, "hl7_max_message_bytes"),
        ({"MINIPACS_HL7_IDLE_TIMEOUT": "0"}, "hl7_idle_timeout"),
        ({"MINIPACS_HL7_MAX_CONNECTIONS": "0"}, "hl7_max_connections"),
        ({"MINIPACS_HL7_RESEND_WINDOW": "-1"}, "hl7_resend_window"),
        ({"MINIPACS_HL7_RESEND_MAX": "-1"}, "hl7_resend_max"),
    ],
)
def test_hl7_settings_are_validated(env: dict[str, str], words: str) -> None:
    from minipacs.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=words):
        load_settings(env=env)
    defaults = load_settings(env={})
    assert (defaults.hl7_port, defaults.hl7_host) == (0, "127.0.0.1")  # off by default, loopback


# ------------------------------------------------------------------ MSH-18, CA, and the worklist SCP behind it


def _mwl_find(port: int, charset: str) -> list[pydicom.Dataset]:
    """pynetdicom as the modality: a Modality Worklist C-FIND for every entry. Blocking: use a thread."""

    query = pydicom.Dataset()
    query.SpecificCharacterSet = charset
    for keyword in ("PatientName", "PatientID", "AccessionNumber"):
        setattr(query, keyword, "")
    query.ScheduledProcedureStepSequence = [pydicom.Dataset()]
    return mwl_c_find(port, query, "US01")


def mwl_c_find(port: int, query: pydicom.Dataset, calling: str) -> list[pydicom.Dataset]:
    """pynetdicom as the modality ``calling``: the items a Modality Worklist C-FIND of ``query`` answers,
    every status Pending or Success. Blocking: use a thread."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
    assert assoc.is_established
    try:
        found = []
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None and status.Status in (0x0000, 0xFF00, 0xFF01), status
            if identifier is not None:
                found.append(identifier)
        return found
    finally:
        assoc.release()
        ae.shutdown()


def serve_mwl(tmp: Path, body: Callable[[MLLPServer, Worklist, int], Awaitable[T]]) -> T:
    """The MLLP listener and the Modality Worklist SCP on one worklist."""
    from minipacs.net.dul import Timeouts
    from minipacs.services.server import DicomServer
    from minipacs.services.worklist import ModalityWorklistSCP

    async def with_scp(server: MLLPServer, worklist: Worklist) -> T:
        scp = DicomServer(
            "MINIPACS",
            [ModalityWorklistSCP(worklist)],
            host="127.0.0.1",
            port=0,
            timeouts=Timeouts(acse=5.0, dimse=10.0, idle=30.0),
        )
        await scp.start()
        try:
            return await body(server, worklist, scp.port)
        finally:
            await scp.close(1.0)

    return serve(tmp, with_scp)


@pytest.mark.parametrize(
    ("msh18", "codec", "dicom", "query_charset"),
    [
        ("8859/1", "latin-1", "ISO_IR 100", "ISO_IR 100"),
        ("UNICODE UTF-8", "utf-8", "ISO_IR 192", "ISO_IR 192"),
        ("8859/1", "latin-1", "ISO_IR 100", ""),  # a requester without (0008,0005): the answer is in UTF-8
    ],
)
def test_msh18_charset_decodes_the_name_and_c_find_returns_it(
    tmp_path: Path, msh18: str, codec: str, dicom: str, query_charset: str
) -> None:
    async def body(server: MLLPServer, worklist: Worklist, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(with_msh18(orm(name=NAME), msh18).encode(codec)))
        data = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
        ack = parse(data[1:-2].decode(codec))  # the ACK comes in the message's charset, saying which
        assert msa(ack)[0] == "AA" and ack.value(ack.first("MSH"), 18) == msh18
        writer.close()
        await writer.wait_closed()
        [entry] = await worklist.by_accession("ACC100")
        assert str(entry.dataset.PatientName) == NAME and entry.dataset.SpecificCharacterSet == dicom
        [found] = await asyncio.to_thread(_mwl_find, port, query_charset)
        assert str(found.PatientName) == NAME and found.AccessionNumber == "ACC100"

    serve_mwl(tmp_path, body)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (with_msh18(orm(name=NAME), "UNICODE UTF-16").encode("latin-1"), "'UNICODE UTF-16' is not supported"),
        (with_msh18(orm(name=NAME), "UNICODE UTF-8").encode("latin-1"), "byte 0xFC"),  # says UTF-8, sends Latin-1
        (with_msh18(orm(name=NAME), "ASCII").encode("latin-1"), "not valid ASCII"),
    ],
)
def test_msh18_unsupported_or_wrong_is_rejected_and_changes_nothing(tmp_path: Path, payload: bytes, words: str) -> None:
    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(payload))
        code, control, text = msa(await read_ack(reader))
        assert (code, control) == ("AR", "CTLACC100") and words in text and "MSH-18" in text
        assert await worklist.list() == []
        writer.write(frame(OMG))  # the connection serves on
        assert msa(await read_ack(reader))[0] == "AA"
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body)


def test_cancelled_order_leaves_c_find_but_stays_for_audit(tmp_path: Path) -> None:
    async def body(server: MLLPServer, worklist: Worklist, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for text in (orm(accession="ACC1"), orm(accession="ACC2"), orm("CA", accession="ACC1")):
            writer.write(frame(text))
            assert msa(await read_ack(reader))[0] == "AA"
        writer.close()
        await writer.wait_closed()
        found = await asyncio.to_thread(_mwl_find, port, "ISO_IR 192")
        assert [str(ds.AccessionNumber) for ds in found] == ["ACC2"]
        assert [e.status for e in await worklist.by_accession("ACC1")] == [CANCELLED]  # the row is kept

    serve_mwl(tmp_path, body)


def test_a_frame_without_its_end_block_is_dropped_when_a_new_frame_starts(tmp_path: Path) -> None:
    """MLLP: <VT> never occurs inside the content, so a start block before the end block means the
    frame before it was cut off; that partial message is dropped and the next one answered with its own
    control ID (it was glued to the partial one and answered AR with a garbled MSA-2)."""

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        partial = orm(accession="ACC1").encode()[:60]
        writer.write(b"\x0b" + partial + frame(orm(accession="ACC2")))
        code, control, _ = msa(await read_ack(reader))
        assert (code, control) == ("AA", "CTLACC2")
        assert [e.accession_number for e in await worklist.list()] == ["ACC2"]
        writer.write(frame(orm(accession="ACC3")))  # the connection serves on
        assert msa(await read_ack(reader))[:2] == ("AA", "CTLACC3")
        writer.close()
        await writer.wait_closed()

    serve(tmp_path, body)


def test_connections_beyond_the_limit_are_closed_and_the_others_serve_on(tmp_path: Path) -> None:
    """Each connection may buffer a whole frame (hl7_max_message_bytes): without a bound, a flood of
    half-sent frames takes the memory and file descriptors the DICOM and web listeners need too."""

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        for _, writer in held:
            writer.write(b"\x0bMSH|^~\\&|")  # half a frame each
            await writer.drain()
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the third: closed at once
        writer.close()
        await writer.wait_closed()
        first_reader, first_writer = held[0]
        first_writer.write(b"\x1c\x0d" + frame(orm()))  # ends the junk frame, then a real order
        acks = [await read_ack(first_reader), await read_ack(first_reader)]
        assert [msa(a)[0] for a in acks] == ["AR", "AA"]
        for _, w in held:
            w.close()
            await w.wait_closed()

    serve(tmp_path, body, connections=2)


@pytest.mark.parametrize(
    ("after_fs", "words"),
    [
        pytest.param([b""], "", id="fs-alone"),
        pytest.param([b"\x0d"], "", id="cr-in-the-same-read"),
        pytest.param([b"", b"\x0d"], "", id="cr-in-a-later-read"),
        pytest.param([b"", b"\x0dxyz"], "3 byte(s) outside an MLLP frame", id="cr-then-junk-later"),
        pytest.param([b"xyz"], "3 byte(s) outside an MLLP frame", id="junk-instead-of-cr"),
    ],
)
def test_a_frame_ended_by_fs_without_its_cr_is_answered_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, after_fs: list[bytes], words: str
) -> None:
    """MLLP's end block is <FS><CR>, but <FS> never occurs inside the content: a sender that omits the
    <CR> gets its ACK when the <FS> arrives (it waited for hl7_idle_timeout and was closed). A <CR> right
    after the <FS> is the rest of that end block, also when it comes in a later read; anything else there
    is bytes outside a frame, dropped and logged."""

    async def body(server: MLLPServer, worklist: Worklist) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x0b" + orm(accession="ACC1").encode() + b"\x1c" + after_fs[0])
        assert msa(await read_ack(reader))[:2] == ("AA", "CTLACC1")
        for later in after_fs[1:]:
            writer.write(later)
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(frame(orm(accession="ACC2")))  # the connection serves on
        assert msa(await read_ack(reader))[:2] == ("AA", "CTLACC2")
        assert sorted(e.accession_number for e in await worklist.list()) == ["ACC1", "ACC2"]
        writer.close()
        await writer.wait_closed()

    with caplog.at_level(logging.INFO, logger="minipacs.hl7"):
        serve(tmp_path, body, idle=30.0)
    outside = [r.getMessage() for r in caplog.records if "outside an MLLP frame" in r.getMessage()]
    if words:
        assert len(outside) == 1 and words in outside[0], outside
    else:
        assert outside == []
