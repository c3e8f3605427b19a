"""`minipacs changes [--since N] [--limit M] [--json]`: the changes journal (core/changes.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.changes import DEFAULT_LIMIT, MAX_LIMIT, Change, read_changes

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("changes", help="show the changes journal (new resources, deletions, MPPS, completion)")
    settings_args(p)
    p.add_argument("--since", type=int, default=0, help="only changes after this seq [0]")
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"most changes shown, 1-{MAX_LIMIT} [{DEFAULT_LIMIT}]"
    )
    p.add_argument("--json", action="store_true", help="JSON output, as GET /api/changes")


async def _read(settings: Settings, since: int, limit: int) -> tuple[list[Change], int, bool]:
    from minipacs.bootstrap import open_archive

    archive = await open_archive(settings)
    try:
        return await archive.read(lambda conn: read_changes(conn, since, limit))
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if args.since < 0 or not 1 <= args.limit <= MAX_LIMIT:
        print(f"minipacs: --since must be 0 or more and --limit from 1 to {MAX_LIMIT}", file=sys.stderr)
        return EXIT_USAGE
    found, last, done = asyncio.run(_read(settings, args.since, args.limit))
    if args.json:
        print(json.dumps({"changes": [c.to_json() for c in found], "last": last, "done": done}, indent=2))
        return EXIT_OK
    for c in found:
        study = f" (study {c.study})" if c.study and c.study != c.uid else ""
        why = f" [{c.reason}]" if c.reason else ""  # e.g. [retention:<rule>]
        print(f"{c.seq:>8} {c.time:%Y-%m-%d %H:%M:%S} {c.type:<17} {c.level:<8} {c.uid}{study}{why}")
    more = "" if done else f"; more: minipacs changes --since {last}"
    print(f"last seq {last}{more}")
    return EXIT_OK
