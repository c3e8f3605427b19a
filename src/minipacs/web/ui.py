"""The web UI under /ui: server-rendered pages on the ONE query engine, plus static/app.js.

Pages read through the same search function as the REST API and QIDO-RS; the
actions (upload, delete, send, echo, node add/edit/remove, and query/retrieve on
the page of ui_remote.py) are made by app.js against the REST API, so the
server's access control (web/auth.py) decides them, whatever the page showed.
A viewer sees no write buttons.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from pydicom.datadict import keyword_for_tag
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from minipacs.core.errors import ArchiveError, NotFound
from minipacs.core.nodes import registry_warnings
from minipacs.core.paths import validate_uid
from minipacs.core.query import Level
from minipacs.web.completion import completed_studies
from minipacs.web.dicomweb import ctx
from minipacs.web.errors import HttpError, classify
from minipacs.web.search import search
from minipacs.web.ui_html import date, e, json_script, json_tag_rows, may, page, person, qs, table, tag_list, text, u
from minipacs.web.ui_remote import remote_page
from minipacs.web.ui_worklist import worklist_page

STATIC_DIR: Final = Path(__file__).with_name("static")
PAGE_SIZES: Final = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE: Final = 25
# study list form field -> (search key, how the typed value becomes a matching value)
STUDY_FILTERS: Final[Mapping[str, tuple[str, str]]] = {
    "name": ("PatientName", "contains"),
    "pid": ("PatientID", "exact"),
    "modality": ("ModalitiesInStudy", "exact"),
    "accession": ("AccessionNumber", "exact"),
    "description": ("StudyDescription", "contains"),
}

Endpoint = Callable[[Request], Awaitable[Response]]


def html_errors(endpoint: Endpoint) -> Endpoint:
    """Errors on a page become an HTML page with the same status and sentence as the REST error."""
    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpError as exc:
            return page(request, "Error", f'<p class="error">{e(exc.message)}</p>', exc.status)
        except ArchiveError as exc:
            status, _ = classify(exc)
            return page(request, "Error", f'<p class="error">{e(exc)}</p>', status)
    return wrapped


def _matching(value: str, how: str) -> str:
    """What a person types -> a C-FIND matching value (PS3.4 C.2.2.2): 'contains' adds * around
    text that has no wildcard of its own."""
    value = value.strip()
    if how == "contains" and value and not any(c in value for c in "*?"):
        return f"*{value}*"
    return value


def _date_range(start: str, end: str) -> str:
    """Two <input type=date> values -> a StudyDate range (PS3.4 C.2.2.2.5), '' for none."""
    start, end = start.replace("-", ""), end.replace("-", "")
    for value in (start, end):
        if value and not (len(value) == 8 and value.isdigit()):
            raise HttpError(400, "invalid_date", f"dates are YYYY-MM-DD, not {value[:20]!r}")
    if not start and not end:
        return ""
    return start if start == end else f"{start}-{end}"


def _int(raw: str | None, default: int, allowed: range | tuple[int, ...], name: str) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) not in allowed:
        raise HttpError(400, f"invalid_{name}", f"{name} must be one of the offered values, not {raw[:20]!r}")
    return int(raw)


async def _find(request: Request, level: Level, params: list[tuple[str, str]],
                fixed: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for ds in search(ctx(request).archive, level, params, fixed):
        row: dict[str, Any] = {}
        for elem in ds:
            value = elem.value
            row[elem.keyword] = None if value is None or value == "" else (
                [str(v) for v in value] if elem.VM > 1 else str(value))
        out.append(row)
    return out


async def _one(request: Request, level: Level, fixed: Mapping[str, str], what: str) -> dict[str, Any]:
    found = await _find(request, level, [("limit", "1")], fixed)
    if not found:
        raise NotFound(f"{what} is not in the archive")
    return found[0]


def _number(row: Mapping[str, Any], key: str) -> int:
    raw = text(row.get(key))
    return int(raw) if raw.lstrip("-").isdigit() else 0


def _delete_button(request: Request, api: str, after: str, what: str) -> str:
    if not may(request, "write"):
        return ""
    return (f'<button class="danger" data-delete="{e(api)}" data-after="{e(after)}" '
            f'data-what="{e(what)}">Delete {e(what.split(" ")[0])}</button>')


async def _send_form(request: Request, level: str, uid: str) -> str:
    """Send to node: a node picker and a button; app.js posts to /api/send and follows the job."""
    if not may(request, "write"):
        return ""
    registry = ctx(request).nodes
    nodes = await registry.list() if registry is not None else []
    if not nodes:
        return '<p class="hint">No DICOM nodes are registered; add one on the Nodes page to send images.</p>'
    options = "".join(f'<option value="{e(n.id)}" data-ae-title="{e(n.ae_title)}">{e(n.ae_title)} '
                      f'({e(n.address)})</option>' for n in nodes)
    return (f'<form class="send" data-level="{e(level)}" data-uid="{e(uid)}"><label>Send to node '
            f'<select name="node">{options}</select></label> <button type="submit">Send</button>'
            f'<span class="job" aria-live="polite"></span></form>')


# ------------------------------------------------------------------ pages

async def home(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


@html_errors
async def studies(request: Request) -> Response:
    q = request.query_params
    size = _int(q.get("size"), DEFAULT_PAGE_SIZE, PAGE_SIZES, "size")
    offset = _int(q.get("offset"), 0, range(0, 10**9), "offset")
    params = [("limit", str(size + 1)), ("offset", str(offset))]
    for field, (key, how) in STUDY_FILTERS.items():
        value = _matching(q.get(field, ""), how)
        if value:
            params.append((key, value))
    dates = _date_range(q.get("from", ""), q.get("to", ""))
    if dates:
        params.append(("StudyDate", dates))
    rows = await _find(request, Level.STUDY, params)
    done = await completed_studies(ctx(request).archive)
    more = len(rows) > size
    rows = rows[:size]
    form_values = {k: q.get(k, "") for k in (*STUDY_FILTERS, "from", "to")}
    inputs = "".join(
        f'<label>{e(label)} <input name="{name}" type="{kind}" value="{e(form_values[name])}"></label>'
        for name, label, kind in (("name", "Patient name", "search"), ("pid", "Patient ID", "search"),
                                  ("from", "Date from", "date"), ("to", "to", "date"),
                                  ("modality", "Modality", "search"), ("accession", "Accession", "search"),
                                  ("description", "Description", "search")))
    sizes = "".join(f'<option{" selected" if s == size else ""}>{s}</option>' for s in PAGE_SIZES)
    form = (f'<form class="search" method="get" action="/ui/">{inputs}<label>Per page <select name="size">{sizes}'
            f'</select></label><button type="submit">Search</button> <a href="/ui/">Clear</a></form>')
    body_rows = [[
        f'<a href="/ui/patient?{qs({"id": r.get("PatientID")})}">{e(person(r.get("PatientName")))}</a>',
        e(r.get("PatientID")), e(date(r.get("StudyDate"))), e(text(r.get("ModalitiesInStudy"))),
        e(r.get("AccessionNumber")),
        f'<a class="study" href="/ui/studies/{u(r.get("StudyInstanceUID"))}">'
        f'{e(r.get("StudyDescription") or "(no description)")}</a>'
        + (' <span class="badge complete" title="procedure step COMPLETED and every instance arrived">'
           'complete</span>' if r.get("StudyInstanceUID") in done else ""),
        e(r.get("NumberOfStudyRelatedSeries")), e(r.get("NumberOfStudyRelatedInstances")),
    ] for r in rows]
    listing = table(("Patient", "Patient ID", "Date", "Modalities", "Accession", "Description", "Series",
                     "Instances"), body_rows, "No study matches.", "studies")
    keep = {**form_values, "size": size}
    pager = []
    if offset > 0:
        pager.append(f'<a rel="prev" href="/ui/?{qs({**keep, "offset": max(0, offset - size)})}">‹ Previous</a>')
    shown = f"{offset + 1}–{offset + len(rows)}" if rows else "none"
    pager.append(f'<span class="range">studies {shown}</span>')
    if more:
        pager.append(f'<a rel="next" href="/ui/?{qs({**keep, "offset": offset + size})}">Next ›</a>')
    return page(request, "Studies", form + listing + f'<nav class="pager">{"".join(pager)}</nav>')


@html_errors
async def patient(request: Request) -> Response:
    pid = request.query_params.get("id", "")
    if not pid or len(pid) > 64 or any(c in pid for c in "\\*?"):
        raise HttpError(400, "invalid_identifier", "a Patient ID is 1 to 64 characters without \\, * or ?")
    info = await _one(request, Level.PATIENT, {"PatientID": pid}, f"Patient {pid!r}")
    found = await _find(request, Level.STUDY, [], {"PatientID": pid})
    rows = [[e(date(r.get("StudyDate"))), e(text(r.get("ModalitiesInStudy"))), e(r.get("AccessionNumber")),
             f'<a class="study" href="/ui/studies/{u(r.get("StudyInstanceUID"))}">'
             f'{e(r.get("StudyDescription") or "(no description)")}</a>',
             e(r.get("NumberOfStudyRelatedInstances"))] for r in found]
    tags = tag_list((("Patient name", person(info.get("PatientName"))), ("Patient ID", info.get("PatientID")),
                     ("Birth date", date(info.get("PatientBirthDate"))), ("Sex", info.get("PatientSex"))))
    delete = _delete_button(request, f"/api/patients/{pid}", "/ui/", "patient and all their studies")
    return page(request, f"Patient {person(info.get('PatientName'))}", tags + delete + "<h2>Studies</h2>" + table(
        ("Date", "Modalities", "Accession", "Description", "Instances"), rows, "No studies."))


@html_errors
async def study(request: Request) -> Response:
    uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    info = await _one(request, Level.STUDY, {"StudyInstanceUID": uid}, f"Study {uid}")
    series = await _find(request, Level.SERIES, [], {"StudyInstanceUID": uid})
    series.sort(key=lambda r: _number(r, "SeriesNumber"))
    rows = [[e(r.get("SeriesNumber")), e(r.get("Modality")),
             f'<a class="series" href="/ui/studies/{u(uid)}/series/{u(r.get("SeriesInstanceUID"))}">'
             f'{e(r.get("SeriesDescription") or "(no description)")}</a>',
             e(r.get("BodyPartExamined")), e(r.get("NumberOfSeriesRelatedInstances")),
             f'<a class="view" href="/ui/viewer/{u(uid)}/{u(r.get("SeriesInstanceUID"))}">View</a>']
            for r in series]
    tags = tag_list((("Patient", person(info.get("PatientName"))), ("Patient ID", info.get("PatientID")),
                     ("Study date", date(info.get("StudyDate"))), ("Study time", info.get("StudyTime")),
                     ("Accession", info.get("AccessionNumber")), ("Description", info.get("StudyDescription")),
                     ("Referring physician", person(info.get("ReferringPhysicianName"))),
                     ("Study ID", info.get("StudyID")), ("Study Instance UID", uid)))
    links = (f'<p><a href="/ui/patient?{qs({"id": info.get("PatientID")})}">Patient</a> · '
             f'<a href="/api/studies/{u(uid)}/archive">Download ZIP</a></p>')
    actions = (await _send_form(request, "study", uid)
               + _delete_button(request, f"/api/studies/{uid}", "/ui/", "study and all its series"))
    return page(request, f"Study {text(info.get('StudyDescription')) or uid}", links + tags + actions
                + "<h2>Series</h2>" + table(("Number", "Modality", "Description", "Body part", "Instances", ""),
                                             rows, "No series."))


@html_errors
async def series_page(request: Request) -> Response:
    study_uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    uid = validate_uid("SeriesInstanceUID", request.path_params["series"])
    fixed = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid}
    info = await _one(request, Level.SERIES, fixed, f"Series {uid}")
    instances = await _find(request, Level.IMAGE, [], fixed)
    instances.sort(key=lambda r: _number(r, "InstanceNumber"))
    base = f"/ui/studies/{u(study_uid)}/series/{u(uid)}/instances/"
    rows = [[e(r.get("InstanceNumber")), f'<a class="instance" href="{base}{u(r.get("SOPInstanceUID"))}">'
             f'{e(r.get("SOPInstanceUID"))}</a>', e(f"{text(r.get('Rows'))} × {text(r.get('Columns'))}"),
             e(r.get("NumberOfFrames") or "1")] for r in instances]
    tags = tag_list((("Modality", info.get("Modality")), ("Number", info.get("SeriesNumber")),
                     ("Description", info.get("SeriesDescription")), ("Date", date(info.get("SeriesDate"))),
                     ("Body part", info.get("BodyPartExamined")), ("Series Instance UID", uid)))
    links = (f'<p><a href="/ui/studies/{u(study_uid)}">Study</a> · '
             f'<a class="view" href="/ui/viewer/{u(study_uid)}/{u(uid)}">Open viewer</a> · '
             f'<a href="/api/series/{u(uid)}/archive">Download ZIP</a></p>')
    actions = (await _send_form(request, "series", uid)
               + _delete_button(request, f"/api/series/{uid}", f"/ui/studies/{study_uid}", "series"))
    return page(request, f"Series {text(info.get('SeriesDescription')) or uid}", links + tags + actions
                + "<h2>Instances</h2>" + table(("Number", "SOP Instance UID", "Size", "Frames"), rows,
                                                "No instances."))


def _instance_uids(request: Request) -> tuple[str, str, str]:
    return (validate_uid("StudyInstanceUID", request.path_params["study"]),
            validate_uid("SeriesInstanceUID", request.path_params["series"]),
            validate_uid("SOPInstanceUID", request.path_params["instance"]))


@html_errors
async def instance(request: Request) -> Response:
    study_uid, series_uid, uid = _instance_uids(request)
    info = await _one(request, Level.IMAGE, {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
                                             "SOPInstanceUID": uid}, f"SOP Instance {uid}")
    wado = f"/dicom-web/studies/{u(study_uid)}/series/{u(series_uid)}/instances/{u(uid)}"
    here = f"/ui/studies/{u(study_uid)}/series/{u(series_uid)}"
    tags = tag_list((("Instance number", info.get("InstanceNumber")), ("SOP Class UID", info.get("SOPClassUID")),
                     ("SOP Instance UID", uid), ("Rows", info.get("Rows")), ("Columns", info.get("Columns")),
                     ("Frames", info.get("NumberOfFrames") or "1")))
    links = (f'<p><a href="{here}">Series</a> · <a href="{here}/instances/{u(uid)}/tags">All tags</a> · '
             f'<a href="/api/instances/{u(uid)}/file">Download DICOM</a></p>')
    preview = f'<img class="preview" alt="preview" src="{wado}/thumbnail">'
    delete = _delete_button(request, f"/api/instances/{uid}", f"/ui/studies/{study_uid}/series/{series_uid}",
                            "instance")
    return page(request, f"Instance {text(info.get('InstanceNumber'))}", links + tags + preview + delete)


@html_errors
async def instance_tags(request: Request) -> Response:
    study_uid, series_uid, uid = _instance_uids(request)
    data = json.loads((await ctx(request).metadata.get([uid]))[0])
    rows = json_tag_rows(data, lambda tag: keyword_for_tag(int(tag, 16)) if len(tag) == 8 else "")
    back = f'<p><a href="/ui/studies/{u(study_uid)}/series/{u(series_uid)}/instances/{u(uid)}">Instance</a></p>'
    return page(request, "All tags", back + table(("Tag", "Keyword", "VR", "Value"), rows, "No attributes.",
                                                   "tag-table"))


@html_errors
async def viewer(request: Request) -> Response:
    study_uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    series_uid = validate_uid("SeriesInstanceUID", request.path_params["series"])
    fixed = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    info = await _one(request, Level.SERIES, fixed, f"Series {series_uid}")
    instances = await _find(request, Level.IMAGE, [], fixed)
    instances.sort(key=lambda r: _number(r, "InstanceNumber"))
    frames = [{"sop": r["SOPInstanceUID"], "frames": max(1, _number(r, "NumberOfFrames"))} for r in instances]
    data = {"study": study_uid, "series": series_uid, "instances": frames}
    tools = """<div class="toolbar">
<label>Preset <select id="preset"><option value="">As stored</option>
<option value="40,400">CT soft tissue (40/400)</option><option value="-600,1500">CT lung (-600/1500)</option>
<option value="300,1500">CT bone (300/1500)</option><option value="50,100">CT brain (50/100)</option></select></label>
<button type="button" id="play">Play</button> <label>fps <input id="fps" type="number" min="1" max="60" value="10">
</label> <button type="button" id="reset">Reset view</button>
<span id="status" class="status"></span></div>
<p class="hint">Wheel or ↑/↓: next image · left drag: window/level · right drag or shift+drag: pan ·
ctrl+wheel or +/−: zoom</p>"""
    owner = await _one(request, Level.STUDY, {"StudyInstanceUID": study_uid}, f"Study {study_uid}")
    back = (f'<p><a href="/ui/studies/{u(study_uid)}/series/{u(series_uid)}">Series</a> · '
            f'{e(person(owner.get("PatientName")))} ({e(owner.get("PatientID"))})</p>')
    body = (back + tools + '<div id="viewport" class="viewport" tabindex="0"><canvas id="canvas"></canvas></div>'
            + json_script("viewer-data", data))
    return page(request, f"Viewer: {text(info.get('SeriesDescription')) or series_uid}", body)


@html_errors
async def upload(request: Request) -> Response:
    if not may(request, "write"):
        raise HttpError(403, "forbidden", "your role may not upload; ask an admin for an operator account")
    body = """<div id="dropzone" class="dropzone" tabindex="0">
<p>Drop DICOM files or ZIP archives here, or <label class="pick">choose files
<input id="files" type="file" multiple></label></p></div>
<progress id="progress" max="1" value="0" hidden></progress> <span id="progress-text"></span>
<table id="results" class="results" hidden><thead><tr><th>File</th><th>Result</th><th>Details</th></tr></thead>
<tbody></tbody></table>"""
    return page(request, "Upload", body)


#: The add and edit forms of the Nodes page: (field name, label, input attributes).
NODE_FIELDS: Final = (
    ("ae_title", "AE title", 'required maxlength="16"'),
    ("host", "Host", "required"),
    ("port", "Port", 'type="number" min="1" max="65535" required'),
    ("description", "Description", ""),
    ("permissions", "Permissions", ""),
)


def _node_form(form_id: str, heading: str, button: str, values: Mapping[str, object], hidden: bool) -> str:
    inputs = "".join(f'<label>{e(label)} <input name="{name}" {attrs} value="{e(values.get(name, ""))}"></label>'
                     for name, label, attrs in NODE_FIELDS)
    return (f'<section id="{form_id}-section"{" hidden" if hidden else ""}><h2>{e(heading)}</h2>'
            f'<form id="{form_id}" class="add-node">{inputs}<button type="submit">{e(button)}</button>'
            + ('<button type="button" class="cancel">Cancel</button>' if hidden else "") + "</form></section>")


@html_errors
async def nodes(request: Request) -> Response:
    registry = ctx(request).nodes
    if registry is None:
        return page(request, "Nodes", '<p class="error">The AE registry is not available in this process.</p>')
    found = await registry.list()
    warnings = registry_warnings(found)
    warn = "".join(f'<li>{e(w)}</li>' for w in warnings)
    warn_html = f'<ul class="warnings">{warn}</ul>' if warn else ""
    admin = may(request, "admin")
    rows = []
    for n in found:
        permissions = ", ".join(sorted(n.permissions))
        edit = (f' <button type="button" class="edit-node" data-node="{e(n.id)}" data-ae-title="{e(n.ae_title)}" '
                f'data-host="{e(n.host)}" data-port="{e(n.port)}" data-description="{e(n.description)}" '
                f'data-permissions="{e(permissions)}">Edit</button>'
                f' <button type="button" class="danger remove-node" data-ae-title="{e(n.ae_title)}" '
                f'data-host="{e(n.host)}">Remove</button>') if admin else ""
        rows.append([e(n.ae_title), e(n.host), e(n.port), e(n.description), e(permissions),
                     f'<button type="button" class="echo" data-node="{e(n.id)}" data-ae-title="{e(n.ae_title)}">'
                     f'Echo</button><span class="echo-result"></span> <a class="query" '
                     f'href="/ui/remote?{qs({"node": n.id})}">Query</a>' + edit])
    forms = "" if not admin else (
        _node_form("edit-node", "Edit node", "Save", {}, hidden=True)
        + _node_form("add-node", "Add a node", "Add", {"port": 104, "permissions": "echo,store,find,move,get"},
                     hidden=False))
    return page(request, "Nodes", warn_html + table(("AE title", "Host", "Port", "Description", "May ask us", ""),
                                                    rows, "No nodes are registered.", "nodes") + forms)


@html_errors
async def association_log(request: Request) -> Response:
    limit = _int(request.query_params.get("limit"), 100, range(1, 10001), "limit")
    records = await ctx(request).archive.list_associations(limit)
    rows = []
    for r in records:
        operations = "; ".join(
            " ".join([str(o.get("op", "?"))] + [f"{k}={v}" for k, v in o.items() if k != "op" and v not in ("", None)])
            for o in r.operations[:20])
        contexts = ", ".join(sorted({str(c.get("name") or c.get("abstract_syntax", "")) for c in r.contexts
                                     if c.get("transfer_syntax")}))
        outcome = "accepted" if r.accepted else f"rejected: {r.reject_reason}"
        rows.append([e(r.started_at.strftime("%Y-%m-%d %H:%M:%S")), e(r.role), e(r.calling_aet), e(r.called_aet),
                     e(f"{r.peer_host}:{r.peer_port}"), e(outcome), e(r.end_reason),
                     e(contexts[:300]), e(operations[:600])])
    return page(request, "Association log", table(
        ("Started", "Role", "Calling AE", "Called AE", "Peer", "Outcome", "End", "Accepted contexts", "Operations"),
        rows, "No associations yet.", "log"))


def routes() -> list[BaseRoute]:
    return [
        Route("/", studies, methods=["GET"]),
        Route("/patient", patient, methods=["GET"]),
        Route("/studies/{study}", study, methods=["GET"]),
        Route("/studies/{study}/series/{series}", series_page, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{instance}", instance, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{instance}/tags", instance_tags, methods=["GET"]),
        Route("/viewer/{study}/{series}", viewer, methods=["GET"]),
        Route("/upload", upload, methods=["GET"]),
        Route("/nodes", nodes, methods=["GET"]),
        Route("/remote", html_errors(remote_page), methods=["GET"]),
        Route("/log", association_log, methods=["GET"]),
        Route("/worklist", html_errors(worklist_page), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


__all__ = ["home", "routes"]
