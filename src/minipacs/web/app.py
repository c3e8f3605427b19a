"""The HTTP application: routes that declare their permission (checked by each route), errors by exception class."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount

from minipacs.web import (
    audit,
    dicomweb,
    rest,
    rest_anonymize,
    rest_backup,
    rest_corrections,
    rest_diagnostics,
    rest_jobs,
    rest_labels,
    rest_media,
    rest_metrics,
    rest_nodes,
    rest_retention,
    rest_rules,
    rest_storage,
    rest_worklist,
    ui,
    wado_uri,
)
from minipacs.web.auth import Authenticator
from minipacs.web.errors import exception_handlers
from minipacs.web.headers import SecurityHeaders
from minipacs.web.limits import BodyTimeoutMiddleware
from minipacs.web.ohif import OhifApp
from minipacs.web.openapi import document
from minipacs.web.routing import Endpoint, GuardedMount, declared
from minipacs.web.sessions import SessionStore
from minipacs.web.types import AppContext


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def ohif_redirect(request: Request) -> Response:
    return RedirectResponse("/ohif/")


def create_app(ctx: AppContext) -> Starlette:
    """The app; UndeclaredRoute (a TypeError) if any route does not declare the permission it needs."""
    routes = [
        Endpoint("/api/openapi.json", openapi, "GET", "public", "This document (OpenAPI 3)"),
        Endpoint("/", ui.home, "GET", "read", "Redirect to the web UI"),
        *rest_metrics.routes(),
        Mount("/ui", routes=[*audit.ui_routes(), *ui.routes()], name="ui"),
        Endpoint("/dicom-web", dicomweb.capabilities, "OPTIONS", "read", "Retrieve Capabilities (PS3.18 8.9)"),
        Endpoint("/dicom-web/wado", wado_uri.wado_uri, "GET", "read", "WADO-URI (requestType=WADO)"),
        Endpoint("/wado", wado_uri.wado_uri, "GET", "read", "WADO-URI (requestType=WADO)"),
        Mount("/dicom-web", routes=dicomweb.routes(), name="dicomweb"),
        Mount(
            "/api",
            routes=[
                *rest_nodes.routes(),
                *rest_diagnostics.routes(),
                *rest_jobs.routes(),
                *rest_storage.routes(),
                *rest_worklist.routes(),
                *rest_labels.routes(),
                *rest_retention.routes(),
                *rest_backup.routes(),
                *rest_anonymize.routes(),
                *rest_media.routes(),
                *audit.api_routes(),
                *rest_rules.routes(),
                *rest_corrections.routes(),  # before rest.py's /{level}/{id:path}
                *rest.routes(),
            ],
            name="api",
        ),
        Endpoint("/ohif", ohif_redirect, "GET", "read", "Redirect to the OHIF viewer"),
        GuardedMount("/ohif", OhifApp(ctx.settings), "read", "The OHIF viewer (if installed)", name="ohif"),
    ]
    list(declared(routes))  # UndeclaredRoute before anything runs
    app = Starlette(
        routes=routes,
        exception_handlers=exception_handlers(),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodyTimeoutMiddleware, timeout=ctx.settings.http_body_timeout),
        ],
    )
    app.state.ctx = ctx
    app.state.auth = Authenticator(ctx.settings)
    app.state.sessions = SessionStore(ctx.settings.session_idle_timeout, ctx.settings.max_sessions)
    app.state.openapi = document(app.routes)
    return app


__all__ = ["create_app"]
