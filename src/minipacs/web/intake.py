"""Uploads streamed into the archive's intake (STOW-RS, ``POST /api/instances``, the UI upload).

A request body is read piece by piece as it arrives (``request.stream()``) and never held whole:
each part (a multipart part, or the whole body of a single-file upload) is written to a staging
file (core/staging.py, the same intake a C-STORE writes into) in a worker thread, one batch of
about :data:`BATCH` bytes while the next arrives, so neither the memory nor the event loop ever
carries the dataset. Memory per request: the first :data:`HEAD_BYTES` of the part being read,
two batches and the parser's look-behind.

The first :data:`HEAD_BYTES` of a part are kept in memory to read where its dataset starts, its
transfer syntax (its File Meta Information, PS3.10 §7.1) and its SOP Class/Instance UIDs, the
way ``stage_file`` reads them from a file (``staging.read_head``, the same code); the staging
file is opened with them and the dataset bytes go in as they come. A part whose head does not
tell (not DICOM, or more than HEAD_BYTES of header before them) is copied to disk as it is and
then staged by ``stage_file`` itself, which gives the same answer, or the same refusal, as for
a file imported from disk.

All or nothing per request: the parts are ingested (``Archive.ingest``: checked, moved into
storage, indexed) only once the body is complete. A body that breaks off, times out
(``http_body_timeout``), grows past ``max_upload_bytes`` or holds more than
``max_upload_parts`` parts, or whose multipart framing is broken, stores nothing: every staged
part is deleted and the error says so. A well-formed body's parts succeed or fail one by one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from starlette.requests import ClientDisconnect, Request

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError, OutOfResources
from minipacs.core.header import read_header
from minipacs.core.model import StagedPath
from minipacs.core.staging import StagingFile, read_head, stage_file
from minipacs.dicom.header import InstanceHeader
from minipacs.web.errors import HttpError
from minipacs.web.limits import refuse_declared_length
from minipacs.web.multipart import PART_END, MultipartParser, PartStart

log = logging.getLogger(__name__)

#: Bytes of each part kept in memory to read its File Meta Information and header (PS3.10 §7.1).
HEAD_BYTES: Final = 1024 * 1024
#: Bytes handed to the worker thread per write; one batch is written while the next one fills.
BATCH: Final = 1024 * 1024
#: errno values that mean "the disk is full" (no space, over quota)
NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})

#: Decides whether a part is refused before it is stored: (its Content-Type, its header, or None
#: while not known) -> a refusal code (the caller's meaning, e.g. a STOW-RS FailureReason) or None.
Screen = Callable[[str, InstanceHeader | None], int | None]


async def body_pieces(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing (413) more than ``limit`` bytes: at once when the
    Content-Length says so, else as soon as the count passes it. A client that leaves: 400."""
    refuse_declared_length(
        request, limit, "the request body", f"this server accepts at most {limit} (max_upload_bytes)"
    )
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(
                    413, "too_large", f"the request body exceeds {limit} bytes (max_upload_bytes); nothing was stored"
                )
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise HttpError(
            400, "incomplete_body", "the client disconnected before the body was complete; nothing was stored"
        ) from None


@dataclass
class Received:
    """One part of a request, staged (or refused) while the body was read."""

    number: int
    label: str  # what messages call it: "part 2", "the uploaded file"
    content_type: str
    header: InstanceHeader | None = None
    staged: StagedPath | None = None
    failure: ArchiveError | None = None  # could not be staged: why
    refusal: int | None = None  # the screen refused it: its code

    @property
    def sop_class_uid(self) -> str:
        return self.staged.sop_class_uid if self.staged else self.header.get("SOPClassUID") if self.header else ""

    @property
    def sop_instance_uid(self) -> str:
        if self.staged:
            return self.staged.sop_instance_uid
        return self.header.get("SOPInstanceUID") if self.header else ""

    @property
    def study_instance_uid(self) -> str:
        return self.header.get("StudyInstanceUID") if self.header else ""


_HEAD, _STAGING, _SPOOL, _SKIP = range(4)


def _disk_error(exc: OSError) -> ArchiveError:
    log.error("writing an upload to the staging folder failed: %s", exc)
    if exc.errno in NO_SPACE:
        return OutOfResources(f"the archive's disk is full ({exc.strerror}): the upload cannot be staged")
    return ArchiveError(f"cannot write the upload to disk ({exc.strerror}); see the server log")


class _Spool:
    """A part copied to disk as it came (blocking methods: call them in a worker thread)."""

    def __init__(self, staging_dir: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=staging_dir)
        self.path = Path(name)
        self.fh: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, *pieces: bytes) -> None:
        if self.fh is None:
            raise ValueError("spool already closed")
        try:
            for data in pieces:
                self.fh.write(data)
        except OSError as exc:
            self.discard()
            raise _disk_error(exc) from None

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                self.discard()
                raise _disk_error(exc) from None

    def discard(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        self.path.unlink(missing_ok=True)


class Intake:
    """Receives the parts of one request (``start`` / ``data`` / ``end`` per part), staging each in a
    worker thread; then ``ingest`` stores them in order, or ``discard`` drops them all."""

    def __init__(self, archive: Archive, screen: Screen | None = None) -> None:
        self.archive = archive
        self.screen = screen
        self.received: list[Received] = []
        self._current: Received | None = None
        self._mode = _SKIP
        self._head = bytearray()
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._inflight: asyncio.Future[None] | None = None
        self._staging: StagingFile | None = None
        self._spool: _Spool | None = None

    # ---------------------------------------------------------------- receiving

    async def start(self, content_type: str, label: str) -> None:
        if self._current is not None:
            await self.end()
        self._current = Received(len(self.received) + 1, label, content_type)
        self.received.append(self._current)
        self._mode = _HEAD
        self._head = bytearray()

    async def data(self, piece: bytes) -> None:
        if self._mode == _SKIP:
            return
        if self._mode == _HEAD:
            self._head += piece
            if len(self._head) >= HEAD_BYTES:
                await self._decide(complete=False)
            return
        self._batch.append(piece)
        self._batch_size += len(piece)
        if self._batch_size >= BATCH:
            await self._flush()

    async def end(self) -> None:
        """The current part is complete: finish its staging file (or stage its copy)."""
        part = self._current
        if part is None:
            return
        if self._mode == _HEAD:
            await self._decide(complete=True)
        if self._mode in (_STAGING, _SPOOL):
            await self._flush()
            await self._settle()
        if self._mode == _STAGING and self._staging is not None:
            staging, self._staging = self._staging, None
            try:
                part.staged = await asyncio.to_thread(staging.finish)
            except OutOfResources:
                raise
            except ArchiveError as exc:
                part.failure = exc
        elif self._mode == _SPOOL and self._spool is not None:
            spool, self._spool = self._spool, None
            await asyncio.to_thread(self._stage_spool, part, spool)
            if part.staged is not None and self.screen is not None:
                part.refusal = self.screen(part.content_type, part.header)
                if part.refusal is not None:
                    await asyncio.to_thread(part.staged.path.unlink, missing_ok=True)
                    part.staged = None
        self._current = None
        self._mode = _SKIP

    async def _decide(self, complete: bool) -> None:
        """The head is in: stage the part with its own UIDs, or copy it to disk for ``stage_file``."""
        part = self._current
        assert part is not None
        head = bytes(self._head)
        self._head = bytearray()
        offset, staging = await asyncio.to_thread(self._open, part, head, complete)
        if part.refusal is not None or part.failure is not None or part.staged is not None:
            self._mode = _SKIP
            return
        if staging is not None:
            self._staging, self._mode = staging, _STAGING
        else:
            self._spool, self._mode = await asyncio.to_thread(_Spool, self.archive.staging_dir), _SPOOL
        self._batch.append(head[offset:])
        self._batch_size += len(head) - offset

    def _open(self, part: Received, head: bytes, complete: bool) -> tuple[int, StagingFile | None]:
        """(where the dataset starts in ``head``, the staging file) or (0, None): copy it whole to disk."""
        try:
            offset, transfer_syntax, header = read_head(head, part.label)
        except ArchiveError:
            offset, transfer_syntax, header = 0, "", None
        part.header = header
        wanted = ("SOPClassUID", "SOPInstanceUID") + (() if complete else ("StudyInstanceUID",))
        known = header is not None and all(header.get(k) for k in wanted)
        if self.screen is not None:
            part.refusal = self.screen(part.content_type, header if known else None)
            if part.refusal is not None:
                return 0, None
        if header is None or not known:
            return 0, None  # ``stage_file`` decides, from the whole part on disk
        try:
            staging = self.archive.open_staging(
                header.get("SOPClassUID"), header.get("SOPInstanceUID"), transfer_syntax
            )
        except OutOfResources:
            raise
        except ArchiveError as exc:
            part.failure = exc
            return 0, None
        if complete:  # a part that fitted in the head: written and closed in this one thread hop
            try:
                staging.write(memoryview(head)[offset:])
                part.staged = staging.finish()
            except OutOfResources:
                raise
            except ArchiveError as exc:  # too large (StagingFile discarded itself)
                part.failure = exc
            return 0, None
        return offset, staging

    def _stage_spool(self, part: Received, spool: _Spool) -> None:
        """Stage the copy of a part as ``minipacs import`` stages a file (blocking)."""
        try:
            spool.close()
            staged = stage_file(self.archive.staging_dir, spool.path, self.archive.settings.max_dataset_bytes)
            try:
                part.header = read_header(staged.path, staged.dataset_offset, staged.transfer_syntax_uid)
            except ArchiveError:
                staged.path.unlink(missing_ok=True)
                raise
            part.staged = staged
        except OutOfResources:
            raise
        except ArchiveError as exc:
            text = str(exc)
            part.failure = type(exc)(text.replace(str(spool.path), part.label)) if str(spool.path) in text else exc
        except OSError as exc:
            part.failure = _disk_error(exc)
        finally:
            spool.discard()

    async def _flush(self) -> None:
        """Hand the batch to a worker thread, once the previous one is written."""
        await self._settle()
        if not self._batch or self._mode == _SKIP:
            self._batch, self._batch_size = [], 0
            return
        pieces, self._batch, self._batch_size = self._batch, [], 0
        self._inflight = asyncio.ensure_future(asyncio.to_thread(self._write, pieces))

    async def _settle(self) -> None:
        """Wait for the batch in flight; a part that can take no more (too large) is refused and skipped."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            await inflight
        except OutOfResources:
            raise
        except ArchiveError as exc:  # DatasetTooLarge, or a failed write (logged): this part only
            if self._current is not None:
                self._current.failure = exc
            self._staging = None  # StagingFile.write discarded it
            if self._spool is not None:
                await asyncio.to_thread(self._spool.discard)
                self._spool = None
            self._mode = _SKIP
            self._batch, self._batch_size = [], 0

    def _write(self, pieces: list[bytes]) -> None:
        target: Any = self._staging if self._mode == _STAGING else self._spool
        if target is not None:
            for piece in pieces:  # not joined: a 1 MiB join is a fresh mmap (core/malloc_tuning.py) each batch
                target.write(piece)

    # ---------------------------------------------------------------- after the body

    async def discard(self) -> None:
        """Drop every staged part and the one being received (the request failed as a whole)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            try:
                await asyncio.shield(inflight)
            except BaseException:  # noqa: BLE001 - whatever it was, the files go
                pass
        await asyncio.to_thread(self._discard_files)

    def _discard_files(self) -> None:
        if self._staging is not None:
            self._staging.discard()
            self._staging = None
        if self._spool is not None:
            self._spool.discard()
            self._spool = None
        for part in self.received:
            if part.staged is not None:
                part.staged.path.unlink(missing_ok=True)
                part.staged = None

    async def ingest(self, part: Received, origin: Any) -> Any:
        """``Archive.ingest`` of one staged part (consumed, whatever happens)."""
        staged, part.staged = part.staged, None
        if staged is None:
            raise ValueError(f"{part.label} was not staged")
        return await self.archive.ingest(staged, origin)


async def receive_multipart(request: Request, intake: Intake, boundary: str, limit: int, max_parts: int | None) -> None:
    """Read a multipart body into ``intake``; on any failure nothing stays staged (and the error is raised)."""
    parser = MultipartParser(boundary, max_parts)
    try:
        async for chunk in body_pieces(request, limit):
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    await intake.start(event.content_type, f"part {parser.parts}")
                elif event is PART_END:
                    await intake.end()
                else:
                    assert isinstance(event, bytes)
                    await intake.data(event)
        parser.close()
    except OutOfResources as exc:
        await _discard_quietly(intake)
        raise _full(exc) from None
    except BaseException:
        await _discard_quietly(intake)
        raise


async def receive_single(request: Request, intake: Intake, label: str, pieces: AsyncIterator[bytes]) -> None:
    """Read a whole body (``pieces``) as one file into ``intake``."""
    try:
        await intake.start("", label)
        async for chunk in pieces:
            await intake.data(chunk)
        await intake.end()
    except OutOfResources as exc:
        await _discard_quietly(intake)
        raise _full(exc) from None
    except BaseException:
        await _discard_quietly(intake)
        raise


def _full(exc: OutOfResources) -> OutOfResources:
    """The disk filled while a body was staged (the cause is in the server log): nothing is stored."""
    log.warning("an upload was refused, nothing stored: %s", exc)
    return OutOfResources("the archive's disk is full: the upload cannot be staged")


async def _discard_quietly(intake: Intake) -> None:
    try:
        await intake.discard()
    except BaseException:  # noqa: BLE001 - cancelled meanwhile: delete them here, blocking but rare
        intake._discard_files()


async def spool_body(staging_dir: Path, first: bytes, rest: AsyncIterator[bytes]) -> Path:
    """A body (``first`` then ``rest``) copied to a temporary file in the staging folder, written in a
    worker thread a batch at a time; the caller deletes it. Failures delete it and are raised."""
    spool = await asyncio.to_thread(_Spool, staging_dir)
    try:
        batch, size = [first], len(first)
        async for chunk in rest:
            batch.append(chunk)
            size += len(chunk)
            if size >= BATCH:
                await asyncio.to_thread(spool.write, *batch)
                batch, size = [], 0
        await asyncio.to_thread(spool.write, *batch)
        await asyncio.to_thread(spool.close)
    except BaseException:
        await asyncio.to_thread(spool.discard)
        raise
    return spool.path


__all__ = [
    "BATCH",
    "HEAD_BYTES",
    "Intake",
    "Received",
    "Screen",
    "body_pieces",
    "receive_multipart",
    "receive_single",
    "spool_body",
]
