"""`minipacs jobs list|show|cancel|retry`: the persistent job queue (core/jobs.py), from any node.

The command opens the index of ``--data``/``--config`` (as ``serve`` would) and reads or
changes the rows; it runs no job itself. A cancel of a running job is noticed by the node that
runs it at its next progress report (job_progress_seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.errors import NotFound
from minipacs.core.jobs import MAX_LIST, InvalidJob, Job, JobConflict, JobState

NEEDS_SETTINGS = True
#: Every kind of job the queue runs (the modules' own constants; tests/cli/test_jobs_kinds.py keeps
#: this list equal to them without importing them all at each CLI start).
KINDS = (
    "send",
    "retrieve",
    "route",
    "prefetch",
    "compress",
    "retention",
    "anonymize",
    "correct",
    "backup",
    "adt",
    "hl7-order",
)


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("jobs", help=f"background jobs ({', '.join(KINDS)}): list, show, cancel, retry")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="jobs, newest first")
    settings_args(listing)
    listing.add_argument(
        "--state", action="append", default=[], choices=[s.value for s in JobState], help="only this state (repeatable)"
    )
    listing.add_argument("--kind", action="append", default=[], help=f"only this kind: {', '.join(KINDS)} (repeatable)")
    listing.add_argument("-n", "--limit", type=int, default=20, help=f"how many, 1-{MAX_LIST} [20]")
    listing.add_argument("--json", action="store_true", help="JSON output, as GET /api/jobs")
    for name, text in (
        ("show", "one job in full"),
        ("cancel", "cancel a job (a running one stops at its next progress report)"),
        ("retry", "queue a failed or cancelled job again, or try a waiting one now"),
    ):
        action = actions.add_parser(name, help=text)
        settings_args(action)
        action.add_argument("id", type=int, help="the job's id (minipacs jobs list)")
        action.add_argument("--json", action="store_true", help="JSON output, as GET /api/jobs/{id}")


def _line(job: Job) -> str:
    progress = f"{job.done}/{job.total}" if job.total else f"{job.done}"
    if job.failed:
        progress += f" ({job.failed} failed)"
    when = f"{job.created_at:%Y-%m-%d %H:%M:%S}" if job.created_at else ""
    return f"{job.id:>6} {when} {job.kind:<9} {job.state.value:<9} {progress:<14} {job.description} — {job.message}"


def _show(job: Job) -> str:
    data = job.to_dict()
    lines = [
        f"job {job.id}: {job.description}",
        f"  kind      {job.kind}",
        f"  state     {job.state.value}" + (" (cancel asked)" if job.cancel_requested else ""),
        f"  progress  {job.done} done, {job.failed} failed, of {job.total or '?'}",
        f"  message   {job.message}",
        f"  attempts  {job.attempts} of {job.max_attempts}"
        + (f"; next try {data['next_try_at']}" if data["next_try_at"] and job.attempts else ""),
    ]
    if job.last_error:
        lines.append(f"  last error {job.last_error}")
    if job.runner:
        lines.append(f"  runner    {job.runner}")
    for label, value in (
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ):
        if value is not None:
            lines.append(f"  {label:<9} {value:%Y-%m-%d %H:%M:%S} UTC")
    lines.append(f"  params    {json.dumps(job.params, sort_keys=True)}")
    return "\n".join(lines)


async def _act(settings: Settings, args: argparse.Namespace) -> list[Job]:
    from minipacs.bootstrap import job_settings, open_archive
    from minipacs.core.jobs import JobQueue

    archive = await open_archive(settings)
    try:
        queue = JobQueue(archive, job_settings(settings))
        if args.action == "list":
            return await queue.list(states=tuple(args.state), kinds=tuple(args.kind), limit=args.limit)
        if args.action == "show":
            job = await queue.get(args.id)
            if job is None:
                raise NotFound(f"no job {args.id} (finished jobs are deleted job_keep_days after they end)")
            return [job]
        if args.action == "cancel":
            return [await queue.cancel(args.id)]
        return [await queue.retry(args.id)]
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    try:
        jobs = asyncio.run(_act(settings, args))
    except (InvalidJob, NotFound) as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobConflict as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    if args.json:
        data: Any = [j.to_dict() for j in jobs] if args.action == "list" else jobs[0].to_dict()
        print(json.dumps(data, indent=2))
        return EXIT_OK
    if args.action == "list":
        for job in jobs:
            print(_line(job))
        if not jobs:
            print("no jobs")
        return EXIT_OK
    job = jobs[0]
    if args.action == "show":
        print(_show(job))
    else:
        print(f"job {job.id}: {job.state.value} — {job.message}")
    return EXIT_OK
