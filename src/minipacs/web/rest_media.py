"""DICOM media over REST: ``GET /api/{patients|studies|series}/{id}/media``, a ZIP holding a PS3.10
File-set (DICOMDIR, README, 8-character File IDs; core/media.py), streamed."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute

from minipacs.core.audit import Action
from minipacs.core.errors import NotFound
from minipacs.core.media import build_media
from minipacs.core.retrieve import select_instances
from minipacs.web import audit
from minipacs.web.errors import HttpError
from minipacs.web.headers import attachment
from minipacs.web.rest import LEVELS, path_id, path_level
from minipacs.web.routing import Endpoint
from minipacs.web.transfer import zip_entries
from minipacs.web.types import ctx


async def media(request: Request) -> Response:
    """The resource as DICOM media in a ZIP: unzip it onto a CD or a USB stick as it is."""
    _, key, retrieve_level, _ = path_level(request)
    if retrieve_level == "IMAGE":
        raise HttpError(404, "not_found", "media are made of a patient, a study or a series; not of one instance")
    value = path_id(request, key)
    found = await select_instances(ctx(request).archive, retrieve_level, {key: value}, "PATIENT")
    if not any(not i.problem for i in found):
        raise NotFound(f"{request.path_params['level']} {value!r} has no stored instance")
    what = f"{request.path_params['level']} {value}"
    built = await asyncio.to_thread(build_media, found, what)
    for study_uid in sorted({i.study_instance_uid for i in found if not i.problem}):
        audit.record(
            request,
            Action.EXPORTED,
            patient_id=value if key == "PatientID" else "",
            study_uid=study_uid,
            detail=f"DICOM media of {what}: {len(built.files)} instance(s)",
        )
    return StreamingResponse(
        zip_entries(built.entries()),
        media_type="application/zip",
        headers={"Content-Disposition": attachment(value, "-dicomdir.zip", "media")},
    )


def routes() -> list[BaseRoute]:
    """Mounted under /api before rest.routes() (whose ``/{level}/{id:path}`` would take these paths)."""
    return [
        Endpoint(
            "/{level}/{id:path}/media",
            media,
            "GET",
            "read",
            "A patient, study or series as DICOM media: a ZIP with a DICOMDIR (PS3.10, PS3.11 STD-GEN-CD/USB)",
            name="media",
        ),
    ]


__all__ = ["LEVELS", "routes"]
