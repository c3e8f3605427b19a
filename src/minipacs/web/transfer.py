"""Bytes in and out: multipart/related responses (PS3.18 §8.6), ZIP in and out, Part 10 ingest of ZIP members.

Request bodies stream into staging in web/intake.py (STOW-RS, uploads); a ZIP's members go
through the ONE ingest path (``Archive.import_file``: stage, check, index) one at a time;
stored files go out as they are, streamed from worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import re
import secrets
import tempfile
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Final

from starlette.requests import Request
from starlette.responses import StreamingResponse

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError, OutOfResources
from minipacs.core.model import Origin, StoreOutcome
from minipacs.core.retrieve import StoredInstance
from minipacs.web.errors import HttpError, redact
from minipacs.web.intake import body_pieces
from minipacs.web.multipart import MultipartParser, PartStart
from minipacs.web.unzip import BrokenMember, ZipLimits, inflate, open_zip

log = logging.getLogger(__name__)

CHUNK: Final = 256 * 1024
_BOUNDARY: Final = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes before reading them all. For small
    bodies only (a login form): uploads stream (web/intake.py)."""
    return b"".join([chunk async for chunk in body_pieces(request, limit)])


@dataclass(frozen=True)
class Part:
    content_type: str
    body: bytes


def boundary_of(content_type: str) -> str:
    found = _BOUNDARY.search(content_type)
    if not found:
        raise HttpError(400, "bad_multipart", "the Content-Type has no multipart boundary parameter")
    return found.group(1)


def split_multipart(body: bytes, boundary: str, max_parts: int | None = None) -> list[Part]:
    """RFC 2046 §5.1 parts of a whole multipart body (web/multipart.py); HttpError 400 if it is not
    well formed, 413 if it has more than ``max_parts`` parts."""
    parser = MultipartParser(boundary, max_parts)
    parts: list[Part] = []
    content: list[bytes] = []
    content_type = ""
    for event in parser.feed(body):
        if isinstance(event, PartStart):
            content_type, content = event.content_type, []
        elif isinstance(event, bytes):
            content.append(event)
        else:
            parts.append(Part(content_type, b"".join(content)))
    parser.close()
    return parts


#: errno values that mean "the disk is full" (no space, over quota)
NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def _write_staged(staging_dir: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A new file in staging filled by ``write`` (blocking: run it in a worker thread).
    A full disk is OutOfResources: the archive cannot take anything more, whichever file it is."""
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=staging_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise OutOfResources(f"the archive's disk is full ({exc.strerror}): the upload cannot be staged") from None
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def ingest_file(
    archive: Archive, data: bytes | Callable[[BinaryIO], object], origin: Origin, label: str = ""
) -> StoreOutcome:
    """Store one Part 10 file given as bytes, or as a function that writes it (called in a worker
    thread); an ArchiveError says why it was not stored, naming the file ``label`` rather than the
    staging file (the server's paths are nobody's business)."""
    write = data if callable(data) else (lambda fh: fh.write(data))
    path = await asyncio.to_thread(_write_staged, archive.staging_dir, write)
    try:
        return await archive.import_file(path, origin)
    except ArchiveError as exc:
        text = str(exc)
        if str(path) in text:
            raise type(exc)(text.replace(str(path), label or "the file")) from None
        raise
    finally:
        path.unlink(missing_ok=True)


def outcome_json(outcome: StoreOutcome) -> dict[str, str]:
    return {
        "status": outcome.status.value,
        "SOPInstanceUID": outcome.sop_instance_uid,
        "StudyInstanceUID": outcome.study_instance_uid,
        "SeriesInstanceUID": outcome.series_instance_uid,
    }


def failed_json(exc: Exception) -> dict[str, str]:
    """A per-file failure; ``error`` names the exception class for the person reading the upload result."""
    return {"status": "failed", "error": type(exc).__name__, "message": str(exc)}


async def ingest_bytes(
    archive: Archive, data: bytes | Callable[[BinaryIO], object], origin: Origin, label: str = ""
) -> dict[str, str]:
    """Store one Part 10 file; a per-file result. Never raises for a bad file; a full disk
    (OutOfResources) is raised: the files after it would fail the same way (507)."""
    try:
        return outcome_json(await ingest_file(archive, data, origin, label))
    except OutOfResources:
        raise
    except ArchiveError as exc:
        return {**failed_json(exc), "message": redact(str(exc), archive.settings)}


def insufficient_storage(exc: OutOfResources, stored: int, total: int) -> HttpError:
    """507 Insufficient Storage (RFC 4918 §11.5) for an upload the disk filled up under, with what was kept:
    the DICOM side answers 0xA700 Out of Resources to a C-STORE in the same state."""
    before = f"{stored} of the {total} file(s) before it were stored" if total > 1 else "nothing was stored"
    return HttpError(
        507, "insufficient_storage", f"{exc}; {before}. Free disk space in the data directory, then send the rest again"
    )


async def ingest_zip(archive: Archive, body: bytes | Path, origin: Origin, limits: ZipLimits) -> list[dict[str, str]]:
    """Store each file member of a ZIP (web/unzip.py: checked, then inflated one at a time off the loop)."""
    zipped, members = await asyncio.to_thread(open_zip, body, limits)
    results: list[dict[str, str]] = []
    try:
        for info in members:

            def write(fh: BinaryIO, info: zipfile.ZipInfo = info) -> int:
                return inflate(zipped, info, fh, limits)

            try:
                result = await ingest_bytes(archive, write, origin, info.filename)
            except BrokenMember as exc:
                result = failed_json(exc)
            except OutOfResources as exc:
                raise insufficient_storage(exc, sum(r["status"] != "failed" for r in results), len(members)) from None
            results.append({"file": info.filename, **result})
    finally:
        zipped.close()
    return results


def _file_chunks(opener: Callable[[], BinaryIO]) -> Iterator[bytes]:
    """A stored file (``StoredInstance.open``) in CHUNK pieces."""
    with opener() as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


#: Bytes read per thread hop. Big reads keep the per-read costs (a thread hop, an ASGI send, a
#: socket write) small next to the copying; one batch is sent while the next is read, so a
#: response holds about two.
BLOCK: Final = 2 * 1024 * 1024
#: Pieces smaller than this are joined before they are sent (part headers, small files).
_SMALL: Final = 64 * 1024
#: Largest single read. Whole 0.5 MB files read at once went through fresh malloc/mmap
#: memory each time (a page fault per 4 KiB, ~120,000 per 1,000-instance study); 256 KiB
#: reads reuse the heap: about 0.15 s less server CPU per such study, measured.
_PIECE: Final = 256 * 1024


@dataclass(frozen=True)
class OutPart:
    """One part of a multipart/related response: its Content-Type and where its bytes come from.

    Either ``path`` (a stored file, sent as it is) or ``produce`` (bytes made when the part
    is reached, e.g. a transcoded instance; called off the event loop). A part whose
    ``produce`` raises is left out and logged: the parts before it are already on the wire.
    """

    content_type: str
    path: Path | None = None
    produce: Callable[[], bytes] | None = None
    label: str = ""  # what the log calls it, e.g. the SOP Instance UID
    size: int = -1  # of the file, when known: all known -> the response has a Content-Length
    #: A stored instance: opens its blob (then ``path`` is None) and tells its size (off the event loop).
    opener: Callable[[], BinaryIO] | None = None
    sizer: Callable[[], int] | None = None


class _BodyReader:
    """A response body (multipart/related framing around file contents) read batch by batch.

    ``read`` is blocking and runs in a worker thread, one call at a time; ``close`` runs on the
    event loop once no ``read`` is in flight. It hands out ``bytes`` objects exactly as the
    read system call filled them: with a Content-Length, h11 passes them to the socket
    without another copy (a chunked body would be joined with its chunk headers).
    """

    def __init__(self, parts: Iterable[OutPart], boundary: str | None, exact: bool = False) -> None:
        self._parts = iter(parts)
        self._boundary = boundary
        self._exact = exact  # sizes were announced: a file that shrank since is an error, not an ending
        self._pending: deque[bytes] = deque()  # bytes to send before reading the open file on
        self._file: BinaryIO | io.FileIO | None = None
        self._left = 0  # bytes of the open file still to send
        self._closing_sent = boundary is None

    def read(self, size: int) -> list[bytes]:
        """The next pieces of the body, about ``size`` bytes of them (none when it is over)."""
        out: list[bytes] = []
        small: list[bytes] = []
        total = 0
        while total < size:
            if self._pending:
                piece = self._pending.popleft()
            elif self._file is not None:
                piece = self._file.read(min(self._left, _PIECE, size)) if self._left else b""
                self._left -= len(piece)
                if not piece or not self._left:
                    self._end_file(early=not piece)
                if not piece:
                    continue
            elif not self._next_part():
                break
            else:
                continue
            total += len(piece)
            if len(piece) < _SMALL:
                small.append(piece)
                continue
            if small:
                out.append(b"".join(small))
                small.clear()
            out.append(piece)
        if small:
            out.append(b"".join(small))
        return out

    def _end_file(self, early: bool) -> None:
        if self._file is not None:
            if early and self._exact:
                raise OSError(f"{self._file.name} ended {self._left} bytes early, after the Content-Length went out")
            self._file.close()
            self._file = None
        if self._boundary is not None:
            self._pending.append(b"\r\n")

    def _next_part(self) -> bool:
        for part in self._parts:
            try:
                content = part.produce() if part.produce is not None else None
                if content is None and part.opener is not None:
                    self._file = part.opener()
                    self._left = part.size if part.size >= 0 else self._file.seek(0, os.SEEK_END)
                    self._file.seek(0)
                elif content is None and part.path is not None:
                    self._file = open(part.path, "rb", buffering=0)  # noqa: SIM115 - closed in read/close
                    self._left = part.size if part.size >= 0 else os.fstat(self._file.fileno()).st_size
            except Exception as exc:
                if self._exact:
                    raise
                log.error(
                    "left %s out of a multipart response: %s: %s", part.label or part.path, type(exc).__name__, exc
                )
                continue
            if self._boundary is not None:
                self._pending.append(_part_head(self._boundary, part.content_type))
            if content is not None:
                self._pending.append(content)
                if self._boundary is not None:
                    self._pending.append(b"\r\n")
            elif self._left == 0:
                self._end_file(early=False)
            return True
        if not self._closing_sent:
            self._closing_sent = True
            self._pending.append(_closing(self._boundary or ""))
            return True
        return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _part_head(boundary: str, content_type: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")


async def read_blocks(reader: _BodyReader, block: int) -> AsyncIterator[bytes]:
    """The pieces of ``reader``, each batch read by one worker-thread call while the previous one is sent."""
    loop = asyncio.get_running_loop()
    ahead = loop.run_in_executor(None, reader.read, block)
    try:
        while True:
            # shielded: a cancelled response must not close the file under a read in flight
            pieces = await asyncio.shield(ahead)
            if not pieces:
                return
            ahead = loop.run_in_executor(None, reader.read, block)
            for piece in pieces:
                yield piece
    finally:

        def done(future: asyncio.Future[list[bytes]]) -> None:
            if not future.cancelled():
                future.exception()  # retrieved: a failure after the client left is not news
            reader.close()

        ahead.add_done_callback(done)


def multipart_related(parts: Iterable[OutPart], boundary: str, block: int = BLOCK) -> AsyncIterator[bytes]:
    """Parts as a multipart/related body (RFC 2387, PS3.18 §8.6.1.2), streamed.

    Files are read in a worker thread, a batch of about ``block`` bytes ahead of the socket;
    memory stays at a few batches whatever the number or size of the parts.
    """
    return read_blocks(_BodyReader(parts, boundary), block)


def _sized(parts: Sequence[OutPart]) -> list[OutPart]:
    """``parts`` with the size of each file; a file that cannot be read is left out (and logged)."""
    out: list[OutPart] = []
    for part in parts:
        if (part.path is None and part.sizer is None) or part.produce is not None:
            out.append(part)
            continue
        try:
            size = part.sizer() if part.sizer is not None else os.stat(part.path or "").st_size
            out.append(replace(part, size=size))
        except OSError as exc:
            log.error("left %s out of a multipart response: %s: %s", part.label or part.path, type(exc).__name__, exc)
    return out


async def multipart_response(
    parts: Sequence[OutPart], boundary: str, part_type: str, warn: Callable[[str], str] | None = None
) -> StreamingResponse:
    """A streamed ``multipart/related; type=part_type`` response of ``parts``.

    When every part is a file its size is known, so the response carries a Content-Length
    (clients see progress; the server sends the file bytes without re-chunking them).
    Files that are gone are left out (logged); HttpError 404 when that leaves nothing, else
    206 Partial Content (PS3.18 Table 10.4.3-1: "representations for some, but not all, of the
    Target Resources") with a Warning, ``warn(text)`` giving its value (none without ``warn``).
    """
    sized = await asyncio.to_thread(_sized, parts)
    if parts and not sized:
        raise HttpError(
            404,
            "not_found",
            f"the {len(parts)} instance(s) asked for are indexed but their files are "
            "missing from storage; see the server log",
        )
    headers: dict[str, str] = {}
    status = 200
    if len(sized) < len(parts):
        status = 206
        if warn is not None:
            missing = len(parts) - len(sized)
            headers["warning"] = warn(f"{missing} of the {len(parts)} instances are missing from storage and left out")
    exact = all(part.size >= 0 for part in sized)
    if exact:
        length = sum(len(_part_head(boundary, p.content_type)) + p.size + 2 for p in sized) + len(_closing(boundary))
        headers["content-length"] = str(length)
    return StreamingResponse(
        read_blocks(_BodyReader(sized, boundary, exact), BLOCK),
        status_code=status,
        headers=headers,
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


def file_response(item: StoredInstance, media_type: str) -> StreamingResponse:
    """One stored file as a response, streamed like :func:`multipart_response` (with its Content-Length).
    Blocking (the size); raises FileNotFoundError (BlobNotFound) when the file is missing."""
    size = item.size()
    part = OutPart("", size=size, opener=item.open, label=item.sop_instance_uid)
    return StreamingResponse(
        read_blocks(_BodyReader([part], None, exact=True), BLOCK),
        headers={"content-length": str(size)},
        media_type=media_type,
    )


def stored_part(item: StoredInstance) -> OutPart:
    """A stored instance as it is: ``application/dicom`` in its stored transfer syntax (PS3.18 §8.7.3.2)."""
    return OutPart(
        f"application/dicom; transfer-syntax={item.transfer_syntax_uid}",
        label=item.sop_instance_uid,
        opener=item.open,
        sizer=item.size,
    )


def multipart_octets(chunks: Sequence[bytes], boundary: str, content_type: str) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + chunk + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def new_boundary() -> str:
    return "minipacs-" + secrets.token_hex(12)


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream zipfile writes into; we hand the bytes out as they come."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        self.buffer += view
        return view.nbytes

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def zip_entries(entries: Iterable[tuple[str, Callable[[], BinaryIO] | bytes]]) -> Iterator[bytes]:
    """A ZIP of (member name, bytes or a stored file's opener: StoredInstance.open) entries, produced
    while it is sent."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, content in entries:
            with archive.open(zipfile.ZipInfo(name), "w", force_zip64=True) as member:
                for chunk in [content] if isinstance(content, bytes) else _file_chunks(content):
                    member.write(chunk)
                    if len(sink.buffer) >= CHUNK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def zip_stream(instances: Sequence[StoredInstance], names: Sequence[str] | None = None) -> Iterator[bytes]:
    """A ZIP of stored files, produced while it is sent: each under its name in ``names`` (core/media.py
    ``readable_names``), else study/series/instance.dcm by UID."""
    sendable = [(n, item) for n, item in enumerate(instances) if not item.problem]
    return zip_entries((names[n] if names is not None else _uid_name(i), i.open) for n, i in sendable)


def _uid_name(item: StoredInstance) -> str:
    return f"{item.study_instance_uid}/{item.series_instance_uid}/{item.sop_instance_uid}.dcm"


async def aiter_text(items: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for item in items:
        yield item.encode()


__all__ = [
    "BLOCK",
    "OutPart",
    "Part",
    "aiter_text",
    "boundary_of",
    "file_response",
    "ingest_bytes",
    "ingest_file",
    "multipart_octets",
    "multipart_related",
    "outcome_json",
    "multipart_response",
    "new_boundary",
    "read_body",
    "split_multipart",
    "stored_part",
    "failed_json",
    "ingest_zip",
    "insufficient_storage",
    "zip_entries",
    "zip_stream",
]
