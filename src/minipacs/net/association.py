"""An association: DIMSE messages over the upper layer (PS3.7 §6-8, PS3.8 §9.3.5).

Incoming P-DATA fragments are assembled per message. Command fragments are
small and kept in memory (bounded); dataset fragments go straight to a
:class:`DatasetSink` chosen once the command is complete -- for C-STORE a
staging file, so a dataset is never held in memory whole. Outgoing messages
are fragmented to the peer's Maximum Length, streaming file data as it is.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from minipacs import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from minipacs.dicom.reasons import REJECT_REASONS, REJECT_SOURCES, in_words
from minipacs.net.dimse import Command, CommandError
from minipacs.net.dul import Timeouts, UpperLayer, UpperLayerUser, stream_limit
from minipacs.net.fsm import InvalidTransition, State
from minipacs.net.memory import MAX_MEMORY_DATASET, BytesSink, MemoryBudget
from minipacs.net.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ, PDataTF, pdata_pdu_header, pdata_pdus
from minipacs.net.pdu_items import AsynchronousOperationsWindow, PresentationContextRQ, RoleSelection, UserInformation
from minipacs.net.presentation import NegotiatedContext, accepted_by_peer
from minipacs.net.tls import TLSContext, TLSInfo, current_context_async, describe_tls_error, tls_info
from minipacs.net.trace import describe_associate

log = logging.getLogger("minipacs.net")

#: A command set is a few hundred bytes; anything past this is hostile.
MAX_COMMAND_BYTES = 64 * 1024
#: Default of max_pdu_peer_min: the smallest Maximum Length (PS3.8 D.1) a peer may announce. Below it
#: every fragment we send it is tiny and a large retrieve costs us a PDU per few bytes (DCMTK never
#: announces less than 4096, ASC_MINIMUMPDUSIZE); 0, "no maximum", is always usable.
MAX_PDU_PEER_MIN = 1024
#: The smallest Maximum Length that can be honoured at all: a PDV item's 6-byte header and an even
#: fragment of 2 bytes (PS3.8 9.3.5.1, E.2); the floor of the setting.
SMALLEST_MAX_PDU = 8
#: Statuses of the Pending class (PS3.7 C.4): more responses follow.
PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
#: Bytes of a stored file read and framed per socket write when sending it.
SEND_BLOCK = 256 * 1024
#: Our cap on an Asynchronous Operations Window of 0 ("unlimited", PS3.7 D.3.3.3.1).
MAX_WINDOW = 64
#: Requests a peer may follow with a C-CANCEL-RQ while it waits for their responses (PS3.7 9.3.2.3,
#: 9.3.3.3, 9.3.4.3); a C-CANCEL-RQ is the one thing a peer may send us with its window full. They are
#: also the only requests with Pending responses (PS3.7 9.1): any other has exactly one response.
CANCELLABLE = frozenset({"C-FIND-RQ", "C-GET-RQ", "C-MOVE-RQ"})


class AssociationError(Exception):
    """The association could not be established or was lost."""


class AssociationRejected(AssociationError):
    def __init__(self, rj: AAssociateRJ, description: str) -> None:
        super().__init__(description)
        self.rj = rj


class DatasetSink(Protocol):
    """Where the fragments of one received dataset go."""

    def write(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


@dataclass
class FileRegion:
    """A dataset to send from a file, from ``offset`` to the end. ``opener``, when given, opens
    it (a seekable binary file, e.g. from a blob store); ``path`` then only names it in messages."""

    path: Path
    offset: int = 0
    opener: Callable[[], BinaryIO] | None = None


DatasetSource = bytes | memoryview | FileRegion


@dataclass
class Message:
    """One received DIMSE message."""

    context: NegotiatedContext
    command: Command
    dataset: DatasetSink | None = None
    #: Set when the dataset could not be taken (e.g. too large); fragments were drained.
    dataset_error: Exception | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: A final (non-Pending) response to this request has been sent.
    answered: bool = False
    #: The Status of that final response (None until it is sent).
    status: int | None = None


SinkFactory = Callable[["Association", NegotiatedContext, Command], DatasetSink]
RequestHandler = Callable[["Association", Message], Awaitable[None]]
Negotiator = Callable[["Association", AAssociateRQ], "AAssociateAC | AAssociateRJ"]
#: Slow checks of an A-ASSOCIATE-RQ awaited before the (synchronous) negotiator runs.
Preparer = Callable[["Association", AAssociateRQ], Awaitable[None]]


@dataclass
class AssociationSettings:
    ae_title: str
    max_pdu_receive: int = 1024 * 1024
    max_pdu_send: int = 1024 * 1024
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_command_bytes: int = MAX_COMMAND_BYTES
    #: The largest data set of one message received into memory (net/memory.py; memory_dataset_max_bytes).
    max_memory_dataset: int = MAX_MEMORY_DATASET
    #: What the data sets of received requests hold in memory at once, shared by every association
    #: given it (net/memory.py; memory_datasets_budget_bytes); None: not counted.
    memory_budget: MemoryBudget | None = None
    #: The smallest Maximum Length a peer may announce (0, no maximum, always may): see ``max_length_refusal``.
    max_pdu_peer_min: int = MAX_PDU_PEER_MIN
    #: Our client side of DICOM TLS (net/tls.py ``client_context``): used by ``connect(..., tls=True)``.
    tls_context: TLSContext | None = None


class _Incoming:
    """Assembly state of the message being received on one context."""

    __slots__ = ("command_bytes", "command", "sink", "error", "context")

    def __init__(self, context: NegotiatedContext) -> None:
        self.context = context
        self.command_bytes = bytearray()
        self.command: Command | None = None
        self.sink: DatasetSink | None = None
        self.error: Exception | None = None


class _BlockReader:
    """The dataset of a FileRegion, read block by block by worker threads (one read at a time)."""

    def __init__(self, region: FileRegion) -> None:
        self.region = region
        self.remaining = -1  # unknown until the file is open
        self._fh: BinaryIO | io.FileIO | None = None

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer only at the end; b"" once none remain). Blocking."""
        if self._fh is None:
            opener = self.region.opener
            self._fh = opener() if opener else open(self.region.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
            self.remaining = max(self._fh.seek(0, os.SEEK_END) - self.region.offset, 0)
            self._fh.seek(self.region.offset)
        want = min(size, self.remaining)
        if want <= 0:
            return b""
        data = self._fh.read(want) or b""
        while data and len(data) < want:  # a short read: fill the block, so fragments stay even
            more = self._fh.read(want - len(data))
            if not more:
                break
            data += more
        if not data:
            raise AssociationError(f"{self.region.path} shrank while being sent")
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


#: What a queued response counts for besides its data set's bytes (its command, the objects holding it):
#: so that thousands of responses without a data set pause the reading too.
RESPONSE_OVERHEAD: Final = 512


def _queued_size(message: Message) -> int:
    sink = message.dataset
    return RESPONSE_OVERHEAD + (len(sink.buffer) if isinstance(sink, BytesSink) else 0)


def _even(data: bytes | memoryview) -> bytes | memoryview:
    """A dataset (or its last fragment) padded to even length with one trailing 0x00.

    PS3.8 E.2: every message fragment is of even length. A dataset is always even unless it is a
    deflate stream (PS3.5 A.5), which ends where the compressor stopped; A.5 pads such a stream
    with a trailing 0x00, which an inflater ignores. Peers (DCMTK, Orthanc) abort on an odd PDV."""
    return data if len(data) % 2 == 0 else bytes(data) + b"\x00"


class Association(UpperLayerUser):
    """A DICOM association, as acceptor or requestor."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: AssociationSettings,
        *,
        is_requestor: bool,
        negotiator: Negotiator | None = None,
        handler: RequestHandler | None = None,
        sink_factory: SinkFactory | None = None,
        preparer: Preparer | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        #: The connection's own end; ``peer`` when given: the client a PROXY header named (net/proxy_protocol.py).
        socket_peer = writer.get_extra_info("peername") or ("?", 0)
        #: "host:port" of the load balancer the connection came through (PROXY protocol); "" when direct.
        self.via = f"{socket_peer[0]}:{socket_peer[1]}" if peer is not None else ""
        peer = peer or socket_peer
        self.peer_host: str = str(peer[0])
        self.peer_port: int = int(peer[1])
        #: None on plain TCP; the TLS version and the peer's certificate subject on DICOM TLS.
        self.tls: TLSInfo | None = tls_info(writer.get_extra_info("ssl_object"))
        self.settings = settings
        self.is_requestor = is_requestor
        self.negotiator = negotiator
        self.preparer = preparer
        self.handler = handler
        self.sink_factory = sink_factory
        self.started_at = datetime.now(UTC)
        self.local_ae = settings.ae_title
        self.remote_ae = ""
        self.called_ae = ""
        self.calling_ae = ""
        self.rq: AAssociateRQ | None = None
        #: An A-ASSOCIATE-RQ has been read (it may still be being checked).
        self.rq_received = False
        self.ac: AAssociateAC | None = None
        self.contexts: dict[int, NegotiatedContext] = {}
        self.peer_max_pdu = 0
        self.established = asyncio.get_running_loop().create_future()
        self.operations: list[dict[str, object]] = []
        #: Operations performed, by "op outcome" (services/base.py record_operation), for the association log.
        self.operation_counts: collections.Counter[str] = collections.Counter()
        #: Why the association was rejected, in words (A-ASSOCIATE-RJ), for the association log.
        self.reject_reason = ""
        #: The user its User Identity Negotiation (PS3.7 D.3.3.7) established; "" when none.
        self.user_identity = ""
        self.label = f"[{self.peer_host}:{self.peer_port}]"
        self.dul = UpperLayer(
            reader,
            writer,
            self,
            is_requestor=is_requestor,
            max_pdu_receive=settings.max_pdu_receive,
            timeouts=settings.timeouts,
            label=self.label,
        )
        #: PS3.7 D.3.3.3: how many requests the peer may have outstanding with us (1: no
        #: asynchronous operations). Requests past it are held, and reading stops, until one ends.
        self.window = 1
        #: Requests received and not yet finished (handlers running), and the most there ever were.
        self.outstanding = 0
        self.most_outstanding = 0
        #: Of those, the ones the peer may cancel (CANCELLABLE): see :meth:`ack_promptly`.
        self.cancellable = 0
        #: Requests the association ended without answering (logged once, at INFO, by wait_closed).
        self.unanswered = 0
        self._unanswered_logged = False
        self._held: collections.deque[Message] = collections.deque()
        self._read_resume: asyncio.Future[None] | None = None
        self._incoming: dict[int, _Incoming] = {}
        self._responses: dict[int, asyncio.Queue[Message | None]] = {}
        #: Bytes of the peer's responses received and not yet taken by the request that waits for them
        #: (:meth:`request`), and the most there ever were: past ``max_memory_dataset`` reading pauses.
        self.queued_response_bytes = 0
        self.most_queued_response_bytes = 0
        self._response_room: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Work after an answered request (``spawn_after``): awaited before closing, not before a release.
        self._after: set[asyncio.Task[None]] = set()
        self._running: dict[int, Message] = {}
        self._send_lock = asyncio.Lock()
        self._message_id = 0
        self._release_waiter: asyncio.Future[None] | None = None
        self.aborted_reason = ""
        self._reader_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ properties
    @property
    def is_established(self) -> bool:
        return self.established.done() and not self.established.cancelled() and self.established.exception() is None

    @property
    def end_reason(self) -> str:
        return self.dul.end_reason

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def context_for(self, abstract_syntax: str, transfer_syntax: str | None = None) -> NegotiatedContext | None:
        for ctx in self.contexts.values():
            if ctx.abstract_syntax == abstract_syntax and transfer_syntax in (None, ctx.transfer_syntax):
                return ctx
        return None

    def contexts_for(self, abstract_syntax: str) -> list[NegotiatedContext]:
        return [c for c in self.contexts.values() if c.abstract_syntax == abstract_syntax]

    def start_reading(self) -> asyncio.Task[None]:
        """Run the upper layer's reader; the task ends when the connection closes."""
        self._reader_task = asyncio.ensure_future(self.dul.run())
        return self._reader_task

    # --------------------------------------------------- UpperLayerUser side
    async def prepare_negotiation(self, rq: AAssociateRQ) -> None:
        self.rq_received = True
        if self.preparer is not None:
            await self.preparer(self, rq)

    def negotiate(self, rq: AAssociateRQ) -> AAssociateAC | AAssociateRJ:
        self.rq = rq
        self.calling_ae = self.remote_ae = rq.calling_ae
        self.called_ae = rq.called_ae
        self.peer_max_pdu = rq.user_information.maximum_length or 0
        self.label = f"[{rq.calling_ae}@{self.peer_host}:{self.peer_port}]"
        self.dul.label = self.label
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s received A-ASSOCIATE-RQ\n%s", self.label, describe_associate(rq))
        if self.negotiator is None:
            raise AssociationError("acceptor without negotiator")
        reply = self.negotiator(self, rq)
        if isinstance(reply, AAssociateAC):
            self.ac = reply
            # The requestor's invocations on us, as our AC states them (PS3.7 D.3.3.3.2)
            self.window = _window(reply.user_information.async_ops, invoked=True)
            for ctx in _accepted_contexts(rq, reply):
                self.contexts[ctx.context_id] = ctx
            if not self.established.done():
                self.established.set_result(None)
        elif not self.established.done():
            self.established.set_exception(AssociationRejected(reply, "rejected"))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s sending %s\n%s", self.label, type(reply).__name__, describe_associate(reply))
        return reply

    def associate_confirmed(self, pdu: AAssociateAC | AAssociateRJ) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s received %s\n%s", self.label, type(pdu).__name__, describe_associate(pdu))
        if self.established.done():
            return
        if isinstance(pdu, AAssociateRJ):
            self.established.set_exception(AssociationRejected(pdu, describe_rejection(pdu)))
            return
        refusal = max_length_refusal(pdu.user_information.maximum_length or 0, self.settings.max_pdu_peer_min)
        if refusal is not None:
            log.warning("%s A-ASSOCIATE-AC not used: %s", self.label, refusal)
            self.established.set_exception(AssociationError(refusal))
            self.dul.abort(refusal)
            return
        self.ac = pdu
        self.peer_max_pdu = pdu.user_information.maximum_length or 0
        # The acceptor's invocations on us (e.g. C-STORE sub-operations of our C-GET)
        self.window = _window(pdu.user_information.async_ops, invoked=False)
        rq = self.rq
        if rq is not None:
            for ctx in accepted_by_peer(
                rq.presentation_contexts,
                pdu.presentation_contexts,
                pdu.user_information.roles,
                rq.user_information.roles,
            ):
                self.contexts[ctx.context_id] = ctx
        self.established.set_result(None)

    def pdata_indication(self, pdu: PDataTF) -> None:
        for pdv in pdu.pdvs:
            ctx = self.contexts.get(pdv.context_id)
            if ctx is None:
                self.dul.provider_abort(6, f"P-DATA on presentation context {pdv.context_id}, which was not accepted")
                return
            incoming = self._incoming.get(pdv.context_id)
            if incoming is None:
                incoming = self._incoming[pdv.context_id] = _Incoming(ctx)
            if pdv.is_command:
                if incoming.command is not None:
                    self.dul.provider_abort(5, "command fragment received while a dataset was expected")
                    return
                incoming.command_bytes += pdv.data
                if len(incoming.command_bytes) > self.settings.max_command_bytes:
                    self.dul.provider_abort(6, f"command set longer than {self.settings.max_command_bytes} bytes")
                    return
                if pdv.is_last and not self._command_complete(incoming):
                    return
            else:
                if incoming.command is None:
                    self.dul.provider_abort(5, "dataset fragment received before its command set")
                    return
                if incoming.error is None and incoming.sink is not None:
                    try:
                        incoming.sink.write(pdv.data)
                    except Exception as exc:  # noqa: BLE001 - sink refused: drain the rest, answer with a status
                        incoming.error = exc
                        incoming.sink.discard()
                if pdv.is_last:
                    self._message_complete(incoming)

    def _command_complete(self, incoming: _Incoming) -> bool:
        try:
            command = Command.decode(incoming.command_bytes)
        except CommandError as exc:
            self.dul.provider_abort(6, f"unreadable command set: {exc}")
            return False
        incoming.command = command
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s received %s", self.label, command.summary())
        if not command.has_dataset:
            self._message_complete(incoming)
            return True
        try:
            # A C-CANCEL-RQ has no data set (PS3.7 9.3.2.3) and no handler to take one: a data set it
            # announces anyway is drained into memory (bounded) and dropped, never staged like a C-STORE's.
            if command.is_request and self.sink_factory is not None and command.name != "C-CANCEL-RQ":
                incoming.sink = self.sink_factory(self, incoming.context, command)
            else:
                incoming.sink = self.memory_sink(command)
        except Exception as exc:  # noqa: BLE001 - e.g. hostile UID: drain, then answer with a status
            incoming.error = exc
        return True

    def memory_sink(self, command: Command) -> BytesSink:
        """A sink holding ``command``'s data set in memory: at most ``max_memory_dataset`` bytes, and
        for a request counted in the process's ``memory_budget`` (net/memory.py) until it is discarded."""
        budget = self.settings.memory_budget if command.is_request else None
        return BytesSink(self.settings.max_memory_dataset, budget)

    def _message_complete(self, incoming: _Incoming) -> None:
        del self._incoming[incoming.context.context_id]
        command = incoming.command
        if command is None:  # pragma: no cover - guarded by callers
            return
        if incoming.sink is not None and incoming.error is None:
            try:
                incoming.sink.finish()
            except Exception as exc:  # noqa: BLE001
                incoming.error = exc
                incoming.sink.discard()
        message = Message(incoming.context, command, incoming.sink, incoming.error)
        if not command.is_request:
            queue = self._responses.get(command.message_id_being_responded_to)
            if queue is None:
                log.warning("%s response to unknown message: %s", self.label, command.summary())
                if message.dataset is not None:
                    message.dataset.discard()
                return
            self.queued_response_bytes += _queued_size(message)
            self.most_queued_response_bytes = max(self.most_queued_response_bytes, self.queued_response_bytes)
            queue.put_nowait(message)
            return
        if command.name == "C-CANCEL-RQ":
            if message.dataset is not None:
                message.dataset.discard()
            running = self._running.get(command.message_id_being_responded_to)
            if running is not None:
                running.cancelled.set()
            return
        if self.handler is None:
            if message.dataset is not None:
                message.dataset.discard()
            log.warning("%s no handler for %s; aborting", self.label, command.name)
            self.dul.provider_abort(0, f"unexpected request {command.name}")
            return
        if self.outstanding >= self.window:
            # Past the Asynchronous Operations Window: hold it, and read no more until one ends
            # (read_gate). C-CANCEL and responses are read while the window is full; only a
            # request beyond it stops the reading, so no more than one PDU's requests wait here --
            # unless we wait for the peer's responses, when reading goes on (read_gate) and at most
            # a window's worth more is held: a peer sending more is aborted.
            if self._responses and len(self._held) >= self.window:
                reason = (
                    f"the peer sent more than {self.window} request(s) past its Asynchronous Operations "
                    "Window (PS3.7 D.3.3.3) while we waited for its responses"
                )
                log.warning("%s %s: aborting", self.label, reason)
                if message.dataset is not None:
                    message.dataset.discard()
                self.dul.provider_abort(0, reason)
                return
            self._held.append(message)
            return
        self._start(message)

    def _start(self, message: Message) -> None:
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        cancellable = message.command.name in CANCELLABLE
        if cancellable:
            self.cancellable += 1
        self._spawn(self._handle(message, cancellable))

    async def _handle(self, message: Message, cancellable: bool = False) -> None:
        msg_id = message.command.message_id
        self._running[msg_id] = message
        try:
            if self.handler is not None:
                await self.handler(self, message)
        except Exception:
            if self.can_respond:
                log.exception("%s handler failed for %s", self.label, message.command.summary())
        finally:
            if isinstance(message.dataset, BytesSink):
                message.dataset.discard()  # its bytes go back to the memory budget (net/memory.py)
            if self._running.get(msg_id) is message:
                del self._running[msg_id]
            self.outstanding -= 1
            if cancellable:
                self.cancellable -= 1
            if not message.answered and not self.can_respond:
                self.unanswered += 1  # the association ended under it: counted, logged once
            self._start_held()

    @property
    def can_respond(self) -> bool:
        """Responses can still be sent (not aborted, released or lost)."""
        return (self.dul.state is State.STA6 or self.dul.state is State.STA8) and not self.dul.writer.is_closing()

    def _start_held(self) -> None:
        """A request ended: start the held ones that now fit in the window, and read on when none is left."""
        if not self.can_respond:
            self._drop_held()
            return
        while self._held and self.outstanding < self.window:
            self._start(self._held.popleft())
        if not self._held:
            self._resume_reading()

    def _drop_held(self) -> None:
        for message in self._held:
            if message.dataset is not None:
                message.dataset.discard()
        self.unanswered += len(self._held)
        self._held.clear()
        self._resume_reading()

    def _response_taken(self, response: Message | None) -> None:
        """A queued response left its queue: count it out; resume reading once there is room again."""
        if response is None:
            return
        self.queued_response_bytes -= _queued_size(response)
        if self.queued_response_bytes <= self.settings.max_memory_dataset:
            self._end_response_pause()

    def _resume_reading(self) -> None:
        if self._read_resume is not None and not self._read_resume.done():
            self._read_resume.set_result(None)
        self._read_resume = None

    def ack_promptly(self) -> bool:
        """TCP_QUICKACK before the next PDU (dul.QUICKACK) unless the peer must wait for our answer:
        its window of requests is full (PS3.7 D.3.3.3), none of them is one it may cancel, nothing of a
        message is half-read and it owes us no response. A peer with Nagle on then has nothing held
        back for our ACK (it sent the whole request), and the answer acknowledges the request."""
        return bool(
            self.outstanding < self.window or self.cancellable or self._incoming or self._responses or self._held
        )

    def read_gate(self) -> Awaitable[None] | None:
        """Flow control before each PDU read: wait while requests are held beyond the window, or
        while the peer is not reading our responses (write buffer above its high-water mark).

        Not while we wait for responses from the peer (a C-GET's C-STORE sub-operations on this
        association): they come behind the held request, and the request holding the window could
        never end without them -- it stalled until the DIMSE timeout."""
        if self._held and not self._responses:
            if self._read_resume is None:
                self._read_resume = asyncio.get_running_loop().create_future()
            return self._read_resume
        if self.queued_response_bytes > self.settings.max_memory_dataset:
            # The peer answers faster than we use its answers (a C-FIND's thousands of matches, each up to
            # memory_dataset_max_bytes): the queue would grow without bound. TCP holds the rest.
            if self._response_room is None:
                self._response_room = asyncio.get_running_loop().create_future()
            return self._response_room
        if self.dul.write_blocked:
            return self.dul.drain()
        return None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A request was answered: the peer's next PDU is now due within idle_timeout.
        self.dul.rearm_read_timeout()

    def spawn_after(self, work: Awaitable[None]) -> None:
        """Run ``work`` that follows a request already answered (e.g. the Storage Commitment report,
        PS3.4 J.3.3). Unlike a request being served, it does not hold up the answer to the peer's
        A-RELEASE-RQ: the peer waits for nothing from it (wait_closed still awaits it)."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    def release_indication(self) -> None:
        self._spawn(self._release_when_idle())

    async def _release_when_idle(self) -> None:
        # Finish what the peer already sent us (a store being committed)
        # before answering the release: PS3.8 lets the acceptor take its time.
        pending = [t for t in self._tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.timeouts.dimse)
        if not self.dul.is_closed:
            try:
                self.dul.release_response()
            except Exception:  # noqa: BLE001 - state moved on (abort), nothing to answer
                pass

    def release_confirmed(self) -> None:
        if self._release_waiter is not None and not self._release_waiter.done():
            self._release_waiter.set_result(None)

    def aborted(self, description: str) -> None:
        self.aborted_reason = description
        if not self.established.done():
            self.established.set_exception(AssociationError(description))
        for queue in self._responses.values():
            queue.put_nowait(None)
        for incoming in self._incoming.values():
            if incoming.sink is not None:
                incoming.sink.discard()
        self._incoming.clear()
        for message in self._running.values():
            message.cancelled.set()
        self._drop_held()
        self._end_response_pause()

    def _end_response_pause(self) -> None:
        room, self._response_room = self._response_room, None
        if room is not None and not room.done():
            room.set_result(None)

    def closed(self) -> None:
        if not self.established.done():
            self.established.set_exception(AssociationError(self.dul.end_reason or "connection closed"))
        for incoming in self._incoming.values():
            if incoming.sink is not None:
                incoming.sink.discard()
        self._incoming.clear()
        for queue in self._responses.values():
            queue.put_nowait(None)
        if self._release_waiter is not None and not self._release_waiter.done():
            self._release_waiter.set_result(None)
        self._drop_held()
        self._end_response_pause()

    def read_timeout(self) -> float | None:
        """PS3.8 has no idle timer; ours: between requests the peer has ``idle`` seconds, inside
        a message (or while we wait for its response) ``dimse``, and while we work on its
        request no limit (the peer is waiting for us). Re-applied after every response."""
        if self._incoming or self._responses:
            return self.settings.timeouts.dimse
        if self._tasks or self._held:
            return None  # we are working; the peer is waiting for us
        return self.settings.timeouts.idle

    # ---------------------------------------------------------- sending
    def _max_fragment(self) -> int:
        """The longest fragment a P-DATA-TF PDU to the peer carries: its Maximum Length less the PDV
        item's 6 bytes, rounded down to EVEN -- PS3.8 E.2 wants every fragment of a message to be
        of even length, and an even chunk leaves only the last fragment to watch (see ``_even``)."""
        limit = self.peer_max_pdu
        ours = self.settings.max_pdu_send
        if limit == 0 or (ours and ours < limit):
            limit = ours or 1024 * 1024
        return max((limit - 6) & ~1, 2)

    async def send_message(
        self,
        context_id: int,
        command: Command,
        dataset: DatasetSource | None = None,
        *,
        answering: Message | None = None,
    ) -> None:
        """Send one DIMSE message, fragmented to the peer's Maximum Length.

        ``answering``: the request a response answers. Give it: a peer may have two requests outstanding
        with one Message ID (PS3.7 forbids it, some do it), and only the request itself says which of
        them a response ends. Without it the request is looked up by MessageIDBeingRespondedTo."""
        try:
            await self._send_message(context_id, command, dataset)
        except (InvalidTransition, ConnectionError) as exc:  # aborted or closed before or while sending
            raise AssociationError(
                f"cannot send {command.name}: the association has ended "
                f"({self.aborted_reason or self.dul.end_reason or exc})"
            ) from exc
        if not command.is_request:
            self._answered(command, answering)

    def _answered(self, response: Command, request: Message | None = None) -> None:
        if response.status not in PENDING_STATUSES:
            if request is None:
                request = self._running.get(response.message_id_being_responded_to)
            if request is not None:
                request.answered = True
                request.status = response.status

    async def send_responses(self, context_id: int, command: Command, datasets: Sequence[bytes]) -> None:
        """Send ``command`` once per dataset (a batch of C-FIND Pending responses): the
        messages go out in one write and one drain, each in one P-DATA-TF PDU (its command and
        dataset PDVs together, PS3.8 §9.3.5) when it fits in the peer's Maximum Length."""
        cmd_bytes = command.encode()
        padded = [bytes(_even(ds)) for ds in datasets]
        pdus = None
        if all(padded):
            pdus = pdata_pdus(context_id, [(cmd_bytes, ds) for ds in padded], self._max_fragment() + 6)
        if pdus is None:  # a message to fragment, or an empty dataset: one by one
            for ds in padded:
                await self.send_message(context_id, command, ds)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s sending %d x %s in %d PDU(s)", self.label, len(datasets), command.summary(), len(pdus))
        try:
            async with self._send_lock:
                self.dul.send_pdata(b"".join(pdus))
                await self.dul.drain()
        except (InvalidTransition, ConnectionError) as exc:
            raise AssociationError(
                f"cannot send {command.name}: the association has ended "
                f"({self.aborted_reason or self.dul.end_reason or exc})"
            ) from exc

    async def _send_message(self, context_id: int, command: Command, dataset: DatasetSource | None) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s sending %s", self.label, command.summary())
        chunk = self._max_fragment()
        cmd_bytes = command.encode()
        async with self._send_lock:
            if command.is_request and self.dul.state is State.STA8:
                # After the peer's A-RELEASE-RQ (Sta8) P-DATA may still flow, but a new
                # request could never be answered: the peer is waiting for our release reply.
                raise AssociationError(f"cannot send {command.name}: the peer has asked to release the association")
            if (
                (dataset is None or isinstance(dataset, bytes | memoryview))
                and len(cmd_bytes) <= chunk
                and (dataset is None or 0 < len(dataset) <= chunk)
            ):
                # The common small message (a response, a C-FIND match): its one or two
                # PDUs go out in a single write.
                parts: list[bytes | memoryview] = [pdata_pdu_header(context_id, True, True, len(cmd_bytes)), cmd_bytes]
                if dataset is not None:
                    dataset = _even(dataset)
                    parts += [pdata_pdu_header(context_id, False, True, len(dataset)), dataset]
                self.dul.send_pdata(*parts)
                await self.dul.drain()
                return
            for start in range(0, len(cmd_bytes), chunk):
                part = cmd_bytes[start : start + chunk]
                last = start + chunk >= len(cmd_bytes)
                self.dul.send_pdata(pdata_pdu_header(context_id, True, last, len(part)), part)
            if dataset is None:
                await self.dul.drain()
                return
            if isinstance(dataset, FileRegion):
                await self._send_file(context_id, dataset, chunk)
                return
            view = memoryview(dataset)
            if len(view) == 0:
                self.dul.send_pdata(pdata_pdu_header(context_id, False, True, 0))
            for start in range(0, len(view), chunk):
                piece = _even(view[start : start + chunk])  # chunk is even: only the last can be odd
                self.dul.send_pdata(pdata_pdu_header(context_id, False, start + chunk >= len(view), len(piece)), piece)
                await self.dul.drain()
            await self.dul.drain()

    async def _send_file(self, context_id: int, region: FileRegion, chunk: int) -> None:
        # Read a block at a time and frame it into PDUs in one buffer: one socket
        # write per block rather than two per PDU (peers often take only 16 KiB PDUs).
        # Opening and reading happen in a worker thread, the next block while this one
        # is sent: a cold disk or a 1 GB file never stalls the event loop, and at most
        # two blocks are in memory.
        block = max(chunk, SEND_BLOCK // chunk * chunk)
        reader = _BlockReader(region)
        loop = asyncio.get_running_loop()
        ahead: asyncio.Future[bytes] | None = loop.run_in_executor(None, reader.read, block)
        try:
            first = True
            while ahead is not None:
                # shielded: a cancelled send must not close the file under a read in flight
                data = await asyncio.shield(ahead)
                ahead = None
                if not data:
                    if first:  # an empty dataset: one empty last fragment
                        self.dul.send_pdata(pdata_pdu_header(context_id, False, True, 0))
                    break
                first = False
                # Read now, before the next read starts: that read runs in a thread while this block is
                # framed, and its decrement of ``remaining`` must not mark this block's end as the last
                # fragment (the peer would then take the rest of the dataset for the next command).
                final = reader.remaining <= 0
                if not final:
                    ahead = loop.run_in_executor(None, reader.read, block)
                else:
                    data = bytes(_even(data))  # an odd deflate stream (PS3.5 A.5) ends in a 0x00 pad
                view = memoryview(data)
                out = bytearray()
                for start in range(0, len(view), chunk):
                    piece = view[start : start + chunk]
                    last = final and start + chunk >= len(view)
                    out += pdata_pdu_header(context_id, False, last, len(piece))
                    out += piece
                self.dul.send_pdata(memoryview(out))
                await self.dul.drain()
        finally:
            if ahead is not None:  # a read is in flight (or done, unread): close once it is over

                def close(future: asyncio.Future[bytes]) -> None:
                    if not future.cancelled():
                        future.exception()  # retrieved: a read failing after the send failed is not news
                    reader.close()

                ahead.add_done_callback(close)
            else:
                reader.close()

    async def request(
        self, context_id: int, command: Command, dataset: DatasetSource | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[Message]:
        """Send a request and yield its responses, the last one non-Pending."""
        msg_id = command.message_id
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._responses[msg_id] = queue
        self._resume_reading()  # reading paused for a request held past the window: our response comes after it
        wait = self.settings.timeouts.dimse if timeout is None else timeout
        try:
            await self.send_message(context_id, command, dataset)
            while True:
                try:
                    if queue.empty():
                        async with asyncio.timeout(wait):
                            response = await queue.get()
                    else:  # already here (a C-FIND's Pending responses come many to a read): no timer
                        response = queue.get_nowait()
                except TimeoutError:
                    self.dul.abort(f"no response to {command.name} within {wait:g}s (DIMSE timeout)")
                    raise AssociationError(f"no response to {command.name} within {wait:g}s") from None
                self._response_taken(response)
                if response is None:
                    raise AssociationError(
                        f"association lost while waiting for {command.name} response: "
                        f"{self.aborted_reason or self.dul.end_reason}"
                    )
                yield response
                if response.command.status not in PENDING_STATUSES or command.name not in CANCELLABLE:
                    return  # PS3.7 9.1: only C-FIND, C-GET and C-MOVE have Pending responses; others have one
        finally:
            self._responses.pop(msg_id, None)
            while not queue.empty():  # responses nobody will take (the caller stopped, the association ended)
                left = queue.get_nowait()
                self._response_taken(left)
                if left is not None and left.dataset is not None:
                    left.dataset.discard()
            self.dul.rearm_read_timeout()

    async def release(self, timeout: float | None = None) -> None:
        """A-RELEASE: orderly close (PS3.8 §7.2)."""
        if self.dul.is_closed:
            return
        self._release_waiter = asyncio.get_running_loop().create_future()
        try:
            self.dul.release_request()
        except InvalidTransition:  # already aborted (Sta13): nothing to release
            await self.wait_closed()
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._release_waiter), timeout or self.settings.timeouts.acse)
        except TimeoutError:
            self.dul.abort("no A-RELEASE-RP in time")
        await self.wait_closed()

    def abort(self, reason: str = "aborted by local user") -> None:
        self.dul.abort(reason)

    async def wait_closed(self) -> None:
        await self.dul.wait_closed()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._after:
            await asyncio.gather(*list(self._after), return_exceptions=True)
        if self.unanswered and not self._unanswered_logged:
            self._unanswered_logged = True
            log.info(
                "%s association ended with %d request(s) not answered (%s)",
                self.label,
                self.unanswered,
                self.aborted_reason or self.dul.end_reason or "connection closed",
            )


def max_length_refusal(announced: int, floor: int) -> str | None:
    """Why a peer's Maximum Length (PS3.8 D.1, its User Information) is not acceptable; None when it is.

    0 means no maximum (PS3.8 D.1) and is always acceptable. Below ``floor`` (max_pdu_peer_min)
    every P-DATA-TF PDU we send it would carry a few bytes: a peer announcing 8 would have a C-GET
    of a large study sent as hundreds of millions of PDUs, our CPU spent on its behalf."""
    if announced == 0 or announced >= floor:
        return None
    return (
        f"the peer announces a Maximum Length of {announced} bytes, less than max_pdu_peer_min ({floor}): "
        f"every PDU we sent it would carry at most {max(announced - 6, 0)} bytes of data; the peer should "
        f"announce at least {floor} (or 0, no maximum), or lower max_pdu_peer_min"
    )


def _window(item: AsynchronousOperationsWindow | None, *, invoked: bool) -> int:
    """PS3.7 D.3.3.3: the operations the peer may have outstanding with us; no item: 1, 0: unlimited
    (which we cap at MAX_WINDOW). ``invoked``: we are the acceptor (the requestor's invocations)."""
    if item is None:
        return 1
    value = item.max_invoked if invoked else item.max_performed
    return MAX_WINDOW if value == 0 else min(value, MAX_WINDOW)


def _accepted_contexts(rq: AAssociateRQ, ac: AAssociateAC) -> list[NegotiatedContext]:
    return accepted_by_peer(
        rq.presentation_contexts, ac.presentation_contexts, ac.user_information.roles, rq.user_information.roles
    )


def describe_rejection(rj: AAssociateRJ) -> str:
    """PS3.8 Table 9-21 result, source and reason, in plain words."""
    result = "permanent" if rj.result == 1 else "transient"
    term = REJECT_REASONS.get((rj.source, rj.reason))
    reason = in_words(term) if term else f"reason {rj.reason}"
    source = REJECT_SOURCES.get(rj.source)
    return f"association rejected ({result}) by {source.short if source else rj.source}: {reason}"


def build_rq(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    settings: AssociationSettings,
    roles: Sequence[RoleSelection] = (),
) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ proposing one context per (abstract syntax, transfer syntaxes)."""
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts proposed; PS3.8 allows at most 128")
    pcs = [PresentationContextRQ(2 * i + 1, abstract, list(ts)) for i, (abstract, ts) in enumerate(contexts)]
    info = UserInformation(
        maximum_length=settings.max_pdu_receive,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        roles=list(roles),
    )
    return AAssociateRQ(called_ae=called_ae, calling_ae=calling_ae, presentation_contexts=pcs, user_information=info)


async def connect(
    host: str,
    port: int,
    rq: AAssociateRQ,
    settings: AssociationSettings,
    *,
    connect_timeout: float = 15.0,
    handler: RequestHandler | None = None,
    sink_factory: SinkFactory | None = None,
    local_host: str | None = None,
    tls: bool = False,
) -> Association:
    """Open a TCP connection (from ``local_host`` when given), send the A-ASSOCIATE-RQ, wait for the answer.

    ``tls``: DICOM TLS (PS3.15 B.1) with ``settings.tls_context``, the peer's certificate verified.
    """
    context: ssl.SSLContext | None = None
    if tls:
        if settings.tls_context is not None:
            context = await current_context_async(settings.tls_context)
        else:
            raise AssociationError(
                f"{host}:{port} is to be called with TLS, but no TLS client settings are "
                "configured (set tls_ca_file, and tls_cert_file/tls_key_file if the peer "
                "wants our certificate)"
            )
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                limit=stream_limit(settings.max_pdu_receive),
                local_addr=(local_host, 0) if local_host else None,
                ssl=context,
                server_hostname=host if context is not None else None,
                ssl_handshake_timeout=connect_timeout if context is not None else None,
            ),
            connect_timeout,
        )
    except TimeoutError:
        raise AssociationError(
            f"no TCP connection to {host}:{port} within {connect_timeout:g}s "
            "(host down, or a firewall dropping packets?)"
        ) from None
    except ssl.SSLError as exc:
        raise AssociationError(f"TLS handshake with {host}:{port} failed: {describe_tls_error(exc)}") from exc
    except OSError as exc:
        if context is not None and isinstance(exc, ConnectionAbortedError):  # handshake timeout
            raise AssociationError(f"TLS handshake with {host}:{port} failed: {describe_tls_error(exc)}") from exc
        if context is not None and isinstance(exc, ConnectionResetError | BrokenPipeError):
            raise AssociationError(
                f"TLS handshake with {host}:{port} failed: the peer closed the connection "
                "(is it a TLS port? does it accept our certificate?)"
            ) from exc
        raise AssociationError(
            f"cannot connect to {host}:{port}: {exc.strerror or exc} (is the peer listening on that port?)"
        ) from exc
    assoc = Association(reader, writer, settings, is_requestor=True, handler=handler, sink_factory=sink_factory)
    assoc.rq = rq
    assoc.calling_ae = rq.calling_ae
    assoc.called_ae = assoc.remote_ae = rq.called_ae
    assoc.label = f"[{rq.called_ae}@{host}:{port}]"
    assoc.dul.label = assoc.label
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s sending A-ASSOCIATE-RQ\n%s", assoc.label, describe_associate(rq))
    assoc.dul.start_requestor(rq)
    assoc.start_reading()
    try:
        await assoc.established
    except AssociationRejected:
        raise
    except AssociationError as exc:
        if context is not None and assoc.dul.bytes_received == 0:
            # TLS 1.3: the server checks our certificate after the handshake has ended
            # for us, so its refusal arrives as a closed connection.
            raise AssociationError(
                f"{exc}: the TLS peer closed the connection without answering; it may require "
                "a client certificate we did not send or do not have signed by its CA "
                "(--tls-cert/--tls-key, tls_cert_file/tls_key_file)"
            ) from exc
        raise
    return assoc
