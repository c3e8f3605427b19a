#!/usr/bin/env python3
"""Soak: the attacks of issue 8 items 1-7 against one server while a good client works.

Targets (issue 8 done-when): the good client's p99 latency per operation < 100 ms and the
server's RSS < 300 MB during the attack, and the server keeps answering.

One ``minipacs serve`` (fresh data dir, DICOM + HTTP on 127.0.0.1) with ``idle_timeout`` 5 s
(``--idle-timeout``); every other limit at its default (README "Limits"). Before the clock
starts it stores one CT whose InstitutionName is 64 x "a" (item 1's victim value) and one
2048x2048 CT (item 7's render).

The well-behaved client is pynetdicom in its own process (``--role good``), bound to source
address 127.0.0.2 (another host, as far as the server's per-host limits go; traffic still goes
to 127.0.0.1). It loops for the whole run: C-ECHO, C-STORE of a 64x64 CT, C-FIND (STUDY) by
PatientID, each timed, on one association (reopened if lost, counted); every 10th round it also
times opening a fresh association. A quiet baseline (``--baseline`` s) comes first, then the
attacks run for ``--duration`` s. Attackers, one thread each in this process (sources in brackets):

 1. ``wildcard`` [127.0.0.5] C-FIND with InstitutionName ``*a``*40 + ``*b``, and the same
    through QIDO ``/dicom-web/studies?InstitutionName=...``, back to back.
 2. ``quiet`` [127.0.0.3] up to 20 associations that each do one C-ECHO and then say nothing;
    one reopened as soon as the server drops one (time-to-drop recorded).
 3. ``silent_tcp`` [127.0.0.1] up to 40 raw TCP connections that never send A-ASSOCIATE-RQ,
    reopened as they are closed (at most 50 connects/s).
 4. ``pipeline`` [127.0.0.4] one association at a time proposing no Asynchronous Operations
    Window, sending up to 5000 C-ECHO-RQ without reading a response (small receive buffer).
 5. ``bomb`` [127.0.0.6] a Deflated Explicit VR LE C-STORE (4096x4096 zero pixels, ~33 MB
    inflated from ~33 kB) and a ZIP bomb (one 256 MiB member of zeros, ~256 kB) to
    ``POST /api/instances``, alternately.
 6. ``idle_http`` up to http_max_connections + 32 silent HTTP connections, reopened as closed
    (at most 100 connects/s).
 7. ``render`` 4 threads of ``/rendered`` of the 2048x2048 instance, and ``stow`` one thread
    of STOW-RS with 20 000 empty parts (over max_upload_parts) and 5 000 (under), alternately.

The server's RSS (VmRSS of its process tree) is sampled from /proc every 100 ms. Every loop is
bounded by the run's deadline and a count. Results: printed, JSON in bench/work/soak_hostile.json.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, free_port, machine_info, start_minipacs, stop

HOSTILE = "*a" * 40 + "*b"
STORED = "a" * 64
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
GOOD_PID = "GOOD1"


# ------------------------------------------------------------------ data


def make_ct(path: Path, rows: int, cols: int, ts: str = EXPLICIT, **attrs: Any) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", generate_uid())
    ds.StudyDate, ds.StudyTime, ds.Modality = "20240131", "101530", "CT"
    ds.PatientName, ds.PatientID = "Soak^Test", "SOAK"
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "A1", "1", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(rows * cols * 2)
    for key, value in attrs.items():
        setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def zip_bomb(member_bytes: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("bomb.dcm", "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(member_bytes >> 20):
                fh.write(block)
    return buf.getvalue()


# ------------------------------------------------------------------ raw DICOM (PS3.8 9.3)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(called: str = "MINIPACS", calling: str = "SOAK") -> bytes:
    pc = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT.encode())
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.8.498.1")
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, pc)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _elem(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, element, len(value)) + value


def echo_rq(message_id: int) -> bytes:
    """P-DATA-TF with one C-ECHO-RQ command (PS3.7 9.3.5, implicit VR LE, group length first)."""
    body = (
        _elem(0, 0x0002, VERIFICATION.encode())
        + _elem(0, 0x0100, struct.pack("<H", 0x0030))
        + _elem(0, 0x0110, struct.pack("<H", message_id & 0xFFFF))
        + _elem(0, 0x0800, struct.pack("<H", 0x0101))
    )
    command = _elem(0, 0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _recv_exactly(sock, 6)
    kind, _, length = struct.unpack(">BBI", head)
    return kind, _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return buf


def raw_connect(port: int, source: str, timeout: float = 10.0, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """EOF, reset, or an A-ABORT / A-RELEASE waiting: the server is done with this connection."""
    data = peek(sock, 1)
    return data is not None and (not data or data[0] in (0x07, 0x05, 0x03))


def peek(sock: socket.socket, n: int) -> bytes | None:
    """Up to ``n`` waiting bytes without consuming them; b"" at EOF or reset, None if nothing yet.
    (A socket with a timeout would wait for data even with MSG_DONTWAIT, so drop it meanwhile.)"""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(n, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)


# ------------------------------------------------------------------ the good client (own process)


def keep_stolen_responses() -> list[int]:
    """Work around a race in pynetdicom 3.0.4's requestor, in this client process only.

    Each ``send_c_*`` pauses the association's reactor thread with ``_reactor_checkpoint.clear()``
    and then spins until ``_is_paused`` is true; but the reactor sets ``_is_paused`` true *before*
    waiting on the checkpoint and false after, so a caller that clears it just after the reactor's
    wait returned sees "paused" and goes on. When the answer comes before the reactor's next
    ``get_msg`` (~1 ms on loopback, more likely on a loaded machine), the reactor takes the
    response off the queue, logs "Received unexpected C-ECHO service message" and drops it; the
    caller waits until the server's ``idle_timeout`` aborts the association (5 s) or its own DIMSE
    timeout (30 s). Traced in the first runs (bench/RESULTS.md). Here a response that reaches
    ``_serve_request`` is put back at the head of the queue the caller reads, and counted.
    """
    from pynetdicom.association import Association

    rescued = [0]
    original = Association._serve_request

    def serve_request(self: Any, msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and getattr(msg, "MessageIDBeingRespondedTo", None) is not None:
            queue = self.dimse.msg_queue
            with queue.mutex:
                queue.queue.appendleft((context_id, msg))
                queue.unfinished_tasks += 1
                queue.not_empty.notify()
            rescued[0] += 1
            return
        original(self, msg, context_id)

    Association._serve_request = serve_request  # type: ignore[method-assign]
    return rescued


def good_client(args: argparse.Namespace) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

    rescued = keep_stolen_responses()
    ae = AE(ae_title="GOODSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, EXPLICIT)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    template = dcmread(args.small)
    study, series = generate_uid(), generate_uid()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = GOOD_PID
    query.StudyInstanceUID = ""
    samples: list[tuple[float, str, float, str]] = []  # (wall time, op, seconds, outcome)
    reconnects = 0
    end = time.time() + args.seconds
    bind = ("127.0.0.2", 0)

    def assoc_open() -> Any:
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", args.port, ae_title="MINIPACS", bind_address=bind)
        samples.append(
            (time.time(), "associate", time.perf_counter() - t0, "ok" if assoc.is_established else "refused")
        )
        return assoc

    def probe() -> None:
        """Every second, time opening (and releasing) a fresh association, beside the main one."""
        while time.time() < end:
            try:
                extra = assoc_open()
                if extra.is_established:
                    extra.release()
            except Exception as exc:  # noqa: BLE001
                samples.append((time.time(), "associate", 0.0, f"error {type(exc).__name__}"))
            time.sleep(1.0)

    threading.Thread(target=probe, daemon=True).start()
    assoc = assoc_open()
    n = 0
    try:
        while time.time() < end and n < 1_000_000:
            n += 1
            if not assoc.is_established:
                reconnects += 1
                samples.append((time.time(), "lost-association", 0.0, "reconnect"))
                time.sleep(0.05)
                assoc = assoc_open()
                continue
            for op in ("echo", "store", "find"):
                t0 = time.perf_counter()
                try:
                    outcome = _good_op(op, assoc, template, study, series, query, n)
                except Exception as exc:  # noqa: BLE001 - recorded as that operation's outcome
                    outcome = f"error {type(exc).__name__}"
                samples.append((time.time(), op, time.perf_counter() - t0, outcome))
        if assoc.is_established:
            assoc.release()
    finally:
        Path(args.out).write_text(
            json.dumps({"samples": samples, "reconnects": reconnects, "rescued_responses": rescued[0]})
        )


def _good_op(op: str, assoc: Any, template: Any, study: str, series: str, query: Any, n: int) -> str:
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    if op == "echo":
        return _outcome(assoc.send_c_echo())
    if op == "store":
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.InstanceNumber = GOOD_PID, n
        return _outcome(assoc.send_c_store(ds))
    matches, final = 0, None
    for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        final = status
        matches += ident is not None and status is not None and status.Status in (0xFF00, 0xFF01)
    outcome = _outcome(final)
    return f"matches={matches}" if outcome == "ok" and matches != 1 else outcome


def _outcome(status: Any) -> str:
    if status is None or "Status" not in status:
        return "no-response"
    return "ok" if status.Status == 0 else f"0x{status.Status:04X}"


# ------------------------------------------------------------------ attackers


class Attack:
    """A named attacker thread's counters (a Counter of outcomes plus free-form notes)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        #: (wall start, wall end) of every timed outcome, to see what was in flight when the good client was slow.
        self.spans: list[tuple[float, float]] = []

    def count(self, outcome: str, seconds: float | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if seconds is not None:
                self.times.setdefault(outcome, []).append(seconds)
                end = time.time()
                self.spans.append((end - seconds, end))

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "outcomes": dict(self.outcomes),
                "seconds": {k: _stats(v) for k, v in self.times.items()},
                "errors": dict(self.errors.most_common(5)),
            }


def _guard(attack: Attack, stop_at: float, body: Any) -> None:
    """Run ``body`` until the deadline; an exception is counted and the loop continues (paced)."""
    rounds = 0
    while time.monotonic() < stop_at and rounds < 100_000:
        rounds += 1
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - an attacker counts what it got
            with attack.lock:
                attack.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            time.sleep(0.1)


def attack_wildcard(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    import httpx
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title="WILDCARD")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.InstitutionName = HOSTILE
    client = httpx.Client(base_url=cfg["http"], timeout=60)

    def body() -> None:
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", cfg["port"], ae_title="MINIPACS", bind_address=("127.0.0.5", 0))
        if not assoc.is_established:
            a.count("cfind refused", time.perf_counter() - t0)
            time.sleep(0.2)
        else:
            final, matches = None, 0
            for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                final = status
                matches += ident is not None
            assoc.release()
            a.count(f"cfind {_outcome(final)} matches={matches}", time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = client.get("/dicom-web/studies", params={"InstitutionName": HOSTILE})
        a.count(f"qido {resp.status_code} {len(resp.content)}B", time.perf_counter() - t0)

    _guard(a, stop_at, body)
    client.close()


def attack_quiet(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    """Up to 20 associations that did one C-ECHO and then stay quiet; time until the server drops each."""
    held: list[tuple[socket.socket, float]] = []

    def body() -> None:
        while len(held) < 20 and time.monotonic() < stop_at:
            sock = raw_connect(cfg["port"], "127.0.0.3")
            sock.sendall(associate_rq())
            kind, _ = recv_pdu(sock)
            if kind != 0x02:
                a.count(f"associate answered PDU 0x{kind:02X}")
                sock.close()
                time.sleep(0.2)
                continue
            sock.sendall(echo_rq(1))
            kind, _ = recv_pdu(sock)
            a.count("echo answered" if kind == 0x04 else f"echo answered PDU 0x{kind:02X}")
            held.append((sock, time.monotonic()))
        time.sleep(0.1)
        for entry in list(held):
            sock, since = entry
            if closed_by_peer(sock):
                a.count("dropped by server after quiet", time.monotonic() - since)
                sock.close()
                held.remove(entry)

    _guard(a, stop_at, body)
    for sock, _ in held:
        sock.close()


def attack_silent_tcp(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    """Raw TCP connections from 127.0.0.1 that never send an A-ASSOCIATE-RQ."""
    held: list[tuple[socket.socket, float]] = []

    def body() -> None:
        opened = 0
        while len(held) < 40 and opened < 5 and time.monotonic() < stop_at:
            opened += 1
            t0 = time.monotonic()
            sock = raw_connect(cfg["port"], "127.0.0.1")
            held.append((sock, time.monotonic()))
            a.count("opened (connect time)", time.monotonic() - t0)
        time.sleep(0.1)  # at most 50 connects/s
        for entry in list(held):
            sock, since = entry
            if closed_by_peer(sock):
                age = time.monotonic() - since
                a.count("closed at once (<1 s)" if age < 1.0 else "closed after waiting", age)
                sock.close()
                held.remove(entry)

    _guard(a, stop_at, body)
    for sock, _ in held:
        sock.close()


def attack_pipeline(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    """Pipeline C-ECHO-RQs without reading; count how many the server took before it stopped reading."""

    def body() -> None:
        sock = raw_connect(cfg["port"], "127.0.0.4", rcvbuf=4096)
        try:
            sock.sendall(associate_rq())
            kind, _ = recv_pdu(sock)
            if kind != 0x02:
                a.count(f"associate answered PDU 0x{kind:02X}")
                time.sleep(0.5)
                return
            sock.setblocking(False)
            sent, t0 = 0, time.monotonic()
            pending = b""
            blocked_since: float | None = None
            while sent < 5000 and time.monotonic() < stop_at:
                if not pending:
                    pending = echo_rq(sent + 1)
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    n = 0
                except OSError:
                    a.count("connection ended by server while sending", time.monotonic() - t0)
                    return
                pending = pending[n:]
                if not pending and n:
                    sent += 1
                    blocked_since = None
                elif n == 0:
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > 2.0:
                        break
                    select.select([], [sock], [], 0.2)
            a.count(f"server stopped reading after ~{sent // 100 * 100}-{sent // 100 * 100 + 99} requests")
            # keep not reading: the server should end it after dimse_timeout
            waited = time.monotonic()
            while time.monotonic() < stop_at and time.monotonic() - waited < 90:
                r, _, _ = select.select([sock], [], [], 0.5)
                if r:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                        while sock.recv(65536):
                            pass
                        a.count("server ended the association", time.monotonic() - waited)
                        return
                    except BlockingIOError:
                        continue
                    except OSError:
                        a.count("server ended the association (reset)", time.monotonic() - waited)
                        return
        finally:
            sock.close()

    _guard(a, stop_at, body)


def attack_bomb(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    import httpx
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="BOMBER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, DEFLATED)
    bomb_path, zip_data = cfg["bomb"], cfg["zip"]
    client = httpx.Client(base_url=cfg["http"], timeout=120)

    def body() -> None:
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", cfg["port"], ae_title="MINIPACS", bind_address=("127.0.0.6", 0))
        if assoc.is_established:
            status = assoc.send_c_store(bomb_path)
            assoc.release()
            comment = str(status.get("ErrorComment", "")) if status else ""
            a.count(f"cstore {_outcome(status)} {comment}".strip(), time.perf_counter() - t0)
        else:
            a.count("cstore association refused", time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = client.post("/api/instances", content=zip_data, headers={"Content-Type": "application/zip"})
        a.count(f"zip {resp.status_code}", time.perf_counter() - t0)
        cfg.setdefault("zip_answer", resp.text[:300])
        time.sleep(1.0)

    _guard(a, stop_at, body)
    client.close()


def attack_idle_http(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    limit = cfg["http_max_connections"] + 32
    held: list[tuple[socket.socket, float]] = []
    http_port = cfg["http_port"]

    def body() -> None:
        opened = 0
        while len(held) < limit and opened < 10 and time.monotonic() < stop_at:
            opened += 1
            t0 = time.monotonic()
            held.append((raw_connect(http_port, "127.0.0.7"), time.monotonic()))
            a.count("opened (connect time)", time.monotonic() - t0)
        with a.lock:
            a.times.setdefault("held", []).append(float(len(held)))
        time.sleep(0.1)  # at most 100 connects/s
        for entry in list(held):
            sock, since = entry
            data = peek(sock, 64)
            if data is None:
                continue
            age = time.monotonic() - since
            if data.startswith(b"HTTP/1.1 503"):
                a.count("503 at once", age)
            elif data:
                a.count(f"answered {data[:12]!r}", age)
            else:
                a.count("closed silently (<1 s)" if age < 1 else "closed silently after waiting", age)
            sock.close()
            held.remove(entry)

    _guard(a, stop_at, body)
    for sock, _ in held:
        sock.close()


def attack_render(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    import httpx

    client = httpx.Client(base_url=cfg["http"], timeout=120)

    def body() -> None:
        t0 = time.perf_counter()
        resp = client.get(cfg["render_url"], headers={"Accept": "image/png"})
        a.count(f"rendered {resp.status_code}", time.perf_counter() - t0)
        if resp.status_code == 503:
            time.sleep(0.2)

    _guard(a, stop_at, body)
    client.close()


def attack_stow(a: Attack, cfg: dict[str, Any], stop_at: float) -> None:
    import httpx

    client = httpx.Client(base_url=cfg["http"], timeout=120)
    bodies = []
    for parts in (20_000, 5_000):
        chunk = b"--B\r\nContent-Type: application/dicom\r\n\r\n\r\n"
        bodies.append((parts, chunk * parts + b"--B--\r\n"))
    turn = [0]

    def body() -> None:
        parts, data = bodies[turn[0] % 2]
        turn[0] += 1
        t0 = time.perf_counter()
        resp = client.post(
            "/dicom-web/studies",
            content=data,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
        )
        a.count(f"stow {parts} empty parts -> {resp.status_code}", time.perf_counter() - t0)
        time.sleep(0.5)

    _guard(a, stop_at, body)
    client.close()


# ------------------------------------------------------------------ measurement


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return {
        "n": len(ordered),
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


#: Attacks made of timed requests (the others hold connections the whole time, so always "in flight").
REQUEST_ATTACKS = ("wildcard", "bomb", "render", "stow")


def slow_overlap(samples: list[list[Any]], attacks: dict[str, Attack], lo: float, hi: float) -> dict[str, Any]:
    """For each good-client operation: of its answers slower than 100 ms during the attack, the share
    that overlapped a request of each request-based attacker, next to the same share over all its
    answers (the base rate). An attacker in flight far more often than its base rate drives the tail."""
    out: dict[str, Any] = {}
    for op in ("echo", "store", "find"):
        rows = [(s[0] - s[2], s[0], s[2]) for s in samples if s[1] == op and lo <= s[0] < hi and s[3] == "ok"]
        slow = [r for r in rows if r[2] > 0.100]
        entry: dict[str, Any] = {"n": len(rows), "slow": len(slow)}
        for name in REQUEST_ATTACKS:
            if name not in attacks:
                continue
            spans = sorted(attacks[name].spans)

            def busy(start: float, end: float, spans: list[tuple[float, float]] = spans) -> bool:
                return any(a < end and b > start for a, b in spans)

            entry[name] = {
                "slow_share": round(sum(busy(r[0], r[1]) for r in slow) / len(slow), 2) if slow else None,
                "base_share": round(sum(busy(r[0], r[1]) for r in rows) / len(rows), 2) if rows else None,
            }
        out[op] = entry
    return out


def tree_rss_kb(root: int) -> int:
    """VmRSS of ``root`` and all its descendants (kB)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def sampler(pid: int, stop_evt: threading.Event, out: list[tuple[float, int]]) -> None:
    while not stop_evt.is_set() and len(out) < 100_000:
        out.append((time.time(), tree_rss_kb(pid)))
        stop_evt.wait(0.1)


def setup(cfg: dict[str, Any], data: Path) -> None:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    victim = make_ct(data / "victim.dcm", 8, 8, InstitutionName=STORED)
    large = make_ct(data / "large.dcm", 2048, 2048)
    ae = AE(ae_title="SETUP")
    ae.add_requested_context(CTImageStorage, EXPLICIT)
    assoc = ae.associate("127.0.0.1", cfg["port"], ae_title="MINIPACS")
    for path in (victim, large):
        status = assoc.send_c_store(path)
        if not status or status.Status != 0:
            raise RuntimeError(f"setup store of {path.name} failed: {status}")
    assoc.release()
    ds = dcmread(large, stop_before_pixels=True)
    cfg["render_url"] = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/rendered"
    )


ATTACKS = [
    ("wildcard", attack_wildcard, 1),
    ("quiet", attack_quiet, 1),
    ("silent_tcp", attack_silent_tcp, 1),
    ("pipeline", attack_pipeline, 1),
    ("bomb", attack_bomb, 1),
    ("idle_http", attack_idle_http, 1),
    ("render", attack_render, 4),
    ("stow", attack_stow, 1),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of attack (default 90)")
    ap.add_argument("--baseline", type=float, default=15.0, help="quiet seconds first (default 15)")
    ap.add_argument("--idle-timeout", type=float, default=5.0)
    ap.add_argument("--only", default="", help="comma-separated attack names (default: all)")
    ap.add_argument("--role", default="soak", choices=["soak", "good"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--small", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "good":
        good_client(args)
        return 0

    run = WORK / "soak"
    run.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    http_max = 512
    env = {
        "MINIPACS_HTTP_PORT": str(http_port),
        "MINIPACS_HTTP_HOST": "127.0.0.1",
        "MINIPACS_IDLE_TIMEOUT": str(args.idle_timeout),
        "MINIPACS_HTTP_MAX_CONNECTIONS": str(http_max),
        "MINIPACS_LOG_LEVEL": "WARNING",
        "TCP_NODELAY": "1",
    }
    print("generating data ...", flush=True)
    small = make_ct(run / "small.dcm", 64, 64)
    bomb = make_ct(run / "bomb.dcm", 4096, 4096, ts=DEFLATED)
    zdata = zip_bomb(256 << 20)
    print(
        f"deflate bomb {bomb.stat().st_size} B (inflates to {4096 * 4096 * 2} B); zip bomb {len(zdata)} B", flush=True
    )
    server = start_minipacs(run / "data", port, run / "server.log", env)
    cfg: dict[str, Any] = {
        "port": port,
        "http_port": http_port,
        "http": f"http://127.0.0.1:{http_port}",
        "http_max_connections": http_max,
        "bomb": str(bomb),
        "zip": zdata,
    }
    good: subprocess.Popen[bytes] | None = None
    rss: list[tuple[float, int]] = []
    stop_evt = threading.Event()
    result: dict[str, Any] = {"machine": machine_info(), "settings": {k: v for k, v in env.items()}}
    try:
        deadline_http = time.monotonic() + 30
        while time.monotonic() < deadline_http:
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        setup(cfg, run)
        threading.Thread(target=sampler, args=(server.pid, stop_evt, rss), daemon=True).start()
        total = args.baseline + args.duration
        good_out = run / "good.json"
        good = subprocess.Popen(
            [sys.executable, __file__, "--role", "good", "--port", str(port), "--seconds", str(total)]
            + ["--small", str(small), "--out", str(good_out)]
        )
        t_start = time.time()
        time.sleep(args.baseline)
        t_attack = time.time()
        stop_at = time.monotonic() + args.duration
        wanted = {n for n in args.only.split(",") if n}
        attacks: dict[str, Attack] = {}
        threads = []
        for name, fn, copies in ATTACKS:
            if wanted and name not in wanted:
                continue
            attacks[name] = Attack(name)
            for _ in range(copies):
                t = threading.Thread(target=fn, args=(attacks[name], cfg, stop_at), daemon=True)
                t.start()
                threads.append(t)
        print(f"attacking for {args.duration:.0f} s: {', '.join(attacks)}", flush=True)
        for t in threads:
            t.join(max(1.0, stop_at - time.monotonic() + 150))
        t_end = time.time()
        good.wait(timeout=args.duration + 300)
        stop_evt.set()
        alive = server.poll() is None
        # is the server still answering after the attack?
        import httpx

        try:
            after_http = httpx.get(f"{cfg['http']}/dicom-web/studies", params={"PatientID": GOOD_PID}, timeout=10)
            after = f"HTTP {after_http.status_code}"
        except Exception as exc:  # noqa: BLE001
            after = f"HTTP failed: {exc}"
        echo = subprocess.run(
            ["/usr/bin/echoscu", "-aec", "MINIPACS", "127.0.0.1", str(port)],
            capture_output=True,
            timeout=30,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        after += f"; echoscu rc={echo.returncode}"
    finally:
        stop_evt.set()
        if good is not None and good.poll() is None:
            good.kill()
            good.wait(10)
        rc = stop(server)

    g = json.loads(good_out.read_text())
    ops: dict[str, dict[str, Any]] = {}
    for phase, lo, hi in (("baseline", t_start, t_attack), ("attack", t_attack, t_end)):
        for op in ("echo", "store", "find", "associate"):
            rows = [s for s in g["samples"] if s[1] == op and lo <= s[0] < hi]
            st: dict[str, Any] = _stats([s[2] for s in rows])
            st["outcomes"] = dict(Counter(s[3] for s in rows))
            ops[f"{phase}/{op}"] = st
    rss_attack = [kb for t, kb in rss if t_attack <= t <= t_end] or [0]
    rss_all = [kb for _, kb in rss] or [0]
    p99s = {op: ops[f"attack/{op}"].get("p99", float("inf")) for op in ("echo", "store", "find")}
    failures = sum(
        n for op in ("echo", "store", "find") for k, n in ops[f"attack/{op}"]["outcomes"].items() if k != "ok"
    )
    result.update(
        {
            "duration_attack_s": t_end - t_attack,
            "baseline_s": t_attack - t_start,
            "good_client": ops,
            "good_reconnects": g["reconnects"],
            "good_rescued_responses": g["rescued_responses"],
            "rss_max_mb_attack": max(rss_attack) / 1024,
            "rss_max_mb_all": max(rss_all) / 1024,
            "rss_samples": len(rss),
            "server_alive_after": alive,
            "server_answering_after": after,
            "server_exit": rc,
            "attacks": {name: at.summary() for name, at in attacks.items()},
            "slow_overlap": slow_overlap(g["samples"], attacks, t_attack, t_end),
            "zip_answer": cfg.get("zip_answer"),
            "target_p99_ms": 100,
            "target_rss_mb": 300,
            "p99_pass": all(v < 0.100 for v in p99s.values()),
            "rss_pass": max(rss_all) / 1024 < 300,
            "good_failures_during_attack": failures,
        }
    )
    out = WORK / "soak_hostile.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{'phase/op':<20}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  outcomes")
    for key, st in ops.items():
        if "n" not in st:
            print(f"{key:<20}{0:>6}")
            continue
        ms = [st[k] * 1000 for k in ("p50", "p95", "p99", "max")]
        print(f"{key:<20}{st['n']:>6}" + "".join(f"{v:>9.1f}" for v in ms) + f"  {st['outcomes']}")
    rss_attack_mb, rss_all_mb = result["rss_max_mb_attack"], result["rss_max_mb_all"]
    print(f"\nserver RSS max: {rss_attack_mb:.1f} MB during attack, {rss_all_mb:.1f} MB overall")
    print(f"good client reconnects: {g['reconnects']}; non-ok answers during attack: {failures}")
    print(f"responses taken by pynetdicom's reactor and given back (keep_stolen_responses): {g['rescued_responses']}")
    print(f"after the attack: alive={alive}, {after}")
    for name, summ in result["attacks"].items():
        print(f"\n[{name}]")
        for k, v in sorted(summ["outcomes"].items()):
            t = summ["seconds"].get(k)
            extra = f"  (p50 {t['p50']:.2f} s, max {t['max']:.2f} s)" if t else ""
            print(f"  {v:>6} x {k}{extra}")
        for k, v in summ["errors"].items():
            print(f"  {v:>6} x error {k}")
    print("\ngood answers > 100 ms during the attack: share overlapping a request of ... (base rate)")
    for op, entry in result["slow_overlap"].items():
        shares = [f"{name} {v['slow_share']} ({v['base_share']})" for name, v in entry.items() if isinstance(v, dict)]
        print(f"  {op:<6} {entry['slow']:>4} of {entry['n']:<5} " + ", ".join(shares))
    verdict_p99 = "PASS" if result["p99_pass"] else "MISSED"
    verdict_rss = "PASS" if result["rss_pass"] else "MISSED"
    print(f"\np99 < 100 ms: {verdict_p99} ({', '.join(f'{k} {v * 1000:.1f}' for k, v in p99s.items())} ms)")
    print(f"RSS < 300 MB: {verdict_rss} ({result['rss_max_mb_all']:.1f} MB)")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
