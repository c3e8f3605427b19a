"""The overview page of the web UI (/ui/overview, where / leads): the archive at a glance (issue 13).

What arrived in the last hour and day (an indexed range of instance rows), the storage, the job
queue by state, the jobs that are failing (failed in the last day, or waiting to try again after
an error: a destination that is down shows here in plain words), the routing destinations failing
(deliveries retrying or failed in the last day, with the latest reason), and what this node has refused
since it started (the Prometheus counters of core/metrics.py). The same figures as ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.jobs import JobState
from minipacs.core.routing import failing_destinations
from minipacs.core.stats import arrivals, storage_figures
from minipacs.web.dicomweb import ctx
from minipacs.web.pages import render

#: Failing jobs the page lists (the newest).
FAILING_SHOWN: Final = 10


def _failing(jobs: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Failed in the last day, or queued again after an error: newest first."""
    day_ago = (now - dt.timedelta(days=1)).isoformat()
    found = [
        j
        for j in jobs
        if (j["state"] == JobState.FAILED.value and (j["finished_at"] or "") >= day_ago)
        or (j["state"] == JobState.QUEUED.value and j["attempts"] and j["last_error"])
    ]
    return found[:FAILING_SHOWN]


def _refusals(request: Request) -> list[tuple[str, str, int]]:
    """(request, status, count) of the DIMSE failures and warnings since this node started."""
    failures = ctx(request).metrics.dimse_failures
    return sorted(((request, status, count) for (request, status), count in failures.items()), key=lambda r: -r[2])


async def overview_page(request: Request) -> Response:
    context = ctx(request)
    now = dt.datetime.now(dt.UTC)
    hour = await arrivals(context.archive, now - dt.timedelta(hours=1))
    day = await arrivals(context.archive, now - dt.timedelta(days=1))
    figures = await storage_figures(context.archive)
    queue = context.jobs
    counts = await queue.counts() if queue is not None else {}
    recent = (
        [j.to_dict() for j in await queue.list(states=(JobState.FAILED.value, JobState.QUEUED.value), limit=200)]
        if queue is not None
        else []
    )
    return render(
        request,
        "overview.html",
        "Overview",
        hour=hour,
        day=day,
        figures=figures,
        counts=counts,
        queue_missing=queue is None,
        failing=_failing(recent, now),
        refusals=_refusals(request),
        destinations=await failing_destinations(context.archive, now - dt.timedelta(days=1)),
    )


__all__ = ["overview_page"]
