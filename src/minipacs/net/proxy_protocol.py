"""The PROXY protocol (HAProxy, doc/proxy-protocol.txt, versions 1 and 2): who really connected.

Behind a TCP load balancer every connection comes from the balancer's address. A balancer set to
``send-proxy`` (version 1, one text line) or ``send-proxy-v2`` (binary) first sends a header naming
the client's address and port; the receiver reads it before anything else -- before the TLS
handshake on a TLS port -- and uses that address as the peer's everywhere.

The spec says a receiver must not guess whether a header is present: from an address listed in
``proxy_protocol_from`` the header is required, from any other address none is looked for (the
bytes are DICOM or HL7 as usual, so a forged header there is just a malformed first PDU).

This module reads exactly the header's bytes and no more (the bytes after it may be a TLS
ClientHello that the TLS layer must see whole): version 2 announces its length; version 1 is read
up to its CRLF, at most V1_MAX_BYTES. Limits: V1_MAX_BYTES (the spec's worst case, 107 bytes with
the CRLF), the caller's cap on version 2's address block (``v2_max_bytes``), and the caller's deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("minipacs.proxy")

#: proxy-protocol.txt 2.1: the longest version 1 line, CRLF included ("PROXY UNKNOWN" + two IPv6 + ports).
V1_MAX_BYTES: Final = 107
#: proxy-protocol.txt 2.2: the 12-byte signature of version 2, then version/command, family, length.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES: Final = 16
#: Default cap on the bytes after version 2's fixed 16 (addresses and TLVs); 216 = AF_UNIX's addresses.
V2_MAX_BYTES: Final = 1024
#: proxy-protocol.txt 2.2: the address block's size per family (the ports included).
_V2_FAMILIES: Final[dict[int, tuple[str, int]]] = {
    0x0: ("AF_UNSPEC", 0),
    0x1: ("AF_INET", 12),
    0x2: ("AF_INET6", 36),
    0x3: ("AF_UNIX", 216),
}
_V2_TRANSPORTS: Final[dict[int, str]] = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
_V2_COMMANDS: Final[dict[int, str]] = {0x0: "LOCAL", 0x1: "PROXY"}
#: How many bytes are read first: enough to tell the versions apart, fewer than the shortest header
#: (version 1's "PROXY UNKNOWN\r\n", 15 bytes), so nothing past a header is ever read.
_FIRST_READ: Final = 12

#: Read exactly n bytes (fewer only when the connection ended: the caller sees a short result).
ReadExactly = Callable[[int], Awaitable[bytes]]


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY protocol header; the message says what was wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    """A PROXY header read from a connection.

    ``source`` is the client's (address, port) to use as the peer; None when the header says to
    use the real connection's (version 2 LOCAL: the balancer's own health check; version 1 UNKNOWN;
    a family we do not map to an IP address) -- ``note`` says which, in words."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None = None
    note: str = ""
    #: "PROXY", or version 2's "LOCAL" (the balancer's own connection: a health check).
    command: str = "PROXY"
    #: True when the header is valid but its addresses are not used for a reason worth a warning.
    unsupported: bool = False

    @property
    def balancer_own(self) -> bool:
        """The balancer's own connection, as its health checks are: version 2 LOCAL, or version 1
        UNKNOWN, which HAProxy sends for a check over `send-proxy` (proxy-protocol.txt 2.1 names health
        checks among its uses; a client of another family gets it too, but such a client then sends an
        A-ASSOCIATE-RQ, and only a connection that ends without one is taken for a check)."""
        return self.command == "LOCAL" or (self.version == 1 and self.source is None)


# ------------------------------------------------------------------ version 1
def _v1_ipv4(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and (p == "0" or not p.startswith("0")) for p in parts):
        raise ProxyHeaderError(f"{text!r} is not an IPv4 address in the canonical form (4 decimal numbers)")
    if any(int(p) > 255 for p in parts):
        raise ProxyHeaderError(f"{text!r} is not an IPv4 address (a number above 255)")
    return text


def _v1_ipv6(text: str) -> str:
    if not text or any(c not in "0123456789abcdefABCDEF:" for c in text):
        raise ProxyHeaderError(f"{text!r} is not an IPv6 address (hexadecimal groups and colons)")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyHeaderError(f"{text!r} is not an IPv6 address") from None


def _v1_port(text: str) -> int:
    if not (text.isdigit() and text.isascii()) or (len(text) > 1 and text.startswith("0")):
        raise ProxyHeaderError(f"port {text!r} is not a decimal number without leading zeroes")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"port {text} is outside 0..65535")
    return port


def parse_v1(line: bytes) -> ProxyHeader:
    """A version 1 line, CRLF included (proxy-protocol.txt 2.1)."""
    if len(line) > V1_MAX_BYTES:
        raise ProxyHeaderError(f"version 1 header longer than {V1_MAX_BYTES} bytes")
    if not line.endswith(b"\r\n"):
        raise ProxyHeaderError("version 1 header does not end with CRLF")
    if not line.startswith(b"PROXY "):
        raise ProxyHeaderError("version 1 header does not start with 'PROXY '")
    body = line[:-2]
    if b"\r" in body or b"\n" in body:
        raise ProxyHeaderError("version 1 header has a lone CR or LF before its CRLF")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("version 1 header is not US-ASCII") from None
    fields = text.split(" ")
    if fields[1] == "UNKNOWN":  # the rest up to CRLF is ignored
        return ProxyHeader(1, None, note="version 1 UNKNOWN (the balancer could not tell the client's address)")
    if fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"version 1 protocol {fields[1][:16]!r} is none of TCP4, TCP6, UNKNOWN")
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"version 1 {fields[1]} header has {len(fields) - 2} fields after the protocol, not 4 "
            "(source, destination, source port, destination port, separated by exactly one space)"
        )
    address = _v1_ipv4 if fields[1] == "TCP4" else _v1_ipv6
    source, destination = address(fields[2]), address(fields[3])
    return ProxyHeader(1, (source, _v1_port(fields[4])), (destination, _v1_port(fields[5])))


# ------------------------------------------------------------------ version 2
def v2_length(fixed: bytes, max_bytes: int = V2_MAX_BYTES) -> int:
    """The length of the block after version 2's 16 fixed bytes, checked against ``max_bytes``."""
    if len(fixed) != V2_FIXED_BYTES or not fixed.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("version 2 header does not start with its 12-byte signature")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError(f"version 2 header announces version {fixed[12] >> 4}, not 2")
    (length,) = struct.unpack("!H", fixed[14:16])
    if length > max_bytes:
        raise ProxyHeaderError(
            f"version 2 header announces {length} bytes of addresses and extensions, more than the "
            f"{max_bytes} allowed (proxy_protocol_v2_max_bytes)"
        )
    return int(length)


def parse_v2(fixed: bytes, block: bytes, max_bytes: int = V2_MAX_BYTES) -> ProxyHeader:
    """A version 2 header: its 16 fixed bytes and the ``length`` bytes after them (proxy-protocol.txt 2.2).
    Extensions (TLVs) after the addresses are skipped."""
    length = v2_length(fixed, max_bytes)
    if len(block) != length:
        raise ProxyHeaderError(f"version 2 header cut short: {len(block)} of {length} bytes after the fixed part")
    command = fixed[12] & 0x0F
    if command not in _V2_COMMANDS:
        raise ProxyHeaderError(f"version 2 command {command:#x} is neither LOCAL (0) nor PROXY (1)")
    family, transport = fixed[13] >> 4, fixed[13] & 0x0F
    if family not in _V2_FAMILIES:
        raise ProxyHeaderError(f"version 2 address family {family:#x} is not one the spec defines")
    if transport not in _V2_TRANSPORTS:
        raise ProxyHeaderError(f"version 2 transport {transport:#x} is not one the spec defines")
    if command == 0:  # LOCAL: the balancer's own connection (a health check); family and addresses ignored
        return ProxyHeader(
            2, None, note="version 2 LOCAL (the balancer's own connection, e.g. a health check)", command="LOCAL"
        )
    name, needed = _V2_FAMILIES[family]
    if length < needed:
        raise ProxyHeaderError(f"version 2 {name} header has {length} bytes of addresses; {name} needs {needed}")
    if family not in (0x1, 0x2) or transport != 0x1:
        return ProxyHeader(
            2,
            None,
            note=f"version 2 {name} over {_V2_TRANSPORTS[transport]}: not a TCP client address",
            unsupported=True,
        )
    size = 4 if family == 0x1 else 16
    make = ipaddress.IPv4Address if family == 0x1 else ipaddress.IPv6Address
    source, destination = str(make(block[:size])), str(make(block[size : 2 * size]))
    sport, dport = struct.unpack("!HH", block[2 * size : 2 * size + 4])
    return ProxyHeader(2, (source, sport), (destination, dport))


# ------------------------------------------------------------------ reading
async def read_header(read: ReadExactly, *, v2_max_bytes: int = V2_MAX_BYTES) -> ProxyHeader:
    """Read one PROXY header (either version) with ``read``, never a byte past it."""
    first = await read(_FIRST_READ)
    _complete(first, _FIRST_READ, "the first bytes")
    if first == V2_SIGNATURE:
        rest = await read(V2_FIXED_BYTES - _FIRST_READ)
        _complete(rest, V2_FIXED_BYTES - _FIRST_READ, "version 2's fixed part")
        fixed = first + rest
        length = v2_length(fixed, v2_max_bytes)
        block = await read(length) if length else b""
        _complete(block, length, "version 2's addresses")
        return parse_v2(fixed, block, v2_max_bytes)
    if first.startswith(b"PROXY "):
        line = bytearray(first)
        while not line.endswith(b"\r\n"):
            if len(line) >= V1_MAX_BYTES:
                raise ProxyHeaderError(f"no CRLF in the first {V1_MAX_BYTES} bytes of a version 1 header")
            if line.endswith(b"\n"):
                raise ProxyHeaderError("version 1 header ends with a lone LF, not CRLF")
            byte = await read(1)
            _complete(byte, 1, "the version 1 line")
            line += byte
        return parse_v1(bytes(line))
    raise ProxyHeaderError(
        f"the connection did not start with a PROXY header (first bytes {first[:8].hex(' ')}); "
        "the sender must be a load balancer sending one (HAProxy: send-proxy-v2)"
    )


def _complete(data: bytes, wanted: int, what: str) -> None:
    if len(data) < wanted:
        raise ProxyHeaderError(f"the connection ended in {what} of the PROXY header ({len(data)} of {wanted} bytes)")


def socket_reader(sock: socket.socket) -> ReadExactly:
    """ReadExactly on a connected non-blocking socket (before asyncio owns it: a TLS port reads the header here)."""
    loop = asyncio.get_running_loop()

    async def read(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    return read


def stream_reader(reader: asyncio.StreamReader) -> ReadExactly:
    """ReadExactly on an asyncio stream (the bytes after the header stay in its buffer)."""

    async def read(n: int) -> bytes:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    return read


# ------------------------------------------------------------------ who may send one
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"proxy_protocol_from: {text!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)"
        ) from None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
    return ip


class ProxySources:
    """The addresses allowed (and required) to send a PROXY header: ``proxy_protocol_from``."""

    def __init__(self, sources: Iterable[str], v2_max_bytes: int = V2_MAX_BYTES) -> None:
        self.networks = tuple(_network(s) for s in sources)
        self.v2_max_bytes = v2_max_bytes

    def __bool__(self) -> bool:
        return bool(self.networks)

    def expects(self, host: str) -> bool:
        """Whether a connection from ``host`` must start with a PROXY header."""
        ip = _address(host)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)

    async def read(self, read: ReadExactly, timeout: float, deadline_name: str = "") -> ProxyHeader:
        """Read the header within ``timeout`` seconds; ProxyHeaderError (in words) if there is none.
        ``deadline_name`` names the limit in that sentence (default: the seconds themselves)."""
        try:
            async with asyncio.timeout(timeout):
                return await read_header(read, v2_max_bytes=self.v2_max_bytes)
        except TimeoutError:
            within = deadline_name or f"{timeout:g}s of connecting"
            raise ProxyHeaderError(f"no complete PROXY header within {within}") from None
        except OSError as exc:
            raise ProxyHeaderError(f"the connection failed while reading the PROXY header: {exc}") from None

    async def stream_peer(self, peer: tuple[str, int], reader: asyncio.StreamReader, timeout: float) -> tuple[str, int]:
        """The client of a connection accepted as an asyncio stream (the HL7 listener): ``peer`` itself unless it
        must send a PROXY header; then the address the header names (``peer`` for LOCAL / UNKNOWN, with a
        warning for an unsupported family). ProxyHeaderError when the required header is missing or invalid."""
        if not self.expects(peer[0]):
            return peer
        header = await self.read(stream_reader(reader), timeout)
        if header.source is None:
            if header.unsupported:
                log.warning("connection from %s:%s: %s; using the balancer's address", *peer, header.note)
            return peer
        return header.source

    def stream_resolver(
        self, timeout: float
    ) -> Callable[[tuple[str, int], asyncio.StreamReader], Awaitable[tuple[str, int]]]:
        """:meth:`stream_peer` with its timeout bound (what hl7/mllp.py's ``peer_resolver`` takes)."""

        async def resolve(peer: tuple[str, int], reader: asyncio.StreamReader) -> tuple[str, int]:
            return await self.stream_peer(peer, reader, timeout)

        return resolve


def check_sources(sources: Iterable[str]) -> None:
    """Raise ValueError (in words) if any of ``sources`` is not an IP address or network."""
    for source in sources:
        _network(source)


__all__ = [
    "V1_MAX_BYTES",
    "V2_MAX_BYTES",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxySources",
    "ReadExactly",
    "check_sources",
    "parse_v1",
    "parse_v2",
    "read_header",
    "socket_reader",
    "stream_reader",
    "v2_length",
]
