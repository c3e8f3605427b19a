"""WADO-RS frames and bulk data (PS3.18 §8.7.3.3 Bulkdata media types, §10.4 Retrieve Frames and Bulkdata).

Frames go out as stored (their compressed media type, Table 8.7.3-5) or decompressed to native
little-endian octets, as the Accept header says (web/accept.py ``frame_choice``). A BulkDataURI
(core/metadata.py) names an attribute by its tag, or inside sequences by ``<sequence tag>/<item
index from 0>/<tag>``; its value goes out as little-endian octets (PS3.18 §8.7.3.3: Bulkdata is
little endian), and the Pixel Data of an encapsulated (or big-endian) instance as its frames.

A response is ``multipart/related`` (§8.6.1.2), or a single part when the client asked for
``application/octet-stream`` itself (§8.7.3.3 single part payload); a single part honours a
``Range`` header (web/byteranges.py, RFC 9110 §14: 206 with Content-Range, 416 when the range is
outside the value or invalid).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from minipacs.blobs.base import BlobError
from minipacs.core.errors import ArchiveError
from minipacs.core.inflate import DatasetLimits
from minipacs.core.retrieve import StoredInstance
from minipacs.core.stored import read_stored
from minipacs.core.transcode import (
    NoSuchFrame,
    TranscodeError,
    encapsulated_frame_ranges,
    native_frame_ranges,
    pixel_frames,
)
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, transfer_syntax
from minipacs.dicom.vr import WORD_VR_FORMATS
from minipacs.web.accept import (
    ANY,
    OCTETS,
    FrameChoice,
    MediaRange,
    accepted,
    frame_choice,
    frame_choices_text,
    parse_accept,
)
from minipacs.web.byteranges import RangeNotSatisfiable, byte_range, not_satisfiable
from minipacs.web.errors import HttpError
from minipacs.web.search import ascii_digits
from minipacs.web.transfer import multipart_octets, new_boundary
from minipacs.web.types import AppContext

_T = TypeVar("_T")
log = logging.getLogger(__name__)

PIXEL_DATA: Final = 0x7FE00010
MAX_FRAMES: Final = 10000
#: PS3.5 Table 6.2-1: the binary VRs whose value is a run of words, by word size (byte-swapped from big endian)
WORD_SIZES: Final = {vr: struct.calcsize(fmt) for vr, fmt in WORD_VR_FORMATS.items()}
#: PS3.5 Table 6.2-1: numeric VRs -> struct format of one value (little endian out, PS3.18 §8.7.3.3)
NUMBER_FORMATS: Final = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_PATH: Final = re.compile(r"^[0-9A-Fa-f]{8}(?:/\d{1,6}/[0-9A-Fa-f]{8}){0,8}$")


def on_file(item: StoredInstance, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(path, *args, **kwargs)`` with ``path`` a local file of the stored instance (the stored file
    itself on the filesystem store, a temporary copy on S3). Blocking: run it in the render pool."""
    with item.local_file() as path:
        return fn(path, *args, **kwargs)


def frame_numbers(raw: str) -> list[int]:
    fields = raw.split(",")
    if not all(ascii_digits(part) for part in fields):
        raise HttpError(400, "invalid_frames", f"frame numbers must be a comma-separated list, not {raw[:40]!r}")
    numbers = [int(part) for part in fields]
    if not numbers or len(numbers) > MAX_FRAMES:
        raise HttpError(400, "invalid_frames", f"give between 1 and {MAX_FRAMES} frame numbers")
    if 0 in numbers:  # PS3.18 10.4.1.1.1 / PS3.3 C.7.6.6: frames are numbered from 1
        raise HttpError(400, "invalid_frames", "frame numbers start at 1; 0 is no frame")
    return numbers


def read_frames(item: StoredInstance, numbers: list[int], *, decode: bool, limits: DatasetLimits) -> list[bytes]:
    """Frames of a stored instance: native ones, and encapsulated ones asked for as stored, by ranged
    reads of just those bytes (the header read first: one GET of its start on S3; for encapsulated
    ones the item headers too, PS3.5 A.4), others from a whole-file read (core/transcode.py)."""
    indexed = transfer_syntax(item.transfer_syntax_uid)  # which header walk; each checks the file's own
    ranges: list[tuple[int, int]] | None = None
    fragments: list[list[tuple[int, int]]] | None = None
    if indexed is None or not indexed.encapsulated:
        with item.open() as fh:
            ranges = native_frame_ranges(fh, numbers, limits)
    elif not decode:
        with item.open() as fh:
            fragments = encapsulated_frame_ranges(fh, numbers, limits)
    if ranges is not None:
        return [b"".join(item.blobs.open_range(item.blob_key, start, end)) for start, end in ranges]
    if fragments is not None:
        return [
            b"".join(chunk for start, end in parts for chunk in item.blobs.open_range(item.blob_key, start, end))
            for parts in fragments
        ]
    return on_file(item, pixel_frames, numbers, decode=decode, limits=limits)


def _single_part(ranges: Sequence[MediaRange], chosen: str) -> bool:
    """Whether the most preferred range that allows ``chosen`` asked for it as a single part (not inside
    multipart/related): ``Accept: application/octet-stream`` itself."""
    for r in ranges:
        if r.media_type in (chosen, ANY, "application/*", "image/*", ""):
            return not r.multipart and r.media_type == chosen
    return False


def ranged(request: Request, data: bytes, content_type: str) -> Response:
    """A single-part answer under the one Range rule (web/byteranges.py, RFC 9110 §14): 206 with
    Content-Range for one range, 416 for an unsatisfiable or invalid one, the whole value (200) for any
    other form."""
    headers = {"Accept-Ranges": "bytes"}
    try:
        chosen = byte_range(request.headers.get("range"), len(data))
    except RangeNotSatisfiable:
        response = not_satisfiable(len(data), content_type)
        response.headers["Accept-Ranges"] = "bytes"
        return response
    if chosen is None:
        return Response(data, media_type=content_type, headers=headers)
    start, end = chosen
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Response(data[start : end + 1], status_code=206, media_type=content_type, headers=headers)


def _choose_frames(ranges: list[MediaRange], item: StoredInstance) -> FrameChoice:
    choice = frame_choice(ranges, item.transfer_syntax_uid)
    if choice is None:
        raise HttpError(
            406,
            "not_acceptable",
            f"the frames of this instance are stored in transfer syntax "
            f"{item.transfer_syntax_uid}, which no media type in the Accept header allows; ask for "
            f"{frame_choices_text(item.transfer_syntax_uid)}",
        )
    return choice


async def frames_response(request: Request, item: StoredInstance, numbers: list[int], *, whole: bool) -> Response:
    """Frames ``numbers`` of ``item`` as the Accept header asks; ``whole``: they are the whole Pixel Data
    (a bulk data request), so a single part is their concatenation, as native Pixel Data is."""
    context: AppContext = request.app.state.ctx
    ranges = parse_accept(accepted(request))
    choice = _choose_frames(ranges, item)

    async def read(decode: bool) -> list[bytes]:
        limits = context.archive.settings.dataset_limits
        return await context.renders.run(
            functools.partial(read_frames, item, numbers, decode=decode, limits=limits), what="decoding"
        )

    try:
        try:
            chunks = await read(choice.decode)
        except TranscodeError:
            if choice.fallback is None:
                raise
            choice = choice.fallback  # the Default could not be made: the frames as stored (PS3.18 8.7.3.3)
            chunks = await read(choice.decode)
    except NoSuchFrame as exc:
        raise HttpError(404, "no_such_frame", str(exc)) from None
    except TranscodeError as exc:
        raise HttpError(
            406,
            "cannot_decompress",
            f"{exc}; ask for the frames as stored: {frame_choices_text(item.transfer_syntax_uid)}",
        ) from None
    if _single_part(ranges, choice.media_type) and (whole or len(chunks) == 1):
        return ranged(request, b"".join(chunks), choice.content_type)
    boundary = new_boundary()
    return Response(
        multipart_octets(chunks, boundary, choice.content_type),
        media_type=f'multipart/related; type="{choice.media_type}"; boundary={boundary}',
    )


def parse_path(raw: str) -> list[int]:
    """``TTTTTTTT`` or ``SSSSSSSS/i/TTTTTTTT[/j/UUUUUUUU...]`` -> [tag, index, tag, ...]; 400 otherwise."""
    if not _PATH.match(raw):
        raise HttpError(
            400,
            "invalid_tag",
            f"{raw[:60]!r} is not a bulk data path: a tag (8 hex digits), or sequence tag/item index/tag",
        )
    return [int(part, 16) if n % 2 == 0 else int(part) for n, part in enumerate(raw.split("/"))]


def _element_bytes(ds: Dataset, tag: int, little_endian: bool) -> bytes:
    """An element's value as little-endian octets (PS3.18 §8.7.3.3)."""
    elem = ds[tag]
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        size = WORD_SIZES.get(elem.VR, 1)
        if not little_endian and size > 1 and len(data) % size == 0:
            data = b"".join(data[i : i + size][::-1] for i in range(0, len(data), size))
        return data
    if elem.VR in NUMBER_FORMATS:
        values = [] if value is None else list(value) if elem.VM > 1 else [value]
        return struct.pack(f"<{len(values)}{NUMBER_FORMATS[elem.VR]}", *values)
    return b"" if value is None else str(value).encode()


def bulk_value(path_file: Any, path: list[int], limits: DatasetLimits) -> bytes:
    """The value an attribute path names in the stored file ``path_file`` (blocking); 404 if absent."""
    ds = read_stored(path_file, limits)
    return _value_at(ds, path, little_endian=ds.original_encoding[1] is not False)


def _value_at(ds: Dataset, path: list[int], *, little_endian: bool) -> bytes:
    node: Dataset = ds
    for depth in range(0, len(path) - 1, 2):
        tag, index = path[depth], path[depth + 1]
        sequence = node.get(tag)
        if sequence is None or sequence.VR != "SQ" or index >= len(sequence.value):
            raise HttpError(404, "no_such_bulkdata", f"the instance has no item {index} in sequence {tag:08X}")
        node = sequence.value[index]
    if path[-1] not in node:
        raise HttpError(404, "no_such_bulkdata", f"the instance has no attribute {path[-1]:08X} there")
    return _element_bytes(node, path[-1], little_endian)


async def _frame_count(context: AppContext, item: StoredInstance) -> int:
    """Number of Frames (0028,0008) from the instance's kept metadata (1 when absent)."""
    text = (await context.metadata.get([item.sop_instance_uid]))[0]
    return frame_count(json.loads(text))


def frame_count(metadata: Mapping[str, Any]) -> int:
    """Number of Frames (0028,0008) of an instance's PS3.18 JSON metadata (1 when absent or no number)."""
    values = metadata.get("00280008", {}).get("Value") or [1]
    try:
        return max(1, min(int(values[0]), MAX_FRAMES))
    except (TypeError, ValueError):
        return 1


async def bulkdata_response(request: Request, item: StoredInstance, raw_path: str) -> Response:
    """WADO-RS Retrieve Bulkdata (PS3.18 §10.4.1.1.5) of the attribute ``raw_path`` names."""
    path = parse_path(raw_path)
    context: AppContext = request.app.state.ctx
    syntax = transfer_syntax(item.transfer_syntax_uid)
    if path == [PIXEL_DATA] and syntax is not None and (syntax.encapsulated or not syntax.little_endian):
        numbers = list(range(1, await _frame_count(context, item) + 1))
        return await frames_response(request, item, numbers, whole=True)
    # application/octet-stream is the Default for bulk data (PS3.18 Tables 8.7.3-1, 8.7.3-4): whatever
    # else the Accept header names, that is what comes back
    ranges = parse_accept(accepted(request))
    data = await context.renders.run(
        on_file, item, bulk_value, path, context.archive.settings.dataset_limits, what="reading"
    )
    content_type = OCTETS + (f"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}" if path == [PIXEL_DATA] else "")
    if _single_part(ranges, OCTETS):
        return ranged(request, data, content_type)
    boundary = new_boundary()
    return Response(
        multipart_octets([data], boundary, content_type),
        media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}',
    )


# ------------------------------------------------------------------ Study, Series, Instance Bulkdata


def bulk_uris(obj: Mapping[str, Any]) -> list[str]:
    """Every BulkDataURI of a PS3.18 JSON object, in document order, items included (PS3.18 F.2.6)."""
    found: list[str] = []
    for element in obj.values():
        if not isinstance(element, Mapping):
            continue
        if isinstance(element.get("BulkDataURI"), str):
            found.append(element["BulkDataURI"])
        elif element.get("vr") == "SQ":
            for item in element.get("Value") or []:
                if isinstance(item, Mapping):
                    found.extend(bulk_uris(item))
    return found


#: One part of a Bulkdata answer: Content-Type, Content-Location, the octets.
BulkPart = tuple[str, str, bytes]


def instance_bulkdata(
    path_file: Any, uris: Sequence[str], frames: int, choice: FrameChoice | None, limits: DatasetLimits
) -> list[BulkPart]:
    """The bulk data of one stored instance (blocking): each BulkDataURI's value as its own GET gives it
    (little-endian octets), in one part whose Content-Location is that URI. The Pixel Data of an
    encapsulated or big-endian instance (``choice`` not None) goes out as ``choice`` says: decompressed,
    its frames joined, at its BulkDataURI; or as stored, one part per frame at the frame's URL
    (``{instance}/frames/n``), since a compressed frame is a value of its own (PS3.18 8.7.3.3.2)."""
    ds = read_stored(path_file, limits)
    little_endian = ds.original_encoding[1] is not False
    parts: list[BulkPart] = []
    for uri in uris:
        path = parse_path(uri.rsplit("/bulkdata/", 1)[-1])
        if path == [PIXEL_DATA] and choice is not None:
            chunks = pixel_frames(path_file, range(1, frames + 1), decode=choice.decode, limits=limits)
            if choice.decode or len(chunks) == 1:
                parts.append((choice.content_type, uri, b"".join(chunks)))
            else:
                instance = uri.rsplit("/bulkdata/", 1)[0]
                parts.extend((choice.content_type, f"{instance}/frames/{n}", c) for n, c in enumerate(chunks, 1))
            continue
        try:
            data = _value_at(ds, path, little_endian=little_endian)
        except HttpError:  # metadata kept from before a correction: the value is no longer there
            continue
        suffix = f"; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}" if path == [PIXEL_DATA] else ""
        parts.append((OCTETS + suffix, uri, data))
    return parts


def _pixel_choice(ranges: list[MediaRange], item: StoredInstance) -> FrameChoice | None:
    """How the Pixel Data of ``item`` goes out: None when as it is stored (native little endian), else as
    for its BulkDataURI (``frame_choice``); 406 when the Accept header allows no representation."""
    syntax = transfer_syntax(item.transfer_syntax_uid)
    if syntax is not None and not syntax.encapsulated and syntax.little_endian:
        return None
    return _choose_frames(ranges, item)


async def resource_bulkdata_response(
    request: Request, items: Sequence[StoredInstance], metadata: Sequence[Mapping[str, Any]]
) -> Response:
    """Study, Series or Instance Bulkdata (PS3.18 Table 10.3-2): multipart/related of every bulk data
    item of ``items`` (their PS3.18 JSON ``metadata``, BulkDataURIs absolute), each part's
    Content-Location the BulkDataURI the metadata gives. Streamed instance by instance, each read in
    the render pool; an instance that fails once the answer is under way is left out and logged.
    No bulk data at all: 204 (a multipart body needs a part, RFC 2046 5.1.1)."""
    context: AppContext = request.app.state.ctx
    limits = context.archive.settings.dataset_limits
    ranges = parse_accept(accepted(request))
    plan = [
        (item, uris, frame_count(obj), _pixel_choice(ranges, item))
        for item, obj in zip(items, metadata, strict=True)
        if (uris := bulk_uris(obj))
    ]
    if not plan:
        return Response(status_code=204)
    context.renders.check("reading")  # 503 now rather than an answer that stalls part-way
    boundary = new_boundary()

    async def body() -> AsyncIterator[bytes]:
        for item, uris, frames, choice in plan:
            job = functools.partial(on_file, item, instance_bulkdata, uris, frames, choice, limits)
            try:
                parts = await asyncio.to_thread(context.renders.call, job)
            except (ArchiveError, BlobError, OSError, HttpError, ValueError) as exc:  # the answer is under way:
                # leave the instance out (unreadable, gone, undecodable), as transfer.py does
                log.error("left the bulk data of %s out: %s: %s", item.sop_instance_uid, type(exc).__name__, exc)
                continue
            for content_type, location, data in parts:
                head = f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Location: {location}\r\n\r\n"
                yield head.encode() + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(body(), media_type=f'multipart/related; type="{OCTETS}"; boundary={boundary}')


__all__ = [
    "PIXEL_DATA",
    "bulk_uris",
    "frame_count",
    "instance_bulkdata",
    "resource_bulkdata_response",
    "bulk_value",
    "bulkdata_response",
    "frame_numbers",
    "frames_response",
    "on_file",
    "parse_path",
    "ranged",
    "read_frames",
]
