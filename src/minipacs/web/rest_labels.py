"""REST for study labels (core/labels.py), as Orthanc 1.12's ``/studies/{id}/labels``.

``GET /api/studies/{uid}/labels`` lists them; ``PUT`` / ``DELETE /api/studies/{uid}/labels/{label}``
put one on and take it off (role "write", as deleting a study needs); ``GET /api/labels`` lists every
label in use with its number of studies. Searches filter with ``labels=a,b`` (web/search.py).
Mounted before web/rest.py, whose ``/{level}/{id:path}`` would otherwise take these paths.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core import labels
from minipacs.core.paths import validate_uid
from minipacs.web.routing import Endpoint
from minipacs.web.types import ctx


def _study(request: Request) -> str:
    return validate_uid("StudyInstanceUID", request.path_params["id"])


async def list_study_labels(request: Request) -> Response:
    return JSONResponse(await labels.labels_of(ctx(request).archive, _study(request)))


async def put_label(request: Request) -> Response:
    study, label = _study(request), request.path_params["label"]
    added = await labels.add_label(ctx(request).archive, study, label)
    return JSONResponse({"study": study, "label": label, "added": added})


async def delete_label(request: Request) -> Response:
    study, label = _study(request), request.path_params["label"]
    removed = await labels.remove_label(ctx(request).archive, study, label)
    return JSONResponse({"study": study, "label": label, "removed": removed})


async def list_labels(request: Request) -> Response:
    found = await labels.all_labels(ctx(request).archive)
    return JSONResponse([{"label": label, "studies": count} for label, count in found])


def routes() -> list[BaseRoute]:
    """Mounted under /api, before web/rest.py's catch-all resource paths."""
    return [
        Endpoint("/labels", list_labels, "GET", "read", "Every label in use: [{label, studies}]"),
        Endpoint(
            "/studies/{id}/labels",
            list_study_labels,
            "GET",
            "read",
            "The labels of a study (sorted list)",
            name="study_labels",
        ),
        Endpoint(
            "/studies/{id}/labels/{label}",
            put_label,
            "PUT",
            "write",
            "Put a label on a study (1-64 of A-Z a-z 0-9 _ -): {study, label, added}",
            name="study_label",
        ),
        Endpoint(
            "/studies/{id}/labels/{label}",
            delete_label,
            "DELETE",
            "write",
            "Take a label off a study: {study, label, removed}",
            name="study_label",
        ),
    ]


__all__ = ["routes"]
