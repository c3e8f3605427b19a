"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, WADO-URI and STOW-RS on the ONE archive core."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Final, cast

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.audit import Action
from minipacs.core.errors import (
    ArchiveError,
    DatasetTooLarge,
    DuplicateInstance,
    InstanceMismatch,
    InvalidInstance,
    OutOfResources,
    PreviouslyRejected,
    QueryTooBroad,
    RejectionNotAllowed,
    RejectionNoteError,
    RejectionNoteTooLarge,
)
from minipacs.core.inflate import DatasetLimits
from minipacs.core.metadata import BULK_PREFIX
from minipacs.core.model import Origin
from minipacs.core.paths import validate_uid
from minipacs.core.retrieve import StoredInstance, select_instances
from minipacs.core.transcode import (
    TranscodeError,
    transcode_part10,
)
from minipacs.dicom.header import InstanceHeader
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.dicom.xml_model import native_xml
from minipacs.web import audit, stow_bulk
from minipacs.web import capabilities as capabilities_description
from minipacs.web.accept import (
    ANY,
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    accepted,
    instance_syntax,
    metadata_media_type,
    parse_accept,
)
from minipacs.web.bulkdata import (
    bulkdata_response,
    frame_numbers,
    frames_response,
    on_file,
    parse_path,
    resource_bulkdata_response,
)
from minipacs.web.errors import HttpError
from minipacs.web.intake import Intake, Screen, receive_multipart
from minipacs.web.native_model import xml_response
from minipacs.web.render import (
    RenderOptions,
    choose_format,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)
from minipacs.web.routing import Endpoint
from minipacs.web.search import page_size, qido_defaults, search, to_json
from minipacs.web.transfer import (
    OutPart,
    boundary_of,
    insufficient_storage,
    multipart_response,
    new_boundary,
    stored_part,
)
from minipacs.web.types import ctx
from minipacs.web.workers import RenderPool

log = logging.getLogger(__name__)

# path parameter (PS3.18 10.4: {study}, {series}, {instance}) -> DICOM keyword of the UID it carries
PATH_KEYS: Final[Mapping[str, str]] = {
    s.noun: s.unique_key for s in LEVEL_SPELLINGS.values() if s.level is not Level.PATIENT
}
# PS3.18 Table 10.5.3-1, Table I.2-2 / PS3.4 Annex B.2.3: the FailureReason for why ingest refused an
# instance (a part not in the study of the URL is 0xA900 too, decided before ingest); looked up along
# the exception's classes, so InstanceMismatch (an InvalidInstance) is 0xA900
FAILURE_REASONS: Final[Mapping[type[ArchiveError], int]] = {
    OutOfResources: 0xA700,
    DatasetTooLarge: 0xA700,
    InstanceMismatch: 0xA900,
    DuplicateInstance: 0x0111,
    PreviouslyRejected: 0xA771,  # as C-STORE answers it (core/rejection.py)
    # a rejection note refused before it is stored, as C-STORE answers it (services/status.py)
    RejectionNotAllowed: 0xA775,
    RejectionNoteTooLarge: 0xA700,
    RejectionNoteError: 0xC002,
    InvalidInstance: 0xC000,  # Error: Cannot understand -- a broken dataset (BrokenDataset), a malformed UID
}
PROCESSING_FAILURE: Final = 0x0110  # PS3.4 Annex B: Processing failure
SOP_CLASS_NOT_SUPPORTED: Final = 0xC000  # PS3.18 Table 10.5.3-1: not a DICOM instance we can read


def uids(request: Request) -> dict[str, str]:
    """The UIDs in the path, each checked (path-like or malformed UIDs: 400)."""
    return {
        PATH_KEYS[name]: validate_uid(PATH_KEYS[name], value)
        for name, value in request.path_params.items()
        if name in PATH_KEYS
    }


#: RFC 9110 §4.2: the port a URL of each scheme implies
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def root_url(request: Request) -> str:
    """The DICOMweb root as the client reached it, for the URLs answers carry (Retrieve URL, BulkDataURI).

    From the Host header -- except when it names no port but the connection came straight to a
    port that is not the scheme's default (no reverse proxy declared in ``http_trusted_proxies``):
    then the URL gets the port the server listens on, which is the only one that can reach it.
    dicomweb-client sends ``Host: 127.0.0.1`` without its port, and the BulkDataURIs it was given
    then pointed at port 80 (RFC 9110 §7.2 says an absent port is the default one).

    A Host header that is no ``host[:port]`` (a port of letters, a sign, more than 65535, a bracket
    left open) is HttpError 400, as RFC 9112 §3.2 says a server answers it (urllib's ValueError was a 500)."""
    base = request.base_url
    server = request.scope.get("server")
    proxied = bool(ctx(request).settings.http_trusted_proxies)
    try:
        if base.port is None and server and not proxied and server[1] not in (None, _DEFAULT_PORTS.get(base.scheme)):
            base = base.replace(port=int(server[1]))
    except ValueError:
        host = request.headers.get("host", "")
        raise HttpError(
            400, "invalid_host", f"the Host header {host[:60]!r} is not host[:port] with a port from 0 to 65535"
        ) from None
    return str(base).rstrip("/") + "/dicom-web"


# ------------------------------------------------------------------ QIDO-RS (PS3.18 §10.6)


#: PS3.18 8.3.4.2 and 8.3.4.4.1: the Warning header texts (after "299 <service>: ")
FUZZY_WARNING: Final = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
MORE_WARNING: Final = "There are additional results that can be requested"
#: PS3.18 8.3.4.4: past a server limit, the results within it and a Warning (ours says which limit).
TOO_BROAD_WARNING: Final = (
    "The number of results exceeded the maximum supported by the server: the query needs more stored files "
    "read than query_max_file_reads allows to match keys the index does not hold; the results may be "
    "incomplete; narrow the query with indexed keys"
)
_RETRIEVE_URL: Final = 0x00081190


def retrieve_url(root: str, match: Dataset, level: Level) -> str:
    """The Retrieve URL (0008,1190) of a QIDO-RS match (PS3.18 Tables 10.6.3-3..5): its WADO-RS resource."""
    url = f"{root}/studies/{match.get('StudyInstanceUID', '')}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{match.get('SeriesInstanceUID', '')}"
    if level is Level.IMAGE:
        url += f"/instances/{match.get('SOPInstanceUID', '')}"
    return url


def warning(request: Request, text: str) -> str:
    """A Warning header value (RFC 7234 5.5, PS3.18 8.3.4): code 299, the service's base URI, the text."""
    return f"299 {root_url(request)}: {text}"


def _qido(level: Level) -> Any:
    async def qido(request: Request) -> Response:
        """QIDO-RS (PS3.18 10.6): the matches as one application/dicom+json array, with a Content-Length
        (Table 10.6.3-2), or as multipart/related; type="application/dicom+xml" when the Accept header
        prefers it (Table 10.6.4-1); a Warning when results remain past ``limit`` or fuzzy matching was
        asked for."""
        context = ctx(request)
        fixed = uids(request)
        params = list(request.query_params.multi_items())
        fuzzy = [value.lower() for name, value in params if name == "fuzzymatching"]
        if any(value not in ("true", "false") for value in fuzzy):
            raise HttpError(400, "invalid_fuzzymatching", "fuzzymatching must be true or false (PS3.18 8.3.4.2)")
        media_type = metadata_media_type(parse_accept(accepted(request)))
        started = time.perf_counter()
        audit.record_query(request, f"QIDO-RS {level.value}", level=level.value)
        root = root_url(request)
        matches = cast(
            AsyncGenerator[Dataset, None],  # search is an async generator: closed if we stop early
            search(context.archive, level, params, fixed, defaults=qido_defaults(level, fixed), one_more=True),
        )
        wanted = page_size(params)
        found: list[dict[str, Any]] = []
        more = too_broad = False
        async with aclosing(matches):
            try:
                async for match in matches:
                    if len(found) == wanted:
                        more = True
                        break
                    match[_RETRIEVE_URL] = DataElement(_RETRIEVE_URL, "UR", retrieve_url(root, match, level))
                    found.append(to_json(match))
            except QueryTooBroad as exc:  # the matches found within the limit, with a Warning
                log.warning("QIDO-RS %s: %s", level.value, exc)
                too_broad = True
        context.metrics.query_answered("qido", time.perf_counter() - started)
        headers: list[str] = []
        if "true" in fuzzy:
            headers.append(warning(request, FUZZY_WARNING))
        if more:
            headers.append(warning(request, MORE_WARNING))
        if too_broad:
            headers.append(warning(request, TOO_BROAD_WARNING))
        if media_type == DICOM_XML:
            response = await xml_response(found)
        else:
            response = Response("[" + ",".join(json.dumps(item) for item in found) + "]", media_type=DICOM_JSON)
        response.headers["Vary"] = "Accept"
        for value in headers:
            response.headers.append("Warning", value)
        return response

    return qido


# ------------------------------------------------------------------ Retrieve Capabilities (PS3.18 §8.9)


async def capabilities(request: Request) -> Response:
    """Retrieve Capabilities (PS3.18 8.9): the WADL Capabilities Description of the whole service
    (web/capabilities.py); the Target Resource is the base URI (8.9.1.1), there are no query
    parameters (8.9.1.2), so only the Accept header counts."""
    media_type = capabilities_description.negotiate(request.headers.get("accept", ""))
    routes = capabilities_description.dicomweb_routes(request)
    return Response(capabilities_description.wadl(root_url(request), routes), media_type=media_type)


# ------------------------------------------------------------------ WADO-RS (PS3.18 §10.4)


async def _instances(request: Request, located: bool = True) -> list[StoredInstance]:
    """The stored instances the path names; ``located=False`` skips reading each file's header
    (whole files are sent, and a file missing by then is left out of the response and logged)."""
    return (await _instances_and_problems(request, located))[0]


async def _instances_and_problems(
    request: Request, located: bool = True
) -> tuple[list[StoredInstance], list[StoredInstance]]:
    """(the stored instances the path names whose files can be read, those whose files cannot: each
    logged with its file by core/retrieve.py). 404 when none is stored; when none can be read, 404 if
    every file is missing, else 500 (unreadable_instance), saying so without naming the files."""
    keys = uids(request)
    level = "IMAGE" if "SOPInstanceUID" in keys else "SERIES" if "SeriesInstanceUID" in keys else "STUDY"
    rows = await select_instances(ctx(request).archive, level, keys, located=located)
    found = [item for item in rows if not item.problem]
    problems = [item for item in rows if item.problem]
    if not found:
        if not problems:
            raise HttpError(404, "not_found", f"no stored instance matches {', '.join(keys.values())}")
        gone = all("missing from storage" in item.problem for item in problems)
        raise HttpError(
            404 if gone else 500,
            "not_found" if gone else "unreadable_instance",
            f"the {len(problems)} instance(s) asked for are indexed but their files are "
            f"{'missing from storage' if gone else 'missing or cannot be read'}; see the server log",
        )
    audit.record(request, Action.VIEWED, study_uid=found[0].study_instance_uid, detail="WADO-RS")
    return found, problems


def _transcoded_part(item: StoredInstance, target_ts: str, pool: RenderPool, limits: DatasetLimits) -> OutPart:
    """A part transcoded when the response reaches it, in the render pool (waiting for a turn there)."""
    return OutPart(
        f"application/dicom; transfer-syntax={target_ts}",
        produce=functools.partial(pool.call, functools.partial(on_file, item, transcode_part10, target_ts, limits)),
        label=item.sop_instance_uid,
    )


async def retrieve(request: Request) -> Response:
    """WADO-RS Retrieve Study/Series/Instance (PS3.18 §10.4): stored files, or transcoded per Accept (§8.7.3)."""
    ranges = parse_accept(accepted(request))
    if ranges and not any(r.media_type in (DICOM, ANY, "application/*", "") for r in ranges):
        raise HttpError(
            406,
            "not_acceptable",
            "instances are available as multipart/related; "
            'type="application/dicom" (bulk data and metadata have their own URLs)',
        )
    found = await _instances(request, located=False)
    pool = ctx(request).renders
    limits = ctx(request).archive.settings.dataset_limits
    parts: list[OutPart] = []
    targets: list[str] = []
    for item in found:
        target = instance_syntax(ranges, item.transfer_syntax_uid)
        if target is None:
            asked = (", ".join(sorted({r.transfer_syntax for r in ranges if r.transfer_syntax})) or "?")[:200]
            raise HttpError(
                406,
                "not_acceptable",
                f"SOP Instance {item.sop_instance_uid} is stored in transfer "
                f"syntax {item.transfer_syntax_uid} and cannot be converted to {asked}: this server "
                "only decompresses (to Explicit VR Little Endian); ask for "
                "transfer-syntax=* (as stored) or transfer-syntax=1.2.840.10008.1.2.1",
            )
        parts.append(
            stored_part(item) if target == item.transfer_syntax_uid else _transcoded_part(item, target, pool, limits)
        )
        targets.append(target)
    if len(parts) == 1 and parts[0].produce is not None:  # one instance: a failure can still be a 406
        try:
            data = await pool.run(on_file, found[0], transcode_part10, targets[0], limits, what="transcoding")
        except TranscodeError as exc:
            if any(r.transfer_syntax for r in ranges):  # a syntax asked for by name: say it cannot be made
                raise HttpError(
                    406, "cannot_transcode", f"{exc}; ask for transfer-syntax=* to get it as stored"
                ) from None
            # the Default could not be made (a damaged compressed stream): as stored beats nothing
            log.warning("WADO-RS: %s cannot be decoded (%s); sent as stored", found[0].sop_instance_uid, exc)
            parts = [stored_part(found[0])]
        else:
            parts = [OutPart(parts[0].content_type, produce=lambda: data, label=parts[0].label)]
    elif any(part.produce is not None for part in parts):
        pool.check("transcoding")  # 503 now rather than a response that stalls part-way
    return await multipart_response(parts, new_boundary(), DICOM, functools.partial(warning, request))


async def metadata(request: Request) -> Response:
    """WADO-RS Retrieve Metadata (PS3.18 10.4.1.1.2): application/dicom+json, the Default media type
    (Table 10.4.4-1), or multipart/related; type="application/dicom+xml" (Required; one PS3.19 Native
    DICOM Model document per instance) when the Accept header prefers that (web/accept.py
    ``metadata_media_type``). Any other Accept gets the Default (Table 8.7.3-1)."""
    media_type = metadata_media_type(parse_accept(accepted(request)))
    found, problems = await _instances_and_problems(request)
    texts, left_out = await _available_metadata(request, found, len(problems))
    root = root_url(request)
    texts = [text.replace('"' + BULK_PREFIX, '"' + root) for text in texts]
    if media_type == DICOM_XML:
        response = await xml_response(texts)
    else:
        response = Response("[" + ",".join(texts) + "]", media_type=DICOM_JSON)
    response.headers["Vary"] = "Accept"
    if left_out:
        response.status_code = 206
        response.headers["Warning"] = left_out
    return response


async def _available_metadata(
    request: Request, found: Sequence[StoredInstance], unreadable: int
) -> tuple[list[str], str]:
    """The metadata of ``found`` that can be read, and a Warning value ("" when all could be);
    ``unreadable``: instances of the resource already left out because their files cannot be read. One
    instance that cannot be read used to be a study or series left out of a viewer altogether, or left
    out without a word; now it is left out with 206 and a Warning (PS3.18 Table 10.4.3-1,
    "representations for some, but not all, of the Target Resources"), as the instances' retrieve
    does. When none can be read, the error of the first (404 no longer stored, 500 unreadable)."""
    texts, left_out = await ctx(request).metadata.available([item.sop_instance_uid for item in found])
    if not texts and left_out:
        raise left_out[0]
    for why in left_out:
        log.warning("WADO-RS metadata: %s; left out of the answer", why)
    missing = unreadable + len(left_out)
    if not missing:
        return texts, ""
    total = len(found) + unreadable
    words = f"{missing} of the {total} instances cannot be read and are left out (see the server log)"
    return texts, warning(request, words)


async def frames(request: Request) -> Response:
    """WADO-RS Retrieve Frames (PS3.18 §10.4): as stored or decompressed, per Accept (§8.7.3.3 Bulkdata)."""
    numbers = frame_numbers(request.path_params["frames"])
    item = (await _instances(request))[0]
    return await frames_response(request, item, numbers, whole=False)


async def bulkdata(request: Request) -> Response:
    """WADO-RS Retrieve Bulkdata (PS3.18 §10.4.1.1.5): a BulkDataURI of the metadata (web/bulkdata.py)."""
    raw = request.path_params["tag"]
    parse_path(raw)  # 400 before looking anything up
    item = (await _instances(request))[0]
    return await bulkdata_response(request, item, raw)


async def resource_bulkdata(request: Request) -> Response:
    """Study, Series and Instance Bulkdata (PS3.18 Table 10.3-2): every bulk data item of the resource,
    each part at the BulkDataURI its metadata gives (web/bulkdata.py)."""
    found = await _instances(request)
    texts = await ctx(request).metadata.get([item.sop_instance_uid for item in found])
    root = root_url(request)
    objects = [json.loads(text.replace('"' + BULK_PREFIX, '"' + root)) for text in texts]
    return await resource_bulkdata_response(request, found, objects)


#: PS3.18 §8.3.5.1.1 annotation keywords (none of them is drawn: each one asked for gets the Warning)
ANNOTATIONS: Final = frozenset({"patient", "technique"})


def _annotation_warning(request: Request) -> str | None:
    """``annotation`` (PS3.18 §8.3.5.1.1): 400 unless a list of keywords; we burn in none, so the ones
    asked for are named in a Warning, as unsupported values must be."""
    raw = request.query_params.get("annotation")
    if raw is None:
        return None
    values = [v.strip() for v in raw.split(",")]
    if not all(values) or any(v not in ANNOTATIONS for v in values):
        raise HttpError(400, "invalid_annotation", "annotation must be a list of the keywords patient and technique")
    return warning(request, f"The following annotation values are not supported: {','.join(values)}")


async def _render(request: Request, thumbnail: bool, frame: int = 1) -> Response:
    """PS3.18 §10.4.1.1.3 rendered and thumbnail resources, with the parameters of Table 8.3.5-1."""
    params = request.query_params
    # §8.3.3.1: the accept parameter, where a link cannot set the Accept header
    options = RenderOptions(
        mime=choose_format(accepted(request)),
        window=parse_window(params.get("window")),
        viewport=parse_viewport(params.get("viewport"), thumbnail=thumbnail),
        quality=parse_quality(params.get("quality")),
        thumbnail=thumbnail,
    )
    note = _annotation_warning(request)
    found = await _instances(request)
    limits = ctx(request).archive.settings.dataset_limits
    data = b""
    for number, item in enumerate(representatives(found)):
        try:
            data = await ctx(request).renders.run(on_file, item, render, frame, options, limits)
        except HttpError as exc:
            if exc.code != "no_pixels" or number == len(found) - 1:
                raise
            continue
        break
    response = Response(data, media_type=options.mime)
    if note:
        response.headers["Warning"] = note
    return response


def representatives(found: Sequence[StoredInstance]) -> list[StoredInstance]:
    """The instances of a study or series in the order its rendered image and thumbnail try them (PS3.18
    10.4.1.1.3-4 leave the choice to the origin server): the middle one first, then outwards. The middle
    one alone was the answer, and when it had no pixel data (a Structured Report, a Key Object Selection, a
    Presentation State next to the images) the study's thumbnail was a 406 though it holds images; the
    next one is tried instead (:func:`_render`), until one has pixel data. An instance asked for by its
    UID is the only one (``found`` has one item)."""
    middle = len(found) // 2
    return [found[index] for index in sorted(range(len(found)), key=lambda index: (abs(index - middle), index))]


async def rendered(request: Request) -> Response:
    frame = request.path_params.get("frames")
    number = frame_numbers(frame)[0] if frame else 1
    return await _render(request, False, number)


async def thumbnail(request: Request) -> Response:
    """Study, Series, Instance and Frame Thumbnail (PS3.18 §10.4.1.1.4: supporting one means supporting
    all four); for frames, the first one listed."""
    frame = request.path_params.get("frames")
    return await _render(request, True, frame_numbers(frame)[0] if frame else 1)


def _read_file(item: StoredInstance) -> Iterator[bytes]:
    """A stored file in 256 KiB chunks (web/rest.py downloads; ``transfer.file_response`` streams faster)."""
    with item.open() as fh:
        while chunk := fh.read(256 * 1024):
            yield chunk


# ------------------------------------------------------------------ STOW-RS (PS3.18 §10.5)


def failure_reason(exc: ArchiveError, class_uid: str) -> int:
    """The FailureReason (0008,1197) for an instance ingest refused, by the exception's class (or a base
    class); any other refusal is a processing failure, or 0xC000 when the part had no SOP Class UID."""
    for kind in type(exc).__mro__:
        if kind in FAILURE_REASONS:
            return FAILURE_REASONS[kind]
    return PROCESSING_FAILURE if class_uid else SOP_CLASS_NOT_SUPPORTED


def _item(class_uid: str, instance_uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if class_uid:
        item["00081150"] = {"vr": "UI", "Value": [class_uid]}
    if instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [instance_uid]}
    for tag, value in extra.items():
        item[tag.removeprefix("t")] = value
    return item


def _stow_screen(target: str | None) -> Screen:
    """What STOW-RS refuses before storing: a part that is not application/dicom (a part without a
    Content-Type is one), and one of another study than the URL's (PS3.18 §10.5.1: 0xA900)."""

    def screen(content_type: str, header: InstanceHeader | None) -> int | None:
        if content_type and not content_type.lower().startswith("application/dicom"):
            return SOP_CLASS_NOT_SUPPORTED
        study = header.get("StudyInstanceUID") if header is not None else ""
        if target and study and study != target:
            return 0xA900
        return None

    return screen


async def store(request: Request) -> Response:
    """STOW-RS (PS3.18 §10.5): the body is read as it arrives, each part streamed into staging
    (web/intake.py), and the parts are stored once the body is complete."""
    context = ctx(request)
    target = uids(request).get("StudyInstanceUID")
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise HttpError(
            415, "unsupported_media_type", 'STOW-RS needs a multipart/related; type="application/dicom" body'
        )
    declared = parse_accept(content_type)[0].media_type  # the "type" parameter (RFC 2387); "" when absent
    if declared not in ("", DICOM, DICOM_JSON, DICOM_XML):
        raise HttpError(
            415,
            "unsupported_media_type",
            f'this server stores instances sent as multipart/related; type="application/dicom" (Part 10 files) or '
            f'type="application/dicom+json" or "application/dicom+xml" (metadata and bulk data, PS3.18 10.5.1.2), '
            f"not {declared[:60]!r}; nothing was stored",
        )
    boundary = boundary_of(content_type)
    settings = context.settings
    bulk: stow_bulk.BulkBody | None = None
    try:
        if declared in (DICOM_JSON, DICOM_XML):
            bulk = await stow_bulk.receive(
                request, boundary, context.archive.staging_dir, settings.max_upload_bytes, settings.max_upload_parts
            )
            intake = await stow_bulk.stage_instances(bulk, context.archive, _stow_screen(target))
        else:
            intake = Intake(context.archive, _stow_screen(target))
            await receive_multipart(request, intake, boundary, settings.max_upload_bytes, settings.max_upload_parts)
    except OutOfResources as exc:
        raise insufficient_storage(exc, 0, 1) from None
    finally:
        if bulk is not None:
            await asyncio.to_thread(bulk.discard)  # the bulk data is in the instances' staging files now
    if not intake.received:  # PS3.18 10.5.1.4: the payload shall contain one or more representations
        raise HttpError(400, "bad_multipart", "the multipart body has no part: there was nothing to store")
    root = root_url(request)
    studies: set[str] = set()
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    origin = Origin("stow", peer_host=request.client.host if request.client else "")
    parts = intake.received
    try:
        for number, part in enumerate(parts, 1):
            class_uid, instance_uid = part.sop_class_uid, part.sop_instance_uid
            if part.refusal is not None:
                failed.append(_item(class_uid, instance_uid, t00081197={"vr": "US", "Value": [part.refusal]}))
                continue
            try:
                if part.failure is not None:  # refused while it was staged: never reached the ingest path
                    ctx(request).metrics.ingest_failed(origin.kind, part.failure)
                    raise part.failure
                outcome = await intake.ingest(part, origin)
            except OutOfResources as exc:  # the parts after it would fail the same way
                raise insufficient_storage(exc, len(stored), len(parts)) from None
            except ArchiveError as exc:
                reason = failure_reason(exc, class_uid)
                log.warning("STOW-RS part %d refused with FailureReason 0x%04X: %s", number, reason, exc)
                failed.append(_item(class_uid, instance_uid, t00081197={"vr": "US", "Value": [reason]}))
                continue
            url = (
                f"{root}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
                f"/instances/{outcome.sop_instance_uid}"
            )
            stored.append(_item(class_uid, outcome.sop_instance_uid, t00081190={"vr": "UR", "Value": [url]}))
            studies.add(outcome.study_instance_uid)
    finally:
        await intake.discard()  # what was not ingested (after a 507, or a cancelled request)
    # PS3.18 Table I.1-1: Retrieve URL (0008,1190) is Type 2, the study's URL; empty when the instances
    # stored belong to no single study (none stored, or several studies through /studies)
    study = target or (next(iter(studies)) if len(studies) == 1 else "")
    response: dict[str, Any] = {
        "00081190": {"vr": "UR", "Value": [f"{root}/studies/{study}"]} if study else {"vr": "UR"}
    }
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    headers: dict[str, str] = {}
    if failed:  # PS3.18 10.5.3.2: a Warning with a DICOM status and a reason is recommended
        reasons = sorted({item["00081197"]["Value"][0] for item in failed})
        text = ", ".join(f"{reason:04X}" for reason in reasons)
        headers["Warning"] = warning(
            request, f"{len(failed)} of {len(parts)} instances were not stored (Failure Reason {text})"
        )
    headers["Vary"] = "Accept"
    if metadata_media_type(parse_accept(accepted(request))) == DICOM_XML:
        # PS3.18 10.5.3: the Store Instances Response in the media type asked for, JSON (the Default) or
        # XML: one PS3.19 Native DICOM Model document (one dataset, so no multipart), made from the same
        # JSON object (dicom/xml_model.py). It was JSON whatever the Accept header said.
        return Response(native_xml(response), status_code=status, media_type=DICOM_XML, headers=headers)
    return JSONResponse(response, status_code=status, media_type=DICOM_JSON, headers=headers)


def routes() -> list[BaseRoute]:
    """Mounted under /dicom-web (named "dicomweb"): PS3.18 §10.4 (WADO-RS), §10.5 (STOW-RS), §10.6 (QIDO-RS)."""
    s, r, i = "/studies/{study}", "/series/{series}", "/instances/{instance}"
    rendered_summary = "rendered JPEG/PNG (window=center,width)"
    return [
        Endpoint("/", capabilities, "OPTIONS", "read", "Retrieve Capabilities: the WADL description (PS3.18 8.9)"),
        Endpoint("/studies", _qido(Level.STUDY), "GET", "read", "QIDO-RS: search for studies"),
        Endpoint("/studies", store, "POST", "write", "STOW-RS: store instances"),
        Endpoint("/series", _qido(Level.SERIES), "GET", "read", "QIDO-RS: search for series"),
        Endpoint("/instances", _qido(Level.IMAGE), "GET", "read", "QIDO-RS: search for instances"),
        Endpoint(s, retrieve, "GET", "read", "WADO-RS: retrieve a study (multipart/related)"),
        Endpoint(s, store, "POST", "write", "STOW-RS: store instances of this study"),
        Endpoint(s + "/series", _qido(Level.SERIES), "GET", "read", "QIDO-RS: search for the series of a study"),
        Endpoint(s + "/instances", _qido(Level.IMAGE), "GET", "read", "QIDO-RS: search for the instances of a study"),
        Endpoint(
            s + r + "/instances", _qido(Level.IMAGE), "GET", "read", "QIDO-RS: search for the instances of a series"
        ),
        Endpoint(s + "/metadata", metadata, "GET", "read", "WADO-RS: study metadata (PS3.18 JSON or XML)"),
        Endpoint(s + "/bulkdata", resource_bulkdata, "GET", "read", "WADO-RS: all bulk data of the study"),
        Endpoint(s + "/thumbnail", thumbnail, "GET", "read", "WADO-RS: a thumbnail of the study", name="thumbnail"),
        Endpoint(s + "/rendered", rendered, "GET", "read", "WADO-RS: the study " + rendered_summary),
        Endpoint(s + r, retrieve, "GET", "read", "WADO-RS: retrieve a series"),
        Endpoint(s + r + "/metadata", metadata, "GET", "read", "WADO-RS: series metadata (PS3.18 JSON or XML)"),
        Endpoint(s + r + "/bulkdata", resource_bulkdata, "GET", "read", "WADO-RS: all bulk data of the series"),
        Endpoint(
            s + r + "/thumbnail", thumbnail, "GET", "read", "WADO-RS: a thumbnail of the series", name="thumbnail"
        ),
        Endpoint(s + r + "/rendered", rendered, "GET", "read", "WADO-RS: the series " + rendered_summary),
        Endpoint(s + r + i, retrieve, "GET", "read", "WADO-RS: retrieve an instance"),
        Endpoint(s + r + i + "/metadata", metadata, "GET", "read", "WADO-RS: instance metadata (PS3.18 JSON or XML)"),
        Endpoint(s + r + i + "/bulkdata", resource_bulkdata, "GET", "read", "WADO-RS: all bulk data of the instance"),
        Endpoint(s + r + i + "/rendered", rendered, "GET", "read", "WADO-RS: the instance " + rendered_summary),
        Endpoint(
            s + r + i + "/thumbnail", thumbnail, "GET", "read", "WADO-RS: a thumbnail of the instance", name="thumbnail"
        ),
        Endpoint(
            s + r + i + "/frames/{frames}",
            frames,
            "GET",
            "read",
            "WADO-RS: frames (uncompressed, or as stored by Accept)",
        ),
        Endpoint(
            s + r + i + "/frames/{frames}/rendered", rendered, "GET", "read", "WADO-RS: frames " + rendered_summary
        ),
        Endpoint(
            s + r + i + "/frames/{frames}/thumbnail",
            thumbnail,
            "GET",
            "read",
            "WADO-RS: a thumbnail of a frame",
            name="thumbnail",
        ),
        Endpoint(
            s + r + i + "/bulkdata/{tag:path}", bulkdata, "GET", "read", "WADO-RS: the bulk data of one attribute"
        ),
    ]


__all__ = ["FAILURE_REASONS", "failure_reason", "routes"]
