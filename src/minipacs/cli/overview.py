"""`minipacs overview [--json]`: the archive at a glance, as the web UI's overview page shows it
(core/overview.py): what arrived in the last hour and day, the storage, the job queue by state,
failing jobs and failing routing destinations, with the reasons in words. Works beside a running
server (it reads the index and starts no job).

The per-node counters of ``/metrics`` (requests refused since the node started) live in the serving
process only: ask it over HTTP (``GET /metrics``) for those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_USAGE
from minipacs.config import Settings

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser(
        "overview", help="the archive at a glance: arrivals, storage, jobs, failing jobs and destinations"
    )
    settings_args(p)
    p.add_argument("--json", action="store_true", help="JSON output")


async def _read(settings: Settings) -> dict[str, Any]:
    from minipacs.bootstrap import job_settings, open_archive
    from minipacs.core.jobs import JobQueue
    from minipacs.core.overview import overview

    archive = await open_archive(settings)
    try:
        return (await overview(archive, JobQueue(archive, job_settings(settings)))).to_json()
    finally:
        await archive.close()


def _mib(n: int) -> str:
    return f"{n / 1048576:,.1f} MiB"


def render(out: dict[str, Any]) -> str:
    """The plain-text form of :meth:`Overview.to_json`."""
    lines = []
    for label, key in (("last hour", "last_hour"), ("last 24 hours", "last_day")):
        a = out["arrived"][key]
        lines.append(f"arrived, {label}: {a['instances']} instance(s) in {a['studies']} study(ies), {_mib(a['bytes'])}")
    s = out["storage"]
    lines.append(
        f"stored: {s['studies']} studies, {s['instances']} instances, {_mib(s['instance_bytes'])}; "
        f"{_mib(s['free_bytes'])} free"
    )
    jobs = out["jobs"]
    lines.append("jobs: " + ", ".join(f"{jobs.get(k, 0)} {k}" for k in ("queued", "running", "failed")))
    for j in out["failing_jobs"]:
        why = j["last_error"] or j["message"]
        lines.append(
            f"failing job {j['id']} ({j['kind']}, {j['state']}, {j['attempts']} of {j['max_attempts']}): {why}"
        )
    for d in out["failing_destinations"]:
        lines.append(
            f"failing destination {d['destination']}: {d['receipts']} instance(s) of {d['studies']} study(ies) "
            f"{d['status']}: {d['reason'] or d['meaning']}"
        )
    if not out["failing_jobs"] and not out["failing_destinations"]:
        lines.append("nothing is failing")
    backup = out["last_backup"]
    lines.append(
        f"last backup: {(backup['finished_at'] or '')[:19].replace('T', ' ')} UTC, {backup['message']}"
        if backup
        else "last backup: none has succeeded (set backup_dir, or run minipacs backup from cron)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    out = asyncio.run(_read(settings))
    print(json.dumps(out, indent=2) if args.json else render(out))
    return EXIT_OK
