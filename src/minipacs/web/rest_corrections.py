"""REST corrections (core/corrections.py, docs/CORRECTIONS.md): modify, merge, move a series, the log.

- ``POST /api/{patients|studies|series}/{id}/modify`` ``{"changes": {"PatientName": "DOE^JANE"}}``
- ``POST /api/patients/merge`` ``{"source": "<Patient ID>", "target": "<Patient ID>"}``
- ``POST /api/series/{uid}/move`` ``{"study": "<Study Instance UID>"}`` (``{}``: to a new study of the patient)
- ``GET /api/corrections?target=&limit=``: who corrected what, with the old values.

200 with what was done, or 202 with ``{"job": id}`` when it touches more than
``correction_inline_max_instances`` instances (it runs on the job queue: GET /api/jobs/{id}).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.corrections import JOB_KIND, CorrectionResult, Corrections, list_corrections
from minipacs.core.paths import validate_uid
from minipacs.core.reforward import correction_resender
from minipacs.core.rejection import REJECTION_CODES
from minipacs.core.rules import RuleBook
from minipacs.dicom.levels import LEVEL_SPELLINGS
from minipacs.index import rejection_repo
from minipacs.web.audit import actor_of
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_object
from minipacs.web.rest import LEVELS, path_id, requester
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits
from minipacs.web.types import ctx

audit = logging.getLogger("minipacs.web.audit")

#: URL resource name -> the correction level (the changes journal's noun); instances are never corrected alone.
CORRECTED: Final = {s.resource: s.noun for s in LEVEL_SPELLINGS.values() if s.noun != "instance"}


def corrections_of(request: Request) -> Corrections:
    """The corrections of this app's archive; large ones on the job queue when it runs the kind."""
    context = ctx(request)
    jobs = context.jobs if context.jobs is not None and JOB_KIND in context.jobs.kinds else None
    settings = context.settings
    book = RuleBook(context.archive, settings.rules, context.nodes)
    return Corrections(
        context.archive,
        jobs=jobs,
        inline_max=settings.correction_inline_max_instances,
        max_passes=settings.correction_max_passes,
        resend=correction_resender(context.archive, context.jobs, book),
    )


#: The keys each correction body takes (anything else is refused: a misspelt key must not be ignored).
BODY_KEYS: Final = {
    "modify": ("changes",),
    "merge": ("source", "target"),
    "move": ("study",),
}


async def _body(request: Request, operation: str) -> dict[str, Any]:
    keys = BODY_KEYS[operation]
    return await read_object(request, ", ".join(keys), allowed=keys)


def _answer(result: CorrectionResult, who: str) -> Response:
    audit.warning(
        "%s %s %s by %s: %s",
        result.operation,
        result.level,
        result.target,
        who,
        f"queued as job {result.job}" if result.job is not None else f"{result.instances} file(s) rewritten",
    )
    if result.job is not None:
        return JSONResponse({"job": result.job, "operation": result.operation, "target": result.target}, 202)
    return JSONResponse(result.to_json())


def _audit(request: Request) -> list[str]:
    """(actor kind, actor, address) of the caller, for the audit trail (web/audit.py)."""
    kind, actor, address = actor_of(request)
    return [kind.value, actor, address]


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise HttpError(400, "invalid_body", f"{name!r} must be a non-empty string")
    return value


def _patient_id(body: dict[str, Any], name: str) -> str:
    """A Patient ID of the body, held to the rule of one in a URL (web/rest.py ``path_id``): a wildcard or a
    backslash names no single patient, and a merge must name exactly one."""
    value = _text(body, name)
    if len(value) > 64 or any(c in value for c in "\\*?") or not value.isprintable():
        raise HttpError(
            400, "invalid_identifier", f"{name!r} must be a Patient ID: 1 to 64 printable characters without \\, * or ?"
        )
    return value


async def modify(request: Request) -> Response:
    resource = request.path_params["level"]
    if resource not in CORRECTED:
        raise HttpError(404, "not_found", f"only {', '.join(CORRECTED)} can be modified, not {resource[:30]!r}")
    name = path_id(request, LEVELS[resource][1])
    body = await _body(request, "modify")
    changes = body.get("changes")
    if not isinstance(changes, dict):
        raise HttpError(400, "invalid_body", 'give the new values as {"changes": {"Keyword": "value", ...}}')
    who = requester(request)
    params = {
        "operation": "modify",
        "level": CORRECTED[resource],
        "target": name,
        "changes": changes,
        "actor": who,
        "audit": _audit(request),
    }
    return _answer(await corrections_of(request).submit(params), who)


async def merge(request: Request) -> Response:
    body = await _body(request, "merge")
    who = requester(request)
    params = {
        "operation": "merge",
        "source": _patient_id(body, "source"),
        "target": _patient_id(body, "target"),
        "actor": who,
        "audit": _audit(request),
    }
    return _answer(await corrections_of(request).submit(params), who)


async def move(request: Request) -> Response:
    series = path_id(request, "SeriesInstanceUID")
    body = await _body(request, "move")
    who = requester(request)
    # none: a new study (a split); else a UID, not a pattern (PS3.5 9.1)
    study = None if body.get("study") is None else validate_uid("StudyInstanceUID", _text(body, "study"))
    params = {"operation": "move", "series": series, "study": study, "actor": who, "audit": _audit(request)}
    return _answer(await corrections_of(request).submit(params), who)


async def log_of_corrections(request: Request) -> Response:
    raw = request.query_params.get("limit", "100")
    if not ascii_digits(raw):
        raise HttpError(400, "invalid_limit", "limit must be a whole number")
    target = request.query_params.get("target") or None
    if target is not None and (len(target) > 64 or not target.isprintable()):
        raise HttpError(400, "invalid_parameter", "target must be a Patient ID or UID: 1 to 64 printable characters")
    return JSONResponse(await list_corrections(ctx(request).archive, target, int(raw)))


#: Most rows one GET /api/rejections answers.
MAX_REJECTIONS_LISTED: Final = 1000


async def rejected(request: Request) -> Response:
    """The instances rejection notes rejected (core/rejection.py), newest first: why a peer's C-STORE of
    one is answered 0xA771, which note did it and who sent it."""
    params = request.query_params
    limit, offset = params.get("limit", "100"), params.get("offset", "0")
    if not (ascii_digits(limit) and ascii_digits(offset)) or not 1 <= int(limit) <= MAX_REJECTIONS_LISTED:
        raise HttpError(400, "invalid_limit", f"limit must be 1 to {MAX_REJECTIONS_LISTED} and offset a whole number")
    study = params.get("study", "")
    if study:
        study = validate_uid("study", study)
    rows, total = await ctx(request).archive.read(
        lambda conn: rejection_repo.listed(conn, study=study, limit=int(limit), offset=int(offset))
    )
    for row in rows:
        row["rejected_at"] = row["rejected_at"].isoformat()
        row["meaning"] = REJECTION_CODES.get(row["code"], "")
    return JSONResponse({"total": total, "rejected": rows})


def routes() -> list[BaseRoute]:
    """Mounted under /api BEFORE web/rest.py's routes (their ``/{level}/{id:path}`` would take these paths)."""
    return [
        Endpoint("/corrections", log_of_corrections, "GET", "read", "Corrections: who changed what, old values"),
        Endpoint(
            "/rejections",
            rejected,
            "GET",
            "read",
            "Instances rejection notes (IHE IOCM) rejected; ?study=&limit=&offset=",
        ),
        Endpoint("/patients/merge", merge, "POST", "write", "Merge patient source into target (IHE PIR)"),
        Endpoint(
            "/series/{id:path}/move",
            move,
            "POST",
            "write",
            "Move a series to another study (its files rewritten)",
            name="move",
        ),
        Endpoint(
            "/{level}/{id:path}/modify",
            modify,
            "POST",
            "write",
            "Correct a patient's, study's or series' attributes (files rewritten; old values logged)",
            name="modify",
        ),
    ]


__all__ = ["CORRECTED", "corrections_of", "routes"]
