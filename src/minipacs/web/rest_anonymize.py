"""REST for de-identification (core/anonymize.py, docs/ANONYMIZATION.md).

- ``POST /api/{patients|studies|series}/{id}/anonymize`` with a JSON body (all optional):
  ``{"options": ["retain-uids", ...], "keep_original": true, "output": "archive" | "zip"}``.
  Into the archive: 200 and the new resources' UIDs (``{"study": "2.25...", "series": [...],
  "patient": "ANON...", ...}``), or, above ``anonymize_job_threshold`` instances, 202 and the job
  (``{"job": 12, "href": "/api/jobs/12"}``). Into a ZIP: the ZIP itself (always at once).
- ``GET /api/anonymization/mappings?kind=&value=&limit=&offset=``: original <-> pseudonym, admins only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from minipacs.core.anonymize import ANONYMIZE, Anonymizer, AnonymizeRequest
from minipacs.core.paths import validate_uid
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.index.anonymization_repo import list_mappings
from minipacs.web.audit import actor_of
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_json
from minipacs.web.rest import requester
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits
from minipacs.web.types import ctx

#: URL spelling -> level noun and the key its id is.
RESOURCES: Final[dict[str, tuple[str, str]]] = {
    s.resource: (s.noun, s.unique_key) for s in LEVEL_SPELLINGS.values() if s.level is not Level.IMAGE
}
OUTPUTS: Final = ("archive", "zip")
MAX_BODY: Final = 64 * 1024
MAX_MAPPINGS: Final = 1000
audit = logging.getLogger("minipacs.web.audit")


def anonymizer_of(request: Request) -> Anonymizer:
    found = ctx(request).anonymizer
    if found is None:
        raise HttpError(503, "no_anonymizer", "de-identification is not available in this process")
    return found


def _target(request: Request) -> tuple[str, str]:
    resource = request.path_params["level"]
    if resource not in RESOURCES:
        raise HttpError(404, "not_found", f"cannot anonymize {resource[:30]!r}: use patients, studies or series")
    level, key = RESOURCES[resource]
    value: str = request.path_params["id"]
    if key == "PatientID":
        if not value.strip() or len(value) > 64 or any(c in value for c in "\\*?") or not value.isprintable():
            raise HttpError(
                400, "invalid_identifier", "a Patient ID is 1 to 64 printable characters without \\, * or ?"
            )
        return level, value
    return level, validate_uid(key, value)


async def _body(request: Request) -> dict[str, Any]:
    body = await read_json(request, limit=MAX_BODY, empty={})  # bounded before it is read, depth too
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "the body must be a JSON object")
    unknown = sorted(set(body) - {"options", "keep_original", "output"})
    if unknown:
        raise HttpError(400, "invalid_parameter", f"unknown field(s) {unknown}: use options, keep_original, output")
    return body


def _actor(request: Request) -> list[str]:
    """(actor kind, actor, address) of the caller, for the audit trail (web/audit.py)."""
    kind, actor, address = actor_of(request)
    return [kind.value, actor, address]


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


async def anonymize(request: Request) -> Response:
    level, value = _target(request)
    body = await _body(request)
    options = body.get("options", [])
    keep = body.get("keep_original", True)
    output = body.get("output", "archive")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise HttpError(400, "invalid_parameter", 'options must be a list of option names, e.g. ["retain-uids"]')
    if not isinstance(keep, bool):
        raise HttpError(400, "invalid_parameter", "keep_original must be true or false")
    if output not in OUTPUTS:
        raise HttpError(400, "invalid_parameter", f"output must be one of {', '.join(OUTPUTS)}")
    if output == "zip" and not keep:
        raise HttpError(400, "invalid_parameter", "keep_original false goes with storing, not with a ZIP")
    anonymizer = anonymizer_of(request)
    job = AnonymizeRequest(level, value, frozenset(options), keep_original=keep)
    found = await anonymizer.select(job, into_zip=output == "zip")  # NotFound: 404, bad options: 400
    who = requester(request)
    if output == "zip":
        path = anonymizer.archive.staging_dir / f"anonymized-{uuid.uuid4().hex}.zip"
        try:
            result = await anonymizer.run(job, zip_path=path, found=found, who=_actor(request))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        audit.warning("anonymized %s %s into a ZIP by %s: %d instance(s)", level, value, who, result.instances)
        return StreamingResponse(
            _file_chunks(path),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="anonymized.zip"'},
            background=BackgroundTask(path.unlink, missing_ok=True),
        )
    queue = ctx(request).jobs
    threshold = ctx(request).settings.anonymize_job_threshold
    if len(found) > threshold and queue is not None:
        submitted = await queue.submit(
            ANONYMIZE,
            f"anonymize {level} {value}",
            job.to_params(),
            total=len(found),
            details={"by": who, "actor": _actor(request)},
        )
        audit.warning("anonymization of %s %s queued by %s: job %d", level, value, who, submitted.id)
        return JSONResponse(
            {"job": submitted.id, "href": f"/api/jobs/{submitted.id}", "instances": len(found)}, status_code=202
        )
    result = await anonymizer.run(job, found=found, who=_actor(request))
    audit.warning(
        "anonymized %s %s by %s: %d instance(s)%s",
        level,
        value,
        who,
        result.instances,
        ", original deleted" if result.original_deleted else "",
    )
    return JSONResponse(result.to_json(level))


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name, "")
    if not raw:
        return default
    if not ascii_digits(raw) or int(raw) > high:
        raise HttpError(400, "invalid_parameter", f"{name} must be a whole number from 0 to {high}")
    return int(raw)


async def mappings(request: Request) -> Response:
    kind = request.query_params.get("kind", "")
    value = request.query_params.get("value", "")
    limit = max(1, _int(request, "limit", 100, MAX_MAPPINGS))
    offset = _int(request, "offset", 0, 10**12)
    rows, total = await ctx(request).archive.read(
        lambda conn: list_mappings(conn, kind=kind, value=value, limit=limit, offset=offset)
    )
    return JSONResponse(
        {
            "mappings": [
                {
                    "kind": r["kind"],
                    "original": r["original"],
                    "pseudonym": r["pseudonym"],
                    "created_at": r["created_at"].isoformat(),
                }
                for r in rows
            ],
            "total": total,
        }
    )


def routes() -> list[BaseRoute]:
    """Mounted under /api before rest.routes() (whose /{level}/{id} would take these paths)."""
    return [
        Endpoint(
            "/anonymization/mappings",
            mappings,
            "GET",
            "admin",
            "De-identification mapping: original <-> pseudonym (?kind=patient_id|patient_name|uid|date_shift_days, "
            "?value= exact original or pseudonym, limit, offset)",
        ),
        Endpoint(
            "/{level}/{id:path}/anonymize",
            anonymize,
            "POST",
            "write",
            "De-identify a patient, study or series (PS3.15 E.1): body {options, keep_original, output: "
            "archive|zip}; 200 the new UIDs, 202 a job when large, or the ZIP",
            name="anonymize",
        ),
    ]


__all__ = ["RESOURCES", "anonymizer_of", "routes"]
