"""PROXY protocol headers (haproxy.org doc/proxy-protocol.txt): the spec's examples, its limits, and
malformed headers, each refused with a sentence; the reader never takes a byte past the header."""

from __future__ import annotations

import asyncio
import struct

import pytest

from minipacs.net.proxy_protocol import (
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxySources,
    parse_v1,
    read_header,
    stream_reader,
)

IPV6_MAX = ":".join(["ffff"] * 8)


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(block)) + block


def v2_tcp4(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    addr = bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    return v2(1, 0x11, addr + struct.pack("!HH", sport, dport) + tlvs)


def read(data: bytes, v2_max_bytes: int = 1024) -> tuple[ProxyHeader, bytes]:
    """Parse ``data`` as a stream: the header and the bytes left after it."""

    async def go() -> tuple[ProxyHeader, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        header = await read_header(stream_reader(reader), v2_max_bytes=v2_max_bytes)
        return header, await reader.read()

    return asyncio.run(go())


def refused(data: bytes, match: str, v2_max_bytes: int = 1024) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        read(data, v2_max_bytes)


# ------------------------------------------------------------------ version 1
def test_v1_spec_example_and_the_bytes_after_it_stay() -> None:
    header, rest = read(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert header == ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert rest == b"GET / HTTP/1.1\r\n"


def test_v1_longest_lines_of_the_spec() -> None:
    line4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line4) == 56
    assert read(line4)[0].source == ("255.255.255.255", 65535)
    line6 = f"PROXY TCP6 {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n".encode()
    assert len(line6) == 104
    assert read(line6 + b"\x01")[0].source == (IPV6_MAX, 65535)
    worst = f"PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 65535\r\n".encode()
    assert len(worst) == V1_MAX_BYTES == 107
    header, rest = read(worst + b"\x01\x00")
    assert header.source is None and "UNKNOWN" in header.note and not header.unsupported
    assert rest == b"\x01\x00"


def test_v1_unknown_short_form_takes_15_bytes_only() -> None:
    header, rest = read(b"PROXY UNKNOWN\r\n\x16\x03\x01")  # a TLS ClientHello right behind it
    assert header.source is None and rest == b"\x16\x03\x01"


def test_v1_ipv6_compressed_form() -> None:
    header, _ = read(b"PROXY TCP6 2001:db8::1 ::1 40000 104\r\n")
    assert header.source == ("2001:db8::1", 40000) and header.destination == ("::1", 104)


def test_v1_one_byte_over_the_limit_is_refused() -> None:
    line = f"PROXY UNKNOWN {IPV6_MAX} {IPV6_MAX} 65535 655350\r\n".encode()
    assert len(line) == V1_MAX_BYTES + 1
    refused(line, "no CRLF in the first 107 bytes")
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_v1(line)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 http 104\r\n", "port 'http' is not a decimal"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 -1 104\r\n", "port '-1'"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 104\r\n", "port 65536 is outside"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 0104 104\r\n", "leading zeroes"),
        (b"PROXY TCP4 10.0.0.01 10.0.0.2 1 104\r\n", "canonical form"),
        (b"PROXY TCP4 10.0.0.256 10.0.0.2 1 104\r\n", "above 255"),
        (b"PROXY TCP4 ::1 ::1 1 104\r\n", "not an IPv4"),
        (b"PROXY TCP6 10.0.0.1 ::1 1 104\r\n", "not an IPv6"),
        (b"PROXY TCP6 1::2::3 ::1 1 104\r\n", "not an IPv6"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n", "3 fields after the protocol, not 4"),
        (b"PROXY TCP4  10.0.0.1 10.0.0.2 1 104\r\n", "fields after the protocol"),
        (b"PROXY UDP4 10.0.0.1 10.0.0.2 1 104\r\n", "'UDP4' is none of"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 104\n\r\n", "lone LF"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 1\r04\r\n", "lone CR"),
        ("PROXY TCP4 10.0.0.1 10.0.0.2 1 10\u00e9\r\n".encode(), "not US-ASCII"),
    ],
)
def test_v1_malformed(line: bytes, match: str) -> None:
    refused(line, match)


def test_truncated_headers() -> None:
    refused(b"PROXY TCP4 10.0.0.1 10.0", "ended in the version 1 line")
    refused(b"PROXY", "ended in the first bytes")
    full = v2_tcp4("10.0.0.1", "10.0.0.2", 1, 104)
    refused(full[:14], "ended in version 2's fixed part")
    refused(full[:-1], r"ended in version 2's addresses of the PROXY header \(11 of 12 bytes\)")


# ------------------------------------------------------------------ version 2
def test_v2_tcp4_with_a_tlv_skipped() -> None:
    tlv = bytes([0x05]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_UNIQUE_ID
    header, rest = read(v2_tcp4("127.0.0.2", "127.0.0.1", 40001, 11112, tlv) + b"\x01\x00")
    assert header == ProxyHeader(2, ("127.0.0.2", 40001), ("127.0.0.1", 11112))
    assert rest == b"\x01\x00"  # an A-ASSOCIATE-RQ's first bytes, left for the DICOM layer


def test_v2_tcp6() -> None:
    block = bytes(15) + b"\x01" + bytes.fromhex("20010db8" + "0" * 23 + "5") + struct.pack("!HH", 5000, 104)
    header, _ = read(v2(1, 0x21, block))
    assert header.source == ("::1", 5000) and header.destination == ("2001:db8::5", 104)


def test_v2_local_uses_the_real_peer_and_skips_any_addresses() -> None:
    header, rest = read(v2(0, 0x00, b"") + b"X")
    assert header.source is None and header.command == "LOCAL" and not header.unsupported and rest == b"X"
    header, rest = read(v2(0, 0x11, bytes(12)) + b"Y")  # LOCAL with an address block: skipped
    assert header.source is None and rest == b"Y"


@pytest.mark.parametrize(
    ("family", "size", "name"), [(0x00, 0, "AF_UNSPEC"), (0x31, 216, "AF_UNIX"), (0x12, 12, "AF_INET over DGRAM")]
)
def test_v2_unsupported_families_use_the_real_peer_with_a_warning(family: int, size: int, name: str) -> None:
    header, rest = read(v2(1, family, bytes(size)) + b"Z")
    assert header.source is None and header.unsupported and name in header.note and rest == b"Z"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(1, 0x11, bytes(11)), "AF_INET header has 11 bytes of addresses; AF_INET needs 12"),
        (v2(1, 0x21, bytes(12)), "AF_INET6 header has 12 bytes"),
        (v2(1, 0x31, bytes(100)), "AF_UNIX header has 100 bytes"),
        (v2(2, 0x11, bytes(12)), "command 0x2 is neither LOCAL"),
        (v2(1, 0x41, bytes(12)), "address family 0x4"),
        (v2(1, 0x13, bytes(12)), "transport 0x3"),
        (v2(1, 0x11, bytes(12), version=1), "announces version 1, not 2"),
        (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8), "did not start with a PROXY header"),
        (b"\x01\x00\x00\x00\x00\xcd\x00\x01\x00\x00MINIPACS", r"first bytes 01 00 00 00"),
    ],
)
def test_v2_malformed_and_not_a_header(data: bytes, match: str) -> None:
    refused(data, match)


def test_v2_length_cap_at_the_limit() -> None:
    at = v2(1, 0x11, bytes(12) + bytes(500 - 12))
    assert read(at, v2_max_bytes=500)[0].source == ("0.0.0.0", 0)
    refused(v2(1, 0x11, bytes(501)), "announces 501 bytes .* more than the 500 allowed", v2_max_bytes=500)


# ------------------------------------------------------------------ who may send one
def test_sources_match_addresses_networks_and_mapped_ipv4() -> None:
    sources = ProxySources(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert sources.expects("127.0.0.1") and sources.expects("10.200.0.3") and sources.expects("fd12::1")
    assert sources.expects("::ffff:10.1.2.3")  # a dual-stack listener's view of an IPv4 peer
    assert not sources.expects("127.0.0.2") and not sources.expects("::1") and not sources.expects("?")
    assert not ProxySources([])
    with pytest.raises(ValueError, match="'balancer' is not an IP address or network"):
        ProxySources(["balancer"])


def test_header_timeout() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"PROXY TCP4 ")  # and then nothing
        await ProxySources(["127.0.0.1"]).read(stream_reader(reader), 0.2)

    with pytest.raises(ProxyHeaderError, match=r"no complete PROXY header within 0.2s"):
        asyncio.run(go())


# ------------------------------------------------------------------ the settings
def test_settings_from_the_environment_and_their_limits() -> None:
    from minipacs.config import ConfigError, load_settings

    settings = load_settings(env={"MINIPACS_PROXY_PROTOCOL_FROM": "127.0.0.1, 10.0.0.0/8,FD00::/8"})
    assert settings.proxy_protocol_from == ("127.0.0.1", "10.0.0.0/8", "fd00::/8")
    assert load_settings(env={}).proxy_protocol_from == ()  # off by default
    sources = ProxySources(settings.proxy_protocol_from)
    assert sources.expects("10.1.2.3") and sources.expects("fd00::5") and not sources.expects("192.168.0.1")
    for ok in ("216", "65535"):
        assert load_settings(env={"MINIPACS_PROXY_PROTOCOL_V2_MAX_BYTES": ok}).proxy_protocol_v2_max_bytes == int(ok)
    for bad in ("215", "65536"):
        with pytest.raises(ConfigError, match="proxy_protocol_v2_max_bytes must be 216"):
            load_settings(env={"MINIPACS_PROXY_PROTOCOL_V2_MAX_BYTES": bad})
    with pytest.raises(ConfigError, match="'10.0.0.0/33' is not an IP address or network"):
        load_settings(env={"MINIPACS_PROXY_PROTOCOL_FROM": "10.0.0.0/33"})
