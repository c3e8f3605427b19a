"""The REST API under /api: resources by level, upload, search, download, delete, log, stats, nodes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from minipacs.core import blob_removals
from minipacs.core import changes as journal
from minipacs.core.audit import Action
from minipacs.core.compression import Compressor
from minipacs.core.delete import delete_resource
from minipacs.core.errors import ArchiveError, NotFound, OutOfResources
from minipacs.core.labels import labels_of_studies
from minipacs.core.media import readable_names, series_labels_of
from minipacs.core.metadata import BULK_PREFIX
from minipacs.core.model import Origin
from minipacs.core.nodes import node_from_mapping
from minipacs.core.paths import validate_uid
from minipacs.core.retrieve import select_instances
from minipacs.core.stats import node_figures, storage_figures
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.services.job_kinds import node_json
from minipacs.web import audit as audit_trail
from minipacs.web import completion
from minipacs.web.dicomweb import root_url
from minipacs.web.errors import HttpError, redact
from minipacs.web.headers import attachment
from minipacs.web.intake import Intake, body_pieces, receive_multipart, receive_single, spool_body
from minipacs.web.jsonbody import read_object
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits, merge_uid_lists, refuse_repeats, search
from minipacs.web.transfer import (
    boundary_of,
    failed_json,
    ingest_zip,
    insufficient_storage,
    outcome_json,
    zip_stream,
)
from minipacs.web.types import ctx
from minipacs.web.unzip import ZipLimits

# URL level -> (query level, unique key, retrieve level, delete level), from dicom/levels.py
LEVELS: Final[Mapping[str, tuple[Level, str, str, str]]] = {
    s.resource: (s.level, s.unique_key, s.level.value, s.noun) for s in LEVEL_SPELLINGS.values()
}


#: who deleted what (the changes journal records the what; this log, the who)
audit = logging.getLogger("minipacs.web.audit")


def path_level(request: Request) -> tuple[Level, str, str, str]:
    name = request.path_params["level"]
    if name not in LEVELS:
        raise HttpError(404, "not_found", f"unknown resource kind {name[:30]!r}; use {', '.join(LEVELS)}")
    return LEVELS[name]


def path_id(request: Request, key: str) -> str:
    value: str = request.path_params["id"]
    if key != "PatientID" and "/" in value:  # only a Patient ID may hold "/": no such URL
        raise HttpError(404, "not_found", "there is nothing at this URL")
    if key == "PatientID":
        # a control character (a NUL: PostgreSQL refuses it in a query) is in no Patient ID (PS3.5 6.2 LO)
        if not value or len(value) > 64 or any(c in value for c in "\\*?") or not value.isprintable():
            raise HttpError(
                400, "invalid_identifier", "a Patient ID is 1 to 64 printable characters without \\, * or ?"
            )
        return value
    return validate_uid(key, value)


def plain(ds: Dataset) -> dict[str, Any]:
    """A query match as keyword -> value (text, or a list for multiple values)."""
    out: dict[str, Any] = {}
    for elem in ds:
        value = elem.value
        if value is None or value == "":
            out[elem.keyword] = None
        elif elem.VM > 1:
            out[elem.keyword] = [str(v) for v in value]
        else:
            out[elem.keyword] = str(value)
    return out


async def _matches(request: Request, level: Level, fixed: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """A search from the query string; studies also carry ``complete`` and filter on ``complete=``."""
    params = merge_uid_lists(request.query_params.multi_items())  # UIDs given twice: one UID list
    refuse_repeats(params)  # ``complete`` too, which is taken out below
    archive = ctx(request).archive
    audit_trail.record_query(request, f"REST search {level.value}", level=level.value)
    if level is not Level.STUDY:
        return [plain(ds) async for ds in search(archive, level, params, fixed)]
    want = completion.wanted(request.query_params.get(completion.PARAM))
    extra, absent = completion.search_terms(want)
    params = [(k, v) for k, v in params if k != completion.PARAM] + extra
    found = [
        {**plain(ds), "complete": completion.is_complete(ds)}
        async for ds in search(archive, level, params, fixed, absent)
    ]
    carried = await labels_of_studies(archive, [str(m.get("StudyInstanceUID") or "") for m in found])
    for match in found:  # core/labels.py: not DICOM, so answered next to the attributes
        match["labels"] = carried.get(str(match.get("StudyInstanceUID") or ""), [])
    return found


async def list_resources(request: Request) -> Response:
    level, _, _, _ = path_level(request)
    return JSONResponse(await _matches(request, level))


async def search_resources(request: Request) -> Response:
    raw = request.query_params.get("level", "studies")
    if raw not in LEVELS:
        raise HttpError(400, "invalid_level", f"level must be one of {', '.join(LEVELS)}")
    return JSONResponse(await _matches(request, LEVELS[raw][0]))


async def read_resource(request: Request) -> Response:
    level, key, _, _ = path_level(request)
    value = path_id(request, key)
    extra = completion.search_terms(None)[0] if level is Level.STUDY else []
    async for ds in search(ctx(request).archive, level, extra, {key: value}):
        found = plain(ds)
        if level is Level.STUDY:
            found["complete"] = completion.is_complete(ds)
            found["labels"] = (await labels_of_studies(ctx(request).archive, [value])).get(value, [])
            found["storage"] = await Compressor(ctx(request).archive).savings(value)  # disk saved by compression
        return JSONResponse(found)
    raise NotFound(f"{request.path_params['level']} {value!r} is not in the archive")


async def instance_tags(request: Request) -> Response:
    uid = validate_uid("SOPInstanceUID", request.path_params["id"])
    text = (await ctx(request).metadata.get([uid]))[0]
    return Response(text.replace('"' + BULK_PREFIX, '"' + root_url(request)), media_type="application/json")


def requester(request: Request) -> str:
    """The user web/auth.py proved for this request; without users configured, loopback callers act unnamed."""
    state = request.scope.get("state", {})
    client = request.client.host if request.client else "?"
    user = state.get("user")
    return f"{user} ({state.get('role', '?')}) from {client}" if user else f"an unnamed caller from {client}"


async def delete(request: Request) -> Response:
    """DELETE a patient, study, series or instance; the server log says who deleted what (issue 12 item 24)."""
    _, key, _, kind = path_level(request)
    uid = path_id(request, key)
    who = requester(request)
    studies = await _studies_of(request, key, uid) if kind != "patient" else []
    patients = await ctx(request).archive.audit.before_removal(studies)
    deleted = await delete_resource(ctx(request).archive, kind, uid)
    detail = f"{request.path_params['level']} {uid}: {deleted.instances} instance(s)"
    for study_uid in studies or [""]:
        pid = uid if kind == "patient" else patients.get(study_uid, "")
        audit_trail.record(request, Action.DELETED, patient_id=pid, study_uid=study_uid, detail=detail)
    audit.warning(
        "deleted %s %s by %s: %d instance(s), %d bytes",
        request.path_params["level"],
        uid,
        who,
        deleted.instances,
        deleted.bytes,
    )
    return JSONResponse({"deleted_instances": deleted.instances, "freed_bytes": deleted.bytes, "deleted_by": who})


async def _studies_of(request: Request, key: str, value: str) -> list[str]:
    """The Study Instance UIDs of the instances a resource holds (for the audit trail of a deletion)."""
    level = {"StudyInstanceUID": "STUDY", "SeriesInstanceUID": "SERIES", "SOPInstanceUID": "IMAGE"}[key]
    found = await select_instances(ctx(request).archive, level, {key: value}, "PATIENT", located=False)
    return sorted({i.study_instance_uid for i in found})


async def download(request: Request) -> Response:
    _, key, retrieve_level, _ = path_level(request)
    value = path_id(request, key)
    found = [
        i
        for i in await select_instances(ctx(request).archive, retrieve_level, {key: value}, "PATIENT")
        if not i.problem
    ]
    if not found:
        raise NotFound(f"{request.path_params['level']} {value!r} has no stored instance")
    for study_uid in sorted({i.study_instance_uid for i in found}):
        audit_trail.record(
            request,
            Action.DOWNLOADED,
            patient_id=value if key == "PatientID" else "",
            study_uid=study_uid,
            detail=f"{request.path_params['level']} {value}: {len(found)} instance(s)",
        )
    if retrieve_level == "IMAGE":
        from minipacs.web.dicomweb import _read_file

        return StreamingResponse(
            _read_file(found[0]),
            media_type="application/dicom",
            headers={"Content-Disposition": attachment(value, ".dcm", "instance")},
        )
    names = readable_names(found, await series_labels_of(ctx(request).archive, found))
    return StreamingResponse(
        zip_stream(found, names),
        media_type="application/zip",
        headers={"Content-Disposition": attachment(value, ".zip", request.path_params["level"])},
    )


async def upload(request: Request) -> Response:
    """POST /api/instances: a DICOM file, a ZIP of them, or multipart/form-data / multipart/related files.

    Read as it arrives (web/intake.py): each file streams into staging, a ZIP to a temporary file
    in the data folder; nothing is stored unless the whole body arrived."""
    context = ctx(request)
    # the boundary parameter is case-sensitive (RFC 2046 §5.1.1): only the media type is lower-cased
    raw_type = request.headers.get("content-type", "application/dicom")
    origin = Origin("rest", peer_host=request.client.host if request.client else "")
    try:
        return await _receive_upload(request, context, raw_type, origin)
    except OutOfResources as exc:  # while the body was staged: nothing was stored
        raise insufficient_storage(exc, 0, 1) from None


async def _receive_upload(request: Request, context: Any, raw_type: str, origin: Origin) -> Response:
    content_type = raw_type.lower()
    settings = context.settings
    intake = Intake(context.archive)
    if content_type.startswith("multipart/"):
        boundary = boundary_of(raw_type)
        await receive_multipart(request, intake, boundary, settings.max_upload_bytes, settings.max_upload_parts)
    else:
        pieces = body_pieces(request, settings.max_upload_bytes)
        first = b""
        async for chunk in pieces:  # enough to tell a ZIP (PKWARE APPNOTE 4.3.7: local header PK\3\4)
            first += chunk
            if len(first) >= 4:
                break
        if content_type.startswith(("application/zip", "application/x-zip")) or first[:4] == b"PK\x03\x04":
            return _upload_result(await _upload_zip(context, first, pieces, origin))
        await receive_single(request, intake, "the uploaded file", _chain(first, pieces))
    single = not content_type.startswith("multipart/")
    results: list[dict[str, str]] = []
    try:
        for part in intake.received:
            name = "body" if single else part.label
            try:
                if part.failure is not None:  # refused while it was staged: never reached the ingest path
                    context.metrics.ingest_failed(origin.kind, part.failure)
                    raise part.failure
                outcome = await intake.ingest(part, origin)
            except OutOfResources as exc:
                raise insufficient_storage(
                    exc, sum(r["status"] != "failed" for r in results), len(intake.received)
                ) from None
            except ArchiveError as exc:
                message = redact(str(exc), context.archive.settings)
                results.append({"file": name, **failed_json(exc), "message": message})
                continue
            results.append({"file": name, **outcome_json(outcome)})
    finally:
        await intake.discard()  # what was not ingested (after a 507)
    return _upload_result(results)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


async def _upload_zip(context: Any, first: bytes, rest: AsyncIterator[bytes], origin: Origin) -> list[dict[str, str]]:
    """A ZIP body: copied to a temporary file in the staging folder (off the loop), then each member as before."""
    path = await spool_body(context.archive.staging_dir, first, rest)
    try:
        return await ingest_zip(context.archive, path, origin, ZipLimits.of(context.settings))
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def _upload_result(results: list[dict[str, str]]) -> Response:
    if not results:
        raise HttpError(400, "no_files", "the upload holds no file")
    ok = sum(r["status"] != "failed" for r in results)
    status = 200 if ok == len(results) else 207 if ok else 400
    return JSONResponse({"stored": ok, "failed": len(results) - ok, "results": results}, status_code=status)


async def associations(request: Request) -> Response:
    raw = request.query_params.get("limit", "100")
    if not ascii_digits(raw) or not 1 <= int(raw) <= 10000:
        raise HttpError(400, "invalid_limit", "limit must be a whole number from 1 to 10000")
    records = await ctx(request).archive.list_associations(int(raw))
    return JSONResponse(
        [
            {
                **dataclasses.asdict(r),
                "started_at": r.started_at.isoformat(),
                "ended_at": r.ended_at.isoformat() if r.ended_at else None,
            }
            for r in records
        ]
    )


def _whole_number(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not ascii_digits(raw) or not low <= int(raw) <= high:
        raise HttpError(400, f"invalid_{name}", f"{name} must be a whole number from {low} to {high}, not {raw[:20]!r}")
    return int(raw)


async def changes(request: Request) -> Response:
    """GET /api/changes?since=N&limit=M: the changes journal after ``since`` (core/changes.py)."""
    since = _whole_number(request, "since", 0, 0, 2**63 - 1)
    limit = _whole_number(request, "limit", journal.DEFAULT_LIMIT, 1, journal.MAX_LIMIT)
    found, last, done = await ctx(request).archive.read(lambda conn: journal.read_changes(conn, since, limit))
    first = await ctx(request).archive.read(journal.first_seq)
    return JSONResponse({"changes": [c.to_json() for c in found], "last": last, "done": done, "first": first})


async def stats(request: Request) -> Response:
    """GET /api/stats: counters the index keeps (core/stats.py), never a walk of the storage folder."""
    archive = ctx(request).archive
    ingest = archive.stats
    figures = dataclasses.asdict(await storage_figures(archive))
    figures["disk_bytes"] = figures.pop("instance_bytes")  # the name this field always had
    # replaced copies whose files wait out their grace period (core/blob_removals.py): on disk, not in disk_bytes
    copies, size = await blob_removals.pending(archive)
    figures["replaced_copies_pending_removal"] = copies
    figures["replaced_bytes_pending_removal"] = size
    return JSONResponse(
        {
            **figures,
            "ingested_since_start": ingest.ingested,
            "index_batches": ingest.batches,
            "metadata_pending": ctx(request).metadata.pending,
            # the figures above that are this process's own; below, every node's as it last wrote them
            "node_id": archive.settings.node_id,
            "nodes": [n.to_json() for n in await node_figures(archive)],
        }
    )


def _registry(request: Request) -> Any:
    registry = ctx(request).nodes
    if registry is None:
        raise HttpError(503, "no_registry", "the AE registry is not available in this process")
    return registry


async def list_nodes(request: Request) -> Response:
    return JSONResponse([node_json(n) for n in await _registry(request).list()])


async def add_node(request: Request) -> Response:
    raw = await read_object(request, "ae_title, host, port, ...")
    node = await _registry(request).add(node_from_mapping(raw))
    return JSONResponse(node_json(node), status_code=201)


async def remove_node(request: Request) -> Response:
    removed = await _registry(request).remove(request.path_params["ae_title"], request.query_params.get("host"))
    if not removed:
        raise NotFound(f"no node {request.path_params['ae_title'][:16]!r} is registered")
    return JSONResponse({"removed": removed})


def routes() -> list[BaseRoute]:
    """Mounted under /api (named "api"), after rest_nodes and rest_worklist."""
    return [
        Endpoint(
            "/instances", upload, "POST", "write", "Upload DICOM files: one file, a ZIP, or multipart; per-file result"
        ),
        Endpoint(
            "/search",
            search_resources,
            "GET",
            "read",
            "Search with C-FIND matching rules (level, keys, wildcards, ranges, limit/offset; labels=a,b)",
        ),
        Endpoint(
            "/associations",
            associations,
            "GET",
            "read",
            "The association log: who, from where, what was negotiated and done, tls, tls_peer, user_identity",
        ),
        Endpoint("/stats", stats, "GET", "read", "Counts, disk use, ingest counters"),
        Endpoint(
            "/changes",
            changes,
            "GET",
            "read",
            "The changes journal after ?since=N (seq), at most ?limit=M "
            "(default 100, max 1000): {changes: [{seq, type, level, uid, study, time, reason}], last, done}",
        ),
        Endpoint("/nodes", list_nodes, "GET", "read", "List DICOM nodes"),
        Endpoint("/nodes", add_node, "POST", "admin", "Add or update a DICOM node", audits="network_config"),
        Endpoint(
            "/nodes/{ae_title}",
            remove_node,
            "DELETE",
            "admin",
            "Remove a DICOM node (?host= to pick one)",
            audits="network_config",
        ),
        Endpoint("/instances/{id}/tags", instance_tags, "GET", "read", "All tags of an instance as PS3.18 JSON"),
        Endpoint(
            "/{level}",
            list_resources,
            "GET",
            "read",
            "List patients, studies, series or instances (limit, offset, matching keys)",
        ),
        # {id:path}: a Patient ID may hold "/" (sent as %2F, which the ASGI path decodes); file and archive
        # come first, so a Patient ID that itself ends in "/file" or "/archive" cannot be read back here
        Endpoint(
            "/{level}/{id:path}/file",
            download,
            "GET",
            "read",
            "Download an instance (Part 10); a patient, study or series as a ZIP",
            name="file",
        ),
        Endpoint(
            "/{level}/{id:path}/archive",
            download,
            "GET",
            "read",
            "Download a patient, study or series as a ZIP (streamed)",
            name="archive",
        ),
        Endpoint("/{level}/{id:path}", read_resource, "GET", "read", "Main tags of one resource", name="resource"),
        Endpoint(
            "/{level}/{id:path}",
            delete,
            "DELETE",
            "write",
            "Delete a resource and everything below it",
            name="resource",
        ),
    ]


__all__ = ["LEVELS", "routes"]
