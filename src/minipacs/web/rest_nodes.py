"""REST for talking to other DICOM nodes: echo, send (C-STORE), query (C-FIND), retrieve (C-MOVE/C-GET), jobs.

A node is named in a URL or body by its registry id (``GET /api/nodes`` lists
them), or by its AE title when exactly one node has that title. Sends and
retrieves run as background jobs (core/jobs.py) watched at ``/api/jobs/{id}``;
echo and query answer at once. We call out as our own AE title
(``settings.ae_title``), which is also the C-MOVE destination: the remote
node must have us registered under that title.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.config import disable_value_validation
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from minipacs.bootstrap import association_settings
from minipacs.core.errors import NotFound
from minipacs.core.jobs import Job, JobFailed
from minipacs.core.nodes import Node, NodeRegistry, format_permissions, node_from_mapping
from minipacs.core.paths import validate_uid
from minipacs.core.retrieve import MAX_KEYS, StoredInstance, select_instances
from minipacs.core.transcode import TranscodeError
from minipacs.net.association import Association, AssociationError, build_rq, connect
from minipacs.net.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.services.dispatch import request_handler
from minipacs.services.find_scu import DEFAULT_KEYS, MODELS, InvalidKeySpec, build_identifier, find_all
from minipacs.services.retrieve_scu import (
    KeySyntaxError,
    RetrieveResult,
    c_get,
    c_move,
    get_contexts,
    move_contexts,
    parse_keys,
)
from minipacs.services.status import FIND, GET, MOVE, describe, is_success, is_warning
from minipacs.services.storage import StorageSCP
from minipacs.services.storage_scu import proposal, store_file
from minipacs.services.verification import echo as c_echo
from minipacs.web.dicomweb import ctx
from minipacs.web.errors import HttpError
from minipacs.web.types import AppContext


@dataclass(frozen=True)
class ApiLevel:
    qr_level: str  # QueryRetrieveLevel, PS3.4 C.6
    unique_key: str  # its Unique Key
    model: str  # the information model used for it: PATIENT or STUDY root


# PS3.4 C.6.1.1 / C.6.2.1: the levels, their unique keys, and the model we use for each
LEVELS: Final[Mapping[str, ApiLevel]] = {
    "patient": ApiLevel("PATIENT", "PatientID", "PATIENT"),
    "study": ApiLevel("STUDY", "StudyInstanceUID", "STUDY"),
    "series": ApiLevel("SERIES", "SeriesInstanceUID", "STUDY"),
    "instance": ApiLevel("IMAGE", "SOPInstanceUID", "STUDY"),
}
#: Other spellings accepted for a level (REST resource names, DICOM level names).
LEVEL_ALIASES: Final[Mapping[str, str]] = {
    "patients": "patient", "studies": "study", "instances": "instance", "image": "instance",
}
MAX_QUERY_RESULTS: Final = 10000
QR_SYNTAXES: Final = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
#: Failures kept per job for the JSON (the counts are always complete).
MAX_FAILURES_LISTED: Final = 100


# ------------------------------------------------------------------ input

async def _body(request: Request) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise HttpError(400, "invalid_json", "the body must be a JSON object")
    return raw


def _level(raw: object) -> ApiLevel:
    name = str(raw).strip().lower() if isinstance(raw, str) else ""
    name = LEVEL_ALIASES.get(name, name)
    if name not in LEVELS:
        raise HttpError(400, "invalid_level", f"level {str(raw)[:30]!r} is not one of patient, study, series, "
                        "instance")
    return LEVELS[name]


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
            raise HttpError(400, "invalid_uids", "a patient-level request names one Patient ID of 1 to 64 "
                            "characters without \\, * or ?")
        return values
    return [validate_uid(level.unique_key, v) for v in values]


async def _resolve(registry: NodeRegistry, ref: object) -> Node:
    """A node by id, or by an AE title that exactly one node has."""
    text = str(ref).strip() if isinstance(ref, (str, int)) and not isinstance(ref, bool) else ""
    if not text:
        raise HttpError(400, "invalid_node", "name the node by its id (see GET /api/nodes) or its AE title")
    if text.isdigit():
        node = await registry.get(int(text))
        if node is not None:
            return node
    found = await registry.find(text) if len(text) <= 16 else []
    if len(found) == 1:
        return found[0]
    if found:
        raise HttpError(409, "ambiguous_node", f"AE title {text!r} is registered {len(found)} times ("
                        + ", ".join(f"id {n.id}: {n.address}" for n in found) + "); name the node by its id")
    raise NotFound(f"no node has the id or AE title {text[:40]!r}; GET /api/nodes lists them")


def _registry(context: AppContext) -> NodeRegistry:
    if context.nodes is None:
        raise HttpError(503, "no_registry", "the AE registry is not available in this process")
    return context.nodes


def node_json(node: Node) -> dict[str, Any]:
    return {"id": node.id, "ae_title": node.ae_title, "host": node.host, "port": node.port,
            "description": node.description, "permissions": sorted(node.permissions), "tls": node.tls}


async def _associate(context: AppContext, node: Node, contexts: Sequence[tuple[str, Sequence[str]]],
                     **kw: Any) -> Association:
    """An association from us (settings.ae_title) to ``node``; raises AssociationError."""
    aset = association_settings(context.settings)
    roles = kw.pop("roles", ())
    rq = build_rq(context.settings.ae_title, node.ae_title, contexts, aset, roles=roles)
    return await connect(node.host, node.port, rq, aset, connect_timeout=context.settings.connect_timeout,
                         tls=node.tls, **kw)


async def _abort(assoc: Association) -> None:
    assoc.abort()
    await assoc.wait_closed()


# ------------------------------------------------------------------ nodes

async def update_node(request: Request) -> Response:
    """PUT /api/nodes/{id}: change any of ae_title, host, port, description, permissions, tls."""
    registry = _registry(ctx(request))
    node = await _resolve(registry, request.path_params["id"])
    body = await _body(request)
    current = {"ae_title": node.ae_title, "host": node.host, "port": node.port, "description": node.description,
               "permissions": format_permissions(node.permissions) or "none", "tls": node.tls}
    if node.id is None:  # pragma: no cover - nodes read from the index always have one
        raise NotFound("that node is not stored in the registry")
    updated = await registry.update(node.id, node_from_mapping({**current, **body}))
    return JSONResponse(node_json(updated))


async def echo(request: Request) -> Response:
    """POST /api/nodes/{id}/echo: C-ECHO (PS3.4 A.4); 200 with ok true or false and why."""
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    start = time.perf_counter()
    status: int | None = None
    try:
        assoc = await _associate(context, node, [(VERIFICATION_SOP_CLASS, QR_SYNTAXES)])
        try:
            status = await c_echo(assoc)
        except (AssociationError, LookupError):
            await _abort(assoc)
            raise
        await assoc.release()
        message = describe(status) if status >= 0 else "no C-ECHO response"
    except (AssociationError, LookupError) as exc:
        message = f"C-ECHO to {node.label()} failed: {exc}"
    took = round((time.perf_counter() - start) * 1000, 1)
    return JSONResponse({"ok": status == 0, "status": status, "message": message, "ms": took,
                         "node": node_json(node)})


async def query(request: Request) -> Response:
    """POST /api/nodes/{id}/query {level, keys: {Keyword: value}, limit}: C-FIND (PS3.4 C.4.1);
    the matches as PS3.18 JSON. The level's default return keys are always asked for."""
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    body = await _body(request)
    level = _level(body.get("level", "study"))
    keys = body.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, type(None)))
                                             for k, v in keys.items()):
        raise HttpError(400, "invalid_keys", "keys must be an object of DICOM keyword (or gggg,eeee) -> text value")
    limit = body.get("limit", 1000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_RESULTS:
        raise HttpError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_QUERY_RESULTS}")
    specs = [f"{k}=" for k in DEFAULT_KEYS[level.qr_level] if k not in keys]
    specs += [f"{k.strip()}={'' if v is None else v}" for k, v in keys.items()]
    try:
        with disable_value_validation(), warnings.catch_warnings():
            warnings.simplefilter("error")
            identifier = build_identifier(specs, level.qr_level)
    except (InvalidKeySpec, ValueError, TypeError, UserWarning) as exc:
        raise HttpError(400, "invalid_keys", f"cannot build the query: {exc}") from None
    sop_class = MODELS["patient" if level.model == "PATIENT" else "study"][0]
    try:
        assoc = await _associate(context, node, [(sop_class, QR_SYNTAXES)])
    except AssociationError as exc:
        raise HttpError(502, "association_failed", f"cannot query {node.label()}: {exc}") from None
    try:
        result = await find_all(assoc, sop_class, identifier, cancel_after=limit)
    except (AssociationError, LookupError) as exc:
        await _abort(assoc)
        raise HttpError(502, "association_failed", f"the query to {node.label()} broke off: {exc}") from None
    await assoc.release()
    if result.status not in (0, 0xFE00):
        raise HttpError(502, "remote_refused", f"{node.label()} answered {describe(result.status, FIND)}"
                        + (f" ({result.error_comment})" if result.error_comment else ""))
    matches = []
    for ds in result.matches[:limit]:
        try:
            matches.append(ds.to_json_dict())
        except Exception as exc:  # noqa: BLE001 - a value the JSON model cannot carry
            matches.append({"error": f"cannot convert this match to JSON: {exc}"})
    return JSONResponse({"count": len(matches), "truncated": result.cancelled_sent,
                         "message": f"{len(matches)} match(es) from {node.label()}", "results": matches})


# ------------------------------------------------------------------ send (C-STORE) as a job

def _fail(job: Job, uid: str, why: str) -> None:
    job.failed += 1
    failures = job.details.setdefault("failures", [])
    if len(failures) < MAX_FAILURES_LISTED:
        failures.append({"uid": uid, "reason": why})


async def _send(context: AppContext, node: Node, found: list[StoredInstance], job: Job) -> str:
    usable = [i for i in found if not i.problem]
    for instance in found:
        if instance.problem:
            _fail(job, instance.sop_instance_uid, instance.problem)
    contexts = proposal(usable)
    if len(contexts) > 128:
        raise JobFailed(f"these instances need {len(contexts)} presentation contexts and one association allows "
                        "128; send the series one by one")
    try:
        assoc = await _associate(context, node, contexts)
    except AssociationError as exc:
        job.failed = job.total
        raise JobFailed(f"cannot send to {node.label()}: {exc}") from None
    try:
        for instance in usable:
            try:
                status, text = await store_file(assoc, instance)
            except (LookupError, TranscodeError) as exc:
                _fail(job, instance.sop_instance_uid, str(exc))
                continue
            except OSError as exc:
                _fail(job, instance.sop_instance_uid, f"cannot read its file: {exc.strerror or exc}")
                continue
            if is_success(status) or is_warning(status):
                job.done += 1
            else:
                _fail(job, instance.sop_instance_uid, describe(status) + (f" ({text})" if text else ""))
    except AssociationError as exc:
        await _abort(assoc)
        job.failed = job.total - job.done
        raise JobFailed(f"the association with {node.label()} broke off after {job.done} instance(s): {exc}") \
            from None
    except BaseException:
        assoc.abort()
        raise
    await assoc.release()
    said = f"sent {job.done} of {job.total} instance(s) to {node.label()}"
    if job.failed and not job.done:
        raise JobFailed(said + "; every one failed (see failures)")
    return said + (f"; {job.failed} failed (see failures)" if job.failed else "")


async def send(request: Request) -> Response:
    """POST /api/send {node, level, uids}: C-STORE the stored instances to the node, as a job (202)."""
    context = ctx(request)
    body = await _body(request)
    node = await _resolve(_registry(context), body.get("node"))
    level = _level(body.get("level"))
    values = _uids(body.get("uids"), level)
    joined = "\\".join(values)
    found = await select_instances(context.archive, level.qr_level, {level.unique_key: joined}, level.model)
    if not found:
        raise NotFound(f"no stored instance matches {level.unique_key} {', '.join(values)[:200]}")

    async def work(job: Job) -> str:
        return await _send(context, node, found, job)

    job = context.jobs.submit("send", f"send {len(found)} instance(s) to {node.label()}", work, total=len(found))
    job.details["node"] = node_json(node)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


# ------------------------------------------------------------------ retrieve (C-MOVE / C-GET) as a job

def _counted(job: Job, result: RetrieveResult) -> None:
    job.done = result.completed + result.warning
    job.failed = result.failed
    job.total = max(job.total, job.done + job.failed + result.remaining)
    job.details.update(completed=result.completed, warning=result.warning)


async def _retrieve(context: AppContext, node: Node, level: ApiLevel, method: str, identifier: bytes,
                    job: Job) -> str:
    kw: dict[str, Any] = {}
    if method == "get":
        receiver = StorageSCP(context.archive)  # the ONE ingest path, as for `minipacs get --into-archive`
        contexts, roles = get_contexts(level.model)
        kw = {"roles": roles, "handler": request_handler(receiver, "C-STORE-RQ"), "sink_factory": receiver.sink_for}
    else:
        contexts = move_contexts(level.model)
    try:
        assoc = await _associate(context, node, contexts, **kw)
    except AssociationError as exc:
        raise JobFailed(f"cannot retrieve from {node.label()}: {exc}") from None
    try:
        if method == "get":
            result = await c_get(assoc, level.model, identifier, lambda r: _counted(job, r))
        else:
            result = await c_move(assoc, level.model, identifier, context.settings.ae_title,
                                  lambda r: _counted(job, r))
    except (AssociationError, LookupError) as exc:
        await _abort(assoc)
        raise JobFailed(f"the retrieve from {node.label()} broke off: {exc}") from None
    except BaseException:
        assoc.abort()
        raise
    await assoc.release()
    _counted(job, result)
    job.details["failed_uids"] = result.failed_uids[:MAX_FAILURES_LISTED]
    said = f"C-{method.upper()} from {node.label()}: {job.done} received, {job.failed} failed"
    if result.status == 0 or (result.status == 0xB000 and job.done):
        return said
    meaning = describe(result.status, GET if method == "get" else MOVE)
    hint = ""
    if method == "move" and result.status == 0xA801:
        hint = f"; {node.ae_title} must have us registered as {context.settings.ae_title!r} to move images to us"
    raise JobFailed(f"{said}; it answered {meaning}"
                    + (f" ({result.error_comment})" if result.error_comment else "") + hint)


async def retrieve(request: Request) -> Response:
    """POST /api/nodes/{id}/retrieve {level, uids, method: move|get, study}: a job (202).

    move: C-MOVE with us as destination (the node sends to our DICOM port); get: C-GET,
    the instances coming back on the same association into the archive. ``study`` (optional,
    series level) is their StudyInstanceUID: a strictly hierarchical node (e.g. DCMTK dcmqrscp)
    needs the unique key of the level above (PS3.4 C.4.2.2.1) and otherwise finds nothing.
    """
    context = ctx(request)
    node = await _resolve(_registry(context), request.path_params["id"])
    body = await _body(request)
    level = _level(body.get("level"))
    values = _uids(body.get("uids"), level)
    method = body.get("method", "move")
    if method not in ("move", "get"):
        raise HttpError(400, "invalid_method", "method must be \"move\" (C-MOVE to us) or \"get\" (C-GET)")
    keys = [level.unique_key + "=" + "\\".join(values)]
    if body.get("study") is not None and level.qr_level == "SERIES":
        keys.insert(0, "StudyInstanceUID=" + validate_uid("StudyInstanceUID", str(body["study"])))
    try:
        identifier = parse_keys(level.qr_level, keys)
    except KeySyntaxError as exc:  # pragma: no cover - the values were checked above
        raise HttpError(400, "invalid_uids", str(exc)) from None

    async def work(job: Job) -> str:
        return await _retrieve(context, node, level, method, identifier, job)

    job = context.jobs.submit("retrieve", f"C-{method.upper()} {level.qr_level} {', '.join(values)[:120]} from "
                              f"{node.label()}", work)
    job.details["node"] = node_json(node)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


# ------------------------------------------------------------------ jobs

async def list_jobs(request: Request) -> Response:
    return JSONResponse([job.to_dict() for job in ctx(request).jobs.list()])


async def read_job(request: Request) -> Response:
    job = ctx(request).jobs.get(request.path_params["id"])
    if job is None:
        raise NotFound(f"no job {request.path_params['id'][:40]!r}; jobs are kept in memory until the server "
                       "restarts, and only the latest ones")
    return JSONResponse(job.to_dict())


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level}/{id} would take these paths)."""
    return [
        Route("/nodes/{id}", update_node, methods=["PUT"]),
        Route("/nodes/{id}/echo", echo, methods=["POST"]),
        Route("/nodes/{id}/query", query, methods=["POST"]),
        Route("/nodes/{id}/retrieve", retrieve, methods=["POST"]),
        Route("/send", send, methods=["POST"]),
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{id}", read_job, methods=["GET"]),
    ]


__all__ = ["LEVELS", "node_json", "routes"]
