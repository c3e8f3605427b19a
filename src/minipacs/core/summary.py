"""The UI home summary (issue 13, "Seeing it"): what arrived lately and how the job queue stands, at a glance.

The same figures as ``GET /metrics`` (services/metrics.py) where they overlap, read from the index so
that every node shows the same: studies that received instances in the last hour and day, and
jobs by state (waiting = queued, running, failed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from minipacs.index import jobs_repo, summary_repo

if TYPE_CHECKING:
    from minipacs.core.nodes import IndexAccess

#: (label, how far back) of the arrival figures, in the order shown.
ARRIVAL_WINDOWS: Final = (("last hour", dt.timedelta(hours=1)), ("last 24 hours", dt.timedelta(days=1)))


@dataclass(frozen=True)
class HomeSummary:
    #: (label, studies that received instances within it), per :data:`ARRIVAL_WINDOWS`.
    arrived: tuple[tuple[str, int], ...]
    waiting: int
    running: int
    failed: int


async def home_summary(archive: IndexAccess, now: dt.datetime | None = None) -> HomeSummary:
    now = now or dt.datetime.now(dt.UTC)
    since = [now - back for _, back in ARRIVAL_WINDOWS]
    counts = await archive.read(lambda conn: summary_repo.studies_received_since(conn, since))
    jobs = await archive.read(jobs_repo.count_by_state)
    return HomeSummary(
        tuple((label, count) for (label, _), count in zip(ARRIVAL_WINDOWS, counts, strict=True)),
        jobs.get("queued", 0),
        jobs.get("running", 0),
        jobs.get("failed", 0),
    )


__all__ = ["ARRIVAL_WINDOWS", "HomeSummary", "home_summary"]
