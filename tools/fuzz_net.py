"""Mutation fuzzer for minipacs's DICOM network decoders (not part of the test suite).

Run from the repository root::

    PYTHONPATH=src python tools/fuzz_net.py [--seed N] [--rounds N]

It builds valid encodings with the project's own encoders -- A-ASSOCIATE-RQ/AC with every user
information sub-item (PS3.8 §9.3.2-3, Annex D; PS3.7 D.3.3), A-ASSOCIATE-RJ, A-RELEASE-RQ/RP,
A-ABORT, P-DATA-TF (PS3.8 §9.3.5), DIMSE command sets (PS3.7 Annex E) and PROXY protocol
v1/v2 headers -- mutates them (bit flips, byte and length-field overwrites with 0, odd, huge and
off-by-one values, truncation, insertion, duplicated and swapped slices, non-ASCII bytes) and calls
the decoders (and the debug trace / summary of what they decoded). The contract checked: a decoder
either returns, or raises the module's own error (``PDUError``, ``CommandError``,
``ProxyHeaderError``). Any other exception is printed with the input in hex, and the exit status is
1 when there was any. About 90,000 inputs a second; the default (20,000 mutants per seed input,
18 seeds) takes a few seconds.

What it does not do: talk to a server. For the live side (mutated byte streams against a running
minipacs on 127.0.0.1, a C-ECHO from DCMTK's echoscu between them, the server log checked for
tracebacks) see the fuzzing notes in the commits that cite it; this file stays a pure-function
harness so that it can run anywhere, and it is not collected by pytest (tools/ is not a test path).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import traceback
from collections.abc import Callable

from minipacs.net.dimse import Command, CommandError
from minipacs.net.pdu import (
    PDU_HEADER,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    decode_pdu,
)
from minipacs.net.pdu_items import (
    AsynchronousOperationsWindow,
    PDUError,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from minipacs.net.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2
from minipacs.net.trace import describe_associate

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _user_information(*, ac: bool) -> UserInformation:
    return UserInformation(
        maximum_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.9.7433",
        implementation_version_name="FUZZ_1",
        async_ops=AsynchronousOperationsWindow(4, 2),
        roles=[RoleSelection(CT, True, True)],
        extended=[SOPClassExtendedNegotiation(CT, b"\x01\x00\x01")],
        common_extended=[SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2", [CT, VERIFICATION])],
        user_identity_rq=None if ac else UserIdentityRQ(2, True, b"alice", b"secret"),
        user_identity_ac=UserIdentityAC(b"token") if ac else None,
    )


def seeds() -> list[bytes]:
    """Valid whole PDUs (header included)."""
    rq = AAssociateRQ(
        "MINIPACS",
        "FUZZER",
        [
            PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE]),
            PresentationContextRQ(3, CT, [EXPLICIT_LE, IMPLICIT_LE]),
        ],
        _user_information(ac=False),
    )
    ac = AAssociateAC(
        "MINIPACS",
        "FUZZER",
        [PresentationContextAC(1, 0, IMPLICIT_LE), PresentationContextAC(3, 3, "")],
        _user_information(ac=True),
    )
    echo = Command.make("C-ECHO-RQ", AffectedSOPClassUID=VERIFICATION, MessageID=7).encode()
    pdata = PDataTF([PDV(1, True, True, echo), PDV(1, False, False, b"\x08\x00\x05\x00" * 4)])
    return [
        rq.encode(),
        ac.encode(),
        AAssociateRJ(1, 1, 7).encode(),
        AReleaseRQ().encode(),
        AReleaseRP().encode(),
        AAbort(2, 6).encode(),
        pdata.encode(),
    ]


def command_seeds() -> list[bytes]:
    """Valid command sets of several messages."""
    return [
        Command.make("C-ECHO-RQ", AffectedSOPClassUID=VERIFICATION, MessageID=1).encode(),
        Command.make(
            "C-STORE-RQ",
            has_dataset=True,
            AffectedSOPClassUID=CT,
            MessageID=2,
            Priority=0,
            AffectedSOPInstanceUID="1.2.3.4.5",
            MoveOriginatorApplicationEntityTitle="MOVER",
            MoveOriginatorMessageID=9,
        ).encode(),
        Command.make(
            "C-MOVE-RQ", has_dataset=True, AffectedSOPClassUID=CT, MessageID=3, Priority=0, MoveDestination="DEST"
        ).encode(),
        Command.make(
            "N-GET-RQ",
            RequestedSOPClassUID=CT,
            MessageID=4,
            RequestedSOPInstanceUID="1.2.3",
            AttributeIdentifierList=[0x00100010, 0x00100020],
        ).encode(),
        Command.make(
            "C-FIND-RSP", MessageIDBeingRespondedTo=5, Status=0xA700, ErrorComment="no", OffendingElement=[0x00100010]
        ).encode(),
        Command.make("C-CANCEL-RQ", MessageIDBeingRespondedTo=5).encode(),
    ]


def proxy_seeds() -> list[bytes]:
    v2_inet = (
        V2_SIGNATURE
        + bytes((0x21, 0x11))
        + struct.pack("!H", 12)
        + bytes((10, 0, 0, 1, 10, 0, 0, 2))
        + struct.pack("!HH", 1234, 104)
    )
    v2_inet6 = V2_SIGNATURE + bytes((0x21, 0x21)) + struct.pack("!H", 36) + bytes(range(32)) + struct.pack("!HH", 1, 2)
    return [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 104\r\n",
        b"PROXY TCP6 ::1 fe80::1 1 65535\r\n",
        b"PROXY UNKNOWN\r\n",
        v2_inet,
        v2_inet6,
    ]


INTERESTING_16 = (0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 2, 3, 5, 6, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf += bytes([rng.randrange(256)])
        op = rng.randrange(10)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice(
                (
                    0x00,
                    0x01,
                    0x7F,
                    0x80,
                    0xFF,
                    0x10,
                    0x20,
                    0x30,
                    0x40,
                    0x50,
                    0x51,
                    0x52,
                    0x53,
                    0x54,
                    0x55,
                    0x56,
                    0x57,
                    0x58,
                    0x59,
                )
            )
        elif op == 2 and pos + 2 <= len(buf):
            value = rng.choice(INTERESTING_16 + (struct.unpack_from(">H", buf, pos)[0] + rng.choice((-1, 1)) & 0xFFFF,))
            order = rng.choice((">H", "<H"))
            struct.pack_into(order, buf, pos, value)
        elif op == 3 and pos + 4 <= len(buf):
            value = rng.choice(
                INTERESTING_32 + (struct.unpack_from(">L", buf, pos)[0] + rng.choice((-1, 1)) & 0xFFFFFFFF,)
            )
            struct.pack_into(rng.choice((">L", "<L")), buf, pos, value)
        elif op == 4:
            del buf[pos:]
        elif op == 5:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 6:
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end]
        elif op == 7:
            end = min(len(buf), pos + rng.randint(1, 32))
            del buf[pos:end]
        elif op == 8:
            other = rng.randrange(len(buf))
            size = rng.randint(1, 16)
            a, b = bytes(buf[pos : pos + size]), bytes(buf[other : other + size])
            if len(a) == len(b):
                buf[pos : pos + size], buf[other : other + size] = b, a
        else:
            buf[pos] = rng.choice((0xC3, 0xE9, 0x00, 0x20, 0x0D, 0x0A))
    return bytes(buf)


def _decode_pdu(data: bytes) -> None:
    if len(data) < PDU_HEADER.size:
        return
    pdu_type, _length = PDU_HEADER.unpack_from(data)
    pdu = decode_pdu(pdu_type, memoryview(data)[PDU_HEADER.size :])
    if isinstance(pdu, AAssociateRQ | AAssociateAC | AAssociateRJ):
        describe_associate(pdu)  # the debug trace of what was decoded must not fail either


def _decode_command(data: bytes) -> None:
    Command.decode(data).summary()


def _decode_proxy(data: bytes) -> None:
    if data.startswith(V2_SIGNATURE):
        parse_v2(data[:16], data[16:])
    else:
        parse_v1(data)


def check(target: Callable[[bytes], object], data: bytes, expected: tuple[type[BaseException], ...]) -> str | None:
    try:
        target(data)
    except expected:
        return None
    except Exception as exc:  # noqa: BLE001 - the point: any other exception is a finding
        return f"{type(exc).__name__}: {exc}\n  input: {data.hex()}\n{traceback.format_exc(limit=3)}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20000, help="mutants per seed input")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    targets: list[tuple[str, Callable[[bytes], object], list[bytes], tuple[type[BaseException], ...]]] = [
        ("pdu", _decode_pdu, seeds(), (PDUError,)),
        ("command", _decode_command, command_seeds(), (CommandError,)),
        ("proxy", _decode_proxy, proxy_seeds(), (ProxyHeaderError,)),
    ]
    findings: dict[str, str] = {}
    total = 0
    for name, target, inputs, expected in targets:
        for seed in inputs:
            for _ in range(args.rounds):
                data = mutate(seed, rng)
                total += 1
                found = check(target, data, expected)
                if found is not None:
                    key = name + ":" + found.split("\n", 1)[0][:80]
                    findings.setdefault(key, found)
    print(f"{total} inputs, {len(findings)} distinct unexpected exception(s)")
    for key, text in findings.items():
        print(f"--- {key}\n{text}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
