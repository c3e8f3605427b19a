"""Media type negotiation for WADO-RS (PS3.18 §8.7): which representation of an instance or its frames.

The Accept header lists media ranges; for multipart responses the part's media type is the
``type`` parameter of ``multipart/related`` and the encoding its ``transfer-syntax``
parameter (a UID, or ``*`` = whatever the origin server chooses). The tables below say
which media type carries which stored transfer syntax; the functions pick, per stored
transfer syntax, the first acceptable representation we can produce without lossy work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Final

from starlette.requests import Request

from minipacs.core.transcode import can_decode, can_transcode
from minipacs.dicom import xml_model
from minipacs.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    LOSSLESS_ONLY_SYNTAXES,
    transfer_syntax,
)

ANY: Final = "*/*"
DICOM: Final = "application/dicom"
OCTETS: Final = "application/octet-stream"
DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = xml_model.MEDIA_TYPE

# PS3.18 Table 8.7.3-5: media types of compressed Bulkdata (frames), by transfer syntax
FRAME_MEDIA_TYPES: Final[Mapping[str, str]] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
}
# media types some clients send for the ones above (dicomweb-client, older editions of PS3.18)
ALIASES: Final[Mapping[str, str]] = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


@dataclass(frozen=True)
class MediaRange:
    """One acceptable representation: part media type (``""``: the resource's default) and transfer syntax."""

    media_type: str
    transfer_syntax: str = ""  # "" absent, "*" any, else a UID
    q: float = 1.0
    #: Asked for inside multipart/related (``type=``), or as a single part; not part of equality.
    multipart: bool = dataclass_field(default=False, compare=False)


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


#: The one range :func:`parse_accept` gives for a header whose every range has q=0: it matches no media
#: type, so a resource answers 406 (RFC 9110 12.5.1: q=0 means "not acceptable"), as it would for a
#: header naming only types it does not make, and never as for a request without an Accept header.
REFUSED: Final = "!refused"


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header (RFC 9110 §12.5.1), best first; q=0 ones dropped, and a
    header that names ranges all of q=0 is ``[MediaRange(REFUSED)]``, not ``[]`` (no header).

    ``multipart/related; type="X"; transfer-syntax=Y`` becomes ``MediaRange("X", "Y")``;
    a bare ``multipart/related`` has media type ``""`` (the resource's default).
    """
    ranges: list[MediaRange] = []
    refused = False
    for item in _split(header, ","):
        fields = _split(item, ";")
        media = fields[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for field in fields[1:]:
            name, _, value = field.partition("=")
            params[name.strip().lower()] = value.strip().strip('"').strip()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if not math.isfinite(q):
            q = 1.0
        if q <= 0:
            refused = True
            continue
        part = params.get("type", "").lower() if media == "multipart/related" else media
        if media == "multipart/*" or part == "*":
            part = ANY
        part = ALIASES.get(part, part)
        ranges.append(MediaRange(part, params.get("transfer-syntax", ""), q, media.startswith("multipart/")))
    if refused and not ranges:
        return [MediaRange(REFUSED)]
    return sorted(ranges, key=lambda r: -r.q)


#: PS3.18 §8.7.3: "The Implicit VR Little Endian (1.2.840.10008.1.2), and Explicit VR Big Endian
#: (1.2.840.10008.1.2.2 - Retired) Transfer Syntaxes shall not be used with Web Services."
NOT_FOR_THE_WEB: Final = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})


def server_choice(stored_ts: str) -> str:
    """The syntax we pick ourselves (no ``transfer-syntax``, or ``*``): as stored, except the two that
    §8.7.3 rules out for web services, which go out as Explicit VR Little Endian (the same pixels,
    the header re-encoded; core/transcode.py)."""
    if stored_ts in NOT_FOR_THE_WEB and can_transcode(stored_ts, EXPLICIT_VR_LITTLE_ENDIAN):
        return EXPLICIT_VR_LITTLE_ENDIAN
    return stored_ts


def default_syntax(stored_ts: str) -> str:
    """The transfer syntax of an instance asked for without ``transfer-syntax`` (PS3.18 8.7.3.4; WADO-URI
    8.2.11 likewise): the Default, Explicit VR Little Endian, "unless the origin server has only access to
    the pixel data in lossy compressed form", which it may return as received (Note 2). So native and
    lossless-only syntaxes go out as Explicit VR Little Endian (decompressed); a syntax that is or may be
    lossy (JPEG baseline, JPEG 2000, video...), or one nothing here decodes, goes as stored."""
    ts = transfer_syntax(stored_ts)
    if ts is not None and ts.encapsulated and stored_ts not in LOSSLESS_ONLY_SYNTAXES:
        return server_choice(stored_ts)
    if can_decode(stored_ts) and can_transcode(stored_ts, EXPLICIT_VR_LITTLE_ENDIAN):
        return EXPLICIT_VR_LITTLE_ENDIAN
    return server_choice(stored_ts)


def accepted(request: Request) -> str:
    """What the client accepts: the ``accept`` query parameter (PS3.18 §8.3.3.1, for links, where the
    header cannot be set; Table 10.4.1-5: every resource) when given, else the Accept header."""
    return request.query_params.get("accept") or request.headers.get("accept", "")


def instance_syntax(ranges: list[MediaRange], stored_ts: str) -> str | None:
    """The transfer syntax to send an instance stored in ``stored_ts`` in, or None if none is acceptable.

    PS3.18 §8.7.3.4 (since 2016c) makes Explicit VR Little Endian the Default when no
    ``transfer-syntax`` is given (no Accept header, ``*/*``, or a range without the parameter):
    a losslessly compressed instance is decompressed for it, as Orthanc's DICOMweb does since its
    1.5; lossy pixel data may go as received (:func:`default_syntax`). ``transfer-syntax=*``
    lets the origin server choose:
    as stored, but never Implicit VR Little Endian or Big Endian, which §8.7.3 rules out for web
    services. A syntax asked for by name is honoured when it is the stored one. The one syntax we
    transcode to is Explicit VR Little Endian: we never compress.
    """
    if not ranges:
        return default_syntax(stored_ts)
    for r in ranges:
        if r.media_type not in (DICOM, ANY, "application/*", ""):
            continue
        if r.transfer_syntax == "":
            return default_syntax(stored_ts)
        if r.transfer_syntax == "*":
            return server_choice(stored_ts)
        if r.transfer_syntax == stored_ts:
            return stored_ts
        if r.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN and can_transcode(stored_ts, r.transfer_syntax):
            return r.transfer_syntax
    return None


#: PS3.18 Tables 10.4.4-1 and 10.6.4-1: the ranges that accept Metadata and search results in
#: application/dicom+json, the Default, most specific first (RFC 9110 12.5.1: a representation gets the
#: q of the most specific range that matches it). "*/*" matches the Default only (PS3.18 8.7.7), and so
#: does a bare multipart/related (``""``); ``application/json`` is what browsers and OHIF send for JSON.
JSON_RANGES: Final = ((DICOM_JSON, "application/json"), ("application/*",), (ANY, ""))
#: The ranges that accept the Native DICOM Model XML (PS3.18 Table 8.7.3-3): multipart/related;
#: type="application/dicom+xml", or application/dicom+xml itself (answered as that multipart).
XML_RANGES: Final = ((DICOM_XML,),)


def _quality(ranges: list[MediaRange], levels: tuple[tuple[str, ...], ...]) -> tuple[float, int]:
    """(q, -position) of the most specific of ``levels`` any range matches; (0, ...) if none does."""
    for level in levels:
        found = [(r.q, -i) for i, r in enumerate(ranges) if r.media_type in level]
        if found:
            return max(found)
    return (0.0, -len(ranges))


def metadata_media_type(ranges: list[MediaRange]) -> str:
    """DICOM_JSON or DICOM_XML for WADO-RS Metadata and QIDO-RS results (PS3.18 8.7.8.1, Table 8.7.3-1).

    XML when the client prefers it: a range for it with a higher q than the most specific range
    that matches JSON, or the same q and listed first (a tie is the origin server's to break).
    JSON otherwise -- also when no acceptable media type is supported at all: application/dicom+json
    is the Default, which "the origin server shall return ... when none of the Acceptable Media
    Types are supported" (Table 8.7.3-1), rather than step 5's 406 of 8.7.8.1.
    """
    return DICOM_XML if _quality(ranges, XML_RANGES) > _quality(ranges, JSON_RANGES) else DICOM_JSON


@dataclass(frozen=True)
class FrameChoice:
    """How to send frames: part media type, the transfer syntax they are in, whether to decompress."""

    media_type: str
    transfer_syntax: str
    decode: bool
    #: The frames as stored, when ``decode`` was chosen by default (no transfer-syntax asked for), not
    #: by name: what goes out if the stored frames cannot be decoded (PS3.18 8.7.3.3's exception).
    fallback: FrameChoice | None = dataclass_field(default=None, compare=False)

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def frame_choice(ranges: list[MediaRange], stored_ts: str) -> FrameChoice | None:
    """The representation of frames of an instance stored in ``stored_ts`` (PS3.18 §8.7.3.3), or None.

    Compressed frames go out as stored when the client accepts their media type (Table 8.7.3-5) or
    ``application/octet-stream`` with their transfer syntax or ``*``; they are decompressed to native
    Explicit VR Little Endian octets (Table 8.7.3-4) when asked for ``application/octet-stream``
    without a transfer syntax or with 1.2.840.10008.1.2.1, and when there is no Accept header. Anything
    (``*/*``) without a transfer syntax gets the Default of §8.7.3.3, Explicit VR Little Endian, "unless
    the origin server has only access to the pixel data in lossy compressed form": lossless-only
    syntaxes are decompressed, lossy (or undecodable) ones go as stored (:func:`default_syntax`). A
    decompression chosen by default (no Accept header, ``*/*``) falls back to the frames as stored if
    they cannot be decoded; one asked for by name (``application/octet-stream``) is a 406 then.
    """
    syntax = transfer_syntax(stored_ts)
    if syntax is None:
        return None
    native = FrameChoice(OCTETS, EXPLICIT_VR_LITTLE_ENDIAN, syntax.encapsulated or not syntax.little_endian)
    if not syntax.encapsulated:
        as_stored = native
    else:
        as_stored = FrameChoice(FRAME_MEDIA_TYPES.get(stored_ts, OCTETS), stored_ts, False)
    defaulted = replace(native, fallback=as_stored) if native.decode else native
    for r in ranges or [MediaRange("")]:
        ts = r.transfer_syntax
        if r.media_type in (ANY, ""):
            if ts == EXPLICIT_VR_LITTLE_ENDIAN:
                return native
            if ts == "" and (r.media_type == "" or default_syntax(stored_ts) == EXPLICIT_VR_LITTLE_ENDIAN):
                return defaulted
            if ts in ("", "*", stored_ts):
                return as_stored
        elif r.media_type == OCTETS:
            if ts in ("", EXPLICIT_VR_LITTLE_ENDIAN):
                return native
            if ts in ("*", stored_ts):
                return FrameChoice(OCTETS, as_stored.transfer_syntax, as_stored.decode)
        elif syntax.encapsulated and r.media_type in (as_stored.media_type, "image/*") and ts in ("", "*", stored_ts):
            return as_stored
    return None


def frame_choices_text(stored_ts: str) -> str:
    """What a client can ask for, for a 406 sentence."""
    media = FRAME_MEDIA_TYPES.get(stored_ts)
    stored = f'type="{media}" or ' if media else ""
    return (
        f'multipart/related; {stored}type="application/octet-stream"; transfer-syntax={stored_ts} (as stored), '
        f'or type="application/octet-stream" without transfer-syntax (decompressed to {EXPLICIT_VR_LITTLE_ENDIAN})'
    )


__all__ = [
    "DICOM_JSON",
    "DICOM_XML",
    "metadata_media_type",
    "FRAME_MEDIA_TYPES",
    "FrameChoice",
    "MediaRange",
    "REFUSED",
    "frame_choice",
    "frame_choices_text",
    "NOT_FOR_THE_WEB",
    "accepted",
    "default_syntax",
    "instance_syntax",
    "server_choice",
    "parse_accept",
]
