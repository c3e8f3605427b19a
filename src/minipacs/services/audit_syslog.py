"""The audit trail sent on to a collector: DICOM Audit Messages (PS3.15 A.5, core/atna.py) over syslog,
UDP (RFC 5426) or TLS (RFC 5425, octet counting), the IHE ATNA Record Audit Event transaction.

The audit log hands each batch it wrote to :meth:`SyslogSender.submit` (a queue append); the
sender's task turns rows into messages and sends them, reconnecting (TLS) after a failure with a
growing pause. The index keeps the trail whatever happens here: a full queue drops the oldest
messages (counted, logged), never blocks the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from minipacs.core.atna import audit_message, octet_counted, syslog_message

log = logging.getLogger("minipacs.audit.syslog")

#: RFC 5426 §3.2: a UDP message fits one datagram; larger ones are cut to this (the XML then breaks, logged).
MAX_UDP: Final = 65507
SCHEMES: Final = ("udp", "tls")


class SyslogConfigError(ValueError):
    """The collector address cannot be used."""


@dataclass(frozen=True)
class Collector:
    scheme: str  # "udp" or "tls"
    host: str
    port: int


def parse_collector(url: str) -> Collector:
    """``udp://host:port`` or ``tls://host:port`` (RFC 5426 port 514, RFC 5425 port 6514 by default)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise SyslogConfigError(
            f"audit_syslog {url!r} must be udp://host:port or tls://host:port (an ATNA audit record repository)"
        )
    try:
        port = parts.port or (514 if parts.scheme == "udp" else 6514)
    except ValueError:
        raise SyslogConfigError(f"audit_syslog {url!r}: the port must be 1 to 65535") from None
    return Collector(parts.scheme, parts.hostname, port)


class SyslogSender:
    def __init__(
        self,
        collector: Collector,
        source_id: str,
        *,
        tls: ssl.SSLContext | None = None,
        max_queue: int = 10_000,
        hostname: str = "",
    ) -> None:
        if collector.scheme == "tls" and tls is None:
            raise SyslogConfigError("audit_syslog over tls:// needs audit_syslog_ca_file (the collector's CA)")
        self.collector = collector
        self.source_id = source_id
        self.tls = tls
        self.hostname = hostname or socket.gethostname()
        self._queue: deque[Mapping[str, Any]] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows to send (AuditLog.forward); the oldest go when the queue is full."""
        for row in rows:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("audit syslog: %d message(s) dropped; is %s reachable?", self.dropped, self.collector)
            self._queue.append(row)
        self._wake.set()

    def _encode(self, row: Mapping[str, Any]) -> bytes:
        xml = audit_message(row, self.source_id)
        return syslog_message(xml, row["time"], self.hostname, str(os.getpid()))

    async def run(self) -> None:
        """Send until cancelled; a TLS connection is opened when there is something to send."""
        pause = 1.0
        writer: asyncio.StreamWriter | None = None
        udp: asyncio.DatagramTransport | None = None
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    if self.collector.scheme == "udp":
                        if udp is None:
                            udp = await self._open_udp()
                        while self._queue:
                            udp.sendto(self._encode(self._queue[0])[:MAX_UDP])
                            self._queue.popleft()
                            self.sent += 1
                    else:
                        if writer is None:
                            _, writer = await asyncio.open_connection(
                                self.collector.host, self.collector.port, ssl=self.tls
                            )
                        while self._queue:
                            writer.write(octet_counted(self._encode(self._queue[0])))
                            await writer.drain()
                            self._queue.popleft()
                            self.sent += 1
                    pause = 1.0
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                    log.warning(
                        "audit syslog: cannot send to %s://%s:%d (%s); %d waiting, retrying in %.0f s",
                        self.collector.scheme,
                        self.collector.host,
                        self.collector.port,
                        exc,
                        len(self._queue),
                        pause,
                    )
                    if writer is not None:
                        writer.close()
                        writer = None
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 60.0)
        finally:
            if udp is not None:
                udp.close()
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every queued message has been handed to the collector's
        connection: called at shutdown, after the audit log's last flush and before ``run`` is cancelled,
        so the last rows (Application Stop) leave too. False, logged: some were still waiting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue:
            if loop.time() >= deadline:
                log.warning(
                    "audit syslog: %d message(s) not sent to %s://%s:%d at shutdown (they are in the index)",
                    len(self._queue),
                    self.collector.scheme,
                    self.collector.host,
                    self.collector.port,
                )
                return False
            await asyncio.sleep(0.02)
        return True

    async def _open_udp(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(self.collector.host, self.collector.port)
        )
        return transport


__all__ = ["Collector", "SyslogConfigError", "SyslogSender", "parse_collector"]
