"""WADO-URI (PS3.18 §9, the URI Service): one instance by its three UIDs, as a DICOM file
(``contentType=application/dicom``, ``transferSyntax``) or rendered (JPEG, PNG, GIF; rows, columns,
region, windowing, imageQuality), with the parameter checks §9.4 and §9.5 require."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.blobs.base import BlobError
from minipacs.core.audit import Action
from minipacs.core.paths import validate_uid
from minipacs.core.retrieve import select_instances
from minipacs.core.transcode import TranscodeError, can_transcode, transcode_part10
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from minipacs.web import audit
from minipacs.web.accept import DICOM, default_syntax, parse_accept
from minipacs.web.bulkdata import on_file
from minipacs.web.errors import HttpError
from minipacs.web.render import (
    DEFAULT_FORMAT,
    FORMATS,
    RenderOptions,
    Viewport,
    parse_quality,
    parse_side,
    parse_window,
    render,
)
from minipacs.web.search import ascii_digits
from minipacs.web.transfer import file_response
from minipacs.web.types import ctx

log = logging.getLogger(__name__)


async def wado_uri(request: Request) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise HttpError(400, "invalid_request_type", "WADO-URI needs requestType=WADO")
    keys = {
        "StudyInstanceUID": params.get("studyUID", ""),
        "SeriesInstanceUID": params.get("seriesUID", ""),
        "SOPInstanceUID": params.get("objectUID", ""),
    }
    for keyword, value in keys.items():
        validate_uid(keyword, value)
    content_type = _wado_uri_content_type(params.get("contentType", ""))
    _wado_uri_checks(params, content_type)
    found = [i for i in await select_instances(ctx(request).archive, "IMAGE", keys) if not i.problem]
    if found:
        audit.record(request, Action.VIEWED, study_uid=found[0].study_instance_uid, detail="WADO-URI")
    if not found:
        raise HttpError(404, "not_found", f"SOP Instance {keys['SOPInstanceUID']} is not in the archive")
    if content_type == "application/dicom":
        stored = found[0].transfer_syntax_uid
        wanted = params.get("transferSyntax", "") or default_syntax(stored)  # PS3.18 8.2.11 / 8.7.3.4
        if wanted and wanted != stored:  # WADO-URI transferSyntax parameter: transcode, never compress
            if wanted != EXPLICIT_VR_LITTLE_ENDIAN or not can_transcode(stored, wanted):
                raise HttpError(
                    406,
                    "not_acceptable",
                    f"the instance is stored in {stored} and cannot be converted "
                    f"to {wanted[:64]}; leave transferSyntax out, or ask for 1.2.840.10008.1.2.1",
                )
            try:
                data = await ctx(request).renders.run(
                    on_file,
                    found[0],
                    transcode_part10,
                    wanted,
                    ctx(request).archive.settings.dataset_limits,
                    what="transcoding",
                )
            except TranscodeError as exc:
                if "transferSyntax" in params:
                    raise HttpError(
                        406, "cannot_transcode", f"{exc}; ask for transferSyntax={stored} to get it as stored"
                    ) from None
                # the Default could not be made (a damaged compressed stream): as stored beats nothing
                log.warning("WADO-URI: %s cannot be decoded (%s); sent as stored", keys["SOPInstanceUID"], exc)
            else:
                return Response(data, media_type="application/dicom")
        try:
            return await asyncio.to_thread(file_response, found[0], "application/dicom")
        except (OSError, BlobError):
            raise HttpError(
                404,
                "not_found",
                f"the file of SOP Instance {keys['SOPInstanceUID']} is missing from "
                "storage (it is indexed); see the server log",
            ) from None
    options = _wado_uri_options(params, content_type)
    frame = params.get("frameNumber", "1")
    if not ascii_digits(frame) or int(frame) < 1:
        raise HttpError(400, "invalid_frames", "frameNumber must be a whole number from 1")
    try:
        data = await ctx(request).renders.run(
            on_file, found[0], render, int(frame), options, ctx(request).archive.settings.dataset_limits
        )
    except HttpError as exc:  # PS3.18 §9.5.2.1: a frameNumber past the last frame is a 400 here
        if exc.code != "no_such_frame":
            raise
        raise HttpError(400, "invalid_frames", exc.message) from None
    return Response(data, media_type=content_type)


_UID_SYNTAX: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _wado_uri_checks(params: Any, content_type: str) -> None:
    """PS3.18 §9.4.2.3: anonymize is "yes" or a 400 (and "yes" a refusal: we do not de-identify on the
    fly); §9.4.2.4: transferSyntax is a valid UID (an unsupported one is a 406 later); §9.5.1.2.6: no
    windowing parameters with contentType=application/dicom."""
    anonymize = params.getlist("anonymize")
    if anonymize and anonymize != ["yes"]:
        raise HttpError(400, "invalid_anonymize", 'anonymize takes the one value "yes"')
    if anonymize:
        raise HttpError(
            400,
            "anonymize_not_supported",
            "WADO-URI anonymize=yes is not supported: nothing is sent; de-identify the study with "
            "POST /api/studies/{uid}/anonymize and retrieve the copy",
        )
    syntaxes = params.getlist("transferSyntax")
    if syntaxes and (len(syntaxes) != 1 or len(syntaxes[0]) > 64 or not _UID_SYNTAX.match(syntaxes[0])):
        raise HttpError(400, "invalid_transfer_syntax", "transferSyntax must be one Transfer Syntax UID")
    if content_type == DICOM and ("windowCenter" in params or "windowWidth" in params):
        raise HttpError(
            400,
            "invalid_window",
            "windowCenter and windowWidth render an image: not with contentType=application/dicom",
        )


def _wado_uri_content_type(raw: str) -> str:
    """``contentType`` (PS3.18 §9, the Accept Query Parameter of §8.3.3.1 under another name): the preferred
    of application/dicom and the rendered formats, by q-value; absent, a wildcard or none of those:
    image/jpeg, the Default (§8.3.3.1: the default media type when none acceptable is supported)."""
    for r in parse_accept(raw):
        if r.media_type == DICOM or r.media_type in FORMATS:
            return r.media_type
        if r.media_type in ("image/*", "*/*", ""):
            break
    return DEFAULT_FORMAT


def _wado_uri_options(params: Any, content_type: str) -> RenderOptions:
    """WADO-URI rendering parameters (PS3.18 §9): rows and columns (the most of each, aspect kept),
    region (x1,y1,x2,y2 as fractions of the image), windowCenter with windowWidth, imageQuality."""
    center, width = params.get("windowCenter"), params.get("windowWidth")
    if (center is None) != (width is None):
        raise HttpError(400, "invalid_window", "windowCenter and windowWidth go together: give both or neither")
    window = parse_window(f"{center},{width}") if center is not None else None
    sides = {name: parse_side(params[name], name) for name in ("rows", "columns") if params.get(name)}
    region = None
    if params.get("region") is not None:
        try:
            x1, y1, x2, y2 = (float(v) for v in params["region"].split(","))
        except ValueError:
            raise HttpError(400, "invalid_region", "region must be x1,y1,x2,y2 (fractions from 0.0 to 1.0)") from None
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            raise HttpError(
                400, "invalid_region", "region must be x1,y1,x2,y2 with 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1"
            )
        region = (x1, y1, x2, y2)
    viewport = None
    if sides or region:
        viewport = Viewport(sides.get("columns") or None, sides.get("rows") or None, region=region)
    return RenderOptions(
        mime=content_type, window=window, viewport=viewport, quality=parse_quality(params.get("imageQuality"))
    )


__all__ = ["wado_uri"]
