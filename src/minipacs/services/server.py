"""The DICOM listener: accepts associations, negotiates, dispatches to services.

Limits enforced here: maximum concurrent associations, in all and from one
peer address (A-ASSOCIATE-RJ transient / local-limit-exceeded), the called AE title when configured
(reason 7), protocol version and application context, and the access policy
(core/access.py): a calling AE it refuses gets reason 3, an operation it
refuses gets status 0x0124 (Not authorized). Every association, accepted or
not, ends up in the association log.

A connection takes an association slot (max_associations) only once its
association is accepted. Before that -- TCP accepted, TLS handshake or
A-ASSOCIATE-RQ under way -- it is *pending*, and pending connections are capped
per listener (max_pending_connections) and per peer address
(max_pending_per_host): beyond the caps a connection is closed at once, and one
that has not completed its A-ASSOCIATE-RQ (TLS handshake included)
handshake_timeout seconds after the TCP accept is closed. So a flood of silent
connections, or of stalled TLS handshakes, can neither take the slots of real
associations nor block the other listener.

With a TLS port (PS3.15 B.1) the handshake comes first, and one that fails is
logged in words and kept in the association log. With dicom_user_identity the
User Identity item (PS3.7 D.3.3.7, services/user_identity.py) is checked; a
refused identity gets reason 1 (no reason given).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from minipacs import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from minipacs.core.access import AccessPolicy
from minipacs.core.metrics import Metrics
from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import title_problem
from minipacs.dicom.uids import APPLICATION_CONTEXT_NAME, uid_name
from minipacs.net.association import (
    MAX_PDU_PEER_MIN,
    Association,
    AssociationSettings,
    DatasetSink,
    Message,
    describe_rejection,
    max_length_refusal,
)
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts, stream_limit
from minipacs.net.memory import MAX_MEMORY_DATASET, MEMORY_DATASETS_BUDGET, MemoryBudget
from minipacs.net.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ
from minipacs.net.pdu_items import (
    AsynchronousOperationsWindow,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserInformation,
)
from minipacs.net.presentation import (
    RESULT_NAMES,
    NegotiatedContext,
    SupportedContext,
    even_ids,
    negotiate,
)
from minipacs.net.proxy_protocol import ProxyHeader, ProxyHeaderError, ProxySources, socket_reader
from minipacs.net.tls import TLSContext, current_context_async, describe_tls_error
from minipacs.services.base import ServiceClass, UnknownSOPClasses
from minipacs.services.dispatch import (
    Operation,
    Response,
    ServiceRegistrationError,
    check_operation,
    dispatch,
    guarded,
    send_answer,
)
from minipacs.services.user_identity import IdentityCheck, UserIdentityPolicy

log = logging.getLogger("minipacs.server")

#: PS3.7 C.4.2: Unrecognized operation (a request the context's SOP class does not have here).
UNRECOGNIZED_OPERATION = 0x0211

#: Defaults of the limits on connections that are not associations yet (config.py has the keys).
MAX_PENDING_CONNECTIONS = 64
MAX_PENDING_PER_HOST = 8
HANDSHAKE_TIMEOUT = 10.0
#: Default of max_async_operations: requests one association may have outstanding (PS3.7 D.3.3.3).
MAX_ASYNC_OPERATIONS = 8
#: Refused connections are logged at most once per this many seconds (per listener).
REFUSAL_LOG_INTERVAL = 10.0
#: listen() backlog of the DICOM listeners (asyncio.start_server's default).
LISTEN_BACKLOG = 100
#: accept() failing for lack of file descriptors or memory: retry after a delay doubling from
#: the first to the second value (seconds), instead of spinning on a listening socket that stays readable.
ACCEPT_BACKOFF = (0.05, 2.0)
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors about one connection that is already gone: just take the next.
ACCEPT_PEER_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET})

AssociationLogger = Callable[[AssociationRecord], Awaitable[object]]


class TLSListenError(OSError):
    """The TLS port cannot be listened on; the message (strerror) is the whole sentence."""


@dataclass
class PendingConnections:
    """The connections of one listener that are not associations yet, in total and per peer address."""

    max_total: int
    max_per_host: int
    by_host: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` cannot be taken now; None: it can."""
        return self.host_refusal(host) or self.total_refusal()

    def host_refusal(self, host: str) -> str | None:
        if self.by_host.get(host, 0) >= self.max_per_host:
            return (
                f"{self.by_host[host]} connections from that address have not associated yet "
                f"(max_pending_per_host = {self.max_per_host})"
            )
        return None

    def total_refusal(self) -> str | None:
        if self.total >= self.max_total:
            return f"{self.total} connections have not associated yet (max_pending_connections = {self.max_total})"
        return None

    def add(self, host: str | None) -> None:
        """``host`` None: counted in the total only (a load balancer's connection before its PROXY header)."""
        self.total += 1
        if host is not None:
            self.by_host[host] = self.by_host.get(host, 0) + 1

    def remove(self, host: str | None) -> None:
        self.total -= 1
        if host is None:
            return
        left = self.by_host.get(host, 1) - 1
        if left > 0:
            self.by_host[host] = left
        else:
            self.by_host.pop(host, None)


class PendingSlot:
    """One pending connection's place in its listener's :class:`PendingConnections`; freed once."""

    __slots__ = ("held", "host", "pending")

    def __init__(self, pending: PendingConnections, host: str | None) -> None:
        self.pending = pending
        self.host = host
        self.held = True
        pending.add(host)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.pending.remove(self.host)

    def move_to(self, host: str) -> None:
        """Count a held total-only slot under ``host`` (the client its PROXY header named) from now on."""
        if self.held and self.host is None:
            self.host = host
            self.pending.by_host[host] = self.pending.by_host.get(host, 0) + 1


class Listener:
    """One listening address of the server (plain DICOM or DICOM TLS), its accept loops and its pending pool."""

    def __init__(self, name: str, pending: PendingConnections, tls: TLSContext | None) -> None:
        self.name = name
        self.pending = pending
        self.tls = tls
        self.sockets: list[socket.socket] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.refused_unlogged = 0
        self.refusal_logged_at = -REFUSAL_LOG_INTERVAL

    def refused(self, host: str, port: int, why: str) -> None:
        """Log a refused connection, at most once per REFUSAL_LOG_INTERVAL (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self.refusal_logged_at < REFUSAL_LOG_INTERVAL:
            self.refused_unlogged += 1
            return
        more = f"; {self.refused_unlogged} more refused since the last message" if self.refused_unlogged else ""
        log.warning("%s: connection from %s:%s closed at once: %s%s", self.name, host, port, why, more)
        self.refusal_logged_at = now
        self.refused_unlogged = 0


def _stream_protocol(
    limit: int,
    callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    loop: asyncio.AbstractEventLoop,
) -> asyncio.StreamReaderProtocol:
    """What asyncio.start_server makes per connection: a reader with our buffer limit, ``callback`` run on connect."""
    return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit, loop=loop), callback, loop=loop)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of ``host`` (as asyncio.start_server makes)."""
    infos = socket.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _ssl_of(listener: Listener) -> ssl.SSLContext | None:
    """The SSLContext for a connection the TLS ``listener`` has just accepted, fetched before its socket
    is read from: a look at the CRL file (and a rebuild when it changed) runs in a worker thread
    (net/tls.py ``current_context_async``), and a ClientHello that arrived meanwhile waits in the
    kernel rather than reaching the plain stream."""
    return None if listener.tls is None else await current_context_async(listener.tls)


def _balancer_own(header: ProxyHeader, conn: socket.socket) -> bool:
    """Whether the PROXY header is on the balancer's own connection, as a health check's is (the
    connection is then not logged if it ends without an A-ASSOCIATE-RQ): version 2 LOCAL, version 1
    UNKNOWN, or a header whose destination is this very socket's address. HAProxy's `check
    check-send-proxy` sends `PROXY TCP4 <its own address> <ours>`: nobody connected to the balancer
    for it, whereas a client's connection names the balancer's frontend as its destination."""
    if header.balancer_own:
        return True
    try:
        local = conn.getsockname()[:2]
    except OSError:
        return False
    return header.destination is not None and (header.destination[0], header.destination[1]) == (local[0], local[1])


class DicomServer:
    def __init__(
        self,
        ae_title: str,
        services: Sequence[ServiceClass],
        *,
        host: str = "0.0.0.0",
        port: int = 11112,
        max_associations: int = 32,
        max_associations_per_host: int = 0,
        check_called_aet: bool = False,
        max_pdu_receive: int = 1024 * 1024,
        max_pdu_send: int = 1024 * 1024,
        timeouts: Timeouts | None = None,
        association_logger: AssociationLogger | None = None,
        access: AccessPolicy | None = None,
        tls_port: int = 0,
        tls_context: TLSContext | None = None,
        tls_client: TLSContext | None = None,
        identity: UserIdentityPolicy | None = None,
        max_pending_connections: int = MAX_PENDING_CONNECTIONS,
        max_pending_per_host: int = MAX_PENDING_PER_HOST,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_async_operations: int = MAX_ASYNC_OPERATIONS,
        metrics: Metrics | None = None,
        proxy_sources: ProxySources | None = None,
        memory_dataset_max_bytes: int = MAX_MEMORY_DATASET,
        memory_datasets_budget_bytes: int = MEMORY_DATASETS_BUDGET,
        max_pdu_peer_min: int = MAX_PDU_PEER_MIN,
        unknown_sop_classes: UnknownSOPClasses | None = None,
    ) -> None:
        self.ae_title = ae_title
        #: Addresses whose connections start with a PROXY header naming the real client (proxy_protocol_from).
        self.proxy_sources = proxy_sources if proxy_sources else None
        self._header_tasks: set[asyncio.Task[None]] = set()
        #: Prometheus figures (core/metrics.py); None: nothing is counted.
        self.metrics = metrics
        self.host = host
        self.port = port
        #: DICOM TLS listener (PS3.15 B.1): ``tls_context`` (net/tls.py server_context) on ``tls_port``.
        self.tls_port = tls_port
        self.tls_context = tls_context
        #: None: User Identity items are not looked at (services/user_identity.py).
        self.identity = identity
        self.max_associations = max_associations
        #: Open associations one peer address may hold (0: no cap but max_associations).
        self.max_associations_per_host = max_associations_per_host
        self.max_pending_connections = max_pending_connections
        self.max_pending_per_host = max_pending_per_host
        #: From the TCP accept to a complete A-ASSOCIATE-RQ (TLS handshake included); ARTIM if shorter.
        self.handshake_timeout = handshake_timeout
        #: The most requests a requestor may have outstanding with us, when it proposes a window.
        self.max_async_operations = max_async_operations
        self.check_called_aet = check_called_aet
        #: What the data sets of every association's requests hold in memory at once (net/memory.py).
        self.memory_budget = MemoryBudget(memory_datasets_budget_bytes)
        self.assoc_settings = AssociationSettings(
            ae_title=ae_title,
            max_pdu_receive=max_pdu_receive,
            max_pdu_send=max_pdu_send,
            timeouts=timeouts or Timeouts(),
            tls_context=tls_client,
            max_memory_dataset=memory_dataset_max_bytes,
            memory_budget=self.memory_budget,
            max_pdu_peer_min=max_pdu_peer_min,
        )
        self.association_logger = association_logger
        #: None: every calling AE may ask for everything we serve.
        self.access = access
        self.services = list(services)
        self.supported: dict[str, SupportedContext] = {}
        #: (abstract syntax, DIMSE request name) -> operation: two services may both
        #: answer C-FIND, each for its own SOP classes (Q/R models vs worklist).
        self.dispatch: dict[tuple[str, str], Operation] = {}
        self.sinks: dict[str, ServiceClass] = {}
        for service in services:
            if not isinstance(service, ServiceClass):
                raise ServiceRegistrationError(
                    f"service {getattr(service, 'name', service)!r} does not implement ServiceClass (name, "
                    "supported_contexts, handlers, sink_for, extended_negotiation); inherit services.base.Service"
                )
            contexts = service.supported_contexts()
            self.supported.update(contexts)
            for name, registered in service.handlers().items():
                operation = check_operation(service.name, name, registered)  # no access rule: refused here
                entry = operation if access is None else guarded(operation, access)
                for abstract in contexts:
                    self.dispatch[(abstract, name)] = entry
            for abstract in contexts:
                self.sinks[abstract] = service
        #: Takes a proposed abstract syntax no service lists, if it will (accept_unknown_sop_classes): its
        #: contexts are answered per association, and its requests found here by DIMSE request name.
        self.unknown_sop_classes = unknown_sop_classes
        self.unknown_dispatch: dict[str, Operation] = {}
        if unknown_sop_classes is not None:
            if unknown_sop_classes not in self.services:
                raise ServiceRegistrationError(
                    f"service {unknown_sop_classes.name!r} takes unknown SOP classes but is not one of the services"
                )
            for name, registered in unknown_sop_classes.handlers().items():
                operation = check_operation(unknown_sop_classes.name, name, registered)
                self.unknown_dispatch[name] = operation if access is None else guarded(operation, access)
        self.connections: set[Association] = set()
        self.established: set[Association] = set()
        self.listeners: list[Listener] = []
        #: User identities checked off the loop (_prepare) for _check, and our answers for the AC.
        self._identity_checks: dict[Association, IdentityCheck] = {}
        self._identity_answers: dict[Association, UserIdentityAC] = {}
        self._log_tasks: set[asyncio.Task[object]] = set()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.listeners = []
        plain = self._listener("DICOM listener", None)
        plain.sockets = listening_sockets(self.host, self.port)
        if self.port == 0:
            self.port = plain.sockets[0].getsockname()[1]
        self._serve_on(plain)
        log.info("DICOM listener %s on %s:%d", self.ae_title, self.host, self.port)
        if self.tls_context is not None:
            # The TLS listener accepts plain TCP and starts TLS in _on_accepted: a failed handshake
            # is ours to log in words (asyncio would only log it at debug level).
            tls = self._listener("DICOM TLS listener", self.tls_context)
            try:
                tls.sockets = listening_sockets(self.host, self.tls_port)
            except OSError as exc:
                await self._stop_listening()
                raise TLSListenError(
                    exc.errno,
                    f"cannot listen for DICOM TLS on {self.host}:{self.tls_port}: "
                    f"{exc.strerror} (is another server using that port?)",
                ) from exc
            if self.tls_port == 0:
                self.tls_port = tls.sockets[0].getsockname()[1]
            self._serve_on(tls)
            log.info(
                "DICOM TLS listener %s on %s:%d%s",
                self.ae_title,
                self.host,
                self.tls_port,
                "; client certificates required" if self.tls_context.verify_mode == ssl.CERT_REQUIRED else "",
            )

    def _listener(self, name: str, tls: TLSContext | None) -> Listener:
        listener = Listener(name, PendingConnections(self.max_pending_connections, self.max_pending_per_host), tls)
        self.listeners.append(listener)
        return listener

    def _serve_on(self, listener: Listener) -> None:
        for sock in listener.sockets:
            listener.tasks.append(asyncio.ensure_future(self._accept_loop(listener, sock)))

    async def _stop_listening(self) -> None:
        for task in list(self._header_tasks):
            task.cancel()
        if self._header_tasks:
            await asyncio.gather(*self._header_tasks, return_exceptions=True)
        for listener in self.listeners:
            for task in listener.tasks:
                task.cancel()
            if listener.tasks:
                await asyncio.gather(*listener.tasks, return_exceptions=True)
            listener.tasks = []
            for sock in listener.sockets:
                sock.close()
            listener.sockets = []

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening; give open associations ``grace`` seconds, then abort them."""
        await self._stop_listening()
        if self.connections:
            log.info("waiting up to %gs for %d open association(s)", grace, len(self.connections))
            waits = [asyncio.ensure_future(a.wait_closed()) for a in list(self.connections)]
            _done, pending = await asyncio.wait(waits, timeout=grace)
            for assoc in list(self.connections):
                assoc.abort("server shutting down")
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        if self._log_tasks:
            await asyncio.gather(*list(self._log_tasks), return_exceptions=True)

    # ---------------------------------------------------------- connections
    async def _accept_loop(self, listener: Listener, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = stream_limit(self.assoc_settings.max_pdu_receive)
        delay = 0.0  # > 0 while backing off
        failures = 0
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in ACCEPT_PEER_ERRORS:
                    continue
                if delay == 0:  # once per back-off, not per attempt
                    log.error(
                        "%s: cannot accept connections: %s; retrying every %g s at most until it works again.%s",
                        listener.name,
                        exc.strerror or exc,
                        ACCEPT_BACKOFF[1],
                        " Raise the open-file limit (ulimit -n, systemd LimitNOFILE=) or lower "
                        "max_associations / max_pending_connections"
                        if exc.errno in ACCEPT_RESOURCE_ERRORS
                        else "",
                    )
                delay = min(max(delay * 2, ACCEPT_BACKOFF[0]), ACCEPT_BACKOFF[1])
                failures += 1
                await asyncio.sleep(delay)
                continue
            if delay:
                log.warning("%s: accepting connections again after %d failed attempt(s)", listener.name, failures)
                delay, failures = 0.0, 0
            host, port = str(address[0]), int(address[1])
            deadline = loop.time() + min(self.handshake_timeout, self.assoc_settings.timeouts.acse)
            if self.proxy_sources is not None and self.proxy_sources.expects(host):
                # A load balancer: its own address is not the per-host key, the client's is (once read).
                why = listener.pending.total_refusal()
                if why is not None:
                    conn.close()
                    listener.refused(host, port, why)
                    continue
                task = asyncio.ensure_future(
                    self._proxied(listener, conn, (host, port), PendingSlot(listener.pending, None), deadline, limit)
                )
                self._header_tasks.add(task)
                task.add_done_callback(self._header_tasks.discard)
                continue
            why = listener.pending.refusal(host)
            if why is not None:
                conn.close()
                listener.refused(host, port, why)
                continue
            slot = PendingSlot(listener.pending, host)
            callback = functools.partial(self._on_accepted, listener, slot, deadline, tls=await _ssl_of(listener))
            try:
                await loop.connect_accepted_socket(functools.partial(_stream_protocol, limit, callback, loop), conn)
            except OSError as exc:  # reset before we got to it
                slot.release()
                conn.close()
                log.debug("%s: connection from %s:%s lost at once: %s", listener.name, host, port, exc)

    async def _proxied(
        self,
        listener: Listener,
        conn: socket.socket,
        balancer: tuple[str, int],
        slot: PendingSlot,
        deadline: float,
        limit: int,
    ) -> None:
        """A connection from a proxy_protocol_from address: its PROXY header first (haproxy.org
        proxy-protocol.txt), read off the socket by the handshake deadline and not a byte further (a TLS
        ClientHello may follow), then the connection as any other, from the client the header names."""
        assert self.proxy_sources is not None
        loop = asyncio.get_running_loop()
        try:
            header = await self.proxy_sources.read(
                socket_reader(conn),
                max(deadline - loop.time(), 0.001),
                f"the handshake deadline ({min(self.handshake_timeout, self.assoc_settings.timeouts.acse):g}s)",
            )
        except ProxyHeaderError as exc:
            slot.release()
            conn.close()
            # Not rate-limited like refused(): the sender is a listed balancer, so this is a misconfiguration
            # (a balancer without send-proxy, or a client let in past it) that each line should point at.
            log.warning(
                "%s: connection from %s:%s closed: no valid PROXY header (proxy_protocol_from lists %s): %s",
                listener.name,
                *balancer,
                balancer[0],
                exc,
            )
            return
        except BaseException:
            slot.release()
            conn.close()
            raise
        peer: tuple[str, int] | None = header.source
        if peer is None:
            (log.warning if header.unsupported else log.debug)(
                "%s: connection from %s:%s: %s; using the balancer's address", listener.name, *balancer, header.note
            )
        else:
            why = listener.pending.host_refusal(peer[0])
            if why is not None:
                slot.release()
                conn.close()
                listener.refused(peer[0], peer[1], f"{why} (via the load balancer at {balancer[0]})")
                return
            slot.move_to(peer[0])
            log.debug(
                "%s: connection from %s:%s via %s:%s (PROXY v%d)", listener.name, *peer, *balancer, header.version
            )
        callback = functools.partial(
            self._on_accepted,
            listener,
            slot,
            deadline,
            peer=peer,
            health_check=_balancer_own(header, conn),
            tls=await _ssl_of(listener),
        )
        try:
            await loop.connect_accepted_socket(functools.partial(_stream_protocol, limit, callback, loop), conn)
        except OSError as exc:
            slot.release()
            conn.close()
            log.debug("%s: connection from %s:%s lost at once: %s", listener.name, *balancer, exc)

    async def _on_accepted(
        self,
        listener: Listener,
        slot: PendingSlot,
        deadline: float,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: tuple[str, int] | None = None,
        health_check: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        try:
            if tls is not None and not await self._tls_handshake(tls, writer, deadline, peer):
                return
            await self._on_connection(reader, writer, slot, deadline, peer, health_check)
        finally:
            slot.release()

    async def _tls_handshake(
        self,
        context: ssl.SSLContext,
        writer: asyncio.StreamWriter,
        deadline: float,
        peer: tuple[str, int] | None = None,
    ) -> bool:
        """PS3.15 B.1: the TLS handshake first (by the handshake deadline), then the association as on the
        plain port."""
        host, port = peer or (writer.get_extra_info("peername") or ("?", 0))[:2]
        started = datetime.now(UTC)
        try:
            await writer.start_tls(
                context,
                ssl_handshake_timeout=max(deadline - asyncio.get_running_loop().time(), 0.001),
            )
        except (OSError, EOFError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            why = describe_tls_error(exc)
            log.warning("client from %s:%s failed the TLS handshake: %s", host, port, why)
            writer.transport.abort()
            self._record(
                AssociationRecord(
                    started_at=started,
                    ended_at=datetime.now(UTC),
                    role="acceptor",
                    calling_aet="",
                    called_aet="",
                    peer_host=str(host),
                    peer_port=int(port),
                    accepted=False,
                    reject_reason=f"TLS handshake failed: {why}",
                    tls="failed",
                )
            )
            return False
        return True

    async def _on_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: PendingSlot,
        deadline: float,
        peer: tuple[str, int] | None = None,
        health_check: bool = False,
    ) -> None:
        assoc = Association(
            reader,
            writer,
            self.assoc_settings,
            is_requestor=False,
            negotiator=self._negotiate,
            handler=self._handle,
            sink_factory=self._sink_for,
            preparer=self._prepare,
            peer=peer,
        )
        # The slot is held until the association is accepted (or the connection ends).
        assoc.established.add_done_callback(lambda _: slot.release())
        expiry = asyncio.get_running_loop().call_at(deadline, self._handshake_expired, assoc)
        self.connections.add(assoc)
        try:
            await assoc.dul.run()
            await assoc.wait_closed()
        finally:
            expiry.cancel()
            self._identity_checks.pop(assoc, None)
            self._identity_answers.pop(assoc, None)
            self.connections.discard(assoc)
            if assoc in self.established:
                self.established.discard(assoc)
                if self.metrics is not None:
                    self.metrics.association_closed()
            if assoc.established.done() and not assoc.established.cancelled():
                assoc.established.exception()  # acceptors never await it: mark a failure as seen
            if health_check and not assoc.rq_received:
                # the balancer's own connection (_balancer_own) and no A-ASSOCIATE-RQ: its health check
                log.debug("%s the load balancer's health check ended", assoc.label)
            else:
                self._log(assoc)

    def _handshake_expired(self, assoc: Association) -> None:
        """handshake_timeout: no complete A-ASSOCIATE-RQ yet; close the connection (it is not an association)."""
        if assoc.rq_received or assoc.dul.is_closed:
            return
        started = (datetime.now(UTC) - assoc.started_at).total_seconds()
        assoc.dul.end_reason = (
            f"no complete A-ASSOCIATE-RQ {started:.1f}s after connecting "
            f"(handshake_timeout = {min(self.handshake_timeout, self.assoc_settings.timeouts.acse):g}s)"
        )
        assoc.abort(assoc.dul.end_reason)

    def _negotiate(self, assoc: Association, rq: AAssociateRQ) -> AAssociateAC | AAssociateRJ:
        reject = self._check(assoc, rq)
        if reject is not None:
            rj, why = reject
            assoc.reject_reason = f"{describe_rejection(rj)}: {why}"
            log.warning("%s association rejected: %s", assoc.label, why)
            return rj
        answers, accepted, roles = negotiate(
            rq.presentation_contexts, self._supported_for(rq), rq.user_information.roles
        )
        even = even_ids(rq.presentation_contexts)
        if even:
            log.warning(
                "%s presentation context ID(s) %s answered as rejected: PS3.8 9.3.2.2 allows odd IDs 1-255 only",
                assoc.label,
                ", ".join(map(str, even)),
            )
        identity_ac = self._identity_answers.pop(assoc, None)
        self.established.add(assoc)
        if self.metrics is not None:
            self.metrics.association_opened()
        info = UserInformation(
            maximum_length=self.assoc_settings.max_pdu_receive,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=roles,
            async_ops=self._async_window(rq),
            extended=self._extended_negotiation(rq),
            user_identity_ac=identity_ac,
        )
        if not accepted:
            log.warning(
                "%s none of the %d proposed presentation contexts is acceptable",
                assoc.label,
                len(rq.presentation_contexts),
            )
        log.info(
            "%s association accepted (%d of %d contexts) from %s%s calling %r called %r",
            assoc.label,
            len(accepted),
            len(answers),
            assoc.peer_host,
            f" (via the load balancer at {assoc.via})" if assoc.via else "",
            rq.calling_ae,
            rq.called_ae,
        )
        return AAssociateAC(
            called_ae=rq.called_ae, calling_ae=rq.calling_ae, presentation_contexts=answers, user_information=info
        )

    def _supported_for(self, rq: AAssociateRQ) -> Mapping[str, SupportedContext]:
        """What we accept, for this request: the services' table, and the proposed abstract syntaxes none
        lists that ``unknown_sop_classes`` takes (at most one per proposed context: nothing is kept)."""
        taker = self.unknown_sop_classes
        if taker is None:
            return self.supported
        extra: dict[str, SupportedContext] = {}
        for pc in rq.presentation_contexts:
            uid = pc.abstract_syntax
            if uid not in self.supported and uid not in extra:
                context = taker.unknown_context(uid)
                if context is not None:
                    extra[uid] = context
        return collections.ChainMap(extra, self.supported) if extra else self.supported

    def _unknown(self, abstract_syntax: str) -> bool:
        """A context accepted for an abstract syntax no service lists: ``unknown_sop_classes`` took it."""
        return self.unknown_sop_classes is not None and abstract_syntax not in self.supported

    def _async_window(self, rq: AAssociateRQ) -> AsynchronousOperationsWindow | None:
        """PS3.7 D.3.3.3: answered only when proposed (else both sides use 1/1). The requestor may
        invoke as many as it proposed, up to max_async_operations (its 0, unlimited, gets ours);
        we perform one at a time on it (C-GET sub-operations are sequential)."""
        proposed = rq.user_information.async_ops
        if proposed is None:
            return None
        ours = self.max_async_operations
        invoked = ours if proposed.max_invoked == 0 else min(proposed.max_invoked, ours)
        return AsynchronousOperationsWindow(invoked, 1)

    def _extended_negotiation(self, rq: AAssociateRQ) -> list[SOPClassExtendedNegotiation]:
        """PS3.7 D.3.3.5: each service answers the items for its SOP classes (ServiceClass.extended_negotiation).

        "Only one Sub-Item per SOP Class UID shall be present", in the request and in the answer: a
        request that repeats one gets ONE answer, to its first item (the later ones are left out, as
        repeated presentation context IDs are). Answering every copy could overflow the AC's User
        Information Item (a 16-bit Item-length) and would break the rule in our own answer."""
        replies: list[SOPClassExtendedNegotiation] = []
        first: dict[str, SOPClassExtendedNegotiation] = {}
        for item in rq.user_information.extended:
            first.setdefault(item.sop_class_uid, item)
        proposed = list(first.values())
        if not proposed:
            return replies
        for service in self.services:
            replies.extend(service.extended_negotiation(proposed))
        return replies

    async def _prepare(self, assoc: Association, rq: AAssociateRQ) -> None:
        """Check a User Identity in a thread: a passcode costs a scrypt (~50 ms) the first time,
        and a peer sending wrong ones must not stall every other association on the loop."""
        if self.identity is not None and rq.user_information.user_identity_rq is not None:
            self._identity_checks[assoc] = await asyncio.to_thread(
                self.identity.check, rq.user_information.user_identity_rq
            )

    def _check(self, assoc: Association, rq: AAssociateRQ) -> tuple[AAssociateRJ, str] | None:
        """PS3.8 Table 9-21 rejections, each with the sentence for the log."""
        if not rq.protocol_version & 1:
            return AAssociateRJ(1, 2, 2), f"protocol version {rq.protocol_version} not supported (need bit 0 set)"
        if rq.application_context != APPLICATION_CONTEXT_NAME:
            return AAssociateRJ(1, 1, 2), f"application context {rq.application_context!r} is not DICOM's"
        if not rq.presentation_contexts:
            # PS3.8 9.3.2: "one or more" Presentation Context Items. Permanent, service-user, no reason
            # given: what DCMTK's DcmSCP answers a request with no context it can accept.
            return AAssociateRJ(1, 1, 1), (
                "the A-ASSOCIATE-RQ has no Presentation Context item (PS3.8 9.3.2 requires one or more); "
                "the peer must propose the SOP classes it wants to use"
            )
        too_small = max_length_refusal(rq.user_information.maximum_length or 0, self.assoc_settings.max_pdu_peer_min)
        if too_small is not None:  # permanent, service-user, no reason given: a configuration to change
            return AAssociateRJ(1, 1, 1), too_small
        for title, which, code in ((rq.calling_ae, "calling", 3), (rq.called_ae, "called", 7)):
            # PS3.8 9.3.2 / PS3.5 Table 6.2-1 AE: no backslash, no control character. Accepted, such a
            # title would then have every C-STORE refused (it cannot be written into the stored file)
            problem = title_problem(title)
            if problem is not None:
                return AAssociateRJ(1, 1, code), (
                    f"{which} {problem} (PS3.5 6.2); change the {which} AE title in the peer's configuration"
                )
        if self.check_called_aet and rq.called_ae != self.ae_title:
            return AAssociateRJ(1, 1, 7), (
                f"called AE title {rq.called_ae!r} is not ours ({self.ae_title!r}); configure the peer "
                f"to call {self.ae_title!r}, or set check_called_aet = false"
            )
        if self.access is not None:
            refusal = self.access.association_refusal(rq.calling_ae, rq.called_ae, assoc.peer_host)
            if refusal is not None:
                code = 7 if refusal.called else 3  # called / calling AE title not recognized
                return AAssociateRJ(1, 1, code), f"{refusal.reason} (rule: {refusal.rule})"
        if self.identity is not None:  # PS3.7 D.3.3.7; refused: 1/1/1, no reason given (see user_identity.py)
            identity = self._identity_checks.pop(assoc, None)
            if identity is None:  # no item: nothing slow to check
                identity = self.identity.check(rq.user_information.user_identity_rq)
            assoc.user_identity = identity.user
            if not identity.accepted:
                return AAssociateRJ(1, 1, 1), f"user identity refused: {identity.why}"
            if identity.response is not None:
                self._identity_answers[assoc] = identity.response
            if rq.user_information.user_identity_rq is not None:
                log.info("%s %s", assoc.label, identity.why)
        if len(self.established) >= self.max_associations:
            return AAssociateRJ(2, 3, 2), (
                f"{len(self.established)} associations already open, the limit (max_associations) is "
                f"{self.max_associations}"
            )
        per_host = self.max_associations_per_host
        if per_host:
            host = assoc.peer_host
            held = sum(1 for other in self.established if other.peer_host == host)
            if held >= per_host:
                # one address never holds every slot: the others stay open to the rest (a peer that opens
                # associations and leaves them idle would otherwise lock everyone out for idle_timeout)
                return AAssociateRJ(2, 3, 2), (
                    f"{held} associations from {host} already open, the limit per address "
                    f"(max_associations_per_host) is {per_host}; the peer should release the ones it no longer uses"
                )
        return None

    def _sink_for(self, assoc: Association, ctx: NegotiatedContext, command: Command) -> DatasetSink:
        service = (
            self.unknown_sop_classes if self._unknown(ctx.abstract_syntax) else self.sinks.get(ctx.abstract_syntax)
        )
        sink = service.sink_for(assoc, ctx, command) if service is not None else None
        return sink if sink is not None else assoc.memory_sink(command)

    async def _handle(self, assoc: Association, message: Message) -> None:
        abstract = message.context.abstract_syntax
        operation = (
            self.unknown_dispatch.get(message.command.name)
            if self._unknown(abstract)
            else self.dispatch.get((abstract, message.command.name))
        )
        if operation is not None and message.context.requestor_is_scu:
            if self.metrics is None:
                await dispatch(assoc, message, operation)
                return
            started = time.perf_counter()
            await dispatch(assoc, message, operation)
            self._count(message, time.perf_counter() - started)
            return
        # PS3.7 C.4.2 0x0211 Unrecognized operation: say so and keep the association.
        log.warning(
            "%s %s on %s is not supported here",
            assoc.label,
            message.command.name,
            uid_name(message.context.abstract_syntax),
        )
        if message.dataset is not None:
            message.dataset.discard()
        try:
            await send_answer(assoc, message, Response(UNRECOGNIZED_OPERATION))
        except (KeyError, ValueError):
            assoc.abort(f"cannot answer {message.command.name}")

    def _count(self, message: Message, seconds: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        metrics.dimse_answered(message.command.name, message.status, seconds)

    # ---------------------------------------------------------- association log
    def _log(self, assoc: Association) -> None:
        rec = association_record(assoc, "acceptor")
        if self.metrics is not None:
            self.metrics.association_ended(rec.calling_aet, accepted=rec.accepted, end_reason=rec.end_reason)
        level = logging.INFO if rec.accepted else logging.WARNING
        log.log(
            level,
            "%s association ended: %s; %s",
            assoc.label,
            rec.end_reason or rec.reject_reason,
            _counts(assoc.operation_counts),
        )
        self._record(rec)

    def _record(self, rec: AssociationRecord) -> None:
        if self.association_logger is not None:
            task = asyncio.ensure_future(self.association_logger(rec))
            self._log_tasks.add(task)
            task.add_done_callback(self._log_done)

    def _log_done(self, task: asyncio.Task[object]) -> None:
        self._log_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not write the association log: %s", task.exception())


def _counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "no operations"
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def association_record(assoc: Association, role: str) -> AssociationRecord:
    """What the association log keeps about ``assoc``."""
    contexts: list[dict[str, object]] = []
    if assoc.rq is not None:
        answers = {c.context_id: c for c in assoc.ac.presentation_contexts} if assoc.ac is not None else {}
        for pc in assoc.rq.presentation_contexts:
            ans = answers.get(pc.context_id)
            contexts.append(
                {
                    "id": pc.context_id,
                    "abstract_syntax": pc.abstract_syntax,
                    "name": uid_name(pc.abstract_syntax),
                    "proposed": list(pc.transfer_syntaxes),
                    "result": RESULT_NAMES.get(ans.result, str(ans.result)) if ans else "not answered",
                    "transfer_syntax": ans.transfer_syntax if ans and ans.result == 0 else "",
                }
            )
    accepted = assoc.ac is not None
    reject = assoc.reject_reason
    if assoc.rq is None and not reject:
        reject = f"no A-ASSOCIATE-RQ received ({assoc.end_reason or 'connection closed'})"
    counts = assoc.operation_counts
    ops = list(assoc.operations)
    if sum(counts.values()) > len(ops):
        ops.append({"op": "summary", "counts": dict(counts)})
    return AssociationRecord(
        started_at=assoc.started_at,
        ended_at=datetime.now(UTC),
        role=role,
        calling_aet=assoc.calling_ae,
        called_aet=assoc.called_ae,
        peer_host=assoc.peer_host,
        peer_port=assoc.peer_port,
        accepted=accepted,
        reject_reason=reject,
        end_reason=assoc.end_reason if accepted else "",
        contexts=contexts,
        operations=ops,
        bytes_received=assoc.dul.bytes_received,
        bytes_sent=assoc.dul.bytes_sent,
        tls=assoc.tls.version if assoc.tls is not None else "",
        tls_peer=assoc.tls.peer_subject if assoc.tls is not None else "",
        user_identity=assoc.user_identity,
    )
