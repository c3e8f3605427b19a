"""Core errors -> HTTP: ``{"error": {"code": "stable_code", "message": "a sentence"}}``."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from minipacs.core import errors as core
from minipacs.core.nodes import InvalidNode
from minipacs.core.retrieve import InvalidRetrieveIdentifier
from minipacs.core.worklist import InvalidWorklistEntry


class HttpError(Exception):
    """An error the web layer itself raises (bad parameter, too large, not acceptable)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ArchiveError subclass -> (HTTP status, stable code); most specific first
ERROR_TABLE: Final[tuple[tuple[type[Exception], int, str], ...]] = (
    (core.NotFound, 404, "not_found"),
    (core.InvalidIdentifier, 400, "invalid_identifier"),
    (core.InstanceMismatch, 400, "instance_mismatch"),
    (core.InvalidInstance, 400, "invalid_instance"),
    (core.DuplicateInstance, 409, "duplicate_instance"),
    (core.DatasetTooLarge, 413, "too_large"),
    (core.OutOfResources, 507, "out_of_resources"),
    (core.InvalidKeyValue, 400, "invalid_key_value"),
    (core.IdentifierMismatch, 400, "invalid_query"),
    (core.InvalidQuery, 400, "invalid_query"),
    (InvalidRetrieveIdentifier, 400, "invalid_retrieve"),
    (core.UnknownDestination, 404, "unknown_node"),
    (InvalidNode, 400, "invalid_node"),
    (InvalidWorklistEntry, 400, "invalid_worklist_entry"),
    (core.AccessDenied, 403, "forbidden"),
    (core.ArchiveError, 500, "archive_error"),
)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def classify(exc: Exception) -> tuple[int, str]:
    for kind, status, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


async def http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.code, exc.message)
    status, code = classify(exc)
    return error_response(status, code, str(exc))


__all__ = ["ERROR_TABLE", "HttpError", "classify", "error_response", "http_error"]
