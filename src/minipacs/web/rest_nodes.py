"""REST for talking to other DICOM nodes: echo, send (C-STORE), query (C-FIND), retrieve (C-MOVE/C-GET), jobs.

A node is named in a URL or body by its registry id (``GET /api/nodes`` lists
them), or by its AE title when exactly one node has that title. Sends and
retrieves are jobs of the persistent queue (core/jobs.py, kinds in services/job_kinds.py) watched at
``/api/jobs/{id}`` (web/rest_jobs.py);
echo and query answer at once. Every call goes through the ONE outbound path
(services/outbound.py, ``AppContext.outbound``, built by bootstrap): we call out
as our own AE title (``settings.ae_title``), which is also the C-MOVE
destination, so the remote node must have us registered under that title.
Query keys go to it as the JSON gives them (keyword -> value), never as text.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.audit import Action
from minipacs.core.errors import NotFound
from minipacs.core.jobs import Job, JobQueue
from minipacs.core.nodes import Node, NodeRegistry, format_permissions, node_from_mapping
from minipacs.core.paths import validate_uid
from minipacs.core.retrieve import MAX_KEYS
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level, parse_level
from minipacs.services.job_kinds import RETRIEVE, SEND, node_json, select_for_send
from minipacs.services.outbound import (
    DEFAULT_KEYS,
    AssociationLost,
    FindRequest,
    InvalidKeys,
    KeyValue,
    NoAssociation,
    Outbound,
    OutboundError,
    RetrieveRequest,
)
from minipacs.services.status import FIND, describe
from minipacs.web import audit
from minipacs.web.errors import HttpError
from minipacs.web.jsonbody import read_object
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits
from minipacs.web.types import AppContext, ctx


@dataclass(frozen=True)
class ApiLevel:
    qr_level: str  # QueryRetrieveLevel, PS3.4 C.6
    unique_key: str  # its Unique Key
    model: str  # the information model used for it: PATIENT or STUDY root


# PS3.4 C.6.1.1 / C.6.2.1: the levels (by noun), their unique keys (dicom/levels.py), and the model we
# use for each: Patient Root for a patient, Study Root below.
LEVELS: Final[Mapping[str, ApiLevel]] = {
    s.noun: ApiLevel(s.level.value, s.unique_key, "PATIENT" if s.level is Level.PATIENT else "STUDY")
    for s in LEVEL_SPELLINGS.values()
}
MAX_QUERY_RESULTS: Final = 10000


# ------------------------------------------------------------------ input


async def _body(request: Request) -> dict[str, Any]:
    return await read_object(request, "the fields this endpoint takes (GET /api/openapi.json)")


def _level(raw: object) -> ApiLevel:
    # any spelling of dicom/levels.py: the noun, the REST resource name, the DICOM level name
    level = parse_level(raw) if isinstance(raw, str) else None
    if level is None:
        raise HttpError(400, "invalid_level", f"level {str(raw)[:30]!r} is not one of {', '.join(LEVELS)}")
    return LEVELS[LEVEL_SPELLINGS[level].noun]


def _uids(raw: object, level: ApiLevel) -> list[str]:
    """The unique key values of a send or retrieve: a non-empty list of valid UIDs (or one Patient ID)."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
        raise HttpError(400, "invalid_uids", f"uids must be a non-empty list of {level.unique_key} values")
    if len(raw) > MAX_KEYS:
        raise HttpError(400, "invalid_uids", f"{len(raw)} values given; at most {MAX_KEYS} per request, split it")
    values = list(dict.fromkeys(v.strip() for v in raw))
    if level.unique_key == "PatientID":
        if len(values) != 1 or not 1 <= len(values[0]) <= 64 or any(c in values[0] for c in "\\*?"):
            raise HttpError(
                400,
                "invalid_uids",
                "a patient-level request names one Patient ID of 1 to 64 characters without \\, * or ?",
            )
        return values
    return [validate_uid(level.unique_key, v) for v in values]


async def _resolve(registry: NodeRegistry, ref: object) -> Node:
    """A node by id, or by an AE title that exactly one node has."""
    text = str(ref).strip() if isinstance(ref, (str, int)) and not isinstance(ref, bool) else ""
    if not text:
        raise HttpError(400, "invalid_node", "name the node by its id (see GET /api/nodes) or its AE title")
    if ascii_digits(text):
        node = await registry.get(int(text))
        if node is not None:
            return node
    found = await registry.find(text) if len(text) <= 16 else []
    if len(found) == 1:
        return found[0]
    if found:
        raise HttpError(
            409,
            "ambiguous_node",
            f"AE title {text!r} is registered {len(found)} times ("
            + ", ".join(f"id {n.id}: {n.address}" for n in found)
            + "); name the node by its id",
        )
    raise NotFound(f"no node has the id or AE title {text[:40]!r}; GET /api/nodes lists them")


def _registry(context: AppContext) -> NodeRegistry:
    if context.nodes is None:
        raise HttpError(503, "no_registry", "the AE registry is not available in this process")
    return context.nodes


def _outbound(context: AppContext) -> Outbound:
    if context.outbound is None:
        raise HttpError(503, "no_outbound", "calling other DICOM nodes is not available in this process")
    return context.outbound


# ------------------------------------------------------------------ nodes


async def update_node(request: Request) -> Response:
    """PUT /api/nodes/{id}: change any of ae_title, host, port, description, permissions, tls."""
    registry = _registry(ctx(request))
    node = await _resolve(registry, request.path_params["id"])
    body = await _body(request)
    current = {
        "ae_title": node.ae_title,
        "host": node.host,
        "port": node.port,
        "description": node.description,
        "permissions": format_permissions(node.permissions) or "none",
        "tls": node.tls,
    }
    if node.id is None:  # pragma: no cover - nodes read from the index always have one
        raise NotFound("that node is not stored in the registry")
    updated = await registry.update(node.id, node_from_mapping({**current, **body}))
    return JSONResponse(node_json(updated))


async def echo(request: Request) -> Response:
    """POST /api/nodes/{id}/echo: C-ECHO (PS3.4 A.4); 200 with ok true or false and why."""
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    outbound = _outbound(context)
    start = time.perf_counter()
    status: int | None = None
    try:
        [response] = await outbound.echo(node)
        status = response.status
        message = describe(status) if status >= 0 else "no C-ECHO response"
    except OutboundError as exc:
        message = f"C-ECHO to {node.label()} failed: {exc}"
    took = round((time.perf_counter() - start) * 1000, 1)
    return JSONResponse({"ok": status == 0, "status": status, "message": message, "ms": took, "node": node_json(node)})


async def query(request: Request) -> Response:
    """POST /api/nodes/{id}/query {level, keys: {Keyword: value}, limit}: C-FIND (PS3.4 C.4.1);
    the matches as PS3.18 JSON. The level's default return keys are always asked for."""
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    body = await _body(request)
    level = _level(body.get("level", "study"))
    keys = body.get("keys", {})
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int, type(None))) for k, v in keys.items()
    ):
        raise HttpError(400, "invalid_keys", "keys must be an object of DICOM keyword (or gggg,eeee) -> text value")
    limit = body.get("limit", 1000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_RESULTS:
        raise HttpError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_QUERY_RESULTS}")
    wanted: dict[str, KeyValue] = {k: "" for k in DEFAULT_KEYS[level.qr_level] if k not in keys}
    wanted.update({k.strip(): v for k, v in keys.items()})
    try:
        query = FindRequest.build(
            wanted, model="patient" if level.model == "PATIENT" else "study", level=level.qr_level, strict=True
        )
    except InvalidKeys as exc:
        raise HttpError(400, "invalid_keys", f"cannot build the query: {exc}") from None
    try:
        result = await _outbound(context).query(node, query, cancel_after=limit)
    except NoAssociation as exc:
        raise HttpError(502, "association_failed", f"cannot query {node.label()}: {exc}") from None
    except AssociationLost as exc:
        raise HttpError(502, "association_failed", f"the query to {node.label()} broke off: {exc}") from None
    if result.status not in (0, 0xFE00):
        raise HttpError(
            502,
            "remote_refused",
            f"{node.label()} answered {describe(result.status, FIND)}"
            + (f" ({result.error_comment})" if result.error_comment else ""),
        )
    matches = []
    for ds in result.matches[:limit]:
        try:
            matches.append(ds.to_json_dict())
        except Exception as exc:  # noqa: BLE001 - a value the JSON model cannot carry
            matches.append({"error": f"cannot convert this match to JSON: {exc}"})
    return JSONResponse(
        {
            "count": len(matches),
            "truncated": result.cancelled_sent,
            "message": f"{len(matches)} match(es) from {node.label()}",
            "results": matches,
        }
    )


# ------------------------------------------------------------------ send and retrieve: jobs (services/job_kinds.py)


def _jobs(context: AppContext) -> JobQueue:
    if context.jobs is None:
        raise HttpError(503, "no_jobs", "background jobs (send, retrieve) are not available in this process")
    return context.jobs


def _accepted(job: Job) -> Response:
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


async def send(request: Request) -> Response:
    """POST /api/send {node, level, uids}: C-STORE the stored instances to the node, as a job (202)."""
    context = ctx(request)
    body = await _body(request)
    node = await _resolve(_registry(context), body.get("node"))
    _outbound(context)
    queue = _jobs(context)
    level = _level(body.get("level"))
    values = _uids(body.get("uids"), level)
    params = {"node": node.id, "level": level.qr_level, "model": level.model, "key": level.unique_key, "uids": values}
    found = await select_for_send(context.archive, params)
    if not found:
        raise NotFound(f"no stored instance matches {level.unique_key} {', '.join(values)[:200]}")
    job = await queue.submit(
        SEND,
        f"send {len(found)} instance(s) to {node.label()}",
        params,
        total=len(found),
        details={"node": node_json(node)},
    )
    for study_uid in sorted({item.study_instance_uid for item in found}):
        audit.record(request, Action.SENT, study_uid=study_uid, detail=f"to {node.label()} (job {job.id})")
    return _accepted(job)


async def retrieve(request: Request) -> Response:
    """POST /api/nodes/{id}/retrieve {level, uids, method: move|get, study}: a job (202).

    move: C-MOVE with us as destination (the node sends to our DICOM port); get: C-GET,
    the instances coming back on the same association into the archive. ``study`` (optional,
    series level) is their StudyInstanceUID: a strictly hierarchical node (e.g. DCMTK dcmqrscp)
    needs the unique key of the level above (PS3.4 C.4.2.2.1) and otherwise finds nothing.
    """
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    _outbound(context)
    queue = _jobs(context)
    body = await _body(request)
    level = _level(body.get("level"))
    values = _uids(body.get("uids"), level)
    asked = body.get("method", "move")
    if asked not in ("move", "get"):
        raise HttpError(400, "invalid_method", 'method must be "move" (C-MOVE to us) or "get" (C-GET)')
    method: Literal["move", "get"] = "get" if asked == "get" else "move"
    keys: dict[str, KeyValue] = {}
    if body.get("study") is not None and level.qr_level == "SERIES":
        keys["StudyInstanceUID"] = validate_uid("StudyInstanceUID", str(body["study"]))
    keys[level.unique_key] = "\\".join(values)
    try:
        RetrieveRequest.build(keys, level=level.qr_level, model=level.model)  # checked now, built again by the job
    except InvalidKeys as exc:  # pragma: no cover - the values were checked above
        raise HttpError(400, "invalid_uids", str(exc)) from None
    params = {"node": node.id, "method": method, "level": level.qr_level, "model": level.model, "keys": keys}
    job = await queue.submit(
        RETRIEVE,
        f"C-{method.upper()} {level.qr_level} {', '.join(values)[:120]} from {node.label()}",
        params,
        details={"node": node_json(node)},
    )
    audit.record(
        request,
        Action.RETRIEVED,
        study_uid=str(keys.get("StudyInstanceUID", values[0] if level.qr_level == "STUDY" else "")),
        detail=f"C-{method.upper()} {level.qr_level} {', '.join(values)[:200]} from {node.label()} (job {job.id})",
    )
    return _accepted(job)


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level}/{id} would take these paths)."""
    return [
        Endpoint(
            "/nodes/{id}",
            update_node,
            "PUT",
            "admin",
            "Edit a DICOM node (by id, or an AE title only one node has)",
            audits="network_config",
        ),
        Endpoint("/nodes/{id}/echo", echo, "POST", "write", "C-ECHO a node: {ok, status, message, ms}"),
        Endpoint(
            "/nodes/{id}/query", query, "POST", "write", "C-FIND a node: {level, keys, limit} -> matches as PS3.18 JSON"
        ),
        Endpoint(
            "/nodes/{id}/retrieve",
            retrieve,
            "POST",
            "write",
            "C-MOVE to us or C-GET from a node: {level, uids, method, study (series level: their study)} -> a job",
        ),
        Endpoint("/send", send, "POST", "write", "C-STORE stored instances to a node: {node, level, uids} -> a job"),
    ]


__all__ = ["LEVELS", "node_json", "routes"]
