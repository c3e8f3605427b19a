"""The intake log: ONE ``fdatasync`` makes a group of received instances durable (issue 10).

Before it, every acknowledged C-STORE paid three synchronous flushes on the critical path: the staged
file, the storage directory after the rename, and the index's WAL at commit (~1.1 ms on our test disk
for a 9.5 kB instance). Now the archive's writer thread, for each batch of instances whose files are at
most ``intake_inline_max_bytes``:

1. appends one record per instance -- the whole stored Part 10 file and what is needed to ingest it
   again -- to the current log segment, and starts ONE ``fdatasync`` of the segment in the C library's
   own thread (POSIX ``aio_fsync``: it needs no GIL, so it runs while the writer works; a Python thread
   could not start before the writer released the GIL). This happens before the checks, so a record
   may hold a dataset that is then refused: no index row ever names its blob key, and the replay
   stores nothing for it;
2. walks each dataset's structure, reads its header, applies the index rows and renames (or writes)
   the files into storage, as before, but without flushing either (the transaction commits with
   SQLite ``synchronous=NORMAL`` / PostgreSQL ``synchronous_commit=off``);
3. waits for the flush, stores the last record's sequence number (LSN) in the index row
   ``intake_state`` in the same transaction, then commits; only then are the instances acknowledged.

So an acknowledged instance is in the log on disk, whatever the power does next. A *checkpoint*
(a background thread, every ``intake_checkpoint_seconds`` or after ``intake_checkpoint_bytes`` of
records) makes the materialised state durable behind the log: a durable no-op commit through the writer
(flushes every earlier commit), ``syncfs`` of the storage and data filesystems (every file and directory
written since), then the checkpoint LSN is written to ``intake/checkpoint`` and segments wholly before
it are recycled. The same thread copies SQLite's WAL into the index's database file each turn
(``PRAGMA wal_checkpoint(PASSIVE)``): with the log on, the writer's commits leave that to it, so no
C-STORE waits for the copy of a thousand pages and its two fsyncs that SQLite's own
``wal_autocheckpoint`` would put in one commit. At start, records after the checkpoint are replayed
(:meth:`Archive.start`):

* a record whose LSN is <= the index's ``intake_state`` committed: its file is rewritten from the log if
  an index row still names its blob key (it may have been deleted or replaced since: then nothing);
* a record after it never committed (a power cut lost the commit): it is ingested again.

Segments are files of ``intake_segment_bytes`` made with ``posix_fallocate`` and reused after a
checkpoint (an overwritten, already-written block flushes without a metadata update: 0.1 ms for 9.5 kB
here, against 0.19 ms in a fresh allocation and 0.75 ms for create + fsync + rename + directory fsync).

Record layout (little-endian): magic ``MPI1``, LSN (u64), payload length (u32), CRC-32 of the payload
(u32); payload: metadata length (u32), metadata (UTF-8 JSON), the file's bytes. The metadata names the
blob key's copy token (``token``), not the key: the key is made from it and the record's own header
(records of earlier versions name the ``key``). A scan stops at the first
record whose magic, LSN (must be the next one) or CRC is wrong: the torn tail of a crash, or an older
record of a reused segment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

MAGIC: Final = b"MPI1"
_HEAD: Final = struct.Struct("<4sQII")
_META_LEN: Final = struct.Struct("<I")
_LSN: Final = struct.Struct("<Q")
SEGMENT_SUFFIX: Final = ".seg"
CHECKPOINT_FILE: Final = "checkpoint"
#: Recycled segments kept for reuse; more are deleted.
MAX_FREE_SEGMENTS: Final = 8
#: The first segment's size; each new one doubles it up to the configured size, so an archive that
#: stores a few instances writes a few MiB of log, not tens.
FIRST_SEGMENT_BYTES: Final = 1 << 20
_ZEROS: Final = bytes(1 << 20)
SPARE_NAME: Final = "spare.tmp"


class IntakeLogError(Exception):
    """The intake log cannot be written (the disk is full or failing)."""


@dataclass(frozen=True)
class IntakeRecord:
    """One logged instance: its LSN, what ingesting it needs, and the stored file's bytes."""

    lsn: int
    meta: dict[str, Any]
    data: bytes


@dataclass
class _Segment:
    first_lsn: int
    path: Path


def _segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016x}{SEGMENT_SUFFIX}"


def _scan(path: Path, first_lsn: int) -> list[IntakeRecord]:
    """The valid records of one segment, from its first LSN on, up to the first bad one."""
    records: list[IntakeRecord] = []
    expected = first_lsn
    with open(path, "rb") as fh:
        while True:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                break
            magic, lsn, length, crc = _HEAD.unpack(head)
            if magic != MAGIC or lsn != expected:
                break
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            (meta_len,) = _META_LEN.unpack_from(payload)
            meta = json.loads(payload[_META_LEN.size : _META_LEN.size + meta_len])
            records.append(IntakeRecord(lsn, meta, payload[_META_LEN.size + meta_len :]))
            expected += 1
    return records


_libc: Any = None


def fsync_path(path: Path) -> None:
    """fsync(2) of a file or a directory by its path (a directory: its entries, after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush every dirty page and inode of the filesystem holding ``path`` (Linux syncfs(2)); elsewhere
    ``os.sync()``."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc and hasattr(_libc, "syncfs"):
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(path))
        else:  # pragma: no cover - not Linux
            os.sync()
    finally:
        os.close(fd)


class _SigEvent(ctypes.Structure):
    """``struct sigevent`` (64 bytes on Linux): only the notification kind is set."""

    _fields_ = (
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_rest", ctypes.c_byte * 48),
    )


class _AioControlBlock(ctypes.Structure):
    """``struct aiocb`` of glibc and musl on 64-bit Linux, up to its signal event; the rest (offset,
    reserved fields) is zeroed room, more than either library uses."""

    _fields_ = (
        ("aio_fildes", ctypes.c_int),
        ("aio_lio_opcode", ctypes.c_int),
        ("aio_reqprio", ctypes.c_int),
        ("aio_buf", ctypes.c_void_p),
        ("aio_nbytes", ctypes.c_size_t),
        ("aio_sigevent", _SigEvent),
        ("_rest", ctypes.c_byte * 192),
    )


_SIGEV_NONE: Final = 1  # Linux <signal.h>: no notification; completion is asked for with aio_error


class _Aio:
    """POSIX asynchronous ``fdatasync`` (``aio_fsync(O_DSYNC, ...)``) through ctypes.

    The C library runs the flush in a thread of its own, outside the interpreter: a Python thread
    would need the GIL to start the flush, and the index writer holds it while it runs the
    statements the flush should overlap (measured: a Python flush thread made the pair slower than
    doing both in turn). ctypes releases the GIL while ``aio_suspend`` waits."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        lib.aio_fsync.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.aio_fsync.restype = ctypes.c_int
        lib.aio_error.argtypes = [ctypes.c_void_p]
        lib.aio_error.restype = ctypes.c_int
        lib.aio_return.argtypes = [ctypes.c_void_p]
        lib.aio_return.restype = ctypes.c_ssize_t
        lib.aio_suspend.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.aio_suspend.restype = ctypes.c_int

    def start(self, fd: int) -> _AioControlBlock:
        block = _AioControlBlock()
        block.aio_fildes = fd
        block.aio_sigevent.sigev_notify = _SIGEV_NONE
        if self._lib.aio_fsync(os.O_DSYNC, ctypes.byref(block)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return block

    def wait(self, block: _AioControlBlock) -> None:
        """Until the flush is done (also after a signal); OSError with its errno if it failed."""
        lib, ref = self._lib, ctypes.byref(block)
        waiting = (ctypes.c_void_p * 1)(ctypes.addressof(block))
        while (err := lib.aio_error(ref)) == errno.EINPROGRESS:
            lib.aio_suspend(waiting, 1, None)
        lib.aio_return(ref)  # frees the request
        if err:
            raise OSError(err, os.strerror(err))


def _load_aio() -> _Aio | None:
    """The C library's asynchronous I/O, on 64-bit Linux (where the control block's layout is known);
    None elsewhere: then the flush is synchronous, after the statements, as before."""
    if sys.platform != "linux" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    for name in ("c", "rt"):  # glibc >= 2.34 has it in libc; older ones in librt
        found = ctypes.util.find_library(name)
        if not found:
            continue
        try:
            lib = ctypes.CDLL(found, use_errno=True)
            if hasattr(lib, "aio_fsync"):
                return _Aio(lib)
        except OSError:
            continue
    return None


_aio: Final = _load_aio()


@dataclass
class Flush:
    """A flush started by :meth:`IntakeLog.start_flush` (``request`` None: done synchronously at the wait)."""

    fd: int
    request: _AioControlBlock | None


class IntakeLog:
    """The segments under ``directory``; written from ONE thread (the writer), checkpointed from another."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # guards _segments, _free, checkpoint_lsn
        self._segments: list[_Segment] = []  # oldest first; the last is the one being written
        self._free: list[Path] = []
        self._fd: int | None = None
        self._offset = 0
        self._size = 0  # the current segment's size
        self.next_lsn = 1
        self.checkpoint_lsn = 0
        self._next_size = min(FIRST_SEGMENT_BYTES, segment_bytes)
        self._spare: tuple[Path, int] | None = None  # a zero-filled segment ready to use, and its size
        #: Called (writer thread) when a segment is started, so the next spare gets made.
        self.on_new_segment: Callable[[], None] | None = None
        self.bytes_appended = 0  # only grows; the checkpointer compares it with its last look
        self._aio_refused = False  # the C library refused an asynchronous flush once (logged once)

    # ------------------------------------------------------------------ opening and replay

    @classmethod
    def open(cls, directory: Path, segment_bytes: int) -> tuple[IntakeLog, list[IntakeRecord]]:
        """Open (or create) the log; returns it and the records after the last checkpoint, in order."""
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)  # a spare being zeroed: made again when needed
        return cls._read(directory, segment_bytes)

    @classmethod
    def _read(cls, directory: Path, segment_bytes: int) -> tuple[IntakeLog, list[IntakeRecord]]:
        """The log's state and its records after the last checkpoint, read without changing anything."""
        intake = cls(directory, segment_bytes)
        checkpoint = directory / CHECKPOINT_FILE
        try:
            raw = checkpoint.read_bytes()
            intake.checkpoint_lsn = _LSN.unpack(raw[: _LSN.size])[0] if len(raw) >= _LSN.size else 0
        except FileNotFoundError:
            intake.checkpoint_lsn = 0
        segments: list[_Segment] = []
        for path in directory.glob("*" + SEGMENT_SUFFIX):
            try:
                segments.append(_Segment(int(path.stem, 16), path))
            except ValueError:
                log.warning("ignoring %s in the intake log folder: not a segment name", path.name)
        segments.sort(key=lambda s: s.first_lsn)
        pending: list[IntakeRecord] = []
        last = intake.checkpoint_lsn
        for index, segment in enumerate(segments):
            following = segments[index + 1].first_lsn if index + 1 < len(segments) else None
            if following is not None and following - 1 <= intake.checkpoint_lsn:
                intake._free.append(segment.path)  # wholly checkpointed
                continue
            if segment.first_lsn > last + 1:
                break  # a gap: nothing after it can be trusted to follow (never written by us)
            records = _scan(segment.path, segment.first_lsn)
            for record in records:
                if record.lsn > intake.checkpoint_lsn:
                    pending.append(record)
            if records:
                last = max(last, records[-1].lsn)
            intake._segments.append(segment)
        intake.next_lsn = last + 1
        return intake, pending

    # ------------------------------------------------------------------ the writer's side

    def append(self, items: Sequence[tuple[dict[str, Any], bytes]]) -> list[int]:
        """Write one record per (metadata, file bytes) and fdatasync once; returns their LSNs."""
        lsns = self.write(items)
        self.finish_flush(self.start_flush(lsns))
        return lsns

    def start_flush(self, lsns: Sequence[int]) -> Flush | None:
        """Start the ``fdatasync`` of the records just written (:meth:`write`) in the C library's own
        thread (POSIX ``aio_fsync``), which needs no GIL: the caller goes on with other work and
        :meth:`finish_flush` waits. Where asynchronous I/O is not available the flush happens here.
        Until :meth:`finish_flush` returns, nothing else may be written to the log."""
        fd = self._fd
        if fd is None or not lsns:
            return None
        if _aio is None:
            return Flush(fd, None)
        try:
            return Flush(fd, _aio.start(fd))
        except OSError as exc:  # e.g. EAGAIN: the C library could not queue it (no thread to be had)
            if not self._aio_refused:
                log.warning("intake log: asynchronous flush refused (%s); flushing synchronously instead", exc)
                self._aio_refused = True
            return Flush(fd, None)  # the wait flushes: a bad descriptor fails there, as it would have here

    def finish_flush(self, flush: Flush | None) -> None:
        """Wait until the records of :meth:`start_flush` are durable; IntakeLogError if they may not be."""
        if flush is None:
            return
        try:
            if flush.request is None:
                os.fdatasync(flush.fd)
            else:
                _aio.wait(flush.request)  # type: ignore[union-attr]
        except OSError as exc:
            self._close_segment()
            raise IntakeLogError(f"the intake log cannot be written ({exc.strerror or exc})") from exc

    def write(self, items: Sequence[tuple[dict[str, Any], bytes]]) -> list[int]:
        """Write one record per (metadata, file bytes), not yet flushed (:meth:`start_flush`); their LSNs."""
        lsns: list[int] = []
        try:
            for meta, data in items:
                encoded = json.dumps(meta, separators=(",", ":")).encode()
                prefix = _META_LEN.pack(len(encoded))
                crc = zlib.crc32(data, zlib.crc32(encoded, zlib.crc32(prefix)))
                length = len(prefix) + len(encoded) + len(data)
                size = _HEAD.size + length
                if self._fd is None or self._offset + size > self._size:
                    self._start_segment(size)
                fd = self._fd
                assert fd is not None
                lsn = self.next_lsn
                written = os.pwritev(fd, [_HEAD.pack(MAGIC, lsn, length, crc), prefix, encoded, data], self._offset)
                if written != size:
                    raise OSError(f"short write to the intake log ({written} of {size} bytes)")
                self._offset += size
                self.next_lsn += 1
                self.bytes_appended += size
                lsns.append(lsn)
        except OSError as exc:
            # The records written may or may not be on disk: start a new segment next time, so a
            # half-written record is never followed by good ones in the same segment.
            self._close_segment()
            raise IntakeLogError(f"the intake log cannot be written ({exc.strerror or exc})") from exc
        return lsns

    @property
    def wants_spare(self) -> bool:
        """Whether :meth:`make_spare` has work: the log is in use and no segment waits to be reused."""
        with self._lock:
            return self._fd is not None and self._spare is None and not self._free

    def make_spare(self) -> None:
        """Zero-fill the next new segment ahead of need (the checkpointer's thread): a record flushed
        into written blocks costs the data alone; into fresh or fallocated ones, a journal commit too."""
        with self._lock:
            size = self._next_size
        path = self.directory / SPARE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            while offset < size:
                offset += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - offset)], offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._spare = (path, size)

    def _start_segment(self, at_least: int) -> None:
        self._close_segment()
        path = self.directory / _segment_name(self.next_lsn)
        with self._lock:
            reuse = self._free.pop() if self._free else None
            spare, self._spare = (self._spare, None) if reuse is None else (None, self._spare)
            size = max(self._next_size, at_least)
            if reuse is None:
                self._next_size = min(self._next_size * 2, self.segment_bytes)
        fd = -1
        try:
            if reuse is not None or spare is not None:
                os.replace(reuse if reuse is not None else spare[0], path)  # type: ignore[index]
                fd = os.open(path, os.O_RDWR)
                if os.fstat(fd).st_size < size:
                    os.posix_fallocate(fd, 0, size)
            else:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                if size <= FIRST_SEGMENT_BYTES:  # small: zero it now (about a millisecond)
                    os.pwrite(fd, _ZEROS[:size] if size <= len(_ZEROS) else bytes(size), 0)
                else:
                    os.posix_fallocate(fd, 0, size)
            # The new name and size must be durable before a record in it is acknowledged.
            os.fsync(fd)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._fd, self._offset, self._size = fd, 0, size
        with self._lock:
            self._segments.append(_Segment(self.next_lsn, path))
        if self.on_new_segment is not None:
            self.on_new_segment()

    def _close_segment(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
            self._fd = None

    def close(self) -> None:
        self._close_segment()

    # ------------------------------------------------------------------ the checkpointer's side

    def checkpoint(self, lsn: int) -> None:
        """Record that everything up to ``lsn`` is durable outside the log; recycle the segments it covers.

        Call only after the index commits and the files of those records are flushed.
        """
        if lsn <= self.checkpoint_lsn:
            return
        path = self.directory / CHECKPOINT_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, _LSN.pack(lsn), 0)  # 8 bytes in one sector: written whole or not at all
            os.fdatasync(fd)
        finally:
            os.close(fd)
        drop: list[Path] = []
        with self._lock:
            self.checkpoint_lsn = lsn
            while len(self._segments) > 1 and self._segments[1].first_lsn - 1 <= lsn:
                segment = self._segments.pop(0)
                if len(self._free) < MAX_FREE_SEGMENTS:
                    self._free.append(segment.path)
                else:
                    drop.append(segment.path)
        for old in drop:
            old.unlink(missing_ok=True)


def records_not_checkpointed(directory: Path) -> int:
    """How many records of the intake log in ``directory`` come after its last checkpoint (0 when there is
    no log), read without changing anything: instances acknowledged whose files the storage folder may not
    hold yet (a crash, a power cut) until an archive opens the data folder and replays them."""
    if not directory.is_dir():
        return 0
    return len(IntakeLog._read(directory, 1 << 20)[1])


__all__ = ["fsync_path", "Flush", "IntakeLog", "IntakeLogError", "IntakeRecord", "records_not_checkpointed", "syncfs"]
