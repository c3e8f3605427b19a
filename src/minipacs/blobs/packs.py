"""Packs: small stored instances kept inside larger files, not one file each (issue 10).

Creating a file is the costliest step of storing a small instance: the kernel finds and initialises an
inode (20 us on a quiet ext4, 0.2-0.5 ms of kernel CPU on one that deleted thousands of files in the last
minutes), then the file is renamed into its folder. A pack is one file of up to ``pack_bytes`` that
takes many instances, each in an *entry* at a block boundary (4 KiB, or the filesystem's block size
where that is larger: :func:`block_size`)::

    <16-byte header: magic "MPK1", data length (u32), log2 of the alignment (u8), 3 zero bytes,
     the entry's offset / 4096 (u32)> <the Part 10 file>

Its blob key names where: ``packs/<pack>/<entry offset>-<length>.dcm``, the pack being the file
``packs/<pack>.pack``; ``<pack>`` is the creation time (hex Unix seconds) and 32 random bits, so no
two packs, and no two entries, ever share a name, and a key is never reused (a replacing copy gets a new
entry, as it got a new copy token before). What packs change, and what they do not:

* **Durability** is the intake log's (core/intake.py): an entry is written without a flush, and the
  log holds its bytes until a checkpoint's ``syncfs``; the replay rewrites an entry a row still names.
  Only instances that go through the log, received into memory, are packed.
* **Deleting** an entry punches a hole in the pack (``fallocate(PUNCH_HOLE)``): its blocks return to
  the filesystem at once, as an unlinked file's would (the alignment makes every block of an entry its
  own; the header says which alignment its space was reserved with, so the hole never reaches the next
  entry). A pack with nothing left in it is removed once it is older than :data:`RETIRE_SECONDS`;
  a process writes into a pack only while it is younger than :data:`WRITE_SECONDS`. Packs are made only
  where the filesystem can punch holes (Linux ext4, XFS, Btrfs, tmpfs); elsewhere every instance has its
  own file as before. That is probed when the first entry is wanted, not when the store opens (a command
  that only reads never probes), and once per process and folder (:func:`can_punch_holes_here`).
* **Reading** an entry checks its header (a deleted entry reads as zeros: not found), then reads the
  range. A pack key whose pack is absent is looked for as a file at the key's own path: that is how
  ``minipacs backup`` copies an entry (core/backup.py), so a backup stays a data folder.
* **Finding entries** (``keys``, for ``minipacs check``; :func:`walk`, for ``minipacs import`` of an
  old data folder, which also says where a damaged pack has no readable entry) reads the headers,
  skipping holes with ``SEEK_DATA``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import io
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

log = logging.getLogger(__name__)

PACKS_DIR: Final = "packs"
PACK_SUFFIX: Final = ".pack"
#: Every entry starts at a multiple of this, or of the filesystem's block size where that is larger
#: (:func:`block_size`): blocks of its own, so punching its hole frees every one of them.
ALIGN: Final = 4096
#: The largest block size packs align to; a filesystem that says more gets this (a hole frees less).
MAX_ALIGN: Final = 1 << 20
#: The header's log2 of the alignment: from ALIGN's to MAX_ALIGN's.
_SHIFTS: Final = (ALIGN.bit_length() - 1, MAX_ALIGN.bit_length() - 1)
MAGIC: Final = b"MPK1"
#: magic, the data's length, log2 of the alignment it was reserved with, the entry's offset / ALIGN
_HEADER: Final = struct.Struct("<4sIB3xI")
HEADER_BYTES: Final = _HEADER.size
#: A process puts no new entry into a pack older than this: it starts a new one.
WRITE_SECONDS: Final = 3600
#: An emptied pack is removed only when older than this (no process writes into it any more; the
#: margin covers clocks of nodes sharing the storage that disagree by up to an hour).
RETIRE_SECONDS: Final = 3 * 3600
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02
_KEY: Final = re.compile(r"packs/([0-9a-f]{8}-[0-9a-f]{8})/(0|[1-9][0-9]{0,14})-(0|[1-9][0-9]{0,11})\.dcm", re.ASCII)
_PACK_NAME: Final = re.compile(r"([0-9a-f]{8}-[0-9a-f]{8})\.pack", re.ASCII)


@dataclass(frozen=True)
class PackSlot:
    """Where one entry is: its pack, its offset (a multiple of :data:`ALIGN`) and its data's length."""

    pack: str
    entry: int
    length: int

    @property
    def key(self) -> str:
        return f"{PACKS_DIR}/{self.pack}/{self.entry}-{self.length}.dcm"

    @property
    def end(self) -> int:
        """The offset after the entry's data."""
        return self.entry + HEADER_BYTES + self.length

    def span(self, align: int = ALIGN) -> int:
        """The bytes the entry takes in its pack, up to the next multiple of ``align``."""
        return _aligned(HEADER_BYTES + self.length, align)

    def header(self, align: int) -> bytes:
        return _HEADER.pack(MAGIC, self.length, align.bit_length() - 1, self.entry // ALIGN)

    def read_header(self, raw: bytes) -> int | None:
        """The alignment this entry was reserved with, if ``raw`` is its header; else None (another
        entry's, a hole's zeros, a deleted entry's)."""
        if len(raw) != HEADER_BYTES:
            return None
        magic, length, shift, units = _HEADER.unpack(raw)
        if (
            magic != MAGIC
            or length != self.length
            or units * ALIGN != self.entry
            or not _SHIFTS[0] <= shift <= _SHIFTS[1]
        ):
            return None
        return int(1 << shift)


def _aligned(size: int, align: int = ALIGN) -> int:
    return -(-size // align) * align


def block_size(directory: Path) -> int:
    """What entries in ``directory`` align to: its filesystem's block size when that is a power of two
    from :data:`ALIGN` to :data:`MAX_ALIGN` (a hole frees only whole blocks), else ALIGN."""
    try:
        size = os.statvfs(directory).f_frsize
    except OSError:
        return ALIGN
    if ALIGN <= size <= MAX_ALIGN and size & (size - 1) == 0:
        return size
    return ALIGN


def slot_of(key: str) -> PackSlot | None:
    """The entry a pack key names; None for any other key."""
    if not key.startswith(PACKS_DIR):
        return None
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    entry = int(match.group(2))
    if entry % ALIGN:
        return None
    return PackSlot(match.group(1), entry, int(match.group(3)))


def pack_created(pack: str) -> int:
    """When a pack was made (Unix seconds), from its name."""
    return int(pack[:8], 16)


_fallocate: Any = None


def _load_fallocate() -> Any:
    global _fallocate
    if _fallocate is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            function = getattr(libc, "fallocate64", None) or libc.fallocate
        except (OSError, AttributeError):
            _fallocate = False
            return _fallocate
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        function.restype = ctypes.c_int
        _fallocate = function
    return _fallocate


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of ``length`` bytes at ``offset`` (they read as zeros); the file keeps its size.
    Raises OSError (EOPNOTSUPP where the filesystem cannot)."""
    function = _load_fallocate()
    if not function:
        raise OSError(errno.EOPNOTSUPP, "fallocate(2) is not available here")
    if function(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


#: What :func:`can_punch_holes_here` found, by folder and the device it was on; under _probed_lock.
_probed: dict[tuple[str, int], bool] = {}
_probed_lock = threading.Lock()


def can_punch_holes_here(directory: Path) -> bool:
    """:func:`can_punch_holes`, probed once per process for each folder (and device: a folder now on
    another filesystem is probed again). Each store that opens, each command, asked before: a file
    created, written, punched and removed every time."""
    try:
        device = os.stat(directory).st_dev
    except OSError:
        return False
    key = (str(directory), device)
    with _probed_lock:
        found = _probed.get(key)
        if found is None:
            found = _probed[key] = can_punch_holes(directory)
    return found


def can_punch_holes(directory: Path) -> bool:
    """Whether files in ``directory`` can have holes punched (and read back as zeros)."""
    path = directory / f"probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"  # two processes may start at once
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.pwrite(fd, b"x" * (3 * ALIGN), 0)
        punch_hole(fd, ALIGN, ALIGN)
        return os.pread(fd, ALIGN, ALIGN) == bytes(ALIGN) and os.fstat(fd).st_size == 3 * ALIGN
    except OSError as exc:
        log.info("packs are off: the filesystem of %s cannot punch holes (%s)", directory, exc.strerror)
        return False
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


class _EntryReader(io.RawIOBase):
    """One entry's data as a read-only file of its own (offsets relative to the data's start)."""

    def __init__(self, fd: int, start: int, length: int, name: str) -> None:
        super().__init__()
        self._fd, self._start, self._length, self._pos = fd, start, length, 0
        #: What readers that name their file (pydicom) call it: the key, never the pack's path (a reader
        #: opening that again would read the pack from its start).
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._length - self._pos)
        if wanted <= 0:
            return 0
        data = os.pread(self._fd, wanted, self._start + self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._pos + offset
        elif whence == os.SEEK_END:
            position = self._length + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = position
        return position

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class Packs:
    """The packs under ``root/packs``: new entries (when ``pack_bytes`` > 0 and holes can be punched),
    reads, deletions and the walk. Thread-safe: the current pack's state is under a lock."""

    def __init__(self, root: Path, pack_bytes: int) -> None:
        self.directory = root / PACKS_DIR
        self.pack_bytes = pack_bytes
        #: What entries are aligned to (:func:`block_size`), found with :attr:`writing`.
        self.align = ALIGN
        self._writing: bool | None = None if pack_bytes > 0 else False  # None: not found out yet
        self._lock = threading.Lock()
        self._pack = ""  # the pack new entries go into ("": none yet)
        self._fd = -1  # open for writing
        self._next = 0  # where its next entry goes
        self._made = 0.0  # time.time() when it was made
        self._dir_new = False  # the folder needs an fsync (a pack was made in it)
        self._punch_failed = False  # said once in the log

    def path(self, pack: str) -> Path:
        return self.directory / f"{pack}{PACK_SUFFIX}"

    @property
    def writing(self) -> bool:
        """Whether new entries are made: ``pack_bytes`` > 0 and the filesystem can punch holes, found out
        the first time this is asked (a store that only reads never creates the folder nor probes)."""
        writing = self._writing
        if writing is None:
            with self._lock:
                if self._writing is None:
                    self._writing = self._can_write()
                writing = self._writing
        return writing

    def _can_write(self) -> bool:
        try:
            self.directory.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("packs are off: cannot create %s: %s", self.directory, exc)
            return False
        self.align = block_size(self.directory)
        return can_punch_holes_here(self.directory)

    # -------------------------------------------------------------- writing
    def reserve(self, length: int) -> PackSlot:
        """A new entry for ``length`` bytes of data in the current pack (a new pack when it is full or
        old). Nothing is written yet: a reserved entry never written is a hole, never read."""
        with self._lock:
            span = _aligned(HEADER_BYTES + length, self.align)
            if (
                not self._pack
                or (self._next and self._next + span > self.pack_bytes)
                or time.time() - self._made >= WRITE_SECONDS
            ):
                self._start_pack()
            slot = PackSlot(self._pack, self._next, length)
            self._next += span
            return slot

    def _start_pack(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        made = time.time()
        pack = f"{int(made):08x}-{secrets.token_hex(4)}"
        self._fd = os.open(self.path(pack), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._pack, self._next, self._made, self._dir_new = pack, 0, made, True

    def write(self, slot: PackSlot, data: bytes | memoryview) -> None:
        """Write an entry's header and data at its place (not flushed: see the module docstring)."""
        if len(data) != slot.length:
            raise ValueError(f"entry {slot.key} holds {slot.length} bytes, not {len(data)}")
        with self._lock:
            if slot.pack == self._pack:
                _pwritev(self._fd, [slot.header(self.align), data], slot.entry)
                return
        # an older pack, the replay of an intake-log record after a crash: reserved with an alignment
        # of at least ALIGN, and saying no more, a deletion never punches into the next entry
        fd = os.open(self.path(slot.pack), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            _pwritev(fd, [slot.header(ALIGN), data], slot.entry)
        finally:
            os.close(fd)

    def take_dir_sync(self) -> bool:
        """Whether a pack was made since the last call (its folder's entry then needs a flush)."""
        with self._lock:
            new, self._dir_new = self._dir_new, False
            return new

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd, self._pack = -1, ""

    # -------------------------------------------------------------- reading
    def open(self, slot: PackSlot) -> BinaryIO | None:
        """The entry's data as a buffered file; None when the pack has no such entry (FileNotFoundError
        when the pack itself is absent)."""
        return open_entry(self.path(slot.pack), slot)

    def exists(self, slot: PackSlot) -> bool | None:
        """Whether the entry is there; None when its pack is absent."""
        try:
            os.close(_open_checked(self.path(slot.pack), slot))
        except FileNotFoundError:
            return None
        except LookupError:
            return False
        return True

    # -------------------------------------------------------------- deleting
    def delete(self, slot: PackSlot) -> bool | None:
        """Punch the entry's hole (and remove its pack if nothing is left in it and it is old enough);
        True if it was there, False if not, None when the pack is absent."""
        try:
            fd = os.open(self.path(slot.pack), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            align = slot.read_header(os.pread(fd, HEADER_BYTES, slot.entry))
            if align is None:
                return False
            try:
                punch_hole(fd, slot.entry, slot.span(align))
            except OSError as exc:  # e.g. the storage moved to a filesystem that cannot punch holes
                os.pwrite(fd, bytes(HEADER_BYTES), slot.entry)  # gone all the same, its space kept
                if not self._punch_failed:
                    self._punch_failed = True
                    log.warning(
                        "cannot free the space of deleted pack entries in %s (%s): they are gone, but their "
                        "packs keep their size; move the storage to ext4, XFS or Btrfs",
                        self.directory,
                        exc.strerror,
                    )
                return True
            if self._retired(slot.pack, time.time()):
                _unlink_if_empty(fd, self.path(slot.pack))
            return True
        finally:
            os.close(fd)

    def remove_empty(self) -> int:
        """Remove every pack older than :data:`RETIRE_SECONDS` with nothing left in it (emptied while it
        was younger: the deletion that emptied it kept it); the number removed."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            match = _PACK_NAME.fullmatch(entry.name)
            if match is None or not self._retired(match.group(1), now):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                removed += _unlink_if_empty(fd, Path(entry.path))
            finally:
                os.close(fd)
        return removed

    def _retired(self, pack: str, now: float) -> bool:
        """Whether no process writes into ``pack`` any more: not this one's current pack, and older than
        :data:`RETIRE_SECONDS` (every process starts a new pack after :data:`WRITE_SECONDS`)."""
        return pack != self._pack and now - pack_created(pack) >= RETIRE_SECONDS

    # -------------------------------------------------------------- walking
    def entries(self, path: Path) -> Iterator[str]:
        """The keys of the entries in one pack file, holes and damage skipped (:func:`walk`)."""
        if not is_pack_name(path.name):
            return
        try:
            for found in walk(path):
                if isinstance(found, PackSlot):
                    yield found.key
        except FileNotFoundError:  # removed while we walked
            return


@dataclass(frozen=True)
class PackDamage:
    """A place in a pack where an entry should start and none can be read (:func:`walk`)."""

    offset: int
    reason: str


def is_pack_name(name: str) -> bool:
    """Whether a file name is a pack's (``<hex seconds>-<hex random>.pack``)."""
    return _PACK_NAME.fullmatch(name) is not None


def walk(path: Path) -> Iterator[PackSlot | PackDamage]:
    """Each entry of the pack file ``path`` (named as :func:`is_pack_name` says) in order, holes skipped,
    and each place where an entry should start and none can be read.

    An entry is expected at the pack's start, after each entry and after each hole. What is there is an
    entry (its header names its own offset: no other bytes pass for one), zeros (an entry deleted where
    holes could not be punched, or one never written: skipped, as the data after them), or damage,
    said once (PackDamage) before the walk looks block by block for the next header: bytes that are no
    header, a header whose data runs past the file's end (a copy cut short, a damaged length), a header
    cut short. OSError when the pack cannot be opened or read (FileNotFoundError: it is gone)."""
    match = _PACK_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not the name of a pack")
    pack = match.group(1)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        position = 0
        expected = True  # an entry should start at position
        while position + HEADER_BYTES <= size:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # holes to the end
                    return
                raise
            data -= data % ALIGN
            if data > position:  # past a hole
                position, expected = data, True
                if position + HEADER_BYTES > size:
                    break
            raw = os.pread(fd, HEADER_BYTES, position)
            if len(raw) != HEADER_BYTES:  # cut short while we walked
                return
            magic, length, _shift, units = _HEADER.unpack(raw)
            slot = PackSlot(pack, position, length)
            align = slot.read_header(raw)
            if align is not None and slot.end <= size:
                yield slot
                position += slot.span(align)
                expected = True
                continue
            if expected and align is not None:
                yield PackDamage(
                    position,
                    f"its header says {length} bytes, but the pack ends {size - position - HEADER_BYTES} bytes "
                    "after it (a copy cut short, or a damaged header)",
                )
            elif expected and any(raw):
                yield PackDamage(
                    position,
                    f"no entry header here ({magic!r} where {MAGIC!r} is expected)"
                    if magic != MAGIC
                    else f"an entry header that is not this place's (it says byte {units * ALIGN})",
                )
            position += ALIGN
            expected = False
        if expected and position < size and any(os.pread(fd, size - position, position)):
            yield PackDamage(position, f"the pack ends {size - position} bytes into an entry's header")
    finally:
        os.close(fd)


def _open_checked(path: Path, slot: PackSlot) -> int:
    """The pack ``path`` open for reading, ``slot``'s header checked; FileNotFoundError when the pack is
    absent, LookupError when the entry is not there (deleted: a hole, or never written)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if slot.read_header(os.pread(fd, HEADER_BYTES, slot.entry)) is None:
            raise LookupError(slot.key)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_entry(path: Path, slot: PackSlot) -> BinaryIO | None:
    """The data of ``slot``, an entry of the pack file ``path``, as a buffered file of its own; None when
    the pack has no such entry (FileNotFoundError when the pack itself is absent)."""
    try:
        fd = _open_checked(path, slot)
    except LookupError:
        return None
    return io.BufferedReader(_EntryReader(fd, slot.entry + HEADER_BYTES, slot.length, slot.key), buffer_size=1 << 16)


def _unlink_if_empty(fd: int, path: Path) -> bool:
    """Remove the pack open at ``fd`` if it holds no data anywhere (every entry's hole punched)."""
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            path.unlink(missing_ok=True)
            return True
    return False


def _pwritev(fd: int, parts: list[bytes | memoryview], offset: int) -> None:
    total = sum(len(part) for part in parts)
    written = os.pwritev(fd, parts, offset)
    if written < total:  # a short write (rare: a signal, or the disk filling): write the rest
        rest = b"".join(bytes(part) for part in parts)[written:]
        offset += written
        while rest:
            n = os.pwrite(fd, rest, offset)
            rest, offset = rest[n:], offset + n


__all__ = [
    "ALIGN",
    "HEADER_BYTES",
    "PACKS_DIR",
    "PACK_SUFFIX",
    "PackDamage",
    "PackSlot",
    "Packs",
    "can_punch_holes",
    "can_punch_holes_here",
    "is_pack_name",
    "open_entry",
    "punch_hole",
    "slot_of",
    "walk",
]
