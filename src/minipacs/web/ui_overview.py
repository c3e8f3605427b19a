"""The overview page of the web UI (/ui/overview, where / leads): the archive at a glance (issue 13).

The figures come from core/overview.py (as ``minipacs overview`` prints them), plus what this node
has refused since it started (the counters of core/metrics.py). The same figures as ``/metrics``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.overview import overview
from minipacs.web.pages import render
from minipacs.web.types import ctx


def _refusals(request: Request) -> list[tuple[str, str, int]]:
    """(request, status, count) of the DIMSE failures and warnings since this node started."""
    failures = ctx(request).metrics.dimse_failures
    return sorted(((request, status, count) for (request, status), count in failures.items()), key=lambda r: -r[2])


async def overview_page(request: Request) -> Response:
    context = ctx(request)
    seen = await overview(context.archive, context.jobs)
    return render(
        request,
        "overview.html",
        "Overview",
        hour=seen.hour,
        day=seen.day,
        figures=seen.figures,
        counts=seen.counts,
        queue_missing=context.jobs is None,
        failing=seen.failing,
        refusals=_refusals(request),
        destinations=seen.destinations,
        last_backup=seen.last_backup,
        backup_configured=bool(context.settings.backup_dir),
    )


__all__ = ["overview_page"]
