"""Association.request over a burst of responses (issue 11): the ones already read are taken at
once, and the DIMSE timeout still ends the wait when the peer then falls silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping

import pytest

from minipacs.dicom.uids import STUDY_ROOT_FIND
from minipacs.net.association import Association, AssociationError, AssociationSettings, Message, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.memory import BytesSink
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service
from minipacs.services.dispatch import Answer, Operation, PendingBatch, Response
from minipacs.services.server import DicomServer

IMPLICIT_LE = "1.2.840.10008.1.2"
#: Identifiers the SCU only counts (even length, as every dataset is)
IDENTIFIERS = [b"match-%03d!" % n for n in range(40)]


class BurstThenSilence(Service):
    """C-FIND: 40 Pending responses in one write, then nothing for ``silence`` seconds, then Success."""

    name = "burst"

    def __init__(self, silence: float) -> None:
        self.silence = silence

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {STUDY_ROOT_FIND: SupportedContext(STUDY_ROOT_FIND, frozenset({IMPLICIT_LE}))}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-FIND-RQ": Operation(self.c_find, access="find")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> BytesSink | None:
        return None

    async def c_find(self, assoc: Association, message: Message) -> AsyncGenerator[Answer, None]:
        yield PendingBatch(0xFF00, IDENTIFIERS)
        await asyncio.sleep(self.silence)
        yield Response(0x0000)


async def _query(silence: float, dimse: float) -> tuple[list[bytes], list[int], BaseException | None, float]:
    server = DicomServer(
        "MINIPACS",
        [BurstThenSilence(silence)],
        host="127.0.0.1",
        port=0,
        timeouts=Timeouts(acse=5.0, dimse=10.0, idle=10.0),
    )
    await server.start()
    try:
        settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5.0, dimse=dimse, idle=10.0))
        assoc = await connect(
            "127.0.0.1",
            server.port,
            build_rq("SCU", "MINIPACS", [(STUDY_ROOT_FIND, [IMPLICIT_LE])], settings),
            settings,
        )
        context = assoc.context_for(STUDY_ROOT_FIND)
        assert context is not None
        rq = Command.make("C-FIND-RQ", has_dataset=True, MessageID=1, Priority=0, AffectedSOPClassUID=STUDY_ROOT_FIND)
        got: list[bytes] = []
        statuses: list[int] = []
        error: BaseException | None = None
        start = time.monotonic()
        try:
            async for rsp in assoc.request(context.context_id, rq, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "):
                statuses.append(rsp.command.status)
                if isinstance(rsp.dataset, BytesSink):
                    got.append(rsp.dataset.getvalue())
        except AssociationError as exc:
            error = exc
        took = time.monotonic() - start
        if error is None:
            await assoc.release()
        else:
            await assoc.wait_closed()
        return got, statuses, error, took
    finally:
        await server.close(grace=1.0)


def test_a_burst_is_taken_whole_and_in_order() -> None:
    got, statuses, error, _took = asyncio.run(_query(silence=0.0, dimse=5.0))
    assert error is None
    assert got == IDENTIFIERS
    assert statuses == [0xFF00] * len(IDENTIFIERS) + [0x0000]


def test_the_dimse_timeout_still_ends_the_wait_after_a_burst() -> None:
    """The responses read before the peer fell silent come out; then the timer, armed again for the
    empty queue, aborts the association after ``dimse`` seconds (not the peer's 3)."""
    got, statuses, error, took = asyncio.run(_query(silence=3.0, dimse=0.4))
    assert got == IDENTIFIERS
    assert statuses == [0xFF00] * len(IDENTIFIERS)
    assert isinstance(error, AssociationError)
    assert "no response to C-FIND-RQ within 0.4s" in str(error)
    assert took == pytest.approx(0.4, abs=1.5)
    assert took < 2.5
