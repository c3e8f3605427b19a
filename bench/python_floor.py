#!/usr/bin/env python3
"""How fast can ANY CPython asyncio C-STORE SCP go on this machine? (issue 10's analysis)

Issue 10 asks minipacs for >= 0.5x DCMTK storescp on one association and <= 0.3 ms of server CPU per
small instance. This measures the ceiling of the interpreter and asyncio themselves: a bare
C-STORE responder, in this file, that does the least a conforming SCP can do, run beside storescp
and minipacs on the same data in the same run:

* ``floor``        parse PDUs (PS3.8 9.3), accept every proposed presentation context with its first
                   transfer syntax, answer each C-STORE-RQ with Success (PS3.7 9.3.1.2), release;
                   the dataset is thrown away. No index, no checks, no file: nothing a PACS needs.
* ``floor-file``   the same, and each dataset written to its own new file, not flushed: storescp's
                   work (storescp ``-od OUT +B``: one file per instance, no fsync).
* ``floor-sync``   ``floor-file`` plus one ``fdatasync`` of the file before the answer: the least a
                   durable answer costs with one file per instance.

It is an asyncio.Protocol (no StreamReader, no task per message) with no timeouts, no access
control and no error handling worth the name: it is a yardstick, never a server to run. One
association at a time; storescu ``-xe +sd +r`` with ``TCP_NODELAY=1`` as in bench_store.py.

  python bench/python_floor.py [--rounds 3] [--set small]
  python bench/python_floor.py --serve PORT [--mode floor|floor-file|floor-sync] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

_PDU = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")


def _items(data: bytes, at: int, end: int) -> list[tuple[int, bytes]]:
    """PS3.8 9.3.2: variable items (type, reserved, 2-byte length, value)."""
    out = []
    while at + 4 <= end:
        kind, length = data[at], struct.unpack_from(">H", data, at + 2)[0]
        out.append((kind, data[at + 4 : at + 4 + length]))
        at += 4 + length
    return out


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def associate_ac(rq: bytes) -> bytes:
    """A-ASSOCIATE-AC for an A-ASSOCIATE-RQ PDU body: every context accepted with its first
    proposed transfer syntax (PS3.8 9.3.3); max PDU length 0 (unlimited)."""
    fixed = rq[:68]  # protocol version, reserved, called AE, calling AE, reserved: echoed
    body = bytearray(fixed)
    for kind, value in _items(rq, 68, len(rq)):
        if kind == 0x10:
            body += _item(0x10, value)
        elif kind == 0x20:
            context_id = value[0]
            subs = _items(value, 4, len(value))
            syntaxes = [v for k, v in subs if k == 0x40]
            body += _item(0x21, bytes([context_id, 0, 0, 0]) + _item(0x40, syntaxes[0]))
    body += _item(0x50, _item(0x51, struct.pack(">I", 0)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.99"))
    return _PDU.pack(0x02, len(body)) + bytes(body)


def command_fields(data: bytes) -> dict[int, bytes]:
    """The elements of a command set (implicit VR LE, PS3.7 6.3.1), by element number."""
    out, at = {}, 0
    while at + 8 <= len(data):
        _group, element, length = _ELEMENT.unpack_from(data, at)
        out[element] = data[at + 8 : at + 8 + length]
        at += 8 + length
    return out


def _element_us(element: int, value: int) -> bytes:
    return _ELEMENT.pack(0, element, 2) + struct.pack("<H", value)


def _element_ui(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def c_store_rsp(request: dict[int, bytes]) -> bytes:
    """PS3.7 9.3.1.2 C-STORE-RSP: status Success, no dataset."""
    rest = (
        _element_ui(0x0002, request[0x0002])
        + _element_us(0x0100, 0x8001)
        + _element_us(0x0120, struct.unpack("<H", request[0x0110])[0])
        + _element_us(0x0800, 0x0101)
        + _element_us(0x0900, 0x0000)
        + _element_ui(0x1000, request[0x1000])
    )
    return _ELEMENT.pack(0, 0x0000, 4) + struct.pack("<I", len(rest)) + rest


class FloorSCP(asyncio.Protocol):
    def __init__(self, mode: str, out: Path) -> None:
        self.mode, self.out = mode, out
        self.buffer = bytearray()
        self.command = bytearray()
        self.dataset: list[bytes] = []
        self.context = 0
        self.count = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 6:
            kind, length = _PDU.unpack_from(buf, 0)
            if len(buf) < 6 + length:
                return
            body = bytes(buf[6 : 6 + length])
            del buf[: 6 + length]
            if kind == 0x01:
                self.transport.write(associate_ac(body))
            elif kind == 0x04:
                self._pdata(body)
            elif kind == 0x05:
                self.transport.write(_PDU.pack(0x06, 4) + bytes(4))
            else:
                self.transport.close()
                return

    def _pdata(self, body: bytes) -> None:
        at = 0
        while at + 6 <= len(body):
            length, context, control = _PDV.unpack_from(body, at)
            value = body[at + 6 : at + 4 + length]
            at += 4 + length
            self.context = context
            if control & 1:
                self.command += value
                if control & 2 and command_fields(bytes(self.command)).get(0x0800) == b"\x01\x01":
                    self._answer()  # a command without a dataset (C-ECHO): not expected here
            else:
                self.dataset.append(value)
                if control & 2:
                    self._answer()

    def _answer(self) -> None:
        request = command_fields(bytes(self.command))
        if self.mode != "floor":
            self.count += 1
            fd = os.open(self.out / f"{self.count}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.writev(fd, self.dataset)
                if self.mode == "floor-sync":
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        self.command.clear()
        self.dataset.clear()
        rsp = c_store_rsp(request)
        pdv = _PDV.pack(len(rsp) + 2, self.context, 0x03) + rsp
        self.transport.write(_PDU.pack(0x04, len(pdv)) + pdv)


async def serve(port: int, mode: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorSCP(mode, out), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def bench(args: argparse.Namespace) -> int:
    import subprocess

    from _common import (
        cpu_seconds,
        free_port,
        machine_info,
        remove_runs,
        run_folder,
        spawn,
        stop,
        stop_all,
        wait_listening,
    )
    from bench_store import load_set, run_one, send

    info = machine_info()
    print(f"{info['date']}; {info['cpu']} x {info['nproc']}; load {info['loadavg']}", flush=True)
    data = load_set(args.set, False)
    servers = ["storescp", "minipacs", "floor", "floor-file", "floor-sync"]
    rates: dict[str, list[float]] = {s: [] for s in servers}
    cpus: dict[str, list[float]] = {s: [] for s in servers}
    try:
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
            for server in order:
                run_dir = run_folder(f"floor-{server}-{rnd}")
                if server in ("storescp", "minipacs"):
                    result = run_one(server, data, run_dir, rnd)
                    rate, cpu = result["per_s"], result["cpu_ms_per_instance"]
                else:
                    port = free_port()
                    cmd = [
                        sys.executable,
                        __file__,
                        "--serve",
                        str(port),
                        "--mode",
                        server,
                        "--out",
                        str(run_dir / "out"),
                    ]
                    proc = spawn(cmd, run_dir / "server.log")
                    try:
                        wait_listening(proc, port, log=run_dir / "server.log")
                        before = cpu_seconds(proc.pid)
                        wall = send(data, "FLOOR", port, run_dir)
                        cpu = (cpu_seconds(proc.pid) - before) * 1000 / data.count
                        rate = data.count / wall
                        if server != "floor":
                            stored = len(list((run_dir / "out").iterdir()))
                            if stored != data.count:
                                raise RuntimeError(f"{server} stored {stored} of {data.count}")
                    finally:
                        stop(proc)
                rates[server].append(rate)
                cpus[server].append(cpu)
                print(f"round {rnd} {server:10s} {rate:8.1f}/s  server CPU {cpu:.3f} ms/inst", flush=True)
                subprocess.run(["/usr/bin/sync"], check=False)
    finally:
        stop_all()
        remove_runs()
    print(f"\n| {args.set} ({data.count}, 1 assoc.) | instances/s | / storescp | server CPU ms/inst |")
    print("|---|---:|---:|---:|")
    for server in servers:
        ratio = statistics.median(r / s for r, s in zip(rates[server], rates["storescp"], strict=True))
        print(
            f"| {server} | {statistics.median(rates[server]):.0f} ({min(rates[server]):.0f}-{max(rates[server]):.0f})"
            f" | {ratio:.2f}x | {statistics.median(cpus[server]):.3f} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help="run the bare SCP on this port (used by the benchmark)")
    ap.add_argument("--mode", default="floor", choices=["floor", "floor-file", "floor-sync"])
    ap.add_argument("--out", type=Path, default=Path("floor-out"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", default="small", choices=["small", "ct"])
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve, args.mode, args.out))
        return 0
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
