"""REST for backups (core/backup.py; README "Backup").

``GET /api/backup`` says where the server backs up to, how often, and the last backup job;
``POST /api/backup`` (admin) queues a "backup" job on the persistent queue and answers 202 with it
(409 when ``backup_dir`` is not set: `minipacs backup DEST` works without it).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from minipacs.core import backup
from minipacs.web.errors import HttpError
from minipacs.web.rest_jobs import queue_of
from minipacs.web.routing import Endpoint
from minipacs.web.types import ctx


async def status(request: Request) -> Response:
    settings = ctx(request).settings
    last = await queue_of(request).list(kinds=(backup.KIND,), limit=1)
    return JSONResponse(
        {
            "backup_dir": settings.backup_dir,
            "interval_seconds": settings.backup_interval_seconds if settings.backup_dir else 0,
            "last_job": last[0].to_dict() if last else None,
        }
    )


async def run(request: Request) -> Response:
    settings = ctx(request).settings
    if not settings.backup_dir:
        raise HttpError(
            409,
            "no_backup_dir",
            "set backup_dir (an absolute folder outside the data folder) to back up from the server; "
            "or run minipacs backup DEST",
        )
    job = await backup.submit_backup(queue_of(request), Path(settings.backup_dir))
    return JSONResponse(job.to_dict(), status_code=202)


def routes() -> list[BaseRoute]:
    return [
        Endpoint("/backup", status, "GET", "admin", "Where the server backs up to, how often, and the last backup job"),
        Endpoint(
            "/backup", run, "POST", "admin", "Queue a backup into backup_dir (job kind 'backup'): 202 with the job"
        ),
    ]


__all__ = ["routes"]
