"""The Jobs page of the web UI (/ui/jobs): every background job, with live progress.

The page is rendered once with the latest jobs; app.js then polls ``GET /api/jobs`` (the same
filter) every two seconds and rewrites the rows, and its Cancel / Retry buttons call
``POST /api/jobs/{id}/cancel|retry`` (write permission: web/rest_jobs.py). The rows are the
index's, so the page shows the jobs of every node sharing it.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.jobs import JobState
from minipacs.web.pages import render
from minipacs.web.rest_jobs import record
from minipacs.web.types import ctx

#: Jobs the page shows (the newest).
PAGE_SIZE: Final = 100


async def jobs_page(request: Request) -> Response:
    queue = ctx(request).jobs
    wanted = request.query_params.get("state", "")
    state = wanted if wanted in {s.value for s in JobState} else ""
    jobs = await queue.list(states=(state,) if state else (), limit=PAGE_SIZE) if queue is not None else []
    counts = await queue.counts() if queue is not None else {}
    return render(
        request,
        "jobs.html",
        "Jobs",
        queue_missing=queue is None,
        jobs=[record(request, job) for job in jobs],
        state=state,
        states=[s.value for s in JobState],
        counts=counts,
        page_size=PAGE_SIZE,
    )


__all__ = ["jobs_page"]
