"""`minipacs audit [--patient ID] [--study UID] [--user NAME] [--since T] [--until T] [--limit N] [--json]`:
the audit trail (core/audit.py, docs/AUDIT.md), newest first.

The same query as ``GET /api/audit`` (``?patient=&study=&user=&since=&until=&limit=``), on the index of
``--data`` / ``--config``; ``--json`` prints the same JSON list. Reading it is not itself audited (the
command line is the server's own operator).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.audit import MAX_LIMIT, Action, ActorKind, login_name, row_json

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("audit", help="the audit trail: who did what to which patient and study")
    settings_args(p)
    p.add_argument("--patient", default="", metavar="ID", help="rows about this Patient ID")
    p.add_argument("--study", default="", metavar="UID", help="rows about this Study Instance UID")
    p.add_argument("--user", default="", metavar="NAME", help="rows by this actor (user, token, AE title, rule...)")
    p.add_argument("--since", default="", metavar="TIME", help="from this ISO 8601 date or time (UTC if no zone)")
    p.add_argument("--until", default="", metavar="TIME", help="up to this ISO 8601 date or time")
    p.add_argument("--limit", type=int, default=100, metavar="N", help=f"at most N rows, 1 to {MAX_LIMIT} (100)")
    p.add_argument("--json", action="store_true", help="JSON output, as GET /api/audit")


def parse_time(name: str, raw: str) -> dt.datetime | None:
    """``--since`` / ``--until``: ISO 8601 ('2026-12-06', '2026-12-06T10:00:00Z'); naive means UTC."""
    if not raw.strip():
        return None
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--{name} {raw[:40]!r} is not an ISO 8601 date or time (e.g. 2026-12-06T10:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def _rows(settings: Settings, args: argparse.Namespace, since: Any, until: Any) -> list[dict[str, Any]]:
    from minipacs.bootstrap import open_archive

    archive = await open_archive(settings)
    try:
        rows = await archive.audit.query(
            patient_id=args.patient,
            study_uid=args.study,
            actor=args.user,
            since=since,
            until=until,
            limit=args.limit,
        )
        # Audit Log Used (docs/AUDIT.md): written when the archive closes, below
        named = (
            ("patient", args.patient),
            ("study", args.study),
            ("user", args.user),
            ("since", args.since),
            ("until", args.until),
        )
        asked = " ".join(f"--{k} {v}" for k, v in named if v)
        archive.audit.record(
            Action.AUDIT_READ, actor_kind=ActorKind.CLI, actor=login_name(), detail=f"minipacs audit {asked}".strip()
        )
    finally:
        await archive.close()
    return [row_json(r) for r in rows]


def _line(row: dict[str, Any]) -> str:
    who = f"{row['actor_kind']} {row['actor'] or '(unnamed)'}" + (f" from {row['address']}" if row["address"] else "")
    about = " ".join(
        part
        for part in (
            f"patient {row['patient_id']}" if row["patient_id"] else "",
            f"study {row['study_uid']}" if row["study_uid"] else "",
        )
        if part
    )
    return f"{row['time']}  {row['action']:<10} {who}: {about or '-'}" + (
        f" — {row['detail']}" if row["detail"] else ""
    )


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if not 1 <= args.limit <= MAX_LIMIT:
        print(f"minipacs audit: --limit must be from 1 to {MAX_LIMIT}", file=sys.stderr)
        return EXIT_USAGE
    try:
        since, until = parse_time("since", args.since), parse_time("until", args.until)
    except ValueError as exc:
        print(f"minipacs audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = asyncio.run(_rows(settings, args, since, until))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no audit row matches")
    else:
        for row in rows:
            print(_line(row))
    return EXIT_OK
