"""Step 1's "unreachable" verdict (services/doctor.py), in a network namespace this test creates: loopback
cannot refuse a route, a namespace with only its loopback up can. Two ways a route is missing:

- no route at all (the connect fails with ENETUNREACH: a wrong address, a missing default gateway);
- a route a router refuses (``ip route add unreachable``: EHOSTUNREACH, what an ICMP host-unreachable
  from a router or a rejecting firewall gives).

The doctor runs in the namespace as a child process; nothing leaves it (10.255.0.0/16 has no way out).
Needs root and iproute2 (`.ci/run` installs it), as the other peers of the suite: a failure, not a skip.

Linux reports a TCP reset during the handshake as "connection refused" (RFC 793: an acceptable RST in
SYN-SENT), so the "refused" verdict also covers a firewall that rejects with a reset; "reset" is what
other systems report for it (tests/services/test_doctor.py tests "refused" on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

CHECK = """
import asyncio, json, sys
from minipacs.net.association import AssociationSettings
from minipacs.services.doctor import Doctor, DoctorSettings
from minipacs.services.outbound import Address, Outbound, OutboundSettings
outbound = Outbound(OutboundSettings(AssociationSettings("MINIPACS"), connect_timeout=3.0))
doctor = Doctor(outbound, DoctorSettings("MINIPACS", 11112, connect_timeout=3.0))
report = asyncio.run(doctor.check(Address("FAR", sys.argv[1], 104)))
print(json.dumps([[s.outcome, s.verdict, s.cause, s.fix] for s in report.steps]))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"minipacs-doctor-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "unreachable", "10.255.1.0/24")
        yield name
    finally:
        _ip("netns", "delete", name)


@pytest.mark.parametrize(
    ("address", "error"), [("10.255.2.7", "Network is unreachable"), ("10.255.1.7", "No route to host")]
)
def test_an_address_with_no_route_is_unreachable_with_the_systems_words(
    namespace: str, address: str, error: str
) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CHECK, address],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 0, done.stderr
    ((outcome, verdict, cause, fix),) = json.loads(done.stdout)
    assert outcome == "failed" and verdict == f"cannot reach {address}:104: {error}"
    assert "no network route to the host" in cause and "registered address" in fix
