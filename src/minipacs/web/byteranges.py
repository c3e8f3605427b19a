"""Byte ranges (RFC 9110 §14): ONE rule for every route that takes a Range header -- WADO-RS bulk data
and frames (web/bulkdata.py), the UI's static files and the OHIF viewer's files.

- one range of bytes, ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` (§14.1.2): 206 with Content-Range
  (§15.3.7), a last position past the end read as the end;
- one that starts at or past the end, or a suffix of 0 bytes (unsatisfiable, §14.1.1), and one whose
  last position is before its first (invalid, §14.1.1; rejected as §14.2 allows): 416 with
  ``Content-Range: bytes */size`` (§15.5.17);
- anything else -- several ranges, another unit, positions that are not ASCII digits or have more than
  :data:`MAX_DIGITS` of them, an empty range: ignored, as §14.2 allows: the whole content, 200.

Starlette's FileResponse, which serves the files, answered an invalid range and any header it could not
read with 400, and several ranges with multipart/byteranges: :class:`RangedFileResponse` puts this rule
in front of it.
"""

from __future__ import annotations

import os
import re
from typing import Final

from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Receive, Scope, Send

#: Positions of more digits than this are no range we read (``int()`` of 5000 digits raised: a 500).
MAX_DIGITS: Final = 18
_RANGE: Final = re.compile(rf"^bytes=(\d{{0,{MAX_DIGITS}}})-(\d{{0,{MAX_DIGITS}}})$", re.ASCII)


class RangeNotSatisfiable(Exception):
    """416: the range is unsatisfiable or invalid for content of ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(f"no byte range of {size} bytes")
        self.size = size


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last position (inclusive) that ``header`` asks of content of ``size`` bytes, or None
    to send it whole; raises :class:`RangeNotSatisfiable` for a 416 (the rules: module docstring)."""
    found = _RANGE.match((header or "").strip())
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first, last = found.group(1), found.group(2)
    if first == "":  # a suffix: the last n bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - int(last)), size - 1
    start = int(first)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def not_satisfiable(size: int, media_type: str | None = None) -> Response:
    """The 416 of §15.5.17, with the content's size."""
    return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"}, media_type=media_type)


class RangedFileResponse(FileResponse):
    """Starlette's FileResponse under :func:`byte_range`'s rule: a range it ignores is taken out of the
    request before Starlette sees it, a 416 answered here; one range is left to Starlette, which reads
    it as we do (and handles If-Range)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("range")
        if header is not None and self.status_code == 200 and scope.get("method", "GET") in ("GET", "HEAD"):
            try:
                size = (self.stat_result or os.stat(self.path)).st_size
            except OSError:  # Starlette says it in its own words
                await super().__call__(scope, receive, send)
                return
            try:
                chosen = byte_range(header, size)
            except RangeNotSatisfiable:
                await not_satisfiable(size, self.media_type)(scope, receive, send)
                return
            if chosen is None:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]}
        await super().__call__(scope, receive, send)


class RangedStaticFiles(StaticFiles):
    """StaticFiles whose files are :class:`RangedFileResponse` s."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = RangedFileResponse(full_path, status_code=status_code, stat_result=stat_result)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


__all__ = [
    "MAX_DIGITS",
    "RangeNotSatisfiable",
    "RangedFileResponse",
    "RangedStaticFiles",
    "byte_range",
    "not_satisfiable",
]
