"""GET /metrics: the Prometheus text format (core/metrics.py; names in docs/METRICS.md).

The counters the DICOM server and the HTTP edge keep as work happens, plus the figures that
live in the index (storage, the job queue, the delivery receipts by destination and status), read
at each scrape: three small queries, never a walk of the storage (the receipts' count reads the
``deliveries`` rows: docs/METRICS.md gives its cost). It needs the "read" permission like the API
(a scraper sends a token as ``Authorization: Bearer``): calling AE titles and archive sizes are not
for anyone on the network.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from minipacs.core.backup import KIND as BACKUP_KIND
from minipacs.core.jobs import JobState
from minipacs.core.routing import delivery_counts
from minipacs.core.stats import storage_figures
from minipacs.web.routing import Endpoint
from minipacs.web.types import AppContext

#: The Prometheus text exposition format, which ``generate_latest`` writes.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


async def metrics(request: Request) -> Response:
    context: AppContext = request.app.state.ctx
    figures = await storage_figures(context.archive)
    context.metrics.set_storage(
        studies=figures.studies,
        instances=figures.instances,
        instance_bytes=figures.instance_bytes,
        free_bytes=figures.free_bytes,
    )
    if context.jobs is not None:
        context.metrics.set_jobs(await context.jobs.counts(), tuple(state.value for state in JobState))
        done = await context.jobs.list(states=(JobState.DONE.value,), kinds=(BACKUP_KIND,), limit=1)
        finished = done[0].finished_at if done else None
        context.metrics.set_last_backup(finished.timestamp() if finished is not None else None)
    context.metrics.set_deliveries(await delivery_counts(context.archive))
    return Response(context.metrics.exposition(), media_type=TEXT_FORMAT)


def routes() -> list[BaseRoute]:
    return [Endpoint("/metrics", metrics, "GET", "read", "Prometheus metrics (text format 0.0.4; docs/METRICS.md)")]


__all__ = ["metrics", "routes"]
