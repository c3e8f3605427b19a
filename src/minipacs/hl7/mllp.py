"""HL7 v2 orders over MLLP: the listener (HL7 MLLP Release 1, HL7 v2.5 Appendix C.4).

Each message comes framed as <VT 0x0B> message <FS 0x1C><CR 0x0D> and is answered with
one framed ACK: the listener only frames, the message handler it is given does the rest
(bootstrap gives hl7/adt.py ``HL7Receiver``: parse per MSH-18, apply orders to the worklist and ADT
events to the archive, in each sender's lane, ACK). A bad message gets AE/AR with the reason in
MSA-3 and changes nothing; the connection keeps serving. Bytes outside a frame are dropped, and so
is a frame that another start block interrupts before its end block (the sender gave up on it).

The <FS> alone ends a frame: the content never holds <FS> (nor <VT>), and some senders omit the
<CR>. HAPI's decoder hands such a message on only when its read times out and Camel's MLLP has
``requireEndOfData=false`` for them; answering at the <FS> spares the sender the wait. A <CR>
right after the <FS> is the rest of the end block, also when it arrives in a later read. A frame larger than
``hl7_max_message_bytes`` is NAKed and the connection closed (the rest of it is
not read); a connection silent for ``idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Final

from minipacs.hl7.ack import build_ack, encode_ack
from minipacs.hl7.errors import REJECT, HL7Error
from minipacs.hl7.message import Message, parse

log = logging.getLogger("minipacs.hl7")

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c\x0d"
#: The end block's first byte, <FS>, ends a frame on its own; its <CR> (END_BLOCK[1:]) may follow.
FS: Final = b"\x1c"
CR: Final = 0x0D
#: How much of an oversized frame is read for its MSH segment (the NAK names its control ID).
MSH_PEEK_BYTES: Final = 4096

#: The sending peer's host address while its message is handled (each connection is a task of
#: its own), for the audit trail (hl7/adt.py): the handler's signature stays bytes -> bytes.
PEER: contextvars.ContextVar[str] = contextvars.ContextVar("minipacs_hl7_peer", default="")

#: One message's bytes (without the frame) -> the ACK's bytes; never raises for a bad message.
MessageHandler = Callable[[bytes], Awaitable[bytes]]
#: The connection's (host, port) and reader -> the client's (host, port): behind a load balancer, the one its
#: PROXY header names (bootstrap wires net/proxy_protocol.py). ValueError (in words): the connection is closed.
PeerResolver = Callable[[tuple[str, int], asyncio.StreamReader], Awaitable[tuple[str, int]]]


def _unfinished(buffer: bytearray) -> str:
    """The log's words for a frame cut off by the end of its connection ('' when none was begun)."""
    if not buffer.startswith(START_BLOCK):
        return ""
    return f" with {len(buffer) - 1} byte(s) of a frame without its end block: dropped, nothing of it was applied"


def frame(message: str | bytes) -> bytes:
    """MLLP: <VT> message <FS><CR>; a text message in UTF-8."""
    return START_BLOCK + (message.encode("utf-8") if isinstance(message, str) else message) + END_BLOCK


class MLLPServer:
    """The HL7 listener: one asyncio server, one task per connection; ``handler`` answers each message,
    ``application`` (MSH-3) names us in the NAK of an oversized frame."""

    def __init__(
        self,
        handler: MessageHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_message_bytes: int = 1 << 20,
        idle_timeout: float = 300.0,
        max_connections: int = 64,
        application: str = "MINIPACS",
        peer_resolver: PeerResolver | None = None,
    ) -> None:
        self.handler = handler
        self.peer_resolver = peer_resolver
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        #: Connections open at once: each may buffer up to max_message_bytes, so without a bound a
        #: flood of half-sent frames would take the process's memory (and file descriptors) from the
        #: DICOM and web listeners too.
        self.max_connections = max_connections
        self.application = application
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        #: Messages are applied one at a time (orders of one patient arrive in sequence).
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port, reuse_address=True)
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            log.warning(
                "HL7 connection from %s closed: %d connections are open, hl7_max_connections",
                writer.get_extra_info("peername"),
                len(self._connections),
            )
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            if self.peer_resolver is not None:
                socket_peer = (str(peer[0]), int(peer[1]))
                try:
                    peer = await self.peer_resolver(socket_peer, reader)
                except ValueError as exc:
                    log.warning("HL7 connection from %s:%s closed: %s", *socket_peer, exc)
                    return
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("HL7 connection from %s dropped", peer)
        except asyncio.CancelledError:  # the listener is closing; asyncio would log a cancelled handler
            log.info("HL7 connection from %s closed: the listener is stopping", peer)
        except Exception:  # a fault of ours: this connection closes, logged; the listener and the others go on
            log.exception("HL7 connection from %s closed after an unexpected error", peer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object) -> None:
        if isinstance(peer, tuple) and len(peer) >= 2:
            PEER.set(str(peer[0]))
        buffer = bytearray()
        cr_due = False  # a frame just ended at its <FS>: a <CR> next is the rest of its end block
        while True:
            if cr_due and buffer:
                cr_due = False
                if buffer[0] == CR:
                    del buffer[:1]
            start = buffer.find(START_BLOCK)
            outside = len(buffer) if start < 0 else start
            if outside:
                if buffer[:outside].strip():
                    log.warning("HL7 %s: %d byte(s) outside an MLLP frame ignored", peer, outside)
                del buffer[:outside]
                start = buffer.find(START_BLOCK)
            end = buffer.find(FS)
            restart = buffer.rfind(START_BLOCK, 1, end if end > 0 else len(buffer)) if start >= 0 else -1
            if restart > 0:
                # MLLP: the content never holds <VT>, so a second start block before the end block means
                # the frame before it lost its end (a sender that gave up and resent): drop that partial
                # message, never answer the next one as if glued to it (its ACK would name the wrong ID).
                # Up to the LAST start block at once: a run of <VT>s is one cut, one log line, not one each
                # (64 KiB of them held the event loop, every connection's, for a second).
                abandoned = buffer.count(START_BLOCK, 0, restart)
                log.warning(
                    "HL7 %s: %d byte(s) of %d frame(s) without their end block dropped (a new start block came "
                    "first); nothing of them was applied",
                    peer,
                    restart,
                    abandoned,
                )
                del buffer[:restart]
                continue
            complete = start >= 0 and end > 0
            size = (end if complete else len(buffer)) - 1  # the message so far, without <VT>
            if size > self.max_message_bytes:
                await self._refuse_oversized(writer, peer, bytes(buffer[1 : 1 + MSH_PEEK_BYTES]))
                return
            if complete:
                data = bytes(buffer[1:end])
                del buffer[: end + len(FS)]
                cr_due = True
                async with self._lock:
                    ack = await self.handler(data)
                writer.write(frame(ack))
                await writer.drain()
                continue
            try:
                chunk = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
            except TimeoutError:
                cut = _unfinished(buffer)
                log.log(
                    logging.WARNING if cut else logging.INFO,
                    "HL7 connection from %s idle for %gs: closed%s",
                    peer,
                    self.idle_timeout,
                    cut,
                )
                return
            if not chunk:
                if buffer:
                    log.warning("HL7 connection from %s closed by the sender%s", peer, _unfinished(buffer))
                return
            buffer += chunk

    async def _refuse_oversized(self, writer: asyncio.StreamWriter, peer: object, head: bytes) -> None:
        """AR for a frame over the limit; MSA-2 names its control ID when its MSH (``head``, the frame's
        first bytes) can be read, so the sender knows which message was refused (HL7 v2.5 2.9.2)."""
        reason = (
            f"message larger than hl7_max_message_bytes ({self.max_message_bytes} bytes); "
            "nothing was applied and the connection is closed"
        )
        log.warning("HL7 %s: %s", peer, reason)
        error = HL7Error(reason, ack_code=REJECT, error_code=207)
        msh = re.split(rb"\r|\n", head, maxsplit=1)[0]
        try:
            message: Message | None = parse(msh.decode("latin-1"))
        except HL7Error:
            message = None
        ack = build_ack(message, REJECT, reason, error=error, application=self.application)
        writer.write(frame(encode_ack(ack, message)))
        await writer.drain()


__all__ = ["END_BLOCK", "PEER", "START_BLOCK", "MLLPServer", "MessageHandler", "PeerResolver", "frame"]
