"""The read timeout of the upper layer (dul.UpperLayer._read_more, rearm_read_timeout).

One deadline per connection and one timer that checks it: the deadline moves with every read and
every answered request, the timer only when it must fire earlier, and a timer that fires before a
deadline moved later re-arms itself. These tests pin down that the timeout still fires when the
deadline says -- not at the first timer's time, not never -- and that nothing else is taken for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from minipacs.net.dul import Timeouts, UpperLayer
from minipacs.net.fsm import State
from tests.net.test_fsm import PDATA_BYTES, FakeWriter, RecordingUser, abort_bytes

ABORT = abort_bytes(0, 0)  # AA-1 after a read timeout in Sta6: A-ABORT, service-user source


@dataclass
class TimedUser(RecordingUser):
    """A user whose read timeout (Sta6) the test sets."""

    timeout: float | None = 0.3

    def read_timeout(self) -> float | None:
        return self.timeout


class Layer:
    """An UpperLayer in Sta6 on a fed StreamReader and a recording writer, its reader running."""

    def __init__(self, user: TimedUser, dimse: float = 5.0) -> None:
        self.reader = asyncio.StreamReader()
        self.writer = FakeWriter()
        self.user = user
        self.layer = UpperLayer(
            self.reader,
            self.writer,  # type: ignore[arg-type]
            user,
            is_requestor=True,  # no Evt5 on run(): the test sets the state
            max_pdu_receive=16384,
            timeouts=Timeouts(acse=30, dimse=dimse, idle=30),
            label="[test]",
        )
        self.layer.state = State.STA6
        self.started = time.monotonic()
        self.task = asyncio.ensure_future(self.layer.run())

    async def abort_after(self, limit: float) -> float:
        """Seconds from the start until the A-ABORT was written (fails after ``limit``)."""
        while not self.writer.data.endswith(ABORT):
            if time.monotonic() - self.started > limit:
                pytest.fail(f"no A-ABORT within {limit}s; written {bytes(self.writer.data)!r}")
            await asyncio.sleep(0.005)
        return time.monotonic() - self.started

    async def close(self) -> None:
        self.reader.feed_eof()
        await asyncio.wait_for(self.task, 5)


def test_a_read_times_out_at_its_deadline() -> None:
    async def run() -> None:
        t = Layer(TimedUser(timeout=0.3))
        took = await t.abort_after(3)
        assert 0.29 <= took < 1.0
        assert t.layer.end_reason == "no activity for 0.3s (idle/DIMSE timeout)"
        assert t.layer.state is State.STA13
        await t.close()

    asyncio.run(run())


def test_rearm_moves_the_deadline_later_and_the_early_timer_rearms_itself() -> None:
    async def run() -> None:
        t = Layer(TimedUser(timeout=0.3))
        await asyncio.sleep(0.2)
        t.layer.rearm_read_timeout()  # counts from now: due at ~0.5, the timer still set for ~0.3
        await asyncio.sleep(0.2)  # ~0.4: past the first timer
        assert not t.writer.data.endswith(ABORT), "timed out at the old deadline"
        took = await t.abort_after(3)
        assert 0.49 <= took < 1.2
        await t.close()

    asyncio.run(run())


def test_rearm_from_no_limit_and_to_an_earlier_deadline() -> None:
    async def run() -> None:
        for first in (None, 10.0):  # no timer armed yet / a timer armed for much later
            user = TimedUser(timeout=first)
            t = Layer(user)
            await asyncio.sleep(0.1)
            user.timeout = 0.2
            t.layer.rearm_read_timeout()
            took = await t.abort_after(3)
            assert 0.29 <= took < 1.0, first
            await t.close()

    asyncio.run(run())


def test_each_read_counts_from_its_start_with_one_timer() -> None:
    """PDUs arriving inside the timeout keep the association, also over more than the timeout
    in all; then silence times it out. A deadline that only moves later sets no new timer."""

    async def run() -> None:
        t = Layer(TimedUser(timeout=0.3))
        await asyncio.sleep(0)
        timer = t.layer._read_timer
        assert timer is not None
        for _ in range(8):
            await asyncio.sleep(0.01)
            t.reader.feed_data(PDATA_BYTES)
        await asyncio.sleep(0)
        assert t.layer._read_timer is timer, "a new timer for a deadline that only moved later"
        for _ in range(6):  # 0.6 s in all, each read well inside 0.3 s
            await asyncio.sleep(0.1)
            t.reader.feed_data(PDATA_BYTES)
        await asyncio.sleep(0)
        assert len(t.user.received) == 14 and not t.writer.data
        fed = time.monotonic() - t.started
        took = await t.abort_after(fed + 3)
        assert 0.29 <= took - fed < 1.0
        await t.close()

    asyncio.run(run())


def test_a_body_read_keeps_the_dimse_timeout_whatever_rearm_says() -> None:
    async def run() -> None:
        t = Layer(TimedUser(timeout=30.0), dimse=0.3)
        t.reader.feed_data(PDATA_BYTES[:10])  # the header and 4 bytes of the body
        await asyncio.sleep(0.15)
        t.layer.rearm_read_timeout()  # applies to header reads only
        while not t.writer.data:
            assert time.monotonic() - t.started < 3, "the stalled PDU never timed out"
            await asyncio.sleep(0.005)
        took = time.monotonic() - t.started
        assert 0.29 <= took < 1.0
        assert t.writer.data == abort_bytes(2, 0)  # provider abort: stalled inside a PDU
        assert "stalled for 0.3s inside a PDU" in t.layer.end_reason
        await t.close()

    asyncio.run(run())


def test_cancelling_the_reader_is_not_a_timeout() -> None:
    """A cancel from outside (server shutdown) stays a cancel, also when the timer is due at the
    same moment: the timeout takes only its own cancel for a TimeoutError."""

    async def run() -> None:
        for both in (False, True):
            t = Layer(TimedUser(timeout=30.0))
            await asyncio.sleep(0.05)
            if both:  # the deadline has passed and the timer fires, in the same loop turn as the cancel
                t.layer._read_deadline = t.layer._read_timer_at
                t.layer._read_timer_fired()
            t.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t.task
            assert t.task.cancelled()
            assert not t.writer.data, "taken for a timeout"
            assert t.layer._read_timer is None, "the timer outlived the reader"

    asyncio.run(run())
