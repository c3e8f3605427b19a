"""The Retrieve Capabilities transaction (PS3.18 8.9, Annex H): ``OPTIONS /dicom-web/`` answers a WADL document.

The Capabilities Description is a WADL document (W3C Member Submission, 2009) with one
``application``, one ``resources`` whose ``base`` is the service's base URL, and the resource tree
under it with every method each resource supports (Annex H, Table H-1). It is built from the app's
own routes (web/routing.py ``declared``), so it lists exactly what the server answers; what each
endpoint accepts and answers -- query parameters, media types, status codes -- comes from
:data:`DESCRIPTIONS`, one row per endpoint, which a test holds to the routes in both directions.
The transaction itself is left out, as Annex H's note says ("WADL is not self-describing").

PS3.18 8.9.4 names two media types, ``application/vnd.sun.wadl+xml`` and ``application/json``; the
JSON form has no structure defined anywhere in the standard, so only WADL is made, and a client that
accepts nothing else gets 406 with a sentence saying so (8.9.2: "in an Acceptable Media Type").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from minipacs.web.accept import ANY, DICOM, DICOM_JSON, DICOM_XML, FRAME_MEDIA_TYPES, OCTETS, parse_accept
from minipacs.web.errors import HttpError
from minipacs.web.render import FORMATS
from minipacs.web.routing import Endpoint, declared

#: PS3.18 8.9.4: the media type of a WADL Capabilities Description.
WADL: Final = "application/vnd.sun.wadl+xml"
#: The WADL 2009 namespace (W3C Member Submission, section 2.1).
WADL_NAMESPACE: Final = "http://wadl.dev.java.net/2009/02"
XSD_NAMESPACE: Final = "http://www.w3.org/2001/XMLSchema"
#: Accept ranges a WADL document satisfies: its own type, XML in general, and the wildcards.
WADL_RANGES: Final = frozenset({WADL, "application/xml", "text/xml", "application/*", ANY, ""})


def _multipart(part: str) -> str:
    return f'multipart/related; type="{part}"'


_FRAMES: Final = tuple(dict.fromkeys(_multipart(media) for media in (OCTETS, *FRAME_MEDIA_TYPES.values())))
_METADATA: Final = (DICOM_JSON, _multipart(DICOM_XML))
_RENDERED: Final = tuple(FORMATS)
#: Query parameters that may be given more than once (PS3.18 8.3.4.3: includefield).
REPEATING: Final = frozenset({"includefield"})
_TEMPLATE: Final = re.compile(r"^\{(\w+)\}$")


@dataclass(frozen=True)
class Description:
    """What one endpoint accepts and answers, for its WADL ``method`` element."""

    responses: tuple[str, ...]  # media types of a success
    params: tuple[str, ...] = ()  # query parameters (the accept parameter of PS3.18 8.3.3.1 is added to all)
    requests: tuple[str, ...] = ()  # media types of the request body
    status: str = "200"  # the success status codes (WADL statusCodeList)


# PS3.18 Tables 10.4.1-1..3 (Retrieve), 10.5 (Store), 10.6 (Search) and PS3.18 9 (WADO-URI): per endpoint
# function (its __name__), its representations. None: a route left out of the description.
DESCRIPTIONS: Final[Mapping[str, Description | None]] = {
    "qido": Description(_METADATA, ("limit", "offset", "includefield", "fuzzymatching", "charset"), status="200 204"),
    "store": Description(
        (DICOM_JSON, DICOM_XML),
        requests=(_multipart(DICOM), _multipart(DICOM_JSON), _multipart(DICOM_XML)),
        status="200 202 409",
    ),
    "retrieve": Description((_multipart(DICOM),), status="200 206"),
    "metadata": Description(_METADATA, ("charset",)),
    "frames": Description((*_FRAMES, OCTETS)),
    "bulkdata": Description((*_FRAMES, OCTETS)),
    "resource_bulkdata": Description(_FRAMES, status="200 204"),
    "rendered": Description(_RENDERED, ("window", "viewport", "quality", "annotation", "charset", "iccprofile")),
    "thumbnail": Description(_RENDERED, ("viewport", "charset")),
    "wado_uri": Description(
        (DICOM, *_RENDERED),
        (
            "requestType",
            "studyUID",
            "seriesUID",
            "objectUID",
            "contentType",
            "transferSyntax",
            "rows",
            "columns",
            "region",
            "windowCenter",
            "windowWidth",
            "frameNumber",
            "imageQuality",
            "anonymize",
            "charset",
        ),
    ),
    "capabilities": None,  # Annex H note: this transaction is not in its own description
}


def _identifier(method: str, path: str) -> str:
    """A WADL ``id`` (an xsd:ID, so an NCName) unique per method and path: GET_studies_study_metadata."""
    return method + "_" + "_".join(part for part in re.split(r"[^A-Za-z0-9]+", path) if part)


def _resource(parent: ET.Element, segment: str) -> ET.Element:
    """The child resource of ``parent`` for one path segment, made on first use (a template segment
    declares its parameter, PS3.18 10.1.1's URI Template variables)."""
    for child in parent.findall("resource"):
        if child.get("path") == segment:
            return child
    child = ET.Element("resource", path=segment)
    found = _TEMPLATE.match(segment)
    if found:  # made with the resource, so before its methods and child resources, as WADL orders them
        ET.SubElement(child, "param", name=found.group(1), style="template", type="xsd:string", required="true")
    parent.append(child)
    return child


def _method(resource: ET.Element, route: Endpoint, path: str) -> None:
    description = DESCRIPTIONS.get(getattr(route.endpoint, "__name__", ""))
    if description is None:
        return
    method = ET.SubElement(resource, "method", name=route.method, id=_identifier(route.method, path))
    ET.SubElement(method, "doc").text = route.summary
    request = ET.SubElement(method, "request")
    for name in (*description.params, "accept"):
        param = ET.SubElement(request, "param", name=name, style="query", type="xsd:string")
        if name in REPEATING:
            param.set("repeating", "true")
    for media in description.requests:
        ET.SubElement(request, "representation", mediaType=media)
    response = ET.SubElement(method, "response", status=description.status)
    for media in description.responses:
        ET.SubElement(response, "representation", mediaType=media)


def wadl(base: str, routes: Sequence[tuple[str, Endpoint]]) -> bytes:
    """The WADL document of ``routes`` (full paths under ``base``'s path, e.g. /dicom-web/studies)."""
    root = ET.Element("application", {"xmlns": WADL_NAMESPACE, "xmlns:xsd": XSD_NAMESPACE})
    ET.SubElement(root, "doc", title="minipacs DICOMweb").text = (
        "PS3.18 Capabilities Description (Annex H). Search keys of QIDO-RS are attribute keywords or "
        "tags as query parameters (PS3.18 8.3.4.1), not listed one by one."
    )
    resources = ET.SubElement(root, "resources", base=base.rstrip("/") + "/")
    prefix = "/" + base.split("://", 1)[-1].split("/", 1)[-1].strip("/")
    for path, route in routes:
        if DESCRIPTIONS.get(getattr(route.endpoint, "__name__", "")) is None:
            continue
        node = resources
        for segment in path.removeprefix(prefix).strip("/").split("/"):
            node = _resource(node, segment)
        _method(node, route, path.removeprefix(prefix))
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def dicomweb_routes(request: Request) -> list[tuple[str, Endpoint]]:
    """The app's routes under /dicom-web/, in matching order."""
    return [
        (path, route)
        for path, route in declared(request.app.routes)
        if isinstance(route, Endpoint) and path.startswith("/dicom-web/")
    ]


def negotiate(accept: str) -> str:
    """The media type of the answer to ``Accept: accept``: WADL, or 406 (PS3.18 8.9.2, 8.9.4)."""
    ranges = parse_accept(accept)  # a header of q=0 ranges only is one REFUSED range, not none
    if ranges and not any(r.media_type in WADL_RANGES for r in ranges):
        raise HttpError(
            406,
            "not_acceptable",
            f"the Capabilities Description is a WADL document: ask for {WADL} (PS3.18 8.9.4); "
            "the application/json form has no structure defined in PS3.18 and is not made",
        )
    return WADL


__all__ = ["DESCRIPTIONS", "WADL", "WADL_NAMESPACE", "Description", "dicomweb_routes", "negotiate", "wadl"]
