"""REST for the persistent job queue (core/jobs.py): list, read, cancel, retry.

The rows are shared by every node on the index, so any node answers for any job and can cancel
or retry it; the node that runs a job notices a cancel at its next progress report.
``GET /api/jobs`` pages newest first: ``?state=failed&state=queued&kind=send&limit=50&before=<id>``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core.anonymize import job_record_for
from minipacs.core.errors import NotFound
from minipacs.core.jobs import MAX_LIST, InvalidJob, Job, JobQueue
from minipacs.core.users import ROLE_PERMISSIONS, Role
from minipacs.web.errors import HttpError
from minipacs.web.routing import Endpoint
from minipacs.web.search import ascii_digits
from minipacs.web.types import ctx

DEFAULT_LIMIT = 100


def queue_of(request: Request) -> JobQueue:
    queue = ctx(request).jobs
    if queue is None:
        raise HttpError(503, "no_jobs", "the job queue is not available in this process")
    return queue


def is_admin(request: Request) -> bool:
    """Whether the request's role has the admin permission; with no users configured (``auth.open``,
    web/auth.py) no role is set and everything is allowed."""
    role = getattr(request.state, "role", None)
    return role is None or "admin" in ROLE_PERMISSIONS[Role(role)]


def record(request: Request, job: Job) -> dict[str, Any]:
    """A job's JSON as this request's role may see it (core/anonymize.py ``job_record_for``)."""
    return job_record_for(job.to_dict(), is_admin(request))


def job_id(request: Request) -> int:
    raw = str(request.path_params["id"])
    if not ascii_digits(raw) or len(raw) > 18:
        raise NotFound(f"no job {raw[:40]!r}: job ids are whole numbers (GET /api/jobs lists them)")
    return int(raw)


def _int(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not ascii_digits(raw) or len(raw) > 18:
        raise HttpError(400, "invalid_parameter", f"{name} must be a whole number")
    return int(raw)


async def list_jobs(request: Request) -> Response:
    queue = queue_of(request)
    states = tuple(v for v in request.query_params.getlist("state") if v)
    kinds = tuple(v for v in request.query_params.getlist("kind") if v)
    limit = _int(request, "limit", DEFAULT_LIMIT) or 0
    try:
        jobs = await queue.list(states=states, kinds=kinds, before=_int(request, "before", None), limit=limit)
    except InvalidJob as exc:
        raise HttpError(400, "invalid_parameter", str(exc)) from None
    return JSONResponse([record(request, job) for job in jobs])


async def read_job(request: Request) -> Response:
    job = await queue_of(request).get(job_id(request))
    if job is None:
        raise NotFound(
            f"no job {request.path_params['id']!s:.40}; finished jobs are deleted job_keep_days after they end"
        )
    return JSONResponse(record(request, job))


async def cancel_job(request: Request) -> Response:
    job = await queue_of(request).cancel(job_id(request))
    return JSONResponse(record(request, job))


async def retry_job(request: Request) -> Response:
    job = await queue_of(request).retry(job_id(request))
    return JSONResponse(record(request, job), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


def routes() -> list[BaseRoute]:
    """Mounted under /api, before rest.routes() (whose /{level}/{id} would take these paths)."""
    return [
        Endpoint(
            "/jobs",
            list_jobs,
            "GET",
            "read",
            f"Background jobs, newest first: ?state=&kind= (repeatable), limit (1-{MAX_LIST}), before=<id>",
        ),
        Endpoint(
            "/jobs/{id}",
            read_job,
            "GET",
            "read",
            "One job: state, total, done, failed, message, attempts, next_try_at, last_error, runner, params",
        ),
        Endpoint(
            "/jobs/{id}/cancel",
            cancel_job,
            "POST",
            "write",
            "Cancel a job: a queued one at once, a running one at its next progress report (409 if finished)",
        ),
        Endpoint(
            "/jobs/{id}/retry",
            retry_job,
            "POST",
            "write",
            "Queue a failed or cancelled job again, or try a waiting one now (409 if running or done)",
        ),
    ]


__all__ = ["routes"]
