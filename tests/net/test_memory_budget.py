"""Data sets received into memory: the bound per request (memory_dataset_max_bytes) and the one
bound on what the requests of every association hold at once (memory_datasets_budget_bytes).

Each limit is tested at the limit (exactly at it accepted, one byte past it refused), over raw
loopback sockets so that a data set can be of any length and held half-sent.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.memory import BytesSink, MemoryBudget
from minipacs.net.pdu import PDV, AAbort, AAssociateRQ, AReleaseRQ, PDataTF
from minipacs.net.pdu_items import AsynchronousOperationsWindow, PresentationContextRQ, UserInformation
from minipacs.services.server import DicomServer
from tests.net.test_association import ECHO_BACK, IMPLICIT_LE, SERVER_AE, EchoBackSCP

pytestmark = pytest.mark.interop

RESOURCE_LIMITATION = 0x0213


@asynccontextmanager
async def echo_back_server(per_dataset: int, budget: int) -> AsyncIterator[DicomServer]:
    server = DicomServer(
        SERVER_AE,
        [EchoBackSCP()],
        host="127.0.0.1",
        port=0,
        max_pdu_send=0,
        timeouts=Timeouts(acse=1.0, dimse=3.0, idle=10.0),
        memory_dataset_max_bytes=per_dataset,
        memory_datasets_budget_bytes=budget,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=1.0)


class Raw:
    """One association on a raw socket, with N-ACTION-RQs whose data set is sent as we please."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.message_id = 0

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        info = UserInformation(maximum_length=0, async_ops=AsynchronousOperationsWindow(4, 1))
        writer.write(
            AAssociateRQ(SERVER_AE, "RAW", [PresentationContextRQ(1, ECHO_BACK, [IMPLICIT_LE])], info).encode()
        )
        raw = cls(reader, writer)
        pdu_type, _ = await raw.read_pdu()
        assert pdu_type == 0x02, "A-ASSOCIATE-AC"
        return raw

    async def read_pdu(self) -> tuple[int, bytes]:
        header = await asyncio.wait_for(self.reader.readexactly(6), 5)
        return header[0], await asyncio.wait_for(self.reader.readexactly(struct.unpack(">xxL", header)[0]), 5)

    def start(self, first: bytes) -> None:
        """An N-ACTION-RQ whose data set begins with ``first`` and is not finished."""
        self.message_id += 1
        command = Command.make(
            "N-ACTION-RQ",
            has_dataset=True,
            MessageID=self.message_id,
            RequestedSOPClassUID=ECHO_BACK,
            RequestedSOPInstanceUID="1.2.3.4",
            ActionTypeID=1,
        )
        self.writer.write(PDataTF([PDV(1, True, True, command.encode()), PDV(1, False, False, first)]).encode())

    def more(self, data: bytes, *, last: bool) -> None:
        self.writer.write(PDataTF([PDV(1, False, last, data)]).encode())

    async def response(self) -> tuple[Command, bytes]:
        """The next response: its command, and its data set (b"" when none)."""
        command_bytes, dataset = b"", b""
        command: Command | None = None
        while True:
            pdu_type, body = await self.read_pdu()
            assert pdu_type == 0x04, f"P-DATA-TF expected, got PDU type {pdu_type:#x}"
            for pdv in PDataTF.decode(memoryview(body)).pdvs:
                if pdv.is_command:
                    command_bytes += bytes(pdv.data)
                    if pdv.is_last:
                        command = Command.decode(command_bytes)
                        if not command.has_dataset:
                            return command, b""
                else:
                    dataset += bytes(pdv.data)
                    if pdv.is_last:
                        assert command is not None
                        return command, dataset

    async def n_action(self, data: bytes) -> tuple[Command, bytes]:
        self.start(data)
        self.more(b"", last=True)
        return await self.response()

    async def release(self) -> None:
        self.writer.write(AReleaseRQ().encode())
        assert (await self.read_pdu())[0] == 0x06
        self.writer.close()

    def abort(self) -> None:
        self.writer.write(AAbort(0, 0).encode())
        self.writer.close()


async def until(condition: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)
    assert condition(), "condition not met in time"  # type: ignore[operator]


def test_a_data_set_of_exactly_memory_dataset_max_bytes_is_taken_and_one_byte_more_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past memory_dataset_max_bytes the N-ACTION is answered 0x0213 Resource limitation (PS3.7
    10.1.4.1.10) with an Error Comment, the association goes on, and the bytes are given back."""

    async def run() -> None:
        async with echo_back_server(per_dataset=1024, budget=4096) as server:
            raw = await Raw.open(server.port)
            command, reply = await raw.n_action(b"x" * 1024)
            assert (command.status, reply) == (0x0000, b"x" * 1024)
            with caplog.at_level(logging.WARNING, logger="minipacs"):
                command, reply = await raw.n_action(b"y" * 1025)
            assert command.status == RESOURCE_LIMITATION
            assert "memory" in command.error_comment and len(command.error_comment) <= 64
            refusals = [r for r in caplog.records if "N-ACTION" in r.getMessage() and "0x0213" in r.getMessage()]
            assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
            assert "memory_dataset_max_bytes" in refusals[0].getMessage()
            command, reply = await raw.n_action(b"z" * 1024)
            assert (command.status, reply) == (0x0000, b"z" * 1024)
            await raw.release()
            assert server.memory_budget.held == 0

    asyncio.run(run())


def test_the_budget_is_shared_by_every_association_and_given_back_on_every_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """memory_datasets_budget_bytes counts what the requests of ALL associations hold: one association
    holding a half-sent data set of 2048 bytes leaves another exactly 1024 of a 3072-byte budget;
    one byte more held and that other's request is refused (0x0213), both associations going on.
    The bytes come back when a request is answered and when an association aborts mid-message."""

    async def run() -> None:
        async with echo_back_server(per_dataset=3072, budget=3072) as server:
            budget = server.memory_budget
            holder = await Raw.open(server.port)
            other = await Raw.open(server.port)
            holder.start(b"h" * 2048)
            await until(lambda: budget.held == 2048)
            command, reply = await other.n_action(b"o" * 1024)  # 2048 + 1024: exactly the budget
            assert (command.status, reply) == (0x0000, b"o" * 1024)
            assert budget.most_held == 3072
            holder.more(b"h", last=False)
            await until(lambda: budget.held == 2049)
            with caplog.at_level(logging.WARNING, logger="minipacs"):
                command, _ = await other.n_action(b"o" * 1024)  # one byte past the budget
            assert command.status == RESOURCE_LIMITATION
            assert command.error_comment and len(command.error_comment) <= 64
            refusals = [r.getMessage() for r in caplog.records if "0x0213" in r.getMessage()]
            assert len(refusals) == 1 and "memory_datasets_budget_bytes" in refusals[0]
            holder.more(b"h", last=True)  # the holder's request completes and is answered
            command, reply = await holder.response()
            assert (command.status, reply) == (0x0000, b"h" * 2050)
            await until(lambda: budget.held == 0)
            command, reply = await other.n_action(b"o" * 1024)
            assert command.status == 0x0000
            holder.start(b"h" * 3000)  # then the holder leaves mid-message: its bytes come back
            await until(lambda: budget.held == 3000)
            holder.abort()
            await until(lambda: budget.held == 0)
            await other.release()

    asyncio.run(run())


def test_a_bytes_sink_gives_its_bytes_back_once() -> None:
    budget = MemoryBudget(10)
    sink = BytesSink(10, budget)
    sink.write(b"12345")
    assert budget.held == 5
    sink.discard()
    sink.discard()
    assert budget.held == 0
