"""STOW-RS as a client (PS3.18 10.5 Store Transaction): stored Part 10 files POSTed to a DICOMweb
server as one ``multipart/related; type="application/dicom"`` request, streamed from the files.

Used by auto-routing (``stow_to``). The standard library's http.client, in a worker thread: no
dependency for one POST. The answer (PS3.18 10.5.3) is read as JSON: 200 every instance stored,
202 some failed (Failed SOP Sequence (0008,1198) with Failure Reason (0008,1197)), 409 none stored.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import urlsplit

#: Bytes read from a file per chunk of the request body.
CHUNK: Final = 1 << 20
_FAILED_SOP_SEQUENCE: Final = "00081198"
_FAILURE_REASON: Final = "00081197"
_REFERENCED_SOP_INSTANCE: Final = "00081155"


class StowError(Exception):
    """The request could not be made, or the server refused it as a whole. ``retry``: it may pass
    (no connection, a timeout, a 5xx or 429 answer)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class StowResult:
    status: int
    #: SOP Instance UID -> why the server did not store it (PS3.18 10.5.3.2 Failure Reason).
    failed: dict[str, str] = field(default_factory=dict)


def studies_url(base: str) -> str:
    """PS3.18 10.5.1: the Store Transaction's target is ``{base}/studies``."""
    return base if base.rstrip("/").endswith("/studies") else base.rstrip("/") + "/studies"


def _body(files: Sequence[Path | Callable[[], BinaryIO]], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        with open(path, "rb") if isinstance(path, Path) else path() as fh:  # a stored one: StoredInstance.open
            while chunk := fh.read(CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _failures(payload: bytes) -> dict[str, str]:
    try:
        doc = json.loads(payload or b"{}")
    except ValueError:
        return {}
    items = doc.get(_FAILED_SOP_SEQUENCE, {}).get("Value", []) if isinstance(doc, dict) else []
    failed: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        uid = (item.get(_REFERENCED_SOP_INSTANCE, {}).get("Value") or [""])[0]
        reason = (item.get(_FAILURE_REASON, {}).get("Value") or [0])[0]
        failed[str(uid)] = f"the DICOMweb server refused it (Failure Reason {int(reason):04X}H)"
    return failed


def _post(
    url: str, files: Sequence[Path | Callable[[], BinaryIO]], timeout: float, context: ssl.SSLContext | None
) -> StowResult:
    target = urlsplit(studies_url(url))
    boundary = uuid.uuid4().hex
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.netloc, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(target.netloc, timeout=timeout)
    try:
        try:
            conn.request(
                "POST",
                target.path + (f"?{target.query}" if target.query else ""),
                body=_body(files, boundary),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
                encode_chunked=True,
            )
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            raise StowError(f"cannot reach {target.netloc}: {exc.strerror or exc}", retry=True) from None
        except http.client.HTTPException as exc:
            raise StowError(f"{target.netloc} broke off the answer: {exc!r}", retry=True) from None
    finally:
        conn.close()
    status = response.status
    if status in (200, 202):
        return StowResult(status, _failures(payload) if status == 202 else {})
    text = payload[:200].decode("utf-8", "replace").strip()
    retry = status >= 500 or status == 429
    if status == 409:
        failed = _failures(payload)
        if failed:
            return StowResult(status, failed)
    raise StowError(
        f"{studies_url(url)} answered HTTP {status} {response.reason}" + (f": {text}" if text else ""), retry=retry
    )


async def stow(
    url: str,
    files: Sequence[Path | Callable[[], BinaryIO]],
    *,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> StowResult:
    """POST ``files`` to the DICOMweb base ``url`` (PS3.18 10.5); raises :class:`StowError`."""
    return await asyncio.to_thread(_post, url, files, timeout, context)


__all__ = ["StowError", "StowResult", "stow", "studies_url"]
