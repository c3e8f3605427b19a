"""Staging files: an instance being received, written straight to disk as Part 10.

The file lives in DATA/staging/, on the same filesystem as the blob store, so
ingest moves it into place with one rename. Bytes are appended as they arrive.

A small instance bound for the intake log (core/intake.py) is held in memory instead
(``memory_max_bytes``, the archive's ``intake_inline_max_bytes``): the writer needs its
bytes for the log record anyway, and writes the stored file from them (into an empty file
the StagingPool made ahead, renamed to its key), so no staging file is created, written
and read back on the critical path. A dataset that
outgrows the bound moves to a staging file at once, so at most that much per
association is ever held.
"""

from __future__ import annotations

import collections
import errno
import functools
import io
import logging
import os
import struct
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

from minipacs import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from minipacs.core.errors import ArchiveError, DatasetTooLarge, InvalidIdentifier, InvalidInstance, OutOfResources
from minipacs.core.header import read_header_from
from minipacs.core.model import StagedPath
from minipacs.core.paths import strip_uid_padding, validate_uid
from minipacs.dicom.header import InstanceHeader, dataset_encoding
from minipacs.dicom.part10 import PREAMBLE, NotPart10, uid_value, walk_file_meta
from minipacs.dicom.uids import EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from minipacs.dicom.vr import ALL_VRS, LONG_LENGTH_VR_BYTES, LONG_LENGTH_VRS

log = logging.getLogger(__name__)

STAGING_SUFFIX: Final = ".part"
#: Folder (beside staging/) of empty files created ahead of time by StagingPool;
#: a transfer writes into one of them, so in-flight data may live here too.
READY_DIR: Final = "ready"
_WRITE_BUFFER: Final = 256 * 1024
#: errno values that mean "the disk cannot take more" rather than a bug.
_RESOURCE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian data element (PS3.5 §7.1.2)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_LENGTH_VRS:
        return head + struct.pack("<HI", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    """ASCII value padded to even length (PS3.5 §6.2: NUL for UI, space otherwise)."""
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _checked_ae(value: str) -> str:
    """PS3.5 Table 6.2-1 AE: ≤ 16 printable ASCII characters, no backslash."""
    text = value.strip(" ")
    if len(text) > 16 or not all(0x20 <= ord(c) < 0x7F and c != "\\" for c in text):
        raise InvalidIdentifier(
            f"SourceApplicationEntityTitle {value[:40]!r} is not a valid AE title "
            "(at most 16 printable ASCII characters, no backslash)"
        )
    return text


def file_meta_information(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str = ""
) -> bytes:
    """Preamble, prefix and File Meta Information group (PS3.10 §7.1, Table 7.1-1).

    Every value is validated first: UIDs per PS3.5 §9.1, the AE title per
    PS3.5 Table 6.2-1; anything else raises InvalidIdentifier.
    """
    # Validated in this order, so that the first invalid value is the one reported.
    sop_class = _uid_element(0x00020002, "MediaStorageSOPClassUID", sop_class_uid)
    sop_instance = _element(
        0x00020003, "UI", _padded(validate_uid("MediaStorageSOPInstanceUID", sop_instance_uid), b"\x00")
    )
    tail = _meta_tail(transfer_syntax_uid, source_aet)
    body_length = len(_META_VERSION) + len(sop_class) + len(sop_instance) + len(tail)
    return b"".join(
        (
            PREAMBLE,
            _element(0x00020000, "UL", struct.pack("<I", body_length)),
            _META_VERSION,
            sop_class,
            sop_instance,
            tail,
        )
    )


#: (0002,0001) FileMetaInformationVersion.
_META_VERSION: Final = _element(0x00020001, "OB", b"\x00\x01")


@functools.lru_cache(maxsize=256)
def _uid_element(tag: int, keyword: str, uid: str) -> bytes:
    """A validated UI element of the File Meta group; the SOP classes a node receives are few,
    so each is validated and encoded once (an invalid one raises, and is not cached)."""
    return _element(tag, "UI", _padded(validate_uid(keyword, uid), b"\x00"))


@functools.lru_cache(maxsize=256)
def _meta_tail(transfer_syntax_uid: str, source_aet: str) -> bytes:
    """(0002,0010) to (0002,0016): the same for every instance of an association."""
    elements: Sequence[tuple[int, str, bytes]] = [
        (0x00020010, "UI", _padded(validate_uid("TransferSyntaxUID", transfer_syntax_uid), b"\x00")),
        (0x00020012, "UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        (0x00020013, "SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    aet = _checked_ae(source_aet)
    if aet:
        elements = [*elements, (0x00020016, "AE", _padded(aet, b" "))]
    return b"".join(_element(tag, vr, value) for tag, vr, value in elements)


#: Elements of these groups lead a data set that has any: not part of a Data Set (PS3.5 §7.1 defines
#: a data set from group 0008 on; PS3.4 C.4.1.1.3 note), (0002,xxxx) being File Meta Information.
_NOT_DATASET_GROUP_END: Final = 0x0008
_VR_BYTES: Final = frozenset(vr.encode("ascii") for vr in ALL_VRS)


class _NotDatasetPrefix:
    """Drops the elements of groups 0000-0007 that lead a received data set (fed in order).

    Some senders put File Meta Information elements, (0002,0010) Transfer Syntax UID among them, into
    the data set of a C-STORE. Stored after our own File Meta they make a file that DCMTK warns about
    ("Invalid Element (0002,0010) found in data set") and that pydicom reads with the data set's
    transfer syntax in place of the real one: retrieved, such an instance fails at the peer. Elements
    are in ascending tag order (PS3.5 §7.1), so those groups can only be a prefix of the data set;
    they are dropped as the bytes arrive (this file's meta is the one that describes it), and the
    ingest logs which (:attr:`dropped`). An element of undefined length there, or an explicit VR that
    is none (PS3.5 Table 6.2-1), ends the lead: it and what follows are left for the structure walk.
    """

    __slots__ = ("_buf", "_skip", "_implicit", "_little", "dropped", "done")

    def __init__(self, implicit: bool, little_endian: bool) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of a dropped element still to come
        self._implicit = implicit
        self._little = little_endian
        self.dropped: list[int] = []
        self.done = False

    def feed(self, data: bytes | memoryview) -> bytes:
        """What of ``data`` belongs to the data set (empty while it is still undecided). StagingFile
        only feeds a data set whose first group number is below 0008 (the usual one never gets here)."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
            if self._skip:
                return b""
        buf = self._buf
        buf += data
        order = "<" if self._little else ">"
        while True:
            if len(buf) < 8:
                return b""
            group, element = struct.unpack_from(order + "HH", buf)
            if group >= _NOT_DATASET_GROUP_END:
                return self._end()
            vr = bytes(buf[4:6])
            if self._implicit:
                header, length = 8, struct.unpack_from("<I", buf, 4)[0]
            elif vr not in _VR_BYTES:  # no element (zeros, say): the structure walk says what is wrong
                return self._end()
            elif vr in LONG_LENGTH_VR_BYTES:
                if len(buf) < 12:
                    return b""
                header, length = 12, struct.unpack_from(order + "I", buf, 8)[0]
            else:
                header, length = 8, struct.unpack_from(order + "H", buf, 6)[0]
            if length == 0xFFFFFFFF:
                return self._end()
            self.dropped.append((group << 16) | element)
            total = header + length
            if len(buf) >= total:
                del buf[:total]
                continue
            self._skip = total - len(buf)
            buf.clear()
            return b""

    def _end(self) -> bytes:
        self.done = True
        rest, self._buf = bytes(self._buf), bytearray()
        return rest

    def flush(self) -> bytes:
        """The data set ended: what is held (fewer bytes than an element header) goes on."""
        return self._end()


class StagingFile:
    """A file being received, in DATA/staging/, on the same filesystem as the blob store.

    On creation it has already written the preamble, b"DICM" and the File Meta
    Information (PS3.10 §7.1); the dataset bytes are then appended as received.
    """

    def __init__(
        self,
        staging_dir: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_aet: str = "",
        max_dataset_bytes: int = 0,
        pool: StagingPool | None = None,
        memory_max_bytes: int = 0,
    ) -> None:
        """``memory_max_bytes``: keep a file of at most this many bytes (File Meta included) in
        memory, not on disk; a bigger one moves to a staging file once it outgrows it."""
        self._sop_class_uid = strip_uid_padding(sop_class_uid)
        self._sop_instance_uid = strip_uid_padding(sop_instance_uid)
        self._transfer_syntax_uid = strip_uid_padding(transfer_syntax_uid)
        meta = file_meta_information(self._sop_class_uid, self._sop_instance_uid, self._transfer_syntax_uid, source_aet)
        self._source_aet = source_aet
        encoding = dataset_encoding(self._transfer_syntax_uid)
        #: The data set's first bytes are still to come: a lead of groups 0000-0007 is dropped (a
        #: deflated data set's bytes are compressed: core/inflate.py walks it).
        self._fresh = not encoding.deflated
        self._encoding = encoding
        self._prefix: _NotDatasetPrefix | None = None
        self._limit = max_dataset_bytes
        self._size = 0
        self._dataset_offset = len(meta)
        self._fh: BinaryIO | None = None
        self._pool = pool
        self._staging_dir = staging_dir
        #: The file so far while it is held in memory; None once on disk (or finished).
        self._memory: bytearray | None = None
        self._memory_max = memory_max_bytes
        if 0 < len(meta) <= memory_max_bytes:
            self._memory = bytearray(meta)
            self.path = _in_memory_path(staging_dir)  # nothing is ever there; a spill names its file
            return
        self._open_file(meta)

    def _open_file(self, head: bytes | bytearray) -> None:
        """Start the staging file with ``head`` (the File Meta, or all held in memory so far)."""
        try:
            if self._pool is not None:
                self.path, self._fh = self._pool.take()
            else:
                self.path = self._staging_dir / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"
                self._fh = _create(self.path)
            self._fh.write(head)
        except OSError as exc:
            self.discard()
            raise _as_archive_error(exc, self.path) from exc

    @property
    def dataset_size(self) -> int:
        """Dataset bytes written so far (File Meta Information not counted)."""
        return self._size

    def write(self, data: bytes | memoryview) -> None:
        """Append dataset bytes; past max_dataset_bytes the file is discarded."""
        if self._fresh:
            data = self._lead(data)
            if not data:
                return
        size = self._size + len(data)
        if self._limit and size > self._limit:
            self.discard()
            raise DatasetTooLarge(
                f"the dataset of SOP Instance {self._sop_instance_uid} exceeds the limit of "
                f"{self._limit} bytes (max_dataset_bytes); raise the limit to accept it"
            )
        memory = self._memory
        if memory is not None:
            if len(memory) + len(data) <= self._memory_max:
                memory += data
                self._size = size
                return
            self._memory = None
            self._open_file(memory)  # outgrew memory: on disk from now on
        if self._fh is None:
            raise ValueError(f"staging file {self.path.name} is already finished or discarded")
        try:
            self._fh.write(data)
        except OSError as exc:
            self.discard()
            raise _as_archive_error(exc, self.path) from exc
        self._size = size

    def _lead(self, data: bytes | memoryview) -> bytes | memoryview:
        """The first bytes of the data set, less any leading elements of groups 0000-0007."""
        prefix = self._prefix
        if prefix is None:
            if len(data) >= 2:
                little = self._encoding.little_endian
                group = data[0] | (data[1] << 8) if little else (data[0] << 8) | data[1]
                if group >= _NOT_DATASET_GROUP_END:  # the usual case
                    self._fresh = False
                    return data
            prefix = self._prefix = _NotDatasetPrefix(self._encoding.implicit_vr, self._encoding.little_endian)
        data = prefix.feed(data)
        if prefix.done:
            self._fresh = False
        return data

    def finish(self) -> StagedPath:
        """Close the file and describe it for ingest (no fsync: ingest batches them)."""
        prefix = self._prefix
        if prefix is not None:
            if self._fresh:  # the data set ended within its lead
                self._fresh = False
                rest = prefix.flush()
                if rest:
                    self.write(rest)
            if prefix.dropped:
                log.warning(
                    "SOP Instance %s%s: its data set began with %d element(s) that no data set holds "
                    "(PS3.5 §7.1: groups 0000-0007; %s), dropped before storing; the stored file's "
                    "File Meta Information is minipacs's own",
                    self._sop_instance_uid,
                    f" from {self._source_aet}" if self._source_aet else "",
                    len(prefix.dropped),
                    ", ".join(f"({tag >> 16:04X},{tag & 0xFFFF:04X})" for tag in prefix.dropped[:8]),
                )
        memory, self._memory = self._memory, None
        if memory is None:
            if self._fh is None:
                raise ValueError(f"staging file {self.path.name} is already finished or discarded")
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as exc:
                self.discard()
                raise _as_archive_error(exc, self.path) from exc
        return StagedPath(
            path=self.path,
            dataset_offset=self._dataset_offset,
            transfer_syntax_uid=self._transfer_syntax_uid,
            sop_class_uid=self._sop_class_uid,
            sop_instance_uid=self._sop_instance_uid,
            data=None if memory is None else bytes(memory),
        )

    def discard(self) -> None:
        """Close and delete the file; safe to call more than once."""
        self._memory = None
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        self.path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=16)
def _in_memory_path(staging_dir: Path) -> Path:
    """The ``path`` of every file held in memory: a name no staging file has (they are uuid4 hex),
    so removing it, as error paths do with any staged path, removes nothing."""
    return staging_dir / f"in-memory{STAGING_SUFFIX}"


def _create(path: Path) -> BinaryIO:
    return open(path, "xb", buffering=_WRITE_BUFFER)


class StagingPool:
    """Empty staging files created ahead of time by a background thread.

    Creating a file costs 0.2-0.7 ms in the kernel on our test machines; a
    C-STORE would pay it on the event loop, between its command and dataset.
    ``take`` pops a ready file (or creates one if the pool ran dry) and wakes
    the refiller once half the pool is gone, so it refills in bursts rather than
    waking (and contending for the GIL) once per C-STORE. ``close`` deletes the
    files nobody took.
    """

    def __init__(self, staging_dir: Path, size: int = 8) -> None:
        self.staging_dir = staging_dir
        self.size = size
        self._low_water = size // 2
        self._ready: collections.deque[tuple[Path, BinaryIO]] = collections.deque()
        self._wanted = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._refill, name="minipacs-staging-pool", daemon=True)
        self._wanted.set()
        self._thread.start()

    def take(self) -> tuple[Path, BinaryIO]:
        ready = self.take_ready()
        if ready is not None:
            return ready
        path = self.staging_dir / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"
        return path, _create(path)

    def take_ready(self) -> tuple[Path, BinaryIO] | None:
        """A file made ahead of time, or None when none is ready (thread-safe: a deque's popleft)."""
        try:
            ready: tuple[Path, BinaryIO] | None = self._ready.popleft()
        except IndexError:
            ready = None
        if len(self._ready) <= self._low_water:
            self._wanted.set()
        return ready

    def _refill(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stop:
                return
            while len(self._ready) < self.size and not self._stop:
                path = self.staging_dir / f"{uuid.uuid4().hex}{STAGING_SUFFIX}"
                try:
                    self._ready.append((path, _create(path)))
                except OSError:
                    break  # disk full or gone: take() will report it on the hot path

    def close(self) -> None:
        self._stop = True
        self._wanted.set()
        self._thread.join(timeout=5)
        while self._ready:
            path, fh = self._ready.popleft()
            fh.close()
            path.unlink(missing_ok=True)


def _as_archive_error(exc: OSError, path: Path) -> ArchiveError:
    """What a failed staging write reports. The message reaches peers (a DIMSE Error Comment, an HTTP
    body), so it never names a server path: the server log gets the full error, path included."""
    log.error("writing the staging file %s failed: %s", path, exc)
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _RESOURCE_ERRNOS:
        return OutOfResources(f"cannot write the dataset to disk: {reason}; nothing was stored")
    return ArchiveError(f"cannot write the dataset to disk: {reason}; see the server log")


_MAX_META_BYTES: Final = 64 * 1024
_COPY_CHUNK: Final = 1024 * 1024


def _read_file_meta(fp: BinaryIO, name: str) -> tuple[int, str]:
    """Walk the group 0002 elements from the current position (PS3.10 §7.1).

    Returns (offset of the dataset, TransferSyntaxUID). Walks elements rather than
    trusting FileMetaInformationGroupLength, which some writers get wrong.
    """
    start = fp.tell()
    data = fp.read(_MAX_META_BYTES + 1)
    try:
        end, values = walk_file_meta(data)
    except NotPart10 as exc:
        if len(data) > _MAX_META_BYTES:  # it runs on past the limit
            raise InvalidInstance(f"{name} has a File Meta Information group over {_MAX_META_BYTES} bytes") from exc
        raise InvalidInstance(f"{name} {exc}") from exc
    if end > _MAX_META_BYTES:
        raise InvalidInstance(f"{name} has a File Meta Information group over {_MAX_META_BYTES} bytes")
    transfer_syntax = uid_value(values.get(0x0010, b""))
    if not transfer_syntax:
        raise InvalidInstance(f"{name} has no TransferSyntaxUID (0002,0010) in its File Meta Information")
    return start + end, transfer_syntax


def locate_dataset(fp: BinaryIO, name: str) -> tuple[int, str]:
    """Where the dataset of the file ``fp`` starts and its transfer syntax (``fp`` at its start).

    A Part 10 file (PS3.10 §7.1), a File Meta group without preamble, or a raw dataset
    (implicit VR little endian, or explicit when the VR bytes say so, little or big endian: its
    first group, 0008, tells); anything else is
    InvalidInstance ("``name`` is not a DICOM file ...").
    """
    head = fp.read(132)
    if len(head) == 132 and head[128:] == b"DICM":
        return _read_file_meta(fp, name)
    if head[:2] == b"\x02\x00":
        fp.seek(0)
        return _read_file_meta(fp, name)
    if len(head) >= 8 and head[:2] == b"\x08\x00":
        explicit = head[4:6].isalpha() and head[4:6].isupper()
        return 0, EXPLICIT_VR_LITTLE_ENDIAN if explicit else IMPLICIT_VR_LITTLE_ENDIAN
    if len(head) >= 8 and head[:2] == b"\x00\x08" and head[4:6].isalpha() and head[4:6].isupper():
        return 0, EXPLICIT_VR_BIG_ENDIAN  # group 0008 read big endian (PS3.5 A.3; implicit VR is never big endian)
    raise InvalidInstance(f"{name} is not a DICOM file (no DICM prefix and no dataset at its start)")


def read_head(head: bytes, name: str) -> tuple[int, str, InstanceHeader]:
    """The dataset offset, transfer syntax and header (dicom/header.py) of a file from its first bytes,
    as :func:`stage_file` reads them from a whole file: an upload streamed to disk can be staged with
    its own UIDs without first landing whole somewhere. InvalidInstance when they do not tell (broken,
    or the header runs on past ``head``); the caller then falls back to :func:`stage_file`."""
    fp = io.BytesIO(head)
    offset, transfer_syntax = locate_dataset(fp, name)
    return offset, transfer_syntax, read_header_from(fp, offset, transfer_syntax)


def stage_file(staging_dir: Path, path: Path, max_dataset_bytes: int = 0) -> StagedPath:
    """Copy a file from disk into staging with OUR File Meta Information.

    Accepts a Part 10 file (PS3.10 §7.1), a File Meta group without preamble, or a
    raw dataset (implicit VR little endian, or explicit when the VR bytes say so).
    The SOP Class/Instance UIDs come from the dataset itself. Raises InvalidInstance
    ("... is not a DICOM file") for anything else.
    """
    with open(path, "rb") as fp:
        return stage_stream(staging_dir, fp, str(path), max_dataset_bytes)


def stage_stream(staging_dir: Path, fp: BinaryIO, name: str, max_dataset_bytes: int = 0) -> StagedPath:
    """:func:`stage_file` of a seekable file object at its start (a pack entry of an old data folder,
    blobs/packs.py ``open_entry``); ``name`` says which in errors."""
    offset, transfer_syntax = locate_dataset(fp, name)
    try:
        header = read_header_from(fp, offset, transfer_syntax)
    except InvalidInstance as exc:
        raise InvalidInstance(f"{name} is not a readable DICOM file: {exc}") from exc
    sop_class_uid, sop_instance_uid = header.get("SOPClassUID"), header.get("SOPInstanceUID")
    if not sop_class_uid or not sop_instance_uid:
        raise InvalidInstance(f"{name} is not a DICOM file (no SOPClassUID or SOPInstanceUID)")
    staging = StagingFile(staging_dir, sop_class_uid, sop_instance_uid, transfer_syntax, "", max_dataset_bytes)
    try:
        fp.seek(offset)
        while chunk := fp.read(_COPY_CHUNK):
            staging.write(chunk)
        return staging.finish()
    except BaseException:
        staging.discard()
        raise


def remove_leftovers(staging_dir: Path) -> int:
    """Delete files left in staging by a previous run (never acknowledged); return how many."""
    removed = 0
    for entry in os.scandir(staging_dir):
        if entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed


__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "PREAMBLE",
    "READY_DIR",
    "StagingFile",
    "StagingPool",
    "file_meta_information",
    "locate_dataset",
    "read_head",
    "remove_leftovers",
    "stage_file",
    "stage_stream",
]
