"""REST for storage policy, compression part (core/compression.py; docs/COMPRESSION.md).

- ``GET /api/storage``: the archive's stored bytes, the bytes as received, the disk saved by
  compression, the counts of compressed and skipped instances, and the configured policies.
- ``GET /api/storage/studies/{uid}``: the same for one study, with why instances were skipped.
- ``POST /api/storage/compress``: ``{"study_uids": [...], "syntax": "jpeg-ls-lossless" | "policy":
  "<name>", "dry_run": false}`` queues a compress job (202, Location: the job).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.compression import SYNTAXES, Compressor
from minipacs.core.compression_jobs import COMPRESS, describe, job_params
from minipacs.core.errors import NotFound
from minipacs.core.paths import validate_uid
from minipacs.index import compression_repo
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_object
from minipacs.web.rest_jobs import queue_of
from minipacs.web.routing import Endpoint
from minipacs.web.types import ctx

#: Most studies one compress request names.
MAX_STUDIES = 500


def _ratio(figures: dict[str, int]) -> float:
    return round(figures["original_bytes"] / figures["stored_bytes"], 3) if figures["stored_bytes"] else 1.0


async def storage(request: Request) -> Response:
    context = ctx(request)
    figures: dict[str, Any] = await Compressor(context.archive).savings()
    figures["ratio"] = _ratio(figures)
    figures["policies"] = [p.to_json() for p in context.settings.compression]
    return JSONResponse(figures)


async def study_storage(request: Request) -> Response:
    uid = validate_uid("StudyInstanceUID", request.path_params["uid"])
    archive = ctx(request).archive
    figures: dict[str, Any] = await Compressor(archive).savings(uid)
    if not figures["instances"]:
        raise NotFound(f"study {uid} is not in the archive")
    figures["ratio"] = _ratio(figures)
    reasons = await archive.read(lambda conn: compression_repo.skip_reasons(conn, uid))
    figures["skipped_instances"] = [{"uid": u, "reason": r} for u, r in reasons]
    return JSONResponse({"study_instance_uid": uid, **figures})


async def compress(request: Request) -> Response:
    body = await read_object(request, "study_uids, syntax or policy, dry_run")
    studies = body.get("study_uids")
    if not isinstance(studies, list) or not 1 <= len(studies) <= MAX_STUDIES:
        raise HttpError(400, "invalid_parameter", f"study_uids must be a list of 1 to {MAX_STUDIES} UIDs")
    uids = [validate_uid("StudyInstanceUID", str(u)) for u in studies]
    settings = ctx(request).settings
    policy = None
    if body.get("policy"):
        policy = next((p for p in settings.compression if p.name == body["policy"]), None)
        if policy is None:
            raise HttpError(400, "invalid_parameter", f"no [[compression]] policy named {str(body['policy'])[:64]!r}")
    syntax = str(body.get("syntax") or "jpeg-ls-lossless")
    if syntax not in SYNTAXES:
        raise HttpError(400, "invalid_parameter", f"syntax must be one of {', '.join(SYNTAXES)}")
    params = job_params(syntax, policy=policy, study_uids=uids, dry_run=bool(body.get("dry_run")))
    job = await queue_of(request).submit(COMPRESS, describe(params), params)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level}/{id} would take these paths)."""
    return [
        Endpoint(
            "/storage",
            storage,
            "GET",
            "read",
            "Disk use and disk saved by compression: stored and original bytes, ratio, counts, policies",
        ),
        Endpoint(
            "/storage/studies/{uid}",
            study_storage,
            "GET",
            "read",
            "Disk use and disk saved by compression for one study, and why instances were skipped",
            name="storage_study",
        ),
        Endpoint(
            "/storage/compress",
            compress,
            "POST",
            "write",
            "Queue a compress job for studies: study_uids, syntax or policy, dry_run (202, Location: the job)",
        ),
    ]


__all__ = ["routes"]
