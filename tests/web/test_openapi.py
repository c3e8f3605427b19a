"""/api/openapi.json is generated from the routes: exactly the app's API routes, methods and permissions."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from minipacs.web import rest_worklist
from minipacs.web.routing import Endpoint
from tests.web.test_auth import app_of

USERS = (User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),)


def routes_of(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, Route]]:
    """(path, method, route) read from Starlette's own route objects, not through web/routing.py."""
    for route in routes:
        if isinstance(route, Mount):
            yield from routes_of(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield prefix + re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower(), route


def operations(document: dict[str, Any], start: str) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document["paths"].items() if path.startswith(start) for method in ops}


def fetch_document(web: Callable[..., Any]) -> dict[str, Any]:
    async def body(client: httpx.AsyncClient, archive: Archive) -> dict[str, Any]:
        r = await client.get("/api/openapi.json")  # public, even with users configured
        assert r.status_code == 200
        document: dict[str, Any] = r.json()
        return document

    result: dict[str, Any] = web(body, users=USERS)
    return result


def test_the_document_lists_exactly_the_api_routes_with_their_methods(web: Callable[..., Any], tmp_path: Path) -> None:
    document = fetch_document(web)
    found = list(routes_of(app_of(tmp_path).routes))
    for start in ("/api/", "/dicom-web/", "/wado"):
        assert operations(document, start) == {(path, method) for path, method, _ in found if path.startswith(start)}
    assert all(re.match(r"^(/api/|/dicom-web/|/wado$)", path) for path in document["paths"]), document["paths"]
    for path, method, route in found:
        if path not in document["paths"]:
            continue
        op = document["paths"][path][method]
        assert isinstance(route, Endpoint) and op["x-minipacs-permission"] == route.permission
        assert op["summary"] == route.summary
        assert [p["name"] for p in op["parameters"]] == re.findall(r"\{(\w+)\}", path)
    # what the hand-written document said is still there
    assert operations(document, "/api/") >= {
        ("/api/{level}", "get"),
        ("/api/{level}/{id}", "get"),
        ("/api/{level}/{id}", "delete"),
        ("/api/instances/{id}/tags", "get"),
        ("/api/{level}/{id}/archive", "get"),
        ("/api/instances", "post"),
        ("/api/nodes/{id}", "put"),
        ("/api/nodes/{ae_title}", "delete"),
        ("/api/send", "post"),
        ("/api/jobs/{id}", "get"),
        ("/api/worklist/{id}", "delete"),
        ("/api/openapi.json", "get"),
    }
    assert document["paths"]["/api/nodes"]["post"]["x-minipacs-permission"] == "admin"
    assert document["paths"]["/api/openapi.json"]["get"]["x-minipacs-permission"] == "public"
    assert document["paths"]["/dicom-web/studies"]["post"]["summary"] == "STOW-RS: store instances"


def test_a_new_route_is_in_the_document(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    async def hello(request: Request) -> Response:
        return JSONResponse({})

    real = rest_worklist.routes
    monkeypatch.setattr(
        rest_worklist, "routes", lambda: [Endpoint("/hello/{who}", hello, "PATCH", "write", "Say hello"), *real()]
    )
    op = fetch_document(web)["paths"]["/api/hello/{who}"]["patch"]
    assert op["summary"] == "Say hello" and op["x-minipacs-permission"] == "write"
    assert op["parameters"] == [{"name": "who", "in": "path", "required": True, "schema": {"type": "string"}}]
