"""Errors -> HTTP: ``{"error": {"code": "stable_code", "message": "a sentence"}}``.

The mapping is by exception class: :data:`ERROR_TABLE` (core error class -> status and
code) becomes Starlette ``exception_handlers``, one per class, and a raised error
answers as the nearest class on its MRO that has a row (``NoSuchFrame`` as
``NotFound``). An ArchiveError whose class has no row of its own or of a base is a
500 logged with its traceback, so a new error class is noticed rather than mapped by
accident; any other exception is Starlette's plain 500, logged by the server.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount

from minipacs.config import Settings
from minipacs.core import errors as core
from minipacs.core.archive import ArchiveSettings
from minipacs.core.deid import InvalidDeidOptions
from minipacs.core.delete import Spared
from minipacs.core.jobs import InvalidJob, JobConflict
from minipacs.core.labels import InvalidLabel
from minipacs.core.nodes import InvalidNode
from minipacs.core.retrieve import InvalidRetrieveIdentifier
from minipacs.core.rules import InvalidRule, RuleConflict
from minipacs.core.worklist import InvalidWorklistEntry

log = logging.getLogger("minipacs.web.errors")


class HttpError(Exception):
    """An error the web layer itself raises (bad parameter, too large, not acceptable)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers: Mapping[str, str] = headers or {}


#: ArchiveError class -> (HTTP status, stable code)
ERROR_TABLE: Final[Mapping[type[core.ArchiveError], tuple[int, str]]] = MappingProxyType(
    {
        core.NotFound: (404, "not_found"),
        JobConflict: (409, "job_conflict"),
        InvalidJob: (400, "invalid_job"),
        core.UnreadableInstance: (500, "unreadable_instance"),  # stored, but its file is broken: not the client's fault
        core.InvalidIdentifier: (400, "invalid_identifier"),
        core.InstanceMismatch: (400, "instance_mismatch"),
        core.InvalidInstance: (400, "invalid_instance"),
        core.DuplicateInstance: (409, "duplicate_instance"),
        core.PreviouslyRejected: (409, "previously_rejected"),  # a conflict with what a rejection note decided
        core.RejectionNotAllowed: (403, "rejection_not_allowed"),  # dcm4chee-arc: 403 for 0xA775
        core.RejectionNoteTooLarge: (413, "too_large"),
        core.RejectionNoteError: (400, "invalid_rejection_note"),
        core.DatasetTooLarge: (413, "too_large"),
        core.QueryTooBroad: (422, "query_too_broad"),
        core.OutOfResources: (507, "out_of_resources"),
        core.InvalidKeyValue: (400, "invalid_key_value"),
        core.IdentifierMismatch: (400, "invalid_query"),
        core.InvalidQuery: (400, "invalid_query"),
        InvalidRetrieveIdentifier: (400, "invalid_retrieve"),
        core.UnknownDestination: (404, "unknown_node"),
        InvalidNode: (400, "invalid_node"),
        InvalidWorklistEntry: (400, "invalid_worklist_entry"),
        InvalidDeidOptions: (400, "invalid_deid_options"),
        InvalidRule: (400, "invalid_rule"),
        RuleConflict: (409, "rule_conflict"),
        core.InvalidCorrection: (400, "invalid_correction"),
        core.CorrectionConflict: (409, "correction_conflict"),
        core.AccessDenied: (403, "forbidden"),
        InvalidLabel: (400, "invalid_label"),
        Spared: (409, "spared"),
    }
)
#: an ArchiveError with no row: a server fault until someone gives it one
UNMAPPED: Final = (500, "archive_error")
#: Starlette's own HTTPException status -> stable code
HTTP_CODES: Final[Mapping[int, str]] = MappingProxyType({404: "not_found", 405: "method_not_allowed"})

Handler = Callable[[Request, Exception], Awaitable[Response]]


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _roots(settings: Settings | ArchiveSettings) -> list[str]:
    """Folders whose paths an answer must not show, longest first."""
    folders = {settings.data_dir, settings.data_dir.resolve(), Path(tempfile.gettempdir()).resolve()}
    ohif_dir = getattr(settings, "ohif_dir", "")
    if ohif_dir:
        folders |= {Path(ohif_dir), Path(ohif_dir).resolve()}
    return sorted({str(f).rstrip("/") for f in folders if str(f) not in ("", ".", "/")}, key=len, reverse=True)


def redact(message: str, settings: Settings | ArchiveSettings) -> str:
    """``message`` without the server's file paths: a path under the data directory, the OHIF folder
    or the temporary folder becomes its last component (``/srv/pacs/staging/upload-x.part`` ->
    ``upload-x.part``). Errors from the core and from pydicom name files; a client needs to know
    which file of its request failed, never where the server keeps things."""
    for root in _roots(settings):
        if root in message:
            message = re.sub(
                re.escape(root) + r"(?![^/\s'\",;:)])(?:/[^\s'\",;:)]*)?",
                functools.partial(_last_component, root),
                message,
            )
    return message


def _last_component(root: str, found: re.Match[str]) -> str:
    below = found.group(0)[len(root) :].strip("/")
    return below.rsplit("/", 1)[-1] if below else "a folder of the server"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.ctx.settings
    return settings


def classify(exc: core.ArchiveError) -> tuple[int, str]:
    """(status, code) of the nearest class on the exception's MRO with a row; UNMAPPED (logged) if none."""
    for kind in type(exc).__mro__:
        if kind in ERROR_TABLE:
            return ERROR_TABLE[kind]
    log.error(
        "%s.%s has no row in web/errors.py ERROR_TABLE: answered HTTP %d",
        type(exc).__module__,
        type(exc).__qualname__,
        UNMAPPED[0],
        exc_info=exc,
    )
    return UNMAPPED


async def archive_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, core.ArchiveError):  # pragma: no cover - registered for ArchiveError classes only
        raise exc
    status, code = classify(exc)
    return error_response(status, code, redact(str(exc), _settings(request)))


async def http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HttpError):  # pragma: no cover - registered for HttpError only
        raise exc
    response = error_response(exc.status, exc.code, redact(exc.message, _settings(request)))
    response.headers.update(exc.headers)
    return response


async def starlette_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route: 404, no such method: 405) in the same JSON shape."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = "there is nothing at this URL" if exc.status_code == 404 else str(exc.detail)
    if exc.status_code != 405:
        return error_response(exc.status_code, code, message)
    # RFC 9110 §15.5.6: a 405 says which methods the resource has (Allow), all of them, not the first route's
    scope = request.scope  # as the app received it: routing has moved root_path on under mounts since
    fresh = {"type": "http", "method": "GET", "path": scope["path"], "root_path": scope.get("app_root_path", "")}
    allowed = ", ".join(sorted(_allowed(request.app.routes, fresh)))
    response = error_response(405, code, f"{request.method[:20]} is not a method of this URL; it answers {allowed}")
    response.headers["Allow"] = allowed
    return response


def _allowed(routes: list[BaseRoute], scope: dict[str, Any]) -> set[str]:
    """The methods of every route (under mounts too) whose path matches ``scope``; HEAD goes with GET."""
    found: set[str] = set()
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            found |= _allowed(list(route.routes), {**scope, **child})
        else:
            found |= set(getattr(route, "methods", None) or ())
    return found


def exception_handlers() -> dict[type[Exception], Handler]:
    """For ``Starlette(exception_handlers=...)``: Starlette picks the handler of the nearest class on the MRO."""
    handlers: dict[type[Exception], Handler] = {kind: archive_error for kind in ERROR_TABLE}
    handlers[core.ArchiveError] = archive_error  # the unmapped ones: 500, logged
    handlers[HttpError] = http_error
    handlers[HTTPException] = starlette_error
    return handlers


__all__ = [
    "ERROR_TABLE",
    "HTTP_CODES",
    "UNMAPPED",
    "HttpError",
    "classify",
    "error_response",
    "exception_handlers",
    "redact",
]
