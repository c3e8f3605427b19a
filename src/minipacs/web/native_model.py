"""WADO-RS Metadata and QIDO-RS results as PS3.19 Native DICOM Model XML (PS3.18 8.7.3.2, 10.4, 10.6).

Both answer ``multipart/related; type="application/dicom+xml"``, one XML document per instance
or match (PS3.18 Tables 10.4.4-1 and 10.6.4-1 list no single-part XML), built from the same
PS3.18 JSON objects the ``application/dicom+json`` answers carry (dicom/xml_model.py). Building
the documents is Python string work, ~10 us per attribute: a study's metadata or 10,000 matches
run in a worker thread, off the event loop that also serves DICOM.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

from minipacs.dicom.xml_model import native_xml_documents
from minipacs.web.accept import DICOM_XML
from minipacs.web.transfer import multipart_octets, new_boundary


def _body(objects: Sequence[Mapping[str, Any] | str], boundary: str) -> bytes:
    parsed = [json.loads(obj) if isinstance(obj, str) else obj for obj in objects]
    return multipart_octets(native_xml_documents(parsed), boundary, DICOM_XML)


async def xml_response(objects: Sequence[Mapping[str, Any] | str]) -> Response:
    """``objects`` (PS3.18 JSON objects, or their JSON text) as a multipart/related answer of one
    application/dicom+xml part each. None at all (a search without a match): 204 No Content, since a
    multipart body needs at least one part (RFC 2046 5.1.1) -- what PS3.18 8.3.4.4.1 answered for an
    empty search before CP-2473 made the JSON answer a 200 with ``[]``."""
    if not objects:
        return Response(status_code=204)
    boundary = new_boundary()
    body = await asyncio.to_thread(_body, objects, boundary)
    return Response(body, media_type=f'multipart/related; type="{DICOM_XML}"; boundary={boundary}')


__all__ = ["xml_response"]
