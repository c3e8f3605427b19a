"""Bytes in and out: bounded request bodies, multipart/related (PS3.18 §8.6), ZIP, Part 10 ingest.

Uploads go through the ONE ingest path (``Archive.import_file``: stage, check,
index); stored files go out as they are, streamed.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from starlette.requests import ClientDisconnect, Request

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.core.model import Origin
from minipacs.core.retrieve import StoredInstance
from minipacs.web.errors import HttpError

CHUNK: Final = 256 * 1024
_BOUNDARY: Final = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HttpError(413, "too_large", f"the request body is {declared} bytes; this server accepts at most "
                        f"{limit} (max_upload_bytes)")
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "too_large", f"the request body exceeds {limit} bytes (max_upload_bytes); "
                                "nothing was stored")
            parts.append(chunk)
    except ClientDisconnect:
        raise HttpError(400, "incomplete_body", "the client disconnected before the body was complete") from None
    return b"".join(parts)


@dataclass(frozen=True)
class Part:
    content_type: str
    body: bytes


def boundary_of(content_type: str) -> str:
    found = _BOUNDARY.search(content_type)
    if not found:
        raise HttpError(400, "bad_multipart", "the Content-Type has no multipart boundary parameter")
    return found.group(1)


def split_multipart(body: bytes, boundary: str) -> list[Part]:
    """RFC 2046 §5.1 parts of a multipart body; HttpError 400 if it is not well formed."""
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise HttpError(400, "bad_multipart", "the multipart body is broken: its boundary delimiters are missing "
                        "or it has no closing delimiter")
    parts: list[Part] = []
    for piece in pieces[1:-1]:
        if not piece.startswith(b"\r\n"):
            raise HttpError(400, "bad_multipart", "the multipart body is broken: a delimiter is not followed by CRLF")
        head, sep, content = piece[2:].partition(b"\r\n\r\n")
        if not sep:
            if head.strip():
                raise HttpError(400, "bad_multipart", "a multipart part has no blank line after its headers")
            head, content = b"", piece[2:]
        if content.endswith(b"\r\n"):
            content = content[:-2]
        content_type = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        parts.append(Part(content_type, content))
    return parts


def unzip(body: bytes, limit: int) -> list[tuple[str, bytes]]:
    """Members of a ZIP upload (files only), refusing archives that inflate past ``limit``."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if sum(info.file_size for info in members) > limit:
                raise HttpError(413, "too_large", f"the ZIP inflates beyond {limit} bytes (max_upload_bytes)")
            return [(info.filename, archive.read(info)) for info in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise HttpError(400, "bad_zip", f"the ZIP file cannot be read: {exc}") from None


async def ingest_bytes(archive: Archive, data: bytes, origin: Origin) -> dict[str, str]:
    """Store one Part 10 file given as bytes; a per-file result (never raises for a bad file)."""
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=archive.staging_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        outcome = await archive.import_file(path, origin)
    except ArchiveError as exc:
        return {"status": "failed", "error": type(exc).__name__, "message": str(exc)}
    finally:
        path.unlink(missing_ok=True)
    return {"status": outcome.status.value, "SOPInstanceUID": outcome.sop_instance_uid,
            "StudyInstanceUID": outcome.study_instance_uid, "SeriesInstanceUID": outcome.series_instance_uid}


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def multipart_related(instances: Sequence[StoredInstance], boundary: str) -> Iterator[bytes]:
    """Stored Part 10 files as the parts of a multipart/related body (PS3.18 §8.7.3.3), streamed."""
    for item in instances:
        if item.problem:
            continue
        yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={item.transfer_syntax_uid}"
               f"\r\n\r\n").encode()
        yield from _file_chunks(item.path)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


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


def zip_stream(instances: Sequence[StoredInstance]) -> Iterator[bytes]:
    """A ZIP of stored files (study/series/instance.dcm), produced while it is sent."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for item in instances:
            if item.problem:
                continue
            name = f"{item.study_instance_uid}/{item.series_instance_uid}/{item.sop_instance_uid}.dcm"
            with archive.open(zipfile.ZipInfo(name), "w", force_zip64=True) as member:
                for chunk in _file_chunks(item.path):
                    member.write(chunk)
                    if len(sink.buffer) >= CHUNK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


async def aiter_text(items: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for item in items:
        yield item.encode()


__all__ = ["Part", "aiter_text", "boundary_of", "ingest_bytes", "multipart_octets", "multipart_related",
           "new_boundary", "read_body", "split_multipart", "unzip", "zip_stream"]
