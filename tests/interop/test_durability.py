"""What a C-STORE acknowledgement promises, under crashes, hostile peers and limits.

A 0x0000 response means file and index row are durable: a SIGKILL right after
loses nothing acknowledged and leaves no row without its file. Hostile UIDs,
oversized datasets and duplicates get exact failure statuses, write nothing
outside DATA/storage, and never end the association. A 1 GiB instance is
received with flat memory. Peers: pynetdicom in this process, DCMTK storescu,
and our own SCU where a peer must send what pynetdicom refuses to build.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import signal
import sqlite3
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from minipacs.net.association import Association, AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct
from tests.peers import ServerProcess, dcmtk, leftover_transfers, run, scu_only, start_server
from tests.stored_files import dataset_of, is_stored, stored_bytes, stored_keys

pytestmark = pytest.mark.interop

MB = 1024 * 1024
LIMIT = 200_000  # MINIPACS_MAX_DATASET_BYTES for the size tests


# ---------------------------------------------------------------- helpers


@contextmanager
def hostile_values() -> Iterator[None]:
    """Let pydicom build and write values it would refuse or warn about."""
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


def ct(
    sop: str | None = None, study: str | None = None, series: str | None = None, pixels: bytes | None = None
) -> Dataset:
    ds = make_ct(
        generate_uid() if study is None else study,
        generate_uid() if series is None else series,
        generate_uid() if sop is None else sop,
    )
    if pixels is not None:
        ds.PixelData = pixels
    return ds


@contextmanager
def running(tmp: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(tmp, env=env)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pynetdicom_assoc(port: int, calling: str = "PYNETSCU", timeout: float = 30) -> Iterator[Any]:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = scu_only(ae.associate("127.0.0.1", port, ae_title="MINIPACS"))
    assert assoc.is_established, f"pynetdicom could not associate with 127.0.0.1:{port}"
    raw_socket = assoc.dul.socket.socket  # pynetdicom leaves it open when the peer dies
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        raw_socket.close()


def status_of(rsp: Dataset) -> int:
    """The Status of a pynetdicom response; -1 when none came (association lost)."""
    return int(rsp.Status) if "Status" in rsp else -1


def index_rows(data_dir: Path, sql: str = "SELECT sop_instance_uid, blob_key, size FROM instances") -> list[Any]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return db.execute(sql).fetchall()


def staging_files(data_dir: Path) -> list[Path]:
    return leftover_transfers(data_dir)


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def raw_store(port: int, items: list[tuple[str, bytes]], calling: str = "RAWSCU") -> list[tuple[int, str]]:
    """C-STORE each (announced SOP Instance UID, dataset bytes) on ONE association, from our own SCU.

    Sends exactly these bytes, whatever pynetdicom would refuse to send; returns
    (status, error comment) per request; asserts the association survived them all.
    """

    async def go() -> list[tuple[int, str]]:
        settings = AssociationSettings(ae_title=calling)
        rq = build_rq(calling, "MINIPACS", [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])], settings)
        assoc: Association = await connect("127.0.0.1", port, rq, settings)
        ctx = assoc.context_for(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
        assert ctx is not None, "CT Image Storage in Explicit VR LE was not accepted"
        results: list[tuple[int, str]] = []
        try:
            for announced, data in items:
                cmd = Command.make(
                    "C-STORE-RQ",
                    has_dataset=True,
                    MessageID=assoc.next_message_id(),
                    Priority=0,
                    AffectedSOPClassUID=CT_IMAGE_STORAGE,
                    AffectedSOPInstanceUID=announced,
                )
                status, text = -1, ""
                async for rsp in assoc.request(ctx.context_id, cmd, data):
                    status = int(rsp.command.get("Status", -1))
                    text = str(rsp.command.get("ErrorComment", ""))
                results.append((status, text))
            assert assoc.is_established, f"association ended: {assoc.end_reason}"
        finally:
            await assoc.release()
        return results

    return asyncio.run(go())


# ---------------------------------------------------------------- 1. kill -9


def test_kill_9_during_transfers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random()
    acked: list[str] = []
    sent: list[str] = []
    fortieth = threading.Event()
    server = start_server(tmp_path)
    data = server.data_dir

    def killer() -> None:
        if fortieth.wait(60):
            time.sleep(rng.uniform(0.0, 0.06))  # lands inside the next (often multi-MB) transfer
            server.proc.send_signal(signal.SIGKILL)  # Popen: never signals a reaped (reused) pid

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        study, series = generate_uid(), generate_uid()
        # pynetdicom may notice the dead peer only at its timeouts: keep them short here
        with pynetdicom_assoc(server.port, timeout=5) as assoc:
            for i in range(200):
                big = i % 3 == 2 or (i >= 40 and i % 2 == 0)
                size = rng.randrange(2 * MB, 5 * MB, 2) if big else 64 * 64 * 2
                ds = ct(study=study, series=series, pixels=bytes([i % 251]) * size)
                sent.append(str(ds.SOPInstanceUID))
                try:
                    rsp = assoc.send_c_store(ds)
                except (RuntimeError, OSError):
                    break
                if status_of(rsp) == 0x0000:
                    acked.append(str(ds.SOPInstanceUID))
                    if len(acked) == 40:
                        fortieth.set()
                if not assoc.is_established or server.proc.poll() is not None:
                    break
        fortieth.set()  # if the loop ended early, the killer must not wait
        thread.join(10)
        assert server.proc.wait(10) == -signal.SIGKILL, "the server was not killed by the SIGKILL"
    finally:
        server.stop()
    assert len(acked) >= 40, f"only {len(acked)} acknowledged before the kill:\n{server.log_text()}"
    assert len(acked) < 200, "the kill never interrupted the transfers"

    rows = index_rows(data)
    by_uid = {uid: (key, size) for uid, key, size in rows}
    missing = [uid for uid in acked if uid not in by_uid]
    assert not missing, f"{len(missing)} acknowledged instance(s) not in the index after kill -9: {missing[:3]}"
    # the small ones, received into memory through the intake log, are pack entries (blobs/packs.py); the
    # multi-MB ones files of their own: the kill lands among both
    kinds = {key.startswith("packs/") for key, _size in by_uid.values()}
    assert kinds == {True, False}, sorted(by_uid.values())[:3]
    assert all(key.startswith("packs/") == (size <= MB) for key, size in by_uid.values())
    for uid, (key, size) in by_uid.items():
        assert is_stored(data / "storage", key), f"index row {uid} points to missing file {key}"
        stored = stored_bytes(data / "storage", key)
        assert len(stored) == size, f"{key}: {len(stored)} bytes on disk, {size} in the index"
        assert pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).SOPInstanceUID == uid

    restarted = start_server(tmp_path)  # same data dir, new free port
    try:
        assert staging_files(data) == [], "unacknowledged leftovers were not removed from staging at start"
        after = {uid: (key, size) for uid, key, size in index_rows(data)}
        assert {uid: after.get(uid) for uid in by_uid} == by_uid, "the restart changed or dropped committed rows"
        # The one instance in flight may have reached the log's fdatasync but not its commit when
        # the kill landed: the start replays it (README, "Durability"). It was never acknowledged,
        # and it must be stored whole; nothing else may appear.
        replayed = set(after) - set(by_uid)
        assert replayed <= set(sent[-1:]), f"rows appeared at restart for instances not in flight: {replayed}"
        for uid in replayed:
            stored = stored_bytes(data / "storage", after[uid][0])
            assert len(stored) == after[uid][1]
            assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == uid
        for uid in acked:
            assert len(stored_bytes(data / "storage", after[uid][0])) == after[uid][1]
        new = ct()
        with pynetdicom_assoc(restarted.port) as assoc:
            assert status_of(assoc.send_c_store(new)) == 0x0000
        rows_now = {uid for uid, _k, _s in index_rows(data)}
        assert rows_now == set(after) | {new.SOPInstanceUID}
    finally:
        restarted.stop()


# ---------------------------------------------------------------- 2. hostile UIDs

HOSTILE_UIDS = {
    "dot-dot path": "../../etc/x",
    "slash": "1.2/3",
    "embedded NUL": "1.2.3\x00.4",
    "65 characters": "1." + "2" * 63,
    "empty": "",
}


def _hostile_cases() -> list[tuple[str, str, bytes, int]]:
    """(label, announced SOP Instance UID, dataset bytes, expected status)."""
    cases: list[tuple[str, str, bytes, int]] = []
    with hostile_values():
        for label, bad in HOSTILE_UIDS.items():
            # announced and dataset both hostile: refused before anything is staged
            cases.append((f"SOPInstanceUID {label}", bad, encode_dataset(ct(sop=bad)), 0xC000))
            # announced valid, dataset hostile: PS3.4 B.2.3 mismatch; an absent one cannot be stored at all
            sop = generate_uid()
            cases.append(
                (
                    f"dataset SOPInstanceUID {label} vs announced",
                    sop,
                    encode_dataset(ct(sop=bad)),
                    0xC000 if bad == "" else 0xC001,  # PS3.4 B.2.3: instance UID, not class, mismatch
                )
            )
            if "\x00" in bad:
                # announced as the NUL-free value a careless reader would make of the dataset's
                sop = bad.replace("\x00", "")
                cases.append(
                    (f"dataset SOPInstanceUID {label} vs announced NUL-free", sop, encode_dataset(ct(sop=bad)), 0xC001)
                )
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
                sop = generate_uid()
                ds = ct(sop=sop, **{"study" if keyword.startswith("Study") else "series": bad})
                cases.append((f"{keyword} {label}", sop, encode_dataset(ds), 0xC000))
    return cases


def test_hostile_uids_get_failure_statuses_and_write_nothing(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        data = server.data_dir
        before = all_files(tmp_path)
        cases = _hostile_cases()
        # "1.2.3\x00" is not hostile: a trailing NUL is the UI padding of PS3.5 §9.1, so it
        # is the wire form of "1.2.3"; it must store under a NUL-free key.
        padded_sop = "1.2.3.4" + f".{random.randrange(10**8, 10**9)}"
        if len(padded_sop) % 2 == 0:
            padded_sop += "1"
        with hostile_values():
            padded = ct(sop=padded_sop + "\x00")
        good = ct()
        items = [(announced, raw) for _label, announced, raw, _st in cases]
        items += [(padded_sop + "\x00", encode_dataset(padded)), (good.SOPInstanceUID, encode_dataset(good))]
        results = raw_store(server.port, items)

        assert len(results) == len(items)
        # first what must hold whatever the statuses: nothing outside DATA/storage, staging empty
        storage = data / "storage"
        outside = {
            p
            for p in all_files(tmp_path) - before
            if not p.is_relative_to(storage)
            and p != server.log_path
            and not (p.parent == data and p.name.startswith("index.sqlite3"))
            and not (p.parent == data / "ready" and p.stat().st_size == 0)  # empty, for the next transfer
            # the intake log (core/intake.py): names of ours, never from a peer's values
            and not (p.parent == data / "intake" and re.fullmatch(r"[0-9a-f]{16}\.seg|spare\.tmp|checkpoint", p.name))
        }
        assert not outside, f"files written outside DATA/storage: {sorted(map(str, outside))}"
        assert staging_files(data) == []

        wrong = [
            f"{label}: got 0x{st:04X} ({text!r}), expected 0x{want:04X}"
            for (label, _a, _r, want), (st, text) in zip(cases, results[:-2], strict=True)
            if st != want
        ]
        assert not wrong, "\n".join(wrong)
        no_comment = [label for (label, *_), (_st, text) in zip(cases, results[:-2], strict=True) if not text.strip()]
        assert not no_comment, f"failures without ErrorComment: {no_comment}"
        assert results[-2] == (0x0000, ""), f"padded UID: {results[-2]}"
        assert results[-1] == (0x0000, ""), f"good instance after the hostile ones: {results[-1]}"

        rows = index_rows(data)
        assert {uid for uid, _k, _s in rows} == {padded_sop, good.SOPInstanceUID}
        assert index_rows(data, "SELECT COUNT(*) FROM studies") == [(2,)]
        assert index_rows(data, "SELECT COUNT(*) FROM series") == [(2,)]
        keys = {key for _u, key, _s in rows}
        assert stored_keys(storage) == keys
        assert padded_sop in {pydicom.dcmread(io.BytesIO(stored_bytes(storage, key))).SOPInstanceUID for key in keys}, (
            "stored under a NUL-free UID"
        )


# ---------------------------------------------------------------- 3. too large


def _dataset_of_size(size: int) -> tuple[str, bytes]:
    """A valid CT dataset of exactly ``size`` (even) bytes: Pixel Data is padded to fit."""
    ds = ct(pixels=b"")
    base = len(encode_dataset(ds))
    ds.PixelData = b"\x07" * (size - base)
    raw = encode_dataset(ds)
    assert len(raw) == size
    return str(ds.SOPInstanceUID), raw


def test_dataset_too_large_is_refused_and_the_association_continues(tmp_path: Path) -> None:
    with running(tmp_path, env={"MINIPACS_MAX_DATASET_BYTES": str(LIMIT)}) as server:
        exact_uid, exact = _dataset_of_size(LIMIT)
        over1_uid, over1 = _dataset_of_size(LIMIT)  # + one stray byte: only the limit can refuse it first
        over2_uid, over2 = _dataset_of_size(LIMIT + 2)  # smallest valid dataset over the limit
        huge_uid, huge = _dataset_of_size(LIMIT * 8)
        good = ct()
        results = raw_store(
            server.port,
            [
                (exact_uid, exact),
                (over1_uid, over1 + b"\x00"),
                (over2_uid, over2),
                (huge_uid, huge),
                (good.SOPInstanceUID, encode_dataset(good)),
            ],
        )
        statuses = [st for st, _t in results]
        assert statuses == [0x0000, 0xA700, 0xA700, 0xA700, 0x0000], [hex(s) for s in statuses]
        assert all(text for _st, text in results[1:4]), results
        rows = {uid: key for uid, key, _s in index_rows(server.data_dir)}
        assert set(rows) == {exact_uid, good.SOPInstanceUID}
        assert dataset_of(stored_bytes(server.data_dir / "storage", rows[exact_uid])) == exact
        assert staging_files(server.data_dir) == []


# ---------------------------------------------------------------- 4. duplicates


@pytest.mark.parametrize(
    ("policy", "resend_status", "kept"),
    [
        ("reject", 0x0111, "first"),
        (None, 0x0000, "first"),  # the default is keep
        ("replace", 0x0000, "second"),
    ],
)
def test_duplicate_policies(tmp_path: Path, policy: str | None, resend_status: int, kept: str) -> None:
    env = {"MINIPACS_DUPLICATE_POLICY": policy} if policy else None
    if policy == "replace":  # the replaced copy's file stays this long (a retrieve may have chosen it)
        env = {**(env or {}), "MINIPACS_KEEP_REPLACED_SECONDS": "5"}
    with running(tmp_path, env=env) as server:
        sop, study, series = generate_uid(), generate_uid(), generate_uid()
        first = ct(sop, study, series, pixels=b"\x01" * 8192)
        second = ct(sop, study, series, pixels=b"\x02" * 8192)
        with pynetdicom_assoc(server.port) as assoc:
            assert status_of(assoc.send_c_store(first)) == 0x0000
            [(_uid, key, _size)] = index_rows(server.data_dir)
            storage = server.data_dir / "storage"
            first_file = stored_bytes(storage, key)
            rsp = assoc.send_c_store(second)
            assert status_of(rsp) == resend_status
            if resend_status:
                assert str(rsp.get("ErrorComment", "")).strip()
            assert status_of(assoc.send_c_store(ct())) == 0x0000  # the association goes on
        rows = {uid: (k, s) for uid, k, s in index_rows(server.data_dir)}
        assert len(rows) == 2
        if kept == "first":
            assert rows[sop][0] == key
            assert stored_bytes(storage, key) == first_file
        else:  # each copy has its own key (issue 10); the replaced copy's file waits out its grace period
            new = stored_bytes(storage, rows[sop][0])
            assert rows[sop][0] != key
            assert dataset_of(new) == encode_dataset(second)
            assert rows[sop][1] == len(new)
            queued = index_rows(server.data_dir, "SELECT blob_key, reason FROM blob_removals")
            assert queued in ([(key, "replaced")], [])  # [] only once the 5 s are over
            deadline = time.monotonic() + 30

            def swept() -> bool:  # the sweep removes the file, then its queue row (core/blob_removals.py)
                return not is_stored(storage, key) and not index_rows(
                    server.data_dir, "SELECT blob_key FROM blob_removals"
                )

            while not swept() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not is_stored(storage, key) and is_stored(storage, rows[sop][0])
            assert index_rows(server.data_dir, "SELECT blob_key FROM blob_removals") == []
        assert staging_files(server.data_dir) == []


# ---------------------------------------------------------------- 5. 1 GiB, flat memory

BIG_ROWS, BIG_COLS, BIG_FRAMES = 512, 512, 2048
BIG_PIXEL_BYTES = BIG_ROWS * BIG_COLS * BIG_FRAMES * 2  # 1 GiB


def make_big(path: Path, tail: bytes) -> None:
    """bench/bench_memory.py's file: pydicom header, Pixel Data OW with explicit length, sparse value.

    The last len(tail) bytes of the pixel data are ``tail`` (the rest reads as zeros).
    """
    ds = make_ct(generate_uid(), generate_uid(), generate_uid(), rows=BIG_ROWS, cols=BIG_COLS)
    del ds.PixelData
    ds.NumberOfFrames = str(BIG_FRAMES)
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
        # (7FE0,0010) OW, explicit VR LE: tag, "OW", 2 reserved bytes, 4-byte length
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, BIG_PIXEL_BYTES))
        fh.truncate(fh.tell() + BIG_PIXEL_BYTES)
        fh.seek(-len(tail), os.SEEK_END)
        fh.write(tail)


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def meta_length(path: Path) -> int:
    """Preamble, prefix and File Meta Information of a Part 10 file, in bytes."""
    with open(path, "rb") as fh:
        head = fh.read(144)
    return 144 + int.from_bytes(head[140:144], "little")


@pytest.mark.slow
def test_one_gib_instance_with_flat_memory(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    big = folder / "big.dcm"
    tail = os.urandom(MB)
    make_big(big, tail)
    stored: Path | None = None
    try:
        with running(tmp_path) as server:
            pid = server.proc.pid
            rss: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    try:
                        rss.append(proc_status(pid)["VmRSS"])
                    except (FileNotFoundError, KeyError, ProcessLookupError):
                        return
                    done.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            res = run(
                [dcmtk("storescu"), "-aec", "MINIPACS", "-xe", "127.0.0.1", str(server.port), str(big)], timeout=300
            )
            done.set()
            sampler.join(5)
            hwm_kb = proc_status(pid)["VmHWM"]
            assert res.returncode == 0, res.stdout + res.stderr
            rows = index_rows(server.data_dir)
            assert len(rows) == 1, f"{rows}\n{server.log_text()}"
            stored = server.data_dir / "storage" / rows[0][1]
        assert stored is not None
        assert len(rss) > 10, f"only {len(rss)} RSS samples: the transfer was not observed"
        assert max(rss) * 1024 < 150e6, f"sampled VmRSS reached {max(rss) / 1024:.1f} MiB"
        assert hwm_kb * 1024 < 150e6, f"VmHWM {hwm_kb / 1024:.1f} MiB (limit 150 MB)"
        sent_dataset = big.stat().st_size - meta_length(big)
        assert stored.stat().st_size == sent_dataset + meta_length(stored) == rows[0][2]
        with open(stored, "rb") as fh:
            fh.seek(-MB, os.SEEK_END)
            assert fh.read() == tail
    finally:
        big.unlink(missing_ok=True)
        if stored is not None:
            stored.unlink(missing_ok=True)


# ---------------------------------------------------------------- 6. bad peer, good peer


def test_a_bad_peer_does_not_disturb_another(tmp_path: Path) -> None:
    with running(tmp_path, env={"MINIPACS_MAX_DATASET_BYTES": str(LIMIT)}) as server:
        bad_statuses: list[tuple[int, float]] = []
        bad_error: list[BaseException] = []
        started, good_done = threading.Event(), threading.Event()

        def bad_peer() -> None:
            try:
                with pynetdicom_assoc(server.port, "BADPEER") as assoc:
                    for i in range(500):
                        with hostile_values():
                            ds = ct(pixels=b"\x05" * (LIMIT * 5)) if i % 2 == 0 else ct(study="../../etc/x")
                            bad_statuses.append((status_of(assoc.send_c_store(ds)), time.monotonic()))
                        started.set()
                        if good_done.is_set():
                            break
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                bad_error.append(exc)
                started.set()

        thread = threading.Thread(target=bad_peer, daemon=True)
        thread.start()
        assert started.wait(30)
        good: list[str] = []
        try:
            t0 = time.monotonic()
            with pynetdicom_assoc(server.port, "GOODPEER") as assoc:
                study, series = generate_uid(), generate_uid()
                for _ in range(20):
                    ds = ct(study=study, series=series)
                    assert status_of(assoc.send_c_store(ds)) == 0x0000
                    good.append(str(ds.SOPInstanceUID))
            t1 = time.monotonic()
        finally:
            good_done.set()
            thread.join(60)
        assert not bad_error, bad_error
        assert not thread.is_alive()
        during = [st for st, at in bad_statuses if t0 <= at <= t1]
        assert len(during) >= 2, "the bad peer's requests did not overlap the good peer's"
        assert {st for st, _at in bad_statuses} <= {0xA700, 0xC000}, {hex(st) for st, _at in bad_statuses}
        assert {st for st, _at in bad_statuses} == {0xA700, 0xC000} or len(bad_statuses) < 2
        assert {uid for uid, _k, _s in index_rows(server.data_dir)} == set(good)
        assert staging_files(server.data_dir) == []
