"""`minipacs deliveries --study UID`: the delivery receipt of a study (core/routing.py; docs/ROUTING.md).

One line per rule and destination (counts by status, the latest reason in words), then one line per
instance that is not delivered yet (``--all``: every instance). Reads the index of ``--data`` /
``--config``, like ``minipacs jobs``; any node sharing the index answers for every delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.errors import InvalidIdentifier

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("deliveries", help="where a study's instances were routed: the delivery receipt")
    settings_args(p)
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    p.add_argument("--all", action="store_true", help="list every instance, not only those not delivered")
    p.add_argument("--json", action="store_true", help="JSON output, as GET /api/studies/{uid}/deliveries")


async def _read(settings: Settings, study: str) -> list[dict[str, Any]]:
    from minipacs.bootstrap import open_archive
    from minipacs.core.routing import study_receipts

    archive = await open_archive(settings)
    try:
        return await study_receipts(archive, study)
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    from minipacs.core.paths import validate_uid
    from minipacs.core.routing import MAX_RECEIPTS, summarise

    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    try:
        study = validate_uid("StudyInstanceUID", args.study)
    except InvalidIdentifier as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    receipts = asyncio.run(_read(settings, study))
    summary = summarise(receipts)
    if args.json:
        doc = {"study": study, "summary": summary, "deliveries": receipts, "truncated": len(receipts) >= MAX_RECEIPTS}
        print(json.dumps(doc, indent=2))
    elif not receipts:
        print(f"study {study}: no delivery recorded (no rule routed it)")
    else:
        print(f"study {study}:")
        for group in summary:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(group["counts"].items()))
            line = (
                f"  {group['rule']} -> {group['destination']} ({group['method']}): {counts}; at {group['updated_at']}"
            )
            print(line + (f"\n    last reason: {group['reason']}" if group["reason"] else ""))
        for r in receipts:
            if args.all or r["status"] != "sent":
                what = r["instance"] or f"study {r['study']}"
                print(
                    f"  {r['status']:<9} {r['destination']:<16} {what}" + (f" — {r['reason']}" if r["reason"] else "")
                )
    undelivered = any(r["status"] != "sent" for r in receipts)
    return EXIT_PARTIAL if undelivered else EXIT_OK
