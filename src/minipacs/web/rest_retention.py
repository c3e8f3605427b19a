"""REST for retention (core/retention.py; docs/RETENTION.md).

``GET /api/retention`` lists the configured rules; ``GET /api/retention/preview`` is the dry run
(what would go now, deleting nothing; ``?rule=NAME`` repeatable); ``POST /api/retention/run``
(admin) queues a "retention" job on the persistent queue and answers 202 with it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core import retention
from minipacs.web.errors import HttpError
from minipacs.web.rest_jobs import queue_of
from minipacs.web.routing import Endpoint
from minipacs.web.types import ctx


def _rules(request: Request) -> list[retention.RetentionRule]:
    configured = ctx(request).settings.retention
    wanted = [name for name in request.query_params.getlist("rule") if name]
    unknown = sorted(set(wanted) - {rule.name for rule in configured})
    if unknown:
        raise HttpError(
            404,
            "unknown_rule",
            f"no retention rule {unknown[0][:64]!r}; GET /api/retention lists the configured ones",
        )
    return [rule for rule in configured if not wanted or rule.name in wanted]


async def list_rules(request: Request) -> Response:
    settings = ctx(request).settings
    return JSONResponse(
        {
            "rules": [rule.to_json() for rule in settings.retention],
            "interval_seconds": settings.retention_interval_seconds,
            "max_deletions": settings.retention_max_deletions,
        }
    )


async def preview(request: Request) -> Response:
    context = ctx(request)
    planned = await retention.plan(
        context.archive, _rules(request), max_deletions=context.settings.retention_max_deletions
    )
    return JSONResponse({"dry_run": True, **planned.to_json()})


async def run(request: Request) -> Response:
    rules = _rules(request)
    if not rules:
        raise HttpError(409, "no_rules", "no [[retention]] rules are configured (docs/RETENTION.md)")
    job = await retention.submit_run(queue_of(request), request.query_params.getlist("rule"))
    return JSONResponse(job.to_dict(), status_code=202)


def routes() -> list[BaseRoute]:
    return [
        Endpoint("/retention", list_rules, "GET", "read", "The [[retention]] rules, run interval and per-run limit"),
        Endpoint(
            "/retention/preview",
            preview,
            "GET",
            "read",
            "Dry run: the studies the retention rules would delete now, and why (?rule= repeatable)",
        ),
        Endpoint(
            "/retention/run",
            run,
            "POST",
            "admin",
            "Queue a retention run (job kind 'retention'; ?rule= repeatable): 202 with the job",
        ),
    ]


__all__ = ["routes"]
