"""REST for the doctor (issue 15): the findings of the association log, and the active checks.

GET  /api/diagnostics                 passive: the findings (core/diagnostics.py) and the AE registry's
                                      warnings; no network traffic
POST /api/diagnostics/check           active: our own listeners and every registered node
                                      (doctor_parallel at once), steps 1-4 each
POST /api/nodes/{id}/doctor           active: one node, steps 1-4; {"move_test": true} or
                                      {"store_test": true} adds step 5 (moves or stores real data)

All admin: the checks open associations in our name and may move data, and the findings name
every address that talks to us. The checks go through services/doctor.py and the ONE outbound
path (``AppContext.outbound``); step 5's images are watched for in the association log of this
running archive.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.diagnostics import analyse
from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import calling_host_warning, registry_warnings
from minipacs.services.doctor import Doctor, DoctorSettings, LogWatch, check_listener, check_nodes
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_json
from minipacs.web.rest_nodes import _outbound, _registry, _resolve, node_json
from minipacs.web.routing import Endpoint
from minipacs.web.types import AppContext, ctx

#: Associations step 5 looks through for the images it asked for (the newest first).
ARRIVALS_WINDOW = 200


def doctor(context: AppContext) -> Doctor:
    """The doctor of this running archive: our AE title and port, step 5 watching our association log."""
    settings = context.settings

    async def latest() -> list[AssociationRecord]:
        return await context.archive.list_associations(ARRIVALS_WINDOW)

    return Doctor(
        _outbound(context),
        DoctorSettings(
            settings.ae_title,
            settings.port,
            connect_timeout=settings.connect_timeout,
            move_wait=settings.doctor_move_wait,
        ),
        LogWatch(latest),
    )


async def site_findings(context: AppContext) -> dict[str, Any]:
    """The passive part: findings and registry warnings (also the Diagnostics page's)."""
    settings = context.settings
    nodes = await _registry(context).list()
    records = await context.archive.list_associations(settings.diagnostics_window)
    exposed = calling_host_warning(nodes, settings.check_calling_host)
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "window": settings.diagnostics_window,
        "associations": len(records),
        "ae_title": settings.ae_title,
        "findings": [f.json() for f in analyse(records, nodes, settings.ae_title)],
        "registry": registry_warnings(nodes) + ([exposed] if exposed else []),
    }


async def diagnostics(request: Request) -> Response:
    """GET /api/diagnostics: the findings of the association log and the registry's warnings."""
    return JSONResponse(await site_findings(ctx(request)))


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise HttpError(400, "invalid_flag", f"{name} must be true or false")
    return value


async def node_doctor(request: Request) -> Response:
    """POST /api/nodes/{id}/doctor {move_test, store_test}: the steps for one node."""
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    # bounded like every control body (MAX_JSON_BYTES, and a chunk announced past it: web/limits.py);
    # request.body() read any chunked body whole into memory first. No body: the defaults
    body = await read_json(request, empty={})
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "the body must be a JSON object: move_test, store_test")
    report = await doctor(context).check(node, move_test=_flag(body, "move_test"), store_test=_flag(body, "store_test"))
    return JSONResponse({**report.json(), "node": node_json(node)})


async def site_check(request: Request) -> Response:
    """POST /api/diagnostics/check: our listeners and every registered node, steps 1-4."""
    context = ctx(request)
    settings = context.settings
    nodes = await _registry(context).list()
    checks = doctor(context)
    listeners = [await check_listener(checks, "DICOM listener", settings.host, settings.port, dicom=True)]
    reports = await check_nodes(checks, nodes, settings.doctor_parallel)
    return JSONResponse(
        {
            "listeners": [r.json() for r in listeners],
            "nodes": [{**r.json(), "node": node_json(n)} for r, n in zip(reports, nodes, strict=True)],
        }
    )


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes()."""
    return [
        Endpoint(
            "/diagnostics",
            diagnostics,
            "GET",
            "admin",
            "Findings of the association log (duplicate AE titles, failed C-MOVE destinations, ...) with fixes",
        ),
        Endpoint(
            "/diagnostics/check",
            site_check,
            "POST",
            "admin",
            "Check our DICOM listener and every registered node (steps 1-4 of the doctor)",
        ),
        Endpoint(
            "/nodes/{id}/doctor",
            node_doctor,
            "POST",
            "admin",
            "Check one node step by step: {move_test, store_test} -> each step's outcome, time, verdict, cause, fix",
        ),
    ]


__all__ = ["doctor", "routes", "site_findings"]
