"""The archive at a glance (issue 13, "Seeing it"): the figures of the overview page (web/ui_overview.py)
and of ``minipacs overview``, gathered once here.

What arrived in the last hour and day (an indexed range of instance rows), the storage, the job
queue by state, the jobs that are failing (failed in the last day, or waiting to try again after an
error), the routing destinations failing (deliveries retrying or failed in the last day), and the
last backup that succeeded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

from minipacs.core.archive import Archive
from minipacs.core.backup import KIND as BACKUP_KIND
from minipacs.core.jobs import JobQueue, JobState
from minipacs.core.routing import failing_destinations
from minipacs.core.stats import Arrivals, StorageFigures, arrivals, storage_figures

#: Failing jobs listed (the newest).
FAILING_SHOWN: Final = 10
#: Jobs looked at for the failing ones (the newest failed or queued).
FAILING_LOOKED_AT: Final = 200


@dataclass(frozen=True)
class Overview:
    hour: Arrivals
    day: Arrivals
    figures: StorageFigures
    counts: dict[str, int]  # jobs by state ({} without a queue)
    failing: list[dict[str, Any]]  # jobs, as GET /api/jobs/{id} shows them
    destinations: list[dict[str, Any]]  # core/routing.py failing_destinations
    #: The newest backup job that succeeded (core/backup.py), as GET /api/jobs/{id} shows it; None: none.
    last_backup: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "arrived": {"last_hour": self.hour._asdict(), "last_day": self.day._asdict()},
            "storage": dataclasses.asdict(self.figures),
            "jobs": self.counts,
            "failing_jobs": self.failing,
            "failing_destinations": self.destinations,
            "last_backup": self.last_backup,
        }


def failing_jobs(jobs: list[dict[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Failed in the last day, or queued again after an error: newest first."""
    day_ago = (now - dt.timedelta(days=1)).isoformat()
    found = [
        j
        for j in jobs
        if (j["state"] == JobState.FAILED.value and (j["finished_at"] or "") >= day_ago)
        or (j["state"] == JobState.QUEUED.value and j["attempts"] and j["last_error"])
    ]
    return found[:FAILING_SHOWN]


async def overview(archive: Archive, queue: JobQueue | None, now: dt.datetime | None = None) -> Overview:
    """The figures, read from the index (a few statements) and one statvfs."""
    now = now or dt.datetime.now(dt.UTC)
    counts = await queue.counts() if queue is not None else {}
    recent = (
        [
            job.to_dict()
            for job in await queue.list(states=(JobState.FAILED.value, JobState.QUEUED.value), limit=FAILING_LOOKED_AT)
        ]
        if queue is not None
        else []
    )
    backups = (
        await queue.list(states=(JobState.DONE.value,), kinds=(BACKUP_KIND,), limit=1) if queue is not None else []
    )
    return Overview(
        last_backup=backups[0].to_dict() if backups else None,
        hour=await arrivals(archive, now - dt.timedelta(hours=1)),
        day=await arrivals(archive, now - dt.timedelta(days=1)),
        figures=await storage_figures(archive),
        counts=counts,
        failing=failing_jobs(recent, now),
        destinations=await failing_destinations(archive, now - dt.timedelta(days=1)),
    )


__all__ = ["FAILING_SHOWN", "Overview", "failing_jobs", "overview"]
