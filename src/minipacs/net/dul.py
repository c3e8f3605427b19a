"""The DICOM upper layer on asyncio: PDU framing, the PS3.8 Table 9-10 driver, ARTIM.

:class:`UpperLayer` owns one TCP connection. Received PDUs, transport events,
timer expiry and local primitives all become :class:`~minipacs.net.fsm.Event`
values; ``TRANSITION_TABLE`` (PS3.8 Table 9-10) maps each (event, state) to the
action method that performs it and the state that follows. An event raised while
an action runs is queued and handled once that action has finished. Everything
here is synchronous except reading from the socket, because
``StreamWriter.write`` never blocks: a state transition is atomic on the event
loop. Callers that send bulk data await :meth:`drain` for back-pressure.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from minipacs.dicom.reasons import ABORT_REASONS, ABORT_SOURCES, in_words
from minipacs.net.fsm import USER_PRIMITIVES, Event, InvalidTransition, State
from minipacs.net.pdu import (
    PDU,
    PDU_HEADER,
    PDU_TYPES,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    decode_pdu,
    encode_pdu,
)
from minipacs.net.pdu_items import PDUError

log = logging.getLogger("minipacs.net")
T = TypeVar("T")

#: TCP keepalive (SO_KEEPALIVE) on every DICOM connection: a peer that vanished
#: without a FIN (power cut, NAT timeout) is noticed after about
#: KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT seconds of silence.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 6


#: Linux's TCP_QUICKACK (None elsewhere), set again before each wait for more of the stream. A peer
#: with Nagle's algorithm on (pynetdicom's default, DCMTK without TCP_NODELAY=1) writes a request's
#: command and its dataset as two PDUs (DCMTK even a PDU's header and body) and sends the second
#: only once the first is acknowledged; a receiver with nothing to send yet delays that ACK (Linux:
#: 40 ms or more), so every C-STORE and C-FIND waited ~45 ms on loopback (bench/RESULTS.md, "Nagle
#: vs delayed ACK"). Setting the option sends a pending ACK at once; Linux clears it again by
#: itself, hence once per wait. Not when the peer can send nothing before our answer (see
#: :meth:`UpperLayerUser.ack_promptly`): the answer carries the ACK, and the option would only cost
#: a system call and a bare ACK segment per request.
QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)


def set_keepalive(sock: object) -> None:
    """SO_KEEPALIVE, with Linux/BSD/macOS idle, interval and count where the platform has them."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    try:
        setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:  # e.g. a socket already reset by the peer
        log.debug("cannot set TCP keepalive: %s", exc)


def stream_limit(max_pdu_receive: int) -> int:
    """StreamReader buffer limit: a whole PDU fits, so reading never pauses mid-PDU."""
    return max(max_pdu_receive, MAX_CONTROL_PDU) + 64 * 1024


#: How much more than the PDU it waits for one read may take from the stream: the next PDUs
#: (a C-STORE's dataset after its command) are then framed without another read or timer.
READ_AHEAD = 64 * 1024

#: Parts of a write up to this size are joined into one buffer (one syscall).
SMALL_WRITE = 64 * 1024

#: Largest non-P-DATA PDU we read (an A-ASSOCIATE-RQ with 128 contexts and a
#: large user identity fits easily); P-DATA is bounded by our Maximum Length.
MAX_CONTROL_PDU = 1024 * 1024

PDU_EVENTS: dict[type, Event] = {
    AAssociateRQ: Event.EVT6,
    AAssociateAC: Event.EVT3,
    AAssociateRJ: Event.EVT4,
    PDataTF: Event.EVT10,
    AReleaseRQ: Event.EVT12,
    AReleaseRP: Event.EVT13,
    AAbort: Event.EVT16,
}


def describe_abort(source: int, reason: int) -> str:
    """PS3.8 Table 9-26 source and (for the provider) reason, in plain words."""
    known = ABORT_SOURCES.get(source)
    who = known.short if known else f"source {source}"
    if source == 2:
        return f"{who}: {in_words(ABORT_REASONS[reason]) if reason in ABORT_REASONS else f'reason {reason}'}"
    return who


@dataclass
class Timeouts:
    acse: float = 30.0
    dimse: float = 60.0
    idle: float = 300.0


class UpperLayerUser:
    """What the layer above (the association) is told. Override what you need."""

    async def prepare_negotiation(self, rq: AAssociateRQ) -> None:  # acceptor only
        """Slow work the answer to ``rq`` needs (e.g. a password hash), done before AE-6 so
        that :meth:`negotiate`, which the state machine calls synchronously, never blocks the loop."""

    def negotiate(self, rq: AAssociateRQ) -> AAssociateAC | AAssociateRJ:  # acceptor only
        raise NotImplementedError

    def associate_confirmed(self, pdu: AAssociateAC | AAssociateRJ) -> None:  # requestor only
        pass

    def pdata_indication(self, pdu: PDataTF) -> None:
        pass

    def release_indication(self) -> None:
        """The peer asked to release; answer with :meth:`UpperLayer.release_response`."""

    def release_confirmed(self) -> None:
        pass

    def aborted(self, description: str) -> None:
        """A-ABORT or A-P-ABORT indication: the association is gone."""

    def closed(self) -> None:
        """The transport is closed; nothing more will happen."""

    def read_timeout(self) -> float | None:
        """How long the reader may wait for the next PDU in Sta6 (None: no limit).
        When the answer changes, the user calls :meth:`UpperLayer.rearm_read_timeout`."""
        return None

    def ack_promptly(self) -> bool:
        """Before waiting for the next PDU: whether what was read must be acknowledged now
        (:data:`QUICKACK`). False only when the peer can send nothing more before our answer,
        which then carries the ACK. Within a PDU the layer always acknowledges at once."""
        return True

    def read_gate(self) -> Awaitable[None] | None:
        """Before each PDU is read: None to read on, or an awaitable that completes when
        the user can take more (flow control; PS3.7 D.3.3.3 Asynchronous Operations Window)."""
        return None


class UpperLayer:
    """One DICOM upper-layer connection (PS3.8 §9), acceptor or requestor."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        user: UpperLayerUser,
        *,
        is_requestor: bool,
        max_pdu_receive: int,
        timeouts: Timeouts,
        label: str = "",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.user = user
        self.is_requestor = is_requestor
        self.max_pdu_receive = max_pdu_receive
        self.timeouts = timeouts
        self.label = label
        self.state = State.STA4 if is_requestor else State.STA1
        self.bytes_received = 0
        self.bytes_sent = 0
        self.end_reason = ""
        self._artim: asyncio.TimerHandle | None = None
        self._framing_lost = False
        self._rq_acceptable = True
        self._pending_reply: PDU | None = None
        #: The A-ASSOCIATE-AC in ``_pending_reply``, encoded before Evt7 (see :meth:`_respond_associate`).
        self._pending_encoded: bytes | None = None
        self._abort_pdu = AAbort(0, 0)
        self._closed = asyncio.Event()
        #: Events not yet handled; the head is the one whose action is running (see :meth:`event`).
        self._events: deque[tuple[Event, PDU | None]] = deque()
        self._loop = asyncio.get_running_loop()
        #: The read timeout (see :meth:`_read_more`): when the read under way must have its bytes (loop
        #: time; None: no limit), and the one timer that checks it. Moving the deadline (every read,
        #: every answered request) is a store; the timer is moved only to fire earlier, and one that
        #: fires before a deadline moved later re-arms itself for it: no timer object per read.
        self._read_deadline: float | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_timer_at = 0.0
        #: A PDU header read is under way: :meth:`rearm_read_timeout` applies to it (not to a body read).
        self._header_reading = False
        #: The deadline passed and the reading task was cancelled for it (turned into TimeoutError).
        self._read_expired = False
        #: The task that runs :meth:`run` (the only one that reads), cancelled when its read times out.
        self._read_task: asyncio.Task[None] | None = None
        #: Bytes read from ``reader`` and not yet framed: ``_buffer[_pos:]`` (see :meth:`_read_more`).
        self._buffer = b""
        self._pos = 0
        transport = getattr(writer, "transport", None)  # (test doubles have none)
        self._write_high_water = transport.get_write_buffer_limits()[1] if transport is not None else 0
        sock = writer.get_extra_info("socket")
        #: The TCP socket and option with which :meth:`_read_more` re-arms TCP_QUICKACK (None: not here).
        self._quickack: tuple[socket.socket, int] | None = (
            (sock, QUICKACK) if sock is not None and QUICKACK is not None else None
        )
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)

    # ------------------------------------------------------------------ events
    def event(self, event: Event, pdu: PDU | None = None) -> None:
        """Run ``event`` through PS3.8 Table 9-10.

        An event raised while an action runs (the user aborts from inside
        ``pdata_indication``, say) is queued: it is handled after the current
        action has finished and its next state is set, in the order raised. The
        outermost call drains the queue. If an action raises, the events it
        queued are dropped and the exception goes to the outermost caller; an
        invalid local primitive queued by an action raises there too.
        """
        events = self._events
        events.append((event, pdu))
        if len(events) > 1:
            return  # raised inside an action: the outermost call handles it next
        try:
            while events:
                self._transition(*events[0])
                events.popleft()
        finally:
            events.clear()

    def _transition(self, event: Event, pdu: PDU | None) -> None:
        """Perform one cell of PS3.8 Table 9-10: the action, then the next state."""
        cell = TRANSITION_TABLE.get((event, self.state))
        if cell is None:
            if self.state is State.STA1:
                return  # after the close, stray events are moot
            if event in USER_PRIMITIVES:
                raise InvalidTransition(event, self.state)
            # A PDU that the table has no cell for is a protocol error.
            log.warning("%s %s in %s: aborting", self.label, event.name, self.state.name)
            cell = TRANSITION_TABLE.get((Event.EVT19, self.state))
            if cell is None:
                raise InvalidTransition(Event.EVT19, self.state)
        action, next_state = cell
        previous = self.state
        action(self, pdu)
        self.state = next_state if isinstance(next_state, State) else next_state(self)
        if log.isEnabledFor(logging.DEBUG) and event is not Event.EVT10 and event is not Event.EVT9:
            name = action_name(action)
            log.debug("%s %s: %s %s -> %s", self.label, event.name, name, previous.name, self.state.name)

    # ------------------------------------------------------------ primitives
    def start_requestor(self, rq: AAssociateRQ) -> None:
        """Evt2 (transport connected) then AE-2 sends the A-ASSOCIATE-RQ."""
        self._pending_reply = rq
        self.event(Event.EVT2)

    def send_pdata(self, pdu_bytes: bytes | memoryview, *parts: bytes | memoryview) -> None:
        """Evt9: P-DATA request. Takes the already-encoded PDU (header and parts)."""
        if self.state is State.STA6 or self.state is State.STA8:
            self._write(pdu_bytes, *parts)
            return
        raise InvalidTransition(Event.EVT9, self.state)

    def release_request(self) -> None:
        self.event(Event.EVT11)

    def release_response(self) -> None:
        self.event(Event.EVT14)

    def abort(self, reason: str = "aborted by local user") -> None:
        """Evt15: A-ABORT request (service-user source)."""
        if self.state in (State.STA1, State.STA13):
            return
        self.end_reason = self.end_reason or reason
        if self.state is State.STA2:
            # No association yet, so Table 9-10 has no Evt15 cell here: just
            # close; the reader then sees Evt17 (AA-5) and the layer ends.
            self._stop_artim()
            self._close_transport()
            return
        self._abort_pdu = AAbort(0, 0)
        self.event(Event.EVT15)

    def provider_abort(self, reason_code: int, description: str) -> None:
        """Abort for a protocol error we detected (Evt19, service-provider source)."""
        self.end_reason = self.end_reason or description
        self._abort_pdu = AAbort(2, reason_code)
        if self.state not in (State.STA1, State.STA13):
            self.event(Event.EVT19)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark.

        A peer that does not read what we send for ``dimse`` seconds is aborted
        (ConnectionAbortedError): otherwise a client that pipelines requests and
        never reads the responses would hold the association, and our memory, for ever.
        """
        if not self.write_blocked:
            await self.writer.drain()  # not paused: returns at once (raises if the connection is lost)
            return
        try:
            async with asyncio.timeout(self.timeouts.dimse):
                await self.writer.drain()
        except TimeoutError:
            reason = (
                f"peer has not read our data for {self.timeouts.dimse:g}s "
                f"({self._write_buffer_size()} bytes waiting; DIMSE timeout)"
            )
            log.warning("%s %s: aborting", self.label, reason)
            self.abort(reason)
            self.writer.transport.abort()  # close() would wait for the unread data to be sent
            raise ConnectionAbortedError(reason) from None

    @property
    def write_blocked(self) -> bool:
        """The peer is not keeping up with what we send: the write buffer is above its high-water mark."""
        return self._write_buffer_size() > self._write_high_water

    def _write_buffer_size(self) -> int:
        transport = getattr(self.writer, "transport", None)
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    # -------------------------------------------------------------- reading
    async def run(self) -> None:
        """Read PDUs until the connection closes. Acceptors call this on accept."""
        if not self.is_requestor:
            self.event(Event.EVT5)
        self._read_task = asyncio.current_task()
        try:
            while self.state is not State.STA1:
                gate = self.user.read_gate()
                if gate is not None:
                    await gate  # flow control: the user cannot take another request yet
                    continue  # the state may have moved on meanwhile (abort): look again
                pdu = await self._read_pdu()
                if pdu is None:
                    continue
                if isinstance(pdu, AAssociateRQ) and self.state is State.STA2:
                    await self.user.prepare_negotiation(pdu)
                    if self.state is not State.STA2:  # ARTIM expired or the peer went meanwhile
                        continue
                self.event(PDU_EVENTS[type(pdu)], pdu)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.end_reason = self.end_reason or "connection closed by peer"
            self.event(Event.EVT17)
        finally:
            self._stop_artim()
            self._read_deadline = None
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
            if not self.writer.is_closing():
                self.writer.close()
            if not self._closed.is_set():
                self._closed.set()
                self.user.closed()

    async def _read_pdu(self) -> PDU | None:
        header = self._take_buffered(6)
        if header is None:
            timeout = self._header_timeout()
            try:
                header = await self._read_more(6, timeout, header=True)
            except TimeoutError:
                self._on_read_timeout()
                return None
        if self._framing_lost:
            return None  # Sta13 after a framing error: just wait for the close
        pdu_type, length = PDU_HEADER.unpack(header)
        self.bytes_received += 6 + length
        if pdu_type not in PDU_TYPES:
            self._framing_error(1, f"unrecognized PDU type 0x{pdu_type:02X}")
            return None
        limit = self.max_pdu_receive if pdu_type == 0x04 else MAX_CONTROL_PDU
        if length > limit:
            self._framing_error(6, f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds our limit of {limit} bytes")
            return None
        body = self._take_buffered(length)
        if body is None:
            try:
                body = await self._read_more(length, self.timeouts.dimse, header=False)
            except TimeoutError:
                self._framing_error(0, f"peer stalled for {self.timeouts.dimse:g}s inside a PDU")
                return None
        try:
            return decode_pdu(pdu_type, body)
        except PDUError as exc:
            self.end_reason = self.end_reason or f"malformed PDU: {exc}"
            log.warning("%s malformed PDU from peer: %s", self.label, exc)
            self._abort_pdu = AAbort(2, exc.reason)
            self.event(Event.EVT19)
            return None

    def _take_buffered(self, n: int) -> memoryview | None:
        """The next ``n`` bytes if what we have read already holds them (no await, no timer):
        a request's command and dataset PDUs usually arrive together, in one read."""
        start = self._pos
        end = start + n
        if end > len(self._buffer):
            return None
        self._pos = end
        return memoryview(self._buffer)[start:end]

    async def _read_more(self, n: int, timeout: float | None, *, header: bool) -> memoryview:
        """The next ``n`` bytes, reading from the stream under ``timeout`` (TimeoutError when
        it expires; IncompleteReadError at the end of the stream). One read takes whatever the
        stream holds, up to :data:`READ_AHEAD` beyond ``n``: the PDUs after this one are then
        framed from it without waiting (flow control is unchanged: :meth:`run` still asks
        ``read_gate`` before each PDU, and the stream pauses the socket past its limit).

        The timeout is a deadline checked by one long-lived timer (:meth:`_set_read_deadline`), not an
        ``asyncio.timeout`` per read: that cost a timer handle per read and another per answered
        request (``rearm_read_timeout``), on every C-STORE. Its expiry cancels this task, and the
        cancel becomes TimeoutError here, as asyncio.timeout would make it."""
        rest = self._buffer[self._pos :]
        parts = [rest] if rest else []
        have = len(rest)
        reader = self.reader
        task = self._read_task
        cancelling = task.cancelling() if task is not None else 0
        self._header_reading = header
        self._set_read_deadline(timeout)
        # Acknowledge what was read before waiting for more (QUICKACK): always inside a PDU, and
        # between PDUs unless the peer is waiting for our answer.
        ack = have > 0 or not header or self.user.ack_promptly()
        try:
            while have < n:
                if ack and self._quickack is not None:
                    self._ack_now(*self._quickack)
                chunk = await reader.read(n - have + READ_AHEAD)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"".join(parts), n)
                parts.append(chunk)
                have += len(chunk)
                ack = True
        except asyncio.CancelledError:
            # Our timer's cancel becomes TimeoutError, unless someone else cancelled the task too
            # (as asyncio.timeout decides it).
            if self._read_expired and task is not None and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            # keep what was read, also when the timer expired: nothing is lost or read twice
            self._read_deadline = None
            self._header_reading = False
            self._read_expired = False
            self._buffer = parts[0] if len(parts) == 1 else b"".join(parts)
            self._pos = 0
        self._pos = n
        return memoryview(self._buffer)[:n]

    def _set_read_deadline(self, timeout: float | None) -> None:
        """The read under way times out ``timeout`` seconds from now (None: never)."""
        if timeout is None:
            self._read_deadline = None  # a timer still armed finds nothing to do when it fires
            return
        deadline = self._loop.time() + timeout
        self._read_deadline = deadline
        timer = self._read_timer
        if timer is None or self._read_timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self._read_timer = self._loop.call_at(deadline, self._read_timer_fired)
            self._read_timer_at = deadline

    def _read_timer_fired(self) -> None:
        """The timer is due: the read under way has timed out, unless its deadline moved later meanwhile."""
        self._read_timer = None
        deadline = self._read_deadline
        if deadline is None or self._read_expired or self._read_task is None:
            return
        if deadline > self._read_timer_at:
            self._read_timer = self._loop.call_at(deadline, self._read_timer_fired)
            self._read_timer_at = deadline
            return
        self._read_expired = True
        self._read_task.cancel()

    def _ack_now(self, sock: socket.socket, option: int) -> None:
        """Acknowledge what we have read now, not after the delayed-ACK timer (see :data:`QUICKACK`)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError as exc:  # e.g. already reset by the peer; not worth trying again
            log.debug("%s cannot set TCP_QUICKACK: %s", self.label, exc)
            self._quickack = None

    def rearm_read_timeout(self) -> None:
        """The user's idea of :meth:`UpperLayerUser.read_timeout` changed (a request was
        answered): apply it to the read under way, counting from now. Without this, a read
        that started while a request was being worked on (no limit) would never time out."""
        if self._header_reading and not self._read_expired:
            self._set_read_deadline(self._header_timeout())

    def _header_timeout(self) -> float | None:
        if self.state in (State.STA2, State.STA13):
            return None  # the ARTIM timer governs these states
        if self.state is State.STA6 or self.state is State.STA3:
            # Sta3 lasts until the next loop turn (AE-6 -> AE-7), so the read
            # that starts now is the first one of Sta6.
            return self.user.read_timeout()
        if self.state in (State.STA5, State.STA7, State.STA10, State.STA11):
            return self.timeouts.acse
        return self.timeouts.dimse

    def _on_read_timeout(self) -> None:
        if self.state is State.STA6:
            self.end_reason = f"no activity for {self.user.read_timeout():g}s (idle/DIMSE timeout)"
        else:
            self.end_reason = f"no answer from peer within {self.timeouts.acse:g}s in {self.state.name}"
        log.warning("%s %s: aborting", self.label, self.end_reason)
        self.abort(self.end_reason)
        if self.state is State.STA4:
            self._close_transport()

    def _framing_error(self, reason: int, description: str) -> None:
        """A PDU we cannot even frame: abort, then stop parsing the stream."""
        log.warning("%s %s: aborting", self.label, description)
        self.end_reason = self.end_reason or description
        self._abort_pdu = AAbort(2, reason)
        self._framing_lost = True
        self.event(Event.EVT19)

    # -------------------------------------------------------------- helpers
    def _write(self, *parts: bytes | memoryview) -> None:
        if self.writer.is_closing():
            return
        size = sum(len(part) for part in parts)
        self.bytes_sent += size
        if len(parts) > 1 and size <= SMALL_WRITE:
            self.writer.write(b"".join(parts))  # one send() for a small message, not one per part
            return
        for part in parts:
            self.writer.write(part)

    def _send(self, pdu: PDU) -> None:
        self._write(encode_pdu(pdu))

    def _start_artim(self) -> None:
        self._stop_artim()
        loop = asyncio.get_running_loop()
        self._artim = loop.call_later(self.timeouts.acse, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        if self.state is State.STA2:
            self.end_reason = self.end_reason or f"no A-ASSOCIATE-RQ within {self.timeouts.acse:g}s (ARTIM)"
        self.event(Event.EVT18)

    def _close_transport(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    # ---------------------------------------- actions: PS3.8 Tables 9-6..9-9
    # Each takes the event's PDU (None for other events); TRANSITION_TABLE says
    # when each runs and which state follows.
    def _ae_1(self, pdu: PDU | None) -> None:  # pragma: no cover - connect happens before the layer exists
        """AE-1: issue TRANSPORT CONNECT request primitive to local transport service."""

    def _ae_2(self, pdu: PDU | None) -> None:
        """AE-2: send A-ASSOCIATE-RQ PDU."""
        if self._pending_reply is not None:
            self._send(self._pending_reply)
            self._pending_reply = None

    def _ae_3(self, pdu: PDU | None) -> None:
        """AE-3: issue A-ASSOCIATE confirmation (accept) primitive."""
        pdu = _expect(pdu, AAssociateAC)
        self.user.associate_confirmed(pdu)

    def _ae_4(self, pdu: PDU | None) -> None:
        """AE-4: issue A-ASSOCIATE confirmation (reject) primitive and close transport connection."""
        pdu = _expect(pdu, AAssociateRJ)
        self.end_reason = "association rejected by peer"
        self.user.associate_confirmed(pdu)
        self._close_transport()

    def _ae_5(self, pdu: PDU | None) -> None:
        """AE-5: issue transport connection response primitive; start ARTIM timer."""
        self._start_artim()

    def _ae_6(self, pdu: PDU | None) -> None:
        """AE-6: stop ARTIM timer; if the A-ASSOCIATE-RQ is acceptable issue A-ASSOCIATE
        indication (Sta3), otherwise send A-ASSOCIATE-RJ PDU and start ARTIM timer (Sta13)."""
        self._stop_artim()
        pdu = _expect(pdu, AAssociateRQ)
        reply = self.user.negotiate(pdu)
        if isinstance(reply, AAssociateAC):
            # Sta3: the local response primitive follows at once (Evt7 -> AE-7).
            self._rq_acceptable = True
            self._pending_reply = reply
            asyncio.get_running_loop().call_soon(self._respond_associate)
        else:
            self._rq_acceptable = False
            self._send(reply)
            self._start_artim()

    def _respond_associate(self) -> None:
        """Evt7 (A-ASSOCIATE response primitive, accept), once the AC is known to encode. One that cannot be
        (a field past its length, PS3.8 9.3.3) is an A-ABORT request instead (Evt15 in Sta3, AA-1): left to
        AE-7, its ValueError would escape this callback and leave the layer in Sta3 with nothing sent."""
        if self.state is not State.STA3:
            return
        if self._pending_reply is not None:
            try:
                self._pending_encoded = encode_pdu(self._pending_reply)
            except ValueError as exc:
                self._pending_reply = None
                reason = f"our A-ASSOCIATE-AC cannot be encoded: {exc}"
                log.error("%s %s; aborting", self.label, reason)
                self.abort(reason)
                return
        self.event(Event.EVT7)

    def _ae_7(self, pdu: PDU | None) -> None:
        """AE-7: send A-ASSOCIATE-AC PDU."""
        if self._pending_encoded is not None:
            self._write(self._pending_encoded)
        elif self._pending_reply is not None:
            self._send(self._pending_reply)
        self._pending_reply = None
        self._pending_encoded = None

    def _ae_8(self, pdu: PDU | None) -> None:
        """AE-8: send A-ASSOCIATE-RJ PDU and start ARTIM timer."""
        if self._pending_reply is not None:
            self._send(self._pending_reply)
        self._start_artim()

    def _dt_1(self, pdu: PDU | None) -> None:
        """DT-1: send P-DATA-TF PDU."""
        if pdu is not None:
            self._send(pdu)

    def _dt_2(self, pdu: PDU | None) -> None:
        """DT-2: send P-DATA indication primitive."""
        pdu = _expect(pdu, PDataTF)
        self.user.pdata_indication(pdu)

    def _ar_1(self, pdu: PDU | None) -> None:
        """AR-1: send A-RELEASE-RQ PDU."""
        self._send(AReleaseRQ())

    def _ar_2(self, pdu: PDU | None) -> None:
        """AR-2: issue A-RELEASE indication primitive."""
        self.user.release_indication()

    def _ar_3(self, pdu: PDU | None) -> None:
        """AR-3: issue A-RELEASE confirmation primitive, and close transport connection."""
        self.end_reason = self.end_reason or "released"
        self.user.release_confirmed()
        self._close_transport()

    def _ar_4(self, pdu: PDU | None) -> None:
        """AR-4: issue A-RELEASE-RP PDU and start ARTIM timer."""
        self.end_reason = self.end_reason or "released"
        self._send(AReleaseRP())
        self._start_artim()

    def _ar_5(self, pdu: PDU | None) -> None:
        """AR-5: stop ARTIM timer."""
        self._stop_artim()

    def _ar_6(self, pdu: PDU | None) -> None:
        """AR-6: issue P-DATA indication."""
        self._dt_2(pdu)

    def _ar_7(self, pdu: PDU | None) -> None:
        """AR-7: issue P-DATA-TF PDU."""
        self._dt_1(pdu)

    def _ar_8(self, pdu: PDU | None) -> None:
        """AR-8: issue A-RELEASE indication (release collision): requestor goes to Sta9, acceptor to Sta10."""
        # Release collision: answer automatically once the table allows it.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._collision_response)

    def _collision_response(self) -> None:
        if self.state in (State.STA9, State.STA12):
            self.event(Event.EVT14)

    def _ar_9(self, pdu: PDU | None) -> None:
        """AR-9: send A-RELEASE-RP PDU."""
        self._send(AReleaseRP())

    def _ar_10(self, pdu: PDU | None) -> None:
        """AR-10: issue A-RELEASE confirmation primitive."""
        self.user.release_confirmed()
        loop = asyncio.get_running_loop()
        loop.call_soon(self._collision_response)

    def _aa_1(self, pdu: PDU | None) -> None:
        """AA-1: send A-ABORT PDU (service-user source) and start (or restart) ARTIM timer."""
        # Evt15 (local abort) sends a service-user abort; in Sta2 a PDU other
        # than A-ASSOCIATE-RQ, or a malformed one, is a provider-detected error.
        self._send(self._abort_pdu if pdu is None else self._protocol_abort(pdu))
        self._start_artim()
        self.user.aborted(self.end_reason or "aborted")

    def _protocol_abort(self, pdu: PDU | None) -> AAbort:
        """A-ABORT for a provider-detected error: an unexpected PDU (reason 2),
        or the reason of the decode error recorded by Evt19 (PS3.8 Table 9-26)."""
        if pdu is not None:
            return AAbort(2, 2)
        return self._abort_pdu if self._abort_pdu.source == 2 else AAbort(2, 0)

    def _aa_2(self, pdu: PDU | None) -> None:
        """AA-2: stop ARTIM timer if running; close transport connection."""
        self._stop_artim()
        self._close_transport()

    def _aa_3(self, pdu: PDU | None) -> None:
        """AA-3: issue A-ABORT (service-user) or A-P-ABORT (service-provider) indication
        and close transport."""
        if isinstance(pdu, AAbort):
            self.end_reason = self.end_reason or f"aborted by peer ({describe_abort(pdu.source, pdu.reason)})"
        self.user.aborted(self.end_reason)
        self._close_transport()

    def _aa_4(self, pdu: PDU | None) -> None:
        """AA-4: issue A-P-ABORT indication primitive."""
        self.end_reason = self.end_reason or "connection closed by peer without release"
        self.user.aborted(self.end_reason)

    def _aa_5(self, pdu: PDU | None) -> None:
        """AA-5: stop ARTIM timer."""
        self._stop_artim()

    def _aa_6(self, pdu: PDU | None) -> None:
        """AA-6: ignore PDU."""

    def _aa_7(self, pdu: PDU | None) -> None:
        """AA-7: send A-ABORT PDU."""
        self._send(self._protocol_abort(pdu))

    def _aa_8(self, pdu: PDU | None) -> None:
        """AA-8: send A-ABORT PDU (service-provider source), issue A-P-ABORT indication,
        and start ARTIM timer."""
        abort = self._protocol_abort(pdu)
        self._send(abort)
        self.end_reason = self.end_reason or f"protocol error ({describe_abort(abort.source, abort.reason)})"
        self.user.aborted(self.end_reason)
        self._start_artim()


def _expect(pdu: PDU | None, cls: type[T]) -> T:
    """PDU_EVENTS guarantees the type; this keeps the type checker honest."""
    if not isinstance(pdu, cls):
        raise TypeError(f"expected {cls.__name__}, got {type(pdu).__name__}")
    return pdu


# ------------------------------------------------ PS3.8 Table 9-10
#: What an action is: an UpperLayer method taking the event's PDU (PS3.8 Tables 9-6..9-9).
Action = Callable[[UpperLayer, PDU | None], None]
#: The state after an action: fixed, or decided by the layer (AE-6, AR-8).
NextState = State | Callable[[UpperLayer], State]


def _after_ae_6(layer: UpperLayer) -> State:
    """AE-6: Sta3 if the A-ASSOCIATE-RQ was acceptable, otherwise Sta13 (A-ASSOCIATE-RJ sent)."""
    return State.STA3 if layer._rq_acceptable else State.STA13


def _after_ar_8(layer: UpperLayer) -> State:
    """AR-8 (release collision): Sta9 for the association requestor, Sta10 for the acceptor."""
    return State.STA9 if layer.is_requestor else State.STA10


def action_name(action: Action) -> str:
    """The PS3.8 name of an action method, for logs: ``UpperLayer._ar_10`` is "AR-10"."""
    return action.__name__.lstrip("_").upper().replace("_", "-")


# PS3.8 Table 9-10: DICOM upper layer state transition table.
# One entry per non-empty cell of the standard's table: (event, state) -> (action, next state).
# The next state is the one PS3.8 Tables 9-6..9-9 give for the action.
TRANSITION_TABLE: Final[Mapping[tuple[Event, State], tuple[Action, NextState]]] = {
    (Event.EVT1, State.STA1): (UpperLayer._ae_1, State.STA4),
    (Event.EVT2, State.STA4): (UpperLayer._ae_2, State.STA5),
    (Event.EVT3, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT3, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA5): (UpperLayer._ae_3, State.STA6),
    (Event.EVT3, State.STA6): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA7): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT3, State.STA13): (UpperLayer._aa_6, State.STA13),
    (Event.EVT4, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT4, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA5): (UpperLayer._ae_4, State.STA1),
    (Event.EVT4, State.STA6): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA7): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT4, State.STA13): (UpperLayer._aa_6, State.STA13),
    (Event.EVT5, State.STA1): (UpperLayer._ae_5, State.STA2),
    (Event.EVT6, State.STA2): (UpperLayer._ae_6, _after_ae_6),
    (Event.EVT6, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA5): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA6): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA7): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT6, State.STA13): (UpperLayer._aa_7, State.STA13),
    (Event.EVT7, State.STA3): (UpperLayer._ae_7, State.STA6),
    (Event.EVT8, State.STA3): (UpperLayer._ae_8, State.STA13),
    (Event.EVT9, State.STA6): (UpperLayer._dt_1, State.STA6),
    (Event.EVT9, State.STA8): (UpperLayer._ar_7, State.STA8),
    (Event.EVT10, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT10, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA5): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA6): (UpperLayer._dt_2, State.STA6),
    (Event.EVT10, State.STA7): (UpperLayer._ar_6, State.STA7),
    (Event.EVT10, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT10, State.STA13): (UpperLayer._aa_6, State.STA13),
    (Event.EVT11, State.STA6): (UpperLayer._ar_1, State.STA7),
    (Event.EVT12, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT12, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA5): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA6): (UpperLayer._ar_2, State.STA8),
    (Event.EVT12, State.STA7): (UpperLayer._ar_8, _after_ar_8),
    (Event.EVT12, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT12, State.STA13): (UpperLayer._aa_6, State.STA13),
    (Event.EVT13, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT13, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA5): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA6): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA7): (UpperLayer._ar_3, State.STA1),
    (Event.EVT13, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA10): (UpperLayer._ar_10, State.STA12),
    (Event.EVT13, State.STA11): (UpperLayer._ar_3, State.STA1),
    (Event.EVT13, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT13, State.STA13): (UpperLayer._aa_6, State.STA13),
    (Event.EVT14, State.STA8): (UpperLayer._ar_4, State.STA13),
    (Event.EVT14, State.STA9): (UpperLayer._ar_9, State.STA11),
    (Event.EVT14, State.STA12): (UpperLayer._ar_4, State.STA13),
    (Event.EVT15, State.STA3): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA4): (UpperLayer._aa_2, State.STA1),
    (Event.EVT15, State.STA5): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA6): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA7): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA8): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA9): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA10): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA11): (UpperLayer._aa_1, State.STA13),
    (Event.EVT15, State.STA12): (UpperLayer._aa_1, State.STA13),
    (Event.EVT16, State.STA2): (UpperLayer._aa_2, State.STA1),
    (Event.EVT16, State.STA3): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA5): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA6): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA7): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA8): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA9): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA10): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA11): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA12): (UpperLayer._aa_3, State.STA1),
    (Event.EVT16, State.STA13): (UpperLayer._aa_2, State.STA1),
    (Event.EVT17, State.STA2): (UpperLayer._aa_5, State.STA1),
    (Event.EVT17, State.STA3): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA4): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA5): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA6): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA7): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA8): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA9): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA10): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA11): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA12): (UpperLayer._aa_4, State.STA1),
    (Event.EVT17, State.STA13): (UpperLayer._ar_5, State.STA1),
    (Event.EVT18, State.STA2): (UpperLayer._aa_2, State.STA1),
    (Event.EVT18, State.STA13): (UpperLayer._aa_2, State.STA1),
    (Event.EVT19, State.STA2): (UpperLayer._aa_1, State.STA13),
    (Event.EVT19, State.STA3): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA5): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA6): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA7): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA8): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA9): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA10): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA11): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA12): (UpperLayer._aa_8, State.STA13),
    (Event.EVT19, State.STA13): (UpperLayer._aa_7, State.STA13),
}
