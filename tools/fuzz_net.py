"""Mutation fuzzer for minipacs's DICOM network decoders (not part of the test suite).

Run from the repository root::

    PYTHONPATH=src python tools/fuzz_net.py [--seed N] [--rounds N]
    PYTHONPATH=src python tools/fuzz_net.py --live 127.0.0.1:11112 [--cases N] [--seed N]

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

``--live HOST:PORT`` sends mutated byte streams to a running minipacs instead (loopback only:
HOST must be in 127.0.0.0/8). Start one with short timeouts (acse/dimse a few seconds, idle a few
more, allow_unregistered every operation) and its log at INFO. Each case opens a connection and
sends a mutated A-ASSOCIATE-RQ, or a valid one and then (after the A-ASSOCIATE-AC) a C-ECHO,
C-STORE, C-FIND, C-MOVE, C-GET, N-CREATE, N-SET, N-ACTION, N-GET, N-EVENT-REPORT, C-CANCEL or a
stray response whose command set, data set or framed P-DATA stream is mutated, or a random
sequence of valid PDUs (PS3.8 Table 9-10 cells), or several requests pipelined. What is checked
(PS3.8 9.2): every case ends with an answer or a close within 15 s, and every 100 cases (and at the
end) DCMTK's echoscu, when installed, still gets its C-ECHO through. Afterwards grep the server's
log for "Traceback", "Exception in callback" and "never retrieved": there must be none. The exit
status is 1 when a case hung or a C-ECHO failed.

It is not collected by pytest (tools/ is not a test path).
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


# ------------------------------------------------------------------ live mode
IMPLICIT = "1.2.840.10008.1.2"
#: Presentation context ID -> abstract syntax of the live mode's A-ASSOCIATE-RQ.
LIVE_CONTEXTS = {
    1: VERIFICATION,
    3: CT,
    5: "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root FIND
    7: "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
    9: "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root MOVE
    11: "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root GET
    13: "1.2.840.10008.5.1.4.31",  # Modality Worklist FIND
    15: "1.2.840.10008.3.1.2.3.3",  # MPPS
    17: "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
}


def _dataset(**values: object) -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return bytes(out.getvalue())


def live_messages() -> list[tuple[int, bytes, bytes | None]]:
    """(context ID, command set, data set) of one message per service."""
    study = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.826.0.1.3680043.9.7433.3", "PatientName": "*"}
    ct = _dataset(
        SOPClassUID=CT,
        SOPInstanceUID="1.2.826.0.1.3680043.9.7433.3.1.1",
        StudyInstanceUID="1.2.826.0.1.3680043.9.7433.3",
        SeriesInstanceUID="1.2.826.0.1.3680043.9.7433.3.1",
        PatientID="FUZZ",
        Modality="CT",
    )
    commit = _dataset(TransactionUID="1.2.826.0.1.3680043.9.7433.4")

    def make(name: str, has_dataset: bool = False, **fields: object) -> bytes:
        return Command.make(name, has_dataset=has_dataset, **fields).encode()

    c = LIVE_CONTEXTS
    return [
        (1, make("C-ECHO-RQ", AffectedSOPClassUID=c[1], MessageID=1), None),
        (
            3,
            make(
                "C-STORE-RQ",
                True,
                AffectedSOPClassUID=CT,
                MessageID=2,
                Priority=0,
                AffectedSOPInstanceUID="1.2.826.0.1.3680043.9.7433.3.1.1",
            ),
            ct,
        ),
        (7, make("C-FIND-RQ", True, AffectedSOPClassUID=c[7], MessageID=3, Priority=0), _dataset(**study)),
        (5, make("C-FIND-RQ", True, AffectedSOPClassUID=c[5], MessageID=4, Priority=0), _dataset(**study)),
        (
            9,
            make("C-MOVE-RQ", True, AffectedSOPClassUID=c[9], MessageID=5, Priority=0, MoveDestination="FUZZ"),
            _dataset(**study),
        ),
        (11, make("C-GET-RQ", True, AffectedSOPClassUID=c[11], MessageID=6, Priority=0), _dataset(**study)),
        (13, make("C-FIND-RQ", True, AffectedSOPClassUID=c[13], MessageID=7, Priority=0), _dataset()),
        (
            15,
            make("N-CREATE-RQ", True, AffectedSOPClassUID=c[15], MessageID=8, AffectedSOPInstanceUID="1.2.3.9"),
            _dataset(),
        ),
        (
            15,
            make("N-SET-RQ", True, RequestedSOPClassUID=c[15], MessageID=9, RequestedSOPInstanceUID="1.2.3.9"),
            _dataset(),
        ),
        (
            17,
            make(
                "N-ACTION-RQ",
                True,
                RequestedSOPClassUID=c[17],
                MessageID=10,
                RequestedSOPInstanceUID="1.2.840.10008.1.20.1.1",
                ActionTypeID=1,
            ),
            commit,
        ),
        (17, make("N-GET-RQ", RequestedSOPClassUID=c[17], MessageID=11, RequestedSOPInstanceUID="1.2.3"), None),
        (
            17,
            make(
                "N-EVENT-REPORT-RQ",
                AffectedSOPClassUID=c[17],
                MessageID=12,
                AffectedSOPInstanceUID="1.2.3",
                EventTypeID=1,
            ),
            None,
        ),
        (7, make("C-CANCEL-RQ", MessageIDBeingRespondedTo=3), None),
        (1, make("C-ECHO-RSP", MessageIDBeingRespondedTo=1, Status=0), None),
    ]


def _pdata(context_id: int, command: bytes, dataset: bytes | None) -> bytes:
    out = PDataTF([PDV(context_id, True, True, command)]).encode()
    if dataset is not None:
        out += PDataTF([PDV(context_id, False, True, dataset)]).encode()
    return out


def live_case(rng: random.Random, messages: list[tuple[int, bytes, bytes | None]]) -> tuple[str, list[bytes]]:
    """(kind, PDUs): the first is sent alone, the rest once the first answer has been read."""
    async_ops = AsynchronousOperationsWindow(rng.choice((0, 1, 4)), 1) if rng.random() < 0.3 else None
    roles = [RoleSelection(CT, True, True)] if rng.random() < 0.3 else []
    contexts = [PresentationContextRQ(cid, syntax, [IMPLICIT]) for cid, syntax in LIVE_CONTEXTS.items()]
    info = UserInformation(maximum_length=16384, implementation_class_uid="1.2.3.4", async_ops=async_ops, roles=roles)
    rq = AAssociateRQ("MINIPACS", "FUZZ", contexts, info).encode()
    cid, command, dataset = rng.choice(messages)
    kind = rng.randrange(7)
    if kind == 0:
        return "mutated A-ASSOCIATE-RQ", [mutate(rq, rng)]
    if kind == 1:
        return "mutated command set", [rq, _pdata(cid, mutate(command, rng), dataset)]
    if kind == 2 and dataset is not None:
        return "mutated data set", [rq, _pdata(cid, command, mutate(dataset, rng))]
    if kind == 3:
        return "mutated P-DATA stream", [rq, mutate(_pdata(cid, command, dataset), rng)]
    if kind == 4:
        pool = [
            rq,
            _pdata(cid, command, dataset),
            AReleaseRQ().encode(),
            AReleaseRP().encode(),
            AAbort(0, 0).encode(),
            AAssociateRJ(1, 1, 1).encode(),
            PDataTF([PDV(cid, False, True, b"\x00\x00")]).encode(),
            PDataTF([PDV(cid, True, False, command[:10])]).encode(),
            PDataTF([PDV(2, True, True, command)]).encode(),
        ]
        sequence = [rq] if rng.random() < 0.8 else []
        return "PDU sequence", sequence + [rng.choice(pool) for _ in range(rng.randint(1, 5))]
    if kind == 5:
        pipelined = [_pdata(c, m, d) for c, m, d in rng.sample(messages, 4)]
        index = rng.randrange(len(pipelined))
        pipelined[index] = mutate(pipelined[index], rng)
        return "pipelined requests", [rq, *pipelined, AReleaseRQ().encode()]
    return "mutated A-ASSOCIATE-RQ, then a request", [mutate(rq, rng), _pdata(cid, command, dataset)]


async def _live_one(host: str, port: int, rng: random.Random, messages: list[tuple[int, bytes, bytes | None]]) -> str:
    """'' when the case ended well, else what went wrong."""
    import asyncio

    kind, parts = live_case(rng, messages)
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"{kind}: cannot connect: {exc}"
    try:
        writer.write(parts[0])
        if len(parts) > 1:
            try:
                header = await asyncio.wait_for(reader.readexactly(6), 15)
                await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:6], "big")), 15)
            except asyncio.IncompleteReadError:
                return ""
            for part in parts[1:]:
                writer.write(part)
        if rng.random() < 0.5:
            writer.write_eof()
        while await asyncio.wait_for(reader.read(65536), 15):
            pass
    except TimeoutError:
        return f"{kind}: no answer and no close within 15 s"
    except OSError:
        pass
    finally:
        writer.close()
    return ""


def live(target: str, cases: int, seed: int) -> int:
    import asyncio
    import ipaddress
    import shutil

    host, _, port_text = target.rpartition(":")
    if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
        raise SystemExit(f"--live sends hostile traffic: {host} is not a loopback address (127.0.0.0/8)")
    port = int(port_text)
    echoscu = shutil.which("echoscu")
    messages = live_messages()

    async def echo() -> bool:
        if echoscu is None:
            return True
        proc = await asyncio.create_subprocess_exec(
            echoscu,
            "-to",
            "5",
            "-aec",
            "MINIPACS",
            host,
            str(port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    async def run() -> int:
        problems: list[str] = []
        limit = asyncio.Semaphore(16)

        async def guarded(index: int) -> None:
            async with limit:
                problem = await _live_one(host, port, random.Random(seed * 1_000_003 + index), messages)
                if problem:
                    problems.append(f"case {index} (seed {seed}): {problem}")

        tasks = []
        for index in range(cases):
            tasks.append(asyncio.ensure_future(guarded(index)))
            if index % 100 == 99 and not await echo():
                problems.append(f"C-ECHO by echoscu failed after case {index}")
        await asyncio.gather(*tasks)
        if not await echo():
            problems.append("C-ECHO by echoscu failed at the end")
        print(
            f"{cases} live cases, {len(problems)} problem(s)" + ("" if echoscu else " (no echoscu: no C-ECHO checks)")
        )
        for problem in problems:
            print("  " + problem)
        return 1 if problems else 0

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20000, help="mutants per seed input")
    parser.add_argument("--live", metavar="HOST:PORT", help="fuzz a running minipacs on a loopback address")
    parser.add_argument("--cases", type=int, default=1000, help="live cases")
    args = parser.parse_args()
    if args.live:
        return live(args.live, args.cases, args.seed)
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
