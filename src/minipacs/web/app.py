"""The HTTP application: explicit routes, the error mapping, access control."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from minipacs.core.errors import ArchiveError
from minipacs.web import dicomweb, rest, rest_nodes, rest_worklist, ui
from minipacs.web.auth import AuthMiddleware
from minipacs.web.errors import HttpError, error_response, http_error
from minipacs.web.ohif import OhifApp
from minipacs.web.openapi import document
from minipacs.web.types import AppContext


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


async def ohif_redirect(request: Request) -> Response:
    return RedirectResponse("/ohif/")


async def starlette_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
    message = "there is nothing at this URL" if status == 404 else str(detail)
    return error_response(status, code, message)


def create_app(ctx: AppContext) -> Starlette:
    app = Starlette(
        routes=[
            Route("/api/openapi.json", openapi, methods=["GET"]),
            Route("/", ui.home, methods=["GET"]),
            Mount("/ui", routes=ui.routes(), name="ui"),
            Route("/dicom-web/wado", dicomweb.wado_uri, methods=["GET"]),
            Route("/wado", dicomweb.wado_uri, methods=["GET"]),
            Mount("/dicom-web", routes=dicomweb.routes(), name="dicomweb"),
            Mount("/api", routes=[*rest_nodes.routes(), *rest_worklist.routes(), *rest.routes()], name="api"),
            Route("/ohif", ohif_redirect, methods=["GET"]),
            Mount("/ohif", app=OhifApp(ctx.settings), name="ohif"),
        ],
        middleware=[Middleware(AuthMiddleware, settings=ctx.settings)],
        exception_handlers={HttpError: http_error, ArchiveError: http_error, HTTPException: starlette_error},
    )
    app.state.ctx = ctx
    return app


__all__ = ["create_app"]
