"""PDU framing does not depend on how the peer's bytes are cut into reads (dul.UpperLayer._read_more).

The reader takes whatever the stream holds and frames PDUs from it: several PDUs in one
segment, one PDU over many segments, a header cut anywhere, and a PDU split across a
read that also carries the next one must all give the same requests, answered in order.
"""

from __future__ import annotations

import asyncio
import struct

from minipacs.dicom.uids import VERIFICATION_SOP_CLASS
from minipacs.net.dimse import Command
from minipacs.net.pdu import pdata_pdu_header
from tests.net.test_association import Raw, serving, wait_until_idle


def echo_rq(message_id: int) -> bytes:
    cmd = Command.make("C-ECHO-RQ", MessageID=message_id, AffectedSOPClassUID=VERIFICATION_SOP_CLASS).encode()
    return pdata_pdu_header(1, True, True, len(cmd)) + cmd


async def answered(raw: Raw, count: int) -> list[int]:
    """The MessageIDBeingRespondedTo of the next ``count`` C-ECHO-RSPs."""
    ids: list[int] = []
    for _ in range(count):
        pdu = await raw.read_pdu(timeout=10.0)
        assert pdu is not None and pdu[0] == 0x04, f"expected a P-DATA-TF, got {pdu!r}"
        body = pdu[1][6:]
        (length,) = struct.unpack_from(">L", body, 0)
        command = Command.decode(body[6 : 4 + length])
        assert command.name == "C-ECHO-RSP" and command.status == 0
        ids.append(command.message_id_being_responded_to)
    return ids


def test_requests_are_framed_whatever_the_cut_of_the_reads() -> None:
    async def run() -> None:
        async with serving() as server:
            raw = await Raw.open(server.port)
            await raw.associate()
            # 1. three PDUs in one write
            raw.send(echo_rq(1) + echo_rq(2) + echo_rq(3))
            assert await answered(raw, 3) == [1, 2, 3]
            # 2. one PDU a byte at a time (the header too)
            for byte in echo_rq(4):
                raw.send(bytes([byte]))
                await raw.writer.drain()
                await asyncio.sleep(0.002)
            assert await answered(raw, 1) == [4]
            # 3. cuts inside a header and inside a body, each read carrying the start of the next PDU
            stream = echo_rq(5) + echo_rq(6) + echo_rq(7)
            for start, end in ((0, 3), (3, 40), (40, len(echo_rq(5)) + 2), (len(echo_rq(5)) + 2, len(stream))):
                raw.send(stream[start:end])
                await raw.writer.drain()
                await asyncio.sleep(0.05)
            assert await answered(raw, 3) == [5, 6, 7]
            (assoc,) = server.connections
            assert assoc.dul.bytes_received > 7 * len(echo_rq(1)), "every PDU counted once"
            raw.close()
        await wait_until_idle(server)

    asyncio.run(run())
