"""The web UI under /ui: server-rendered pages on the ONE query engine, plus static/app.js.

The pages are Jinja2 templates (templates/, autoescaped; links by ``url_for``: web/pages.py).
Pages read through the same search function as the REST API and QIDO-RS; the
actions (upload, delete, send, echo, node add/edit/remove, and query/retrieve on
the page of ui_remote.py) are made by app.js against the REST API, so the
server's access control (each route's declared permission, web/routing.py) decides
them, whatever the page showed. A viewer sees no write buttons.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from pydicom.datadict import keyword_for_tag
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.audit import Action
from minipacs.core.compression import Compressor
from minipacs.core.deid import ALL_OPTIONS as DEID_OPTIONS
from minipacs.core.errors import ArchiveError, NotFound
from minipacs.core.labels import labels_of, labels_of_studies
from minipacs.core.nodes import registry_warnings
from minipacs.core.paths import validate_uid
from minipacs.dicom.levels import Level
from minipacs.index.matching import wildcard_match
from minipacs.services import status
from minipacs.services.status import Status
from minipacs.web import audit, login
from minipacs.web.byteranges import RangedStaticFiles
from minipacs.web.completion import completed_studies
from minipacs.web.errors import HttpError, classify, redact
from minipacs.web.pages import json_tag_rows, may, path_for, person, render, text
from minipacs.web.routing import Endpoint, GuardedMount
from minipacs.web.search import LABELS_PARAM, ascii_digits, search
from minipacs.web.types import ctx
from minipacs.web.ui_diagnostics import diagnostics_page
from minipacs.web.ui_jobs import jobs_page
from minipacs.web.ui_overview import overview_page
from minipacs.web.ui_policy import retention_page, storage_page
from minipacs.web.ui_remote import remote_page
from minipacs.web.ui_rules import rules_page, study_deliveries
from minipacs.web.ui_worklist import worklist_page

STATIC_DIR: Final = Path(__file__).with_name("static")
PAGE_SIZES: Final = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE: Final = 25
#: study list form field -> the search key it matches. Every field matches the same way (issue 12 item 23):
#: case-insensitive, the typed text anywhere in the value, or the whole value as a pattern when the text has
#: PS3.4 C.2.2.2.4 wildcards (* and ?). The patient name goes to the index (its casefolded twin column); the
#: others are matched here, on at most ``ui_search_max_studies`` studies.
STUDY_FILTERS: Final[Mapping[str, str]] = {
    "name": "PatientName",
    "pid": "PatientID",
    "modality": "ModalitiesInStudy",
    "accession": "AccessionNumber",
    "description": "StudyDescription",
}
#: ``sort=`` -> the key the study list is ordered by; numbers sort as numbers.
STUDY_SORTS: Final[Mapping[str, str]] = {
    "patient": "PatientName",
    "pid": "PatientID",
    "date": "StudyDate",
    "modality": "ModalitiesInStudy",
    "accession": "AccessionNumber",
    "description": "StudyDescription",
    "series": "NumberOfStudyRelatedSeries",
    "instances": "NumberOfStudyRelatedInstances",
}
NUMERIC_SORTS: Final = frozenset({"series", "instances"})
DEFAULT_SORT: Final = ("date", "desc")

PageEndpoint = Callable[[Request], Awaitable[Response]]


def html_errors(endpoint: PageEndpoint) -> PageEndpoint:
    """Errors on a page become an HTML page with the same status and sentence as the REST error."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpError as exc:
            return render(
                request, "error.html", "Error", exc.status, message=redact(exc.message, ctx(request).settings)
            )
        except ArchiveError as exc:
            status, _ = classify(exc)
            return render(request, "error.html", "Error", status, message=redact(str(exc), ctx(request).settings))

    return wrapped


def _matching(value: str) -> str:
    """What a person types -> a pattern (PS3.4 C.2.2.2.4): * around text that has no wildcard of its own."""
    value = value.strip()
    if value and not any(c in value for c in "*?"):
        return f"*{value}*"
    return value


def _field_matches(pattern: str, value: object) -> bool:
    """A casefolded pattern (``_matching``) against one value of a match, or any of several (VM > 1)."""
    values = value if isinstance(value, list) else [value]
    return any(wildcard_match(pattern, text(v).casefold()) for v in values)


def _sort_key(field: str, row: Mapping[str, Any]) -> int | str:
    """Numbers as numbers, dates with their time, text casefolded (empty values are put last by the caller)."""
    raw = text(row.get(STUDY_SORTS[field]))
    if field in NUMERIC_SORTS:
        return _number(row, STUDY_SORTS[field])
    if field == "date":
        return raw + text(row.get("StudyTime"))
    return (person(raw) if field == "patient" else raw).casefold()


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
    if not ascii_digits(raw) or int(raw) not in allowed:
        raise HttpError(400, f"invalid_{name}", f"{name} must be one of the offered values, not {raw[:20]!r}")
    return int(raw)


async def _find(
    request: Request, level: Level, params: list[tuple[str, str]], fixed: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for ds in search(ctx(request).archive, level, params, fixed):
        row: dict[str, Any] = {}
        for elem in ds:
            value = elem.value
            row[elem.keyword] = (
                None if value is None or value == "" else ([str(v) for v in value] if elem.VM > 1 else str(value))
            )
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


async def _send_nodes(request: Request) -> list[Any]:
    """The nodes a Send form offers (none asked for when the role may not send)."""
    registry = ctx(request).nodes
    if not may(request, "write") or registry is None:
        return []
    return list(await registry.list())


# ------------------------------------------------------------------ pages


async def home(request: Request) -> Response:
    return RedirectResponse(path_for(request, "ui:overview"), status_code=307)


#: the study list's search form: (field name, label, input type)
SEARCH_FIELDS: Final = (
    ("name", "Patient name", "search"),
    ("pid", "Patient ID", "search"),
    ("from", "Date from", "date"),
    ("to", "to", "date"),
    ("modality", "Modality", "search"),
    ("accession", "Accession", "search"),
    ("description", "Description", "search"),
    ("labels", "Labels", "search"),  # core/labels.py: studies carrying every one (comma-separated)
)


@html_errors
async def studies(request: Request) -> Response:
    """The study list: every field filters alike (``STUDY_FILTERS``), with the total and sortable columns."""
    q = request.query_params
    size = _int(q.get("size"), DEFAULT_PAGE_SIZE, PAGE_SIZES, "size")
    offset = _int(q.get("offset"), 0, range(0, 10**9), "offset")
    sort = q.get("sort") or DEFAULT_SORT[0]
    order = q.get("dir") or (DEFAULT_SORT[1] if sort == DEFAULT_SORT[0] else "asc")
    if sort not in STUDY_SORTS or order not in ("asc", "desc"):
        raise HttpError(
            400, "invalid_sort", f"sort is one of {', '.join(STUDY_SORTS)} and dir is asc or desc, not {sort[:20]!r}"
        )
    cap = ctx(request).settings.ui_search_max_studies
    params = [("limit", str(cap + 1))]
    patterns: dict[str, str] = {}
    for field, key in STUDY_FILTERS.items():
        value = _matching(q.get(field, ""))
        if not value:
            continue
        if field == "name":
            params.append((key, value))
        else:
            patterns[key] = value.casefold()
    dates = _date_range(q.get("from", ""), q.get("to", ""))
    if dates:
        params.append(("StudyDate", dates))
    if q.get("labels", "").strip():
        params.append((LABELS_PARAM, q["labels"]))
    found = await _find(request, Level.STUDY, params)
    capped = len(found) > cap
    rows = [r for r in found[:cap] if all(_field_matches(p, r.get(k)) for k, p in patterns.items())]
    filled = [r for r in rows if text(r.get(STUDY_SORTS[sort]))]
    filled.sort(key=functools.partial(_sort_key, sort), reverse=order == "desc")
    rows = filled + [r for r in rows if not text(r.get(STUDY_SORTS[sort]))]
    done = await completed_studies(ctx(request).archive)
    values = {k: q.get(k, "") for k in (*STUDY_FILTERS, "from", "to", "labels")}
    page = rows[offset : offset + size]
    return render(
        request,
        "studies.html",
        "Studies",
        rows=page,
        labels=await labels_of_studies(ctx(request).archive, [text(r.get("StudyInstanceUID")) for r in page]),
        total=len(rows),
        capped=cap if capped else 0,
        more=len(rows) > offset + size,
        done=done,
        fields=SEARCH_FIELDS,
        values=values,
        sizes=PAGE_SIZES,
        size=size,
        offset=offset,
        sort=sort,
        order=order,
        keep={**values, "size": size, "sort": sort, "dir": order},
        filters={**values, "size": size},
    )


@html_errors
async def patient(request: Request) -> Response:
    """?id=Patient ID; or ?study=UID: the patient of that study, for a patient without a Patient ID,
    who is kept apart per study (index/repository.py patient_key) and so has that one study."""
    study_uid = request.query_params.get("study")
    if study_uid is not None and "id" not in request.query_params:
        study_uid = validate_uid("StudyInstanceUID", study_uid)
        info = await _one(request, Level.STUDY, {"StudyInstanceUID": study_uid}, f"Study {study_uid}")
        if info.get("PatientID"):
            return RedirectResponse(
                path_for(request, "ui:patient", query={"id": text(info.get("PatientID"))}), status_code=307
            )
        return render(
            request,
            "patient.html",
            f"Patient {person(info.get('PatientName'))}",
            info=info,
            pid="",
            study_uid=study_uid,
            studies=[info],
        )
    pid = request.query_params.get("id", "")
    if not pid or len(pid) > 64 or any(c in pid for c in "\\*?"):
        raise HttpError(
            400,
            "invalid_identifier",
            "a Patient ID is 1 to 64 characters without \\, * or ?; "
            "a patient without one is opened by a study (?study=Study Instance UID)",
        )
    info = await _one(request, Level.PATIENT, {"PatientID": pid}, f"Patient {pid!r}")
    found = await _find(request, Level.STUDY, [], {"PatientID": pid})
    return render(
        request, "patient.html", f"Patient {person(info.get('PatientName'))}", info=info, pid=pid, studies=found
    )


@html_errors
async def study(request: Request) -> Response:
    uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    info = await _one(request, Level.STUDY, {"StudyInstanceUID": uid}, f"Study {uid}")
    series = await _find(request, Level.SERIES, [], {"StudyInstanceUID": uid})
    series.sort(key=lambda r: _number(r, "SeriesNumber"))
    pid = str(info.get("PatientID") or "")
    audit.record(request, Action.VIEWED, patient_id=pid, study_uid=uid, detail="study page")
    return render(
        request,
        "study.html",
        f"Study {text(info.get('StudyDescription')) or uid}",
        info=info,
        uid=uid,
        series=series,
        nodes=await _send_nodes(request),
        labels=await labels_of(ctx(request).archive, uid),
        deid_options=DEID_OPTIONS,
        storage=await Compressor(ctx(request).archive).savings(uid),  # disk saved by compression
        deliveries=await study_deliveries(request, uid),
    )


@html_errors
async def series_page(request: Request) -> Response:
    study_uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    uid = validate_uid("SeriesInstanceUID", request.path_params["series"])
    fixed = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid}
    info = await _one(request, Level.SERIES, fixed, f"Series {uid}")
    instances = await _find(request, Level.IMAGE, [], fixed)
    instances.sort(key=lambda r: _number(r, "InstanceNumber"))
    return render(
        request,
        "series.html",
        f"Series {text(info.get('SeriesDescription')) or uid}",
        info=info,
        uid=uid,
        study_uid=study_uid,
        instances=instances,
        nodes=await _send_nodes(request),
    )


def _instance_uids(request: Request) -> tuple[str, str, str]:
    return (
        validate_uid("StudyInstanceUID", request.path_params["study"]),
        validate_uid("SeriesInstanceUID", request.path_params["series"]),
        validate_uid("SOPInstanceUID", request.path_params["instance"]),
    )


@html_errors
async def instance(request: Request) -> Response:
    study_uid, series_uid, uid = _instance_uids(request)
    info = await _one(
        request,
        Level.IMAGE,
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": uid},
        f"SOP Instance {uid}",
    )
    return render(
        request,
        "instance.html",
        f"Instance {text(info.get('InstanceNumber'))}",
        info=info,
        uid=uid,
        study_uid=study_uid,
        series_uid=series_uid,
    )


@html_errors
async def instance_tags(request: Request) -> Response:
    study_uid, series_uid, uid = _instance_uids(request)
    data = json.loads((await ctx(request).metadata.get([uid]))[0])
    rows = json_tag_rows(data, lambda tag: keyword_for_tag(int(tag, 16)) if len(tag) == 8 else "")
    return render(request, "tags.html", "All tags", rows=rows, uid=uid, study_uid=study_uid, series_uid=series_uid)


@html_errors
async def viewer(request: Request) -> Response:
    study_uid = validate_uid("StudyInstanceUID", request.path_params["study"])
    series_uid = validate_uid("SeriesInstanceUID", request.path_params["series"])
    fixed = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    info = await _one(request, Level.SERIES, fixed, f"Series {series_uid}")
    instances = await _find(request, Level.IMAGE, [], fixed)
    instances.sort(key=lambda r: _number(r, "InstanceNumber"))
    frames = [{"sop": r["SOPInstanceUID"], "frames": max(1, _number(r, "NumberOfFrames"))} for r in instances]
    owner = await _one(request, Level.STUDY, {"StudyInstanceUID": study_uid}, f"Study {study_uid}")
    return render(
        request,
        "viewer.html",
        f"Viewer: {text(info.get('SeriesDescription')) or series_uid}",
        study_uid=study_uid,
        series_uid=series_uid,
        owner=owner,
        data={"study": study_uid, "series": series_uid, "instances": frames},
    )


@html_errors
async def upload(request: Request) -> Response:
    return render(request, "upload.html", "Upload")


@html_errors
async def nodes(request: Request) -> Response:
    registry = ctx(request).nodes
    if registry is None:
        return render(request, "nodes.html", "Nodes", registry_missing=True)
    found = await registry.list()
    return render(
        request,
        "nodes.html",
        "Nodes",
        registry_missing=False,
        warnings=registry_warnings(found),
        nodes=[(n, ", ".join(sorted(n.permissions))) for n in found],
    )


#: the status table each operation's statuses are read with (PS3.4 annexes); others: GENERAL/STORAGE
_OP_STATUS_TABLES: Final[Mapping[str, Mapping[int, Status]]] = {
    "C-MOVE": status.MOVE,
    "C-GET": status.GET,
    "C-FIND": status.FIND,
    "C-STORE": status.STORAGE,
    "N-CREATE": status.MPPS,
    "N-SET": status.MPPS,
}
LOG_STATUS_CHOICES: Final = ("", "success", "warning", "failure", "rejected")


def _operation_text(op: Mapping[str, Any]) -> tuple[str, list[int]]:
    """One logged operation as a line, each status in hex with its PS3.4 meaning; and its statuses."""
    name = str(op.get("op", "?"))
    if name == "summary":
        counts = op.get("counts")
        if isinstance(counts, Mapping):
            return "in all: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), []
    table = dict(_OP_STATUS_TABLES.get(name, {}))
    parts, codes = [name], []
    for key, value in op.items():
        if key == "op" or value in ("", None):
            continue
        if key.endswith("status") and isinstance(value, int) and not isinstance(value, bool):
            codes.append(value)
            parts.append(f"{key.replace('_', ' ')} {status.describe(value, table)}")
        else:
            parts.append(f"{key.replace('_', ' ')}: {str(value)[:200]}")
    return " · ".join(parts), codes


def _status_kind(codes: list[int], accepted: bool) -> str:
    """The association's worst outcome: rejected, failure, warning or success (PS3.7 C: status classes)."""
    if not accepted:
        return "rejected"
    if any(
        not (status.is_success(c) or status.is_warning(c) or c in status.PENDING_STATUSES or c == status.CANCEL)
        for c in codes
    ):
        return "failure"
    if any(status.is_warning(c) for c in codes):
        return "warning"
    return "success"


def _when(raw: str, name: str) -> dt.datetime | None:
    """An <input type=datetime-local> value (UTC) or None."""
    if not raw:
        return None
    try:
        return dt.datetime.fromisoformat(raw).replace(tzinfo=dt.UTC)
    except ValueError:
        raise HttpError(
            400, f"invalid_{name}", f"{name} is a date and time YYYY-MM-DDTHH:MM, not {raw[:20]!r}"
        ) from None


@html_errors
async def association_log(request: Request) -> Response:
    """The association log: a table filtered by AE title, address, status and time, in pages; statuses in hex
    with their meaning (issue 12 item 22). It looks at the latest ``ui_log_window`` associations."""
    q = request.query_params
    size = _int(q.get("size"), DEFAULT_PAGE_SIZE, PAGE_SIZES, "size")
    offset = _int(q.get("offset"), 0, range(0, 10**9), "offset")
    ae, address = q.get("ae", "").strip().casefold(), q.get("address", "").strip().casefold()
    wanted = q.get("status", "")
    if wanted not in LOG_STATUS_CHOICES:
        raise HttpError(
            400, "invalid_status", f"status is one of {', '.join(LOG_STATUS_CHOICES[1:])}, not {wanted[:20]!r}"
        )
    since, until = _when(q.get("from", ""), "from"), _when(q.get("to", ""), "to")
    window = ctx(request).settings.ui_log_window
    records = await ctx(request).archive.list_associations(window)
    rows = []
    for r in records:
        if ae and ae not in r.calling_aet.casefold() and ae not in r.called_aet.casefold():
            continue
        if address and address not in f"{r.peer_host}:{r.peer_port}".casefold():
            continue
        started = r.started_at if r.started_at.tzinfo else r.started_at.replace(tzinfo=dt.UTC)
        if (since and started < since) or (until and started > until):
            continue
        lines: list[str] = []
        codes: list[int] = []
        for op in r.operations:
            line, found = _operation_text(op)
            codes.extend(found)
            if len(lines) < 50:
                lines.append(line)
        if len(r.operations) > 50:
            lines.append(f"… and {len(r.operations) - 50} more operation(s)")
        kind = _status_kind(codes, r.accepted)
        if wanted and kind != wanted:
            continue
        contexts = ", ".join(
            sorted({str(c.get("name") or c.get("abstract_syntax", "")) for c in r.contexts if c.get("transfer_syntax")})
        )
        rows.append(
            {
                "started": started.strftime("%Y-%m-%d %H:%M:%S"),
                "role": "incoming" if r.role == "acceptor" else "outgoing",
                "calling": r.calling_aet,
                "called": r.called_aet,
                "peer": f"{r.peer_host}:{r.peer_port}",
                "kind": kind,
                "outcome": "accepted" if r.accepted else f"rejected: {r.reject_reason}",
                "end": r.end_reason,
                "contexts": contexts[:300],
                "operations": lines,
                "user": r.user_identity,
                "tls": r.tls,
            }
        )
    values = {"ae": q.get("ae", ""), "address": q.get("address", ""), "status": wanted}
    values.update({"from": q.get("from", ""), "to": q.get("to", "")})
    return render(
        request,
        "log.html",
        "Association log",
        rows=rows[offset : offset + size],
        total=len(rows),
        window=window if len(records) >= window else 0,
        more=len(rows) > offset + size,
        offset=offset,
        size=size,
        sizes=PAGE_SIZES,
        values=values,
        statuses=LOG_STATUS_CHOICES,
        keep={**values, "size": size},
    )


def routes() -> list[BaseRoute]:
    """Mounted at /ui (named "ui": ``url_for('ui:study', study=...)``)."""
    inst = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Endpoint("/", studies, "GET", "read", "Page: the study list, search and paging", name="studies"),
        Endpoint(
            "/overview",
            html_errors(overview_page),
            "GET",
            "read",
            "Page: the archive at a glance: arrivals, storage, jobs, failures",
            name="overview",
        ),
        Endpoint(
            "/patient",
            patient,
            "GET",
            "read",
            "Page: a patient (?id=Patient ID, or ?study=UID for the "
            "patient of a study, e.g. one without a Patient ID) and their studies",
            name="patient",
        ),
        Endpoint("/studies/{study}", study, "GET", "read", "Page: a study and its series", name="study"),
        Endpoint(
            "/studies/{study}/series/{series}",
            series_page,
            "GET",
            "read",
            "Page: a series and its instances",
            name="series",
        ),
        Endpoint(inst, instance, "GET", "read", "Page: an instance", name="instance"),
        Endpoint(inst + "/tags", instance_tags, "GET", "read", "Page: all tags of an instance", name="tags"),
        Endpoint(
            "/viewer/{study}/{series}", viewer, "GET", "read", "Page: the image viewer of a series", name="viewer"
        ),
        Endpoint("/upload", upload, "GET", "write", "Page: upload files", name="upload"),
        Endpoint("/nodes", nodes, "GET", "read", "Page: the DICOM nodes", name="nodes"),
        Endpoint(
            "/remote", html_errors(remote_page), "GET", "read", "Page: query/retrieve another node", name="remote"
        ),
        Endpoint("/log", association_log, "GET", "read", "Page: the association log", name="log"),
        Endpoint("/jobs", jobs_page, "GET", "read", "Page: background jobs, with live progress", name="jobs"),
        Endpoint("/rules", rules_page, "GET", "admin", "Page: auto-routing rules", name="rules"),
        Endpoint(
            "/retention",
            html_errors(retention_page),
            "GET",
            "admin",
            "Page: retention rules, what a run would delete now, run now",
            name="retention",
        ),
        Endpoint(
            "/storage",
            html_errors(storage_page),
            "GET",
            "read",
            "Page: disk used and saved by compression, compression policies, compress a study",
            name="storage",
        ),
        Endpoint(
            "/diagnostics",
            html_errors(diagnostics_page),
            "GET",
            "admin",
            "Page: diagnostics: findings of the association log, checks of each node",
            name="diagnostics",
        ),
        Endpoint(
            "/worklist", html_errors(worklist_page), "GET", "read", "Page: the modality worklist", name="worklist"
        ),
        Endpoint("/login", login.login_page, "GET", "public", "Page: log in (a form with a CSRF token)", name="login"),
        Endpoint(
            "/login",
            login.login,
            "POST",
            "public",
            "Log in: a form or JSON {name, password}; sets the session "
            "cookie (HttpOnly, SameSite=Strict); JSON answers {user, role, csrf_token}",
            name="login",
            form_checks_csrf=True,
        ),
        Endpoint(
            "/logout",
            login.logout,
            "POST",
            "public",
            "Log out: ends the session (its CSRF token needed)",
            name="logout",
            form_checks_csrf=True,
        ),
        Endpoint(
            "/session",
            login.whoami,
            "GET",
            "read",
            "Who the credentials or session say you are: {user, role}",
            name="session",
        ),
        # our own script and style sheet: no patient data, and the login page needs them
        GuardedMount(
            "/static",
            RangedStaticFiles(directory=STATIC_DIR),
            "public",
            "The UI's script and style sheet",
            name="static",
        ),
    ]


__all__ = ["home", "routes"]
