"""``GET /metrics``: the Prometheus text exposition of services/metrics.py (docs/METRICS.md).

Role "read": with users configured, Prometheus scrapes with an API token (``[[tokens]]``, role
viewer) as ``authorization: {credentials: ...}`` in its scrape config.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from minipacs.services.metrics import CONTENT_TYPE_LATEST
from minipacs.web.dicomweb import ctx
from minipacs.web.errors import HttpError


async def metrics(request: Request) -> Response:
    collected = ctx(request).metrics
    if collected is None:
        raise HttpError(503, "no_metrics", "this process collects no metrics (only `minipacs serve` does)")
    await collected.refresh()
    return Response(collected.exposition(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["metrics"]
