"""`minipacs backup DEST [--json]`: a copy of the archive that is itself a data folder (core/backup.py).
Exit 0 when done, 1 when it could not be completed (the previous backup in DEST is untouched), 2 when
this archive or DEST cannot have one."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.backup import KIND, BackupFailed, BackupRefused, BackupReport, backup, details, summary
from minipacs.core.jobs import JobQueue, default_runner

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser(
        "backup",
        help="copy the archive (index and files) into a folder that is itself a data folder; "
        "again into the same folder, only what changed",
    )
    settings_args(p)
    p.add_argument("dest", type=Path, help="the backup folder (outside the data folder, best on another disk)")
    p.add_argument("--json", action="store_true", help="JSON output")


async def _backup(settings: Settings, dest: Path) -> BackupReport:
    """The backup, then its record in the index's jobs as a "backup" job that is done (as one of
    ``backup_dir``'s would be), so that a backup run from cron shows in the overview ("last backup") and
    in /metrics (``minipacs_backup_last_success_timestamp_seconds``). A backup that failed is not
    recorded: the exit status and the message say so, and the overview goes on showing the last one
    that succeeded, which is what an alert on its age needs."""
    from minipacs.bootstrap import open_archive, storage_dir

    archive = await open_archive(settings)
    try:
        started = dt.datetime.now(dt.UTC)
        report = await backup(archive, dest, storage_dir(dest))
        try:
            await JobQueue(archive).record_finished(
                KIND,
                f"backup into {dest}",
                summary(report),
                details(report),
                runner=f"minipacs backup command ({default_runner()})"[:200],
                started=started,
            )
        except Exception as exc:  # noqa: BLE001 - the backup itself is complete and usable: say so, exit on it
            print(f"minipacs backup: done, but not recorded in the index's jobs: {exc}", file=sys.stderr)
        return report
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    try:
        report = asyncio.run(_backup(settings, args.dest))
    except BackupRefused as exc:
        print(f"minipacs backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BackupFailed, OSError) as exc:
        print(
            f"minipacs backup: not completed: {exc}; the previous backup in {args.dest} is untouched", file=sys.stderr
        )
        return EXIT_PARTIAL
    if args.json:
        document = {**details(report), "seconds": round(report.seconds, 3), "lost": list(report.lost)}
        print(json.dumps(document, indent=2))
    else:
        print(summary(report).split("; ")[0])
    if report.lost:
        print(f"minipacs backup: {summary(report).split('; ', 1)[1]}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK
