"""STOW-RS of metadata and bulk data (PS3.18 10.5.1.2, 8.6.1): instances sent as PS3.18 JSON, their
binary values in parts of their own.

The request is ``multipart/related; type="application/dicom+json"`` (or ``+xml``). Its
``application/dicom+json`` parts hold the metadata: a JSON array of instances (PS3.18 F.2), or one
object; an element's value is ``InlineBinary`` (base64) or a ``BulkDataURI`` naming another part of the request by its
``Content-Location`` header. A bulk data part is ``application/octet-stream`` (the value's bytes as
they are: native Pixel Data, an Encapsulated Document, Waveform Data ...) or, for compressed Pixel
Data, one frame in a media type of PS3.18 Table 8.7.3-5 (``image/jpeg``, ``image/jls``, ``image/jp2``,
``image/jpx``, ``image/jphc``, ``image/dicom-rle``), its transfer syntax the part's ``transfer-syntax``
parameter; several parts with the same Content-Location are the frames, in order. Without the
parameter: a JPEG frame's own SOF marker says which JPEG process it is (baseline 1.2.840.10008.1.2.4.50,
extended .51, lossless .57, or .70 with first-order prediction), a JPEG-LS frame's NEAR parameter
lossless (.80) or not (.81), JPEG 2000 is .91 (Part 2: .93, HTJ2K .203), RLE 1.2.840.10008.1.2.5.

Each instance is written as a Part 10 file (Explicit VR Little Endian, or the frames' transfer syntax
with the frames encapsulated, PS3.5 A.4, one fragment each after an empty Basic Offset Table), then
stored like any STOW-RS part (the structure walk, the header read, the study check of the URL). The
bulk data parts are spooled to the staging folder as they arrive and copied into the file from there:
memory holds the metadata, never the bulk data. Per instance, a failure is its FailureReason 0xC000
with the reason in the server log: no SOP Instance UID, a BulkDataURI that names no part, frames
that disagree on their transfer syntax, a compressed frame for another element than Pixel Data, a
bulk data part of a media type this server does not take.

``application/dicom+xml`` metadata parts (one PS3.19 Native DICOM Model document each) are read into
the same JSON model by dicom/xml_read.py. Not taken: video (MPEG-2, MPEG-4, HEVC: ``video/*``), and a
BulkDataURI inside a sequence whose part holds more than :data:`NESTED_BULK_MAX_BYTES` (read into
memory: a sequence item's value is written with the item).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from starlette.requests import Request

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError, InvalidInstance, OutOfResources
from minipacs.core.header import read_header
from minipacs.core.model import StagedPath
from minipacs.core.staging import StagingFile
from minipacs.dicom.header import InstanceHeader
from minipacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    JPEG_2000,
    JPEG_2000_PART2,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from minipacs.dicom.vr import BYTE_ARRAY_VRS
from minipacs.dicom.xml_read import NotNativeXML, read_native_xml
from minipacs.web.accept import ALIASES, DICOM_JSON, DICOM_XML, FRAME_MEDIA_TYPES, OCTETS, parse_accept
from minipacs.web.errors import HttpError
from minipacs.web.intake import Intake, Received, Screen, body_pieces
from minipacs.web.jsonbody import MAX_JSON_DEPTH, depth, lone_surrogate
from minipacs.web.multipart import PART_END, MultipartParser, PartStart

log = logging.getLogger(__name__)

#: Most bytes of the metadata parts of one request, together (they are held in memory).
METADATA_MAX_BYTES: Final = 16 * 1024 * 1024
#: Most bytes of a bulk data part a BulkDataURI inside a sequence may name (read into memory).
NESTED_BULK_MAX_BYTES: Final = 1024 * 1024
#: Bytes copied per read from a spooled part into the instance's file.
_COPY: Final = 1024 * 1024
#: PS3.18 Table 8.7.3-5 read backwards: the transfer syntaxes each frame media type may carry.
SYNTAXES_OF: Final[Mapping[str, frozenset[str]]] = {
    media: frozenset(ts for ts, m in FRAME_MEDIA_TYPES.items() if m == media)
    for media in set(FRAME_MEDIA_TYPES.values())
}
#: The syntax of a frame sent without a ``transfer-syntax`` parameter, when its bytes do not say.
DEFAULT_SYNTAX: Final[Mapping[str, str]] = {
    "image/jp2": JPEG_2000,
    "image/jpx": JPEG_2000_PART2,
    "image/jphc": HTJ2K,
    "image/dicom-rle": RLE_LOSSLESS,
}
_PIXEL_DATA: Final = 0x7FE00010
_BULK_MARK: Final = b"\x00minipacs-bulk:"  # the handler's placeholder of a value streamed from a part


class BulkRefused(InvalidInstance):
    """One instance of the request cannot be made (the module docstring); FailureReason 0xC000."""


@dataclass
class BulkPart:
    """A bulk data part, spooled: its media type, transfer syntax (compressed frames) and file."""

    media_type: str
    transfer_syntax: str
    path: Path
    size: int


@dataclass
class BulkBody:
    """What the body held: the instances' metadata and the bulk data parts by Content-Location."""

    instances: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[str, list[BulkPart]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


def _part_type(content_type: str) -> tuple[str, str]:
    """(media type, transfer-syntax parameter) of a part's Content-Type."""
    ranges = parse_accept(content_type)
    if not ranges:
        return "", ""
    return ALIASES.get(ranges[0].media_type, ranges[0].media_type), ranges[0].transfer_syntax


def jpeg_syntax(head: bytes) -> str:
    """The transfer syntax of a JPEG frame from its first SOF marker (ITU T.81 B.1.1.3), "" when none:
    SOF0 baseline, SOF1 extended, SOF3 lossless (.70 when the first scan's predictor is 1, else .57)."""
    sof = ""
    at = 2 if head[:2] == b"\xff\xd8" else -1
    while 0 <= at < len(head) - 4:
        if head[at] != 0xFF:
            return sof
        marker = head[at + 1]
        length = struct.unpack_from(">H", head, at + 2)[0]
        if marker in (0xC0, 0xC1, 0xC3) and not sof:
            sof = {0xC0: JPEG_BASELINE, 0xC1: JPEG_EXTENDED, 0xC3: "lossless"}[marker]
        elif marker == 0xDA:  # start of scan: Ns, Ns component specs, then Ss (the predictor in lossless)
            if sof != "lossless":
                return sof
            count = head[at + 4] if at + 4 < len(head) else 0
            predictor_at = at + 5 + 2 * count
            predictor = head[predictor_at] if predictor_at < len(head) else 0
            return JPEG_LOSSLESS_SV1 if predictor == 1 else JPEG_LOSSLESS
        at += 2 + length
    return sof if sof != "lossless" else JPEG_LOSSLESS


def jpeg_ls_syntax(head: bytes) -> str:
    """JPEG-LS lossless (.80) or near-lossless (.81) from the first scan's NEAR parameter (ITU T.87 C.2.3)."""
    at = 2 if head[:2] == b"\xff\xd8" else -1
    while 0 <= at < len(head) - 4:
        if head[at] != 0xFF:
            break
        marker, length = head[at + 1], struct.unpack_from(">H", head, at + 2)[0]
        if marker == 0xDA:
            count = head[at + 4] if at + 4 < len(head) else 0
            near_at = at + 5 + 2 * count
            if near_at < len(head):
                return JPEG_LS_LOSSLESS if head[near_at] == 0 else JPEG_LS_NEAR_LOSSLESS
            break
        at += 2 + length
    return JPEG_LS_NEAR_LOSSLESS


def frame_syntax(media_type: str, declared: str, head: bytes) -> str:
    """The transfer syntax of a compressed frame: the declared one if the media type may carry it."""
    allowed = SYNTAXES_OF[media_type]
    if declared:
        if declared not in allowed:
            raise BulkRefused(f"a {media_type} part cannot hold transfer syntax {declared[:64]} (PS3.18 Table 8.7.3-5)")
        return declared
    if media_type == "image/jpeg":
        found = jpeg_syntax(head)
        if not found:
            raise BulkRefused("an image/jpeg part without transfer-syntax whose bytes have no JPEG SOF0/1/3 marker")
        return found
    if media_type == "image/jls":
        return jpeg_ls_syntax(head)
    return DEFAULT_SYNTAX[media_type]


async def receive(request: Request, boundary: str, staging_dir: Path, limit: int, max_parts: int | None) -> BulkBody:
    """Read the body: metadata parts into memory (at most METADATA_MAX_BYTES), bulk parts to files."""
    body = BulkBody()
    parser = MultipartParser(boundary, max_parts)
    metadata = bytearray()
    held = 0
    kind = ""  # of the part being read: "json", "bulk" or "skip"
    location = media = syntax = ""
    spool: BinaryIO | None = None
    spool_path: Path | None = None
    size = 0

    async def close_spool() -> None:
        nonlocal spool
        if spool is not None:
            handle, spool = spool, None
            await asyncio.to_thread(handle.close)

    try:
        async for chunk in body_pieces(request, limit):
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    media, syntax = _part_type(event.content_type)
                    location = event.headers.get("content-location", "").strip()
                    if media in (DICOM_JSON, DICOM_XML):
                        kind, metadata = ("json" if media == DICOM_JSON else "xml"), bytearray()
                    elif location:
                        kind, size = "bulk", 0
                        fd, name = await asyncio.to_thread(
                            tempfile.mkstemp, prefix="bulk-", suffix=".part", dir=staging_dir
                        )
                        spool_path = Path(name)
                        body.files.append(spool_path)
                        spool = os.fdopen(fd, "wb")
                    else:
                        raise HttpError(
                            400,
                            "bad_multipart",
                            f"a part of type {media[:60] or '(none)'} has no Content-Location: a bulk data part is "
                            "named by it (PS3.18 8.6.1.2); nothing was stored",
                        )
                elif event is PART_END:
                    if kind == "json":
                        body.instances.extend(_instances(bytes(metadata)))
                    elif kind == "xml":
                        body.instances.append(_xml_instance(bytes(metadata)))
                    elif kind == "bulk" and spool_path is not None:
                        await close_spool()
                        body.parts.setdefault(location, []).append(BulkPart(media, syntax, spool_path, size))
                    kind = "skip"
                else:
                    assert isinstance(event, bytes)
                    if kind in ("json", "xml"):
                        held += len(event)
                        if held > METADATA_MAX_BYTES:
                            raise HttpError(
                                413,
                                "too_large",
                                f"the metadata parts hold more than {METADATA_MAX_BYTES} bytes; nothing was stored",
                            )
                        metadata += event
                    elif kind == "bulk" and spool is not None:
                        size += len(event)
                        await asyncio.to_thread(spool.write, event)
        parser.close()
        await close_spool()
    except OSError as exc:
        await close_spool()
        body.discard()
        raise OutOfResources(f"the bulk data cannot be written to the staging folder ({exc.strerror})") from None
    except BaseException:
        await close_spool()
        body.discard()
        raise
    if not body.instances:
        body.discard()
        raise HttpError(
            400, "bad_multipart", "no application/dicom+json or +xml part held an instance: nothing was stored"
        )
    return body


def _xml_instance(raw: bytes) -> dict[str, Any]:
    """The dataset of one application/dicom+xml part (PS3.19 Native DICOM Model; 400 if it is not one)."""
    try:
        return read_native_xml(raw, MAX_JSON_DEPTH)
    except NotNativeXML as exc:
        raise HttpError(400, "bad_xml", f"a metadata part is not a Native DICOM Model document: {exc}") from None


def _instances(raw: bytes) -> list[dict[str, Any]]:
    """The datasets of one metadata part: a JSON array of PS3.18 F.2 objects, or one object (400 if not)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, "bad_json", f"a metadata part is not JSON ({str(exc)[:80]}); nothing was stored") from None
    if depth(value) > MAX_JSON_DEPTH or lone_surrogate(value) is not None:
        raise HttpError(
            400, "bad_json", "a metadata part nests too deeply or holds a lone surrogate; nothing was stored"
        )
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise HttpError(400, "bad_json", "a metadata part is not an array of PS3.18 JSON datasets; nothing was stored")
    return items


@dataclass
class _Stream:
    """A top-level value copied from bulk data parts when the file is written."""

    tag: int
    vr: str
    parts: list[BulkPart]


def build_instance(
    metadata: dict[str, Any],
    parts: Mapping[str, list[BulkPart]],
    staging_dir: Path,
    max_dataset_bytes: int = 0,
    taken: set[str] | None = None,
) -> StagedPath:
    """Write one instance into a staging file (core/staging.py: our File Meta, ``max_dataset_bytes``). Blocking.

    ``taken``: the BulkDataURIs earlier instances of the request used. A part serves one element of one
    instance: else a 1 GiB part named by a thousand elements would have the server write a terabyte for
    a 1 GiB request (what is written stays within ``max_upload_bytes``). The URIs used are added."""
    streams: dict[str, list[BulkPart]] = {}
    earlier = taken if taken is not None else set()

    def handler(tag: str, vr: str, uri: str) -> bytes:
        found = parts.get(uri)
        if not found:
            raise BulkRefused(f"({tag[:4]},{tag[4:8]}) names bulk data {uri[:80]!r} that no part of the request has")
        if uri in streams or uri in earlier:
            raise BulkRefused(f"({tag[:4]},{tag[4:8]}) names bulk data {uri[:80]!r} that another element used")
        streams[uri] = found  # by URI: an item's element may have the tag of a top-level one
        return _BULK_MARK + uri.encode()

    try:
        ds = Dataset.from_json(metadata, bulk_data_uri_handler=handler)
    except BulkRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom: a value of the wrong type, an unknown VR ...
        raise BulkRefused(
            f"the metadata is not a PS3.18 JSON dataset ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    top: list[_Stream] = []
    for elem in ds:
        value = elem.value
        if isinstance(value, bytes) and value.startswith(_BULK_MARK):
            top.append(_Stream(elem.tag, elem.VR, streams[value[len(_BULK_MARK) :].decode()]))
    _read_nested(ds, streams)
    syntax = EXPLICIT_VR_LITTLE_ENDIAN
    for stream in top:
        compressed = {part.media_type for part in stream.parts} - {OCTETS}
        if not compressed:
            if len(stream.parts) > 1:
                raise BulkRefused(f"{len(stream.parts)} application/octet-stream parts share one Content-Location")
            continue
        if stream.tag != _PIXEL_DATA:
            raise BulkRefused(
                f"compressed frames ({', '.join(sorted(compressed))}) for an element other than Pixel Data"
            )
        unknown = compressed - set(SYNTAXES_OF)
        if unknown or OCTETS in {part.media_type for part in stream.parts}:
            raise BulkRefused(
                f"Pixel Data bulk data of media type {', '.join(sorted(unknown or {OCTETS}))[:60]} is not taken here "
                "(PS3.18 Table 8.7.3-5; video is not)"
            )
        syntaxes = set()
        for part in stream.parts:
            with open(part.path, "rb") as fh:
                head = fh.read(64 * 1024)
            syntaxes.add(frame_syntax(part.media_type, part.transfer_syntax, head))
        if len(syntaxes) > 1:
            raise BulkRefused(f"the frames of one Pixel Data are in different transfer syntaxes: {sorted(syntaxes)}")
        syntax = syntaxes.pop()
    sop_class, sop_instance = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    if not sop_class or not sop_instance:
        raise InvalidInstance("the metadata has no SOP Class UID or no SOP Instance UID (Type 1, PS3.3 C.12.1)")
    staging = StagingFile(staging_dir, sop_class, sop_instance, syntax, "", max_dataset_bytes)
    try:
        _write(ds, top, _Sink(staging), encapsulated=syntax != EXPLICIT_VR_LITTLE_ENDIAN)
        earlier.update(streams)
        return staging.finish()
    except BaseException:
        staging.discard()
        raise


class _Sink:
    """A file-like front of a StagingFile for pydicom's writer (``write`` and ``tell``)."""

    def __init__(self, staging: StagingFile) -> None:
        self.staging = staging
        self.position = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.staging.write(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:  # pydicom's DicomFileLike takes it; writing never seeks
        raise io.UnsupportedOperation("a staging file is written forwards only")


def _read_nested(ds: Dataset, streams: Mapping[str, list[BulkPart]]) -> None:
    """A BulkDataURI inside a sequence: its value read from its part (at most NESTED_BULK_MAX_BYTES); the
    top-level ones are copied from their parts when the file is written."""
    stack = [item for elem in ds if elem.VR == "SQ" for item in elem.value]
    while stack:
        item = stack.pop()
        for elem in item:
            if elem.VR == "SQ":
                stack.extend(elem.value)
                continue
            value = elem.value
            if isinstance(value, bytes) and value.startswith(_BULK_MARK):
                found = streams[value[len(_BULK_MARK) :].decode()]
                if len(found) != 1 or found[0].media_type != OCTETS or found[0].size > NESTED_BULK_MAX_BYTES:
                    raise BulkRefused(
                        f"bulk data inside a sequence must be one application/octet-stream part of at most "
                        f"{NESTED_BULK_MAX_BYTES} bytes"
                    )
                elem.value = found[0].path.read_bytes()


def _write(ds: Dataset, top: list[_Stream], fh: Any, *, encapsulated: bool) -> None:
    """The data set in Explicit VR Little Endian, the streamed values copied from their parts."""
    streamed = {stream.tag: stream for stream in top}
    fp = DicomFileLike(fh)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    charset = ds._character_set
    chunk = Dataset()
    for elem in ds:
        stream = streamed.get(elem.tag)
        if stream is None:
            chunk.add(elem)
            continue
        if len(chunk):
            write_dataset(fp, chunk, parent_encoding=charset)
            chunk = Dataset()
        _write_streamed(fh, stream, encapsulated and stream.tag == _PIXEL_DATA)
    if len(chunk):
        write_dataset(fp, chunk, parent_encoding=charset)


def _write_streamed(fh: Any, stream: _Stream, encapsulated: bool) -> None:
    group, element = stream.tag >> 16, stream.tag & 0xFFFF
    if encapsulated:  # PS3.5 A.4: OB of undefined length, an empty Basic Offset Table, a fragment per frame
        fh.write(struct.pack("<HH2sHI", group, element, b"OB", 0, 0xFFFFFFFF))
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        for part in stream.parts:
            fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, part.size + part.size % 2))
            _copy(part, fh)
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        return
    [part] = stream.parts
    vr = stream.vr if stream.vr in BYTE_ARRAY_VRS else "UN"  # the VRs whose value is bytes as they are
    if part.size > 0xFFFFFFFE:
        raise BulkRefused(f"a bulk data part of {part.size} bytes is more than one element can hold")
    fh.write(struct.pack("<HH2sHI", group, element, vr.encode(), 0, part.size + part.size % 2))
    _copy(part, fh)


def _copy(part: BulkPart, fh: Any) -> None:
    with open(part.path, "rb") as src:
        while piece := src.read(_COPY):
            fh.write(piece)
    if part.size % 2:
        fh.write(b"\x00")  # PS3.5 7.1.1: values have even lengths


async def stage_instances(body: BulkBody, archive: Archive, screen: Screen) -> Intake:
    """Each instance built and staged as a STOW-RS part; refusals and failures recorded per instance."""
    intake = Intake(archive, screen)
    try:
        await _stage_each(intake, body, archive, screen)
    except BaseException:
        await intake.discard()
        raise
    return intake


async def _stage_each(intake: Intake, body: BulkBody, archive: Archive, screen: Screen) -> None:
    taken: set[str] = set()  # the BulkDataURIs used so far (build_instance)
    for number, metadata in enumerate(body.instances, 1):
        part = Received(number, f"instance {number} of the metadata", "application/dicom", _named(metadata))
        intake.received.append(part)
        try:
            staged = await asyncio.to_thread(_build_and_stage, metadata, body.parts, archive, taken)
        except OutOfResources:
            raise
        except ArchiveError as exc:
            log.warning("STOW-RS %s: %s", part.label, exc)
            part.failure = exc
            continue
        part.staged, part.header = staged
        part.refusal = screen("application/dicom", part.header)
        if part.refusal is not None:
            await asyncio.to_thread(part.staged.path.unlink, missing_ok=True)
            part.staged = None


def _named(metadata: Mapping[str, Any]) -> InstanceHeader:
    """The UIDs the metadata gives, so that a failed instance's item names it (PS3.18 Table I.2-1)."""
    values: dict[str, str] = {}
    for tag, keyword in (("00080016", "SOPClassUID"), ("00080018", "SOPInstanceUID"), ("0020000D", "StudyInstanceUID")):
        element = metadata.get(tag)
        value = element.get("Value") if isinstance(element, Mapping) else None
        if isinstance(value, list) and value and isinstance(value[0], str):
            values[keyword] = value[0][:64]
    return InstanceHeader(values)


def _build_and_stage(
    metadata: dict[str, Any], parts: Mapping[str, list[BulkPart]], archive: Archive, taken: set[str]
) -> Any:
    staged = build_instance(metadata, parts, archive.staging_dir, archive.settings.max_dataset_bytes, taken)
    try:
        header = read_header(staged.path, staged.dataset_offset, staged.transfer_syntax_uid)
    except ArchiveError:
        staged.path.unlink(missing_ok=True)
        raise
    return staged, header


__all__ = [
    "DEFAULT_SYNTAX",
    "METADATA_MAX_BYTES",
    "NESTED_BULK_MAX_BYTES",
    "SYNTAXES_OF",
    "BulkPart",
    "BulkRefused",
    "build_instance",
    "frame_syntax",
    "jpeg_ls_syntax",
    "jpeg_syntax",
    "receive",
    "stage_instances",
]
