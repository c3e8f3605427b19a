"""REST for auto-routing (core/rules.py, core/routing.py; docs/ROUTING.md).

- ``/api/rules``: GET lists every rule in force (the config file's, marked ``"read_only": true``,
  and those made here); POST creates one (201); ``/api/rules/{name}``: GET, PUT (replace), DELETE.
  Admin role. Rules made here are stored in the index, so every node sharing it runs them; the
  config file's rules can only be changed in the file (409 here).
- ``GET /api/studies/{uid}/deliveries``: the delivery receipt of a study: per instance, where it
  went, by which rule and method, when, with what status, and the reason in words when not sent;
  ``summary`` groups them by rule and destination.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.paths import validate_uid
from minipacs.core.routing import MAX_RECEIPTS, study_receipts, summarise
from minipacs.core.rules import RuleBook
from minipacs.web.jsonbody import read_object
from minipacs.web.routing import Endpoint
from minipacs.web.types import ctx


def book(request: Request) -> RuleBook:
    context = ctx(request)
    return RuleBook(context.archive, context.settings.rules, context.nodes)


async def _body(request: Request) -> dict[str, Any]:
    return await read_object(request, "the keys of a [[rules]] table")


def _name(request: Request) -> str:
    return str(request.path_params["name"])[:200]


async def list_rules(request: Request) -> Response:
    return JSONResponse([rule.to_json() for rule in await book(request).all()])


async def read_rule(request: Request) -> Response:
    return JSONResponse((await book(request).get(_name(request))).to_json())


async def create_rule(request: Request) -> Response:
    rule = await book(request).create(await _body(request))
    return JSONResponse(rule.to_json(), status_code=201, headers={"Location": f"/api/rules/{rule.name}"})


async def replace_rule(request: Request) -> Response:
    rule = await book(request).replace(_name(request), await _body(request))
    return JSONResponse(rule.to_json())


async def delete_rule(request: Request) -> Response:
    await book(request).delete(_name(request))
    return Response(status_code=204)


async def study_deliveries(request: Request) -> Response:
    uid = validate_uid("StudyInstanceUID", str(request.path_params["uid"]))
    receipts = await study_receipts(ctx(request).archive, uid)
    return JSONResponse(
        {
            "study": uid,
            "summary": summarise(receipts),
            "deliveries": receipts,
            "truncated": len(receipts) >= MAX_RECEIPTS,
        }
    )


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level}/{id}/... would take these paths)."""
    return [
        Endpoint("/rules", list_rules, "GET", "admin", "Auto-routing rules in force (config file ones are read-only)"),
        Endpoint(
            "/rules",
            create_rule,
            "POST",
            "admin",
            "Create an auto-routing rule (keys of a [[rules]] table)",
            audits="software_config",
        ),
        Endpoint("/rules/{name}", read_rule, "GET", "admin", "One auto-routing rule"),
        Endpoint(
            "/rules/{name}",
            replace_rule,
            "PUT",
            "admin",
            "Replace an auto-routing rule made through the API",
            audits="software_config",
        ),
        Endpoint(
            "/rules/{name}",
            delete_rule,
            "DELETE",
            "admin",
            "Delete an auto-routing rule made through the API",
            audits="software_config",
        ),
        Endpoint(
            "/studies/{uid}/deliveries",
            study_deliveries,
            "GET",
            "read",
            "The delivery receipt of a study: per instance, destination, rule, method, status, reason, when",
        ),
    ]


__all__ = ["routes"]
