"""`minipacs retention [--dry-run] [--rule NAME] [--queue] [--json]`: the ``[[retention]]`` rules now.

``--dry-run`` lists what would go and deletes nothing (as ``GET /api/retention/preview``). Without
it, the studies go now, from this process, each deletion journaled with ``retention:<rule>``;
``--queue`` instead queues a "retention" job for the server's job runner (as
``POST /api/retention/run``). docs/RETENTION.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_USAGE
from minipacs.config import Settings

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("retention", help="apply the [[retention]] rules now (or --dry-run: list what would go)")
    settings_args(p)
    p.add_argument("--dry-run", action="store_true", help="list the studies that would go; delete nothing")
    p.add_argument("--rule", action="append", default=[], help="only this rule (repeatable); default: all")
    p.add_argument("--queue", action="store_true", help="queue a retention job for the server instead of running here")
    p.add_argument("--json", action="store_true", help="JSON output (as GET /api/retention/preview)")


async def _act(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from minipacs.bootstrap import job_settings, open_archive
    from minipacs.core import retention
    from minipacs.core.jobs import JobQueue

    known = {rule.name for rule in settings.retention}
    unknown = sorted(set(args.rule) - known)
    if unknown:
        raise ValueError(f"no retention rule {unknown[0]!r}; configured: {', '.join(sorted(known)) or 'none'}")
    rules = [rule for rule in settings.retention if not args.rule or rule.name in args.rule]
    archive = await open_archive(settings)
    try:
        if args.queue:
            queue = JobQueue(archive, job_settings(settings))
            retention.register_retention_job(queue, archive, settings.retention, settings.retention_max_deletions)
            job = await retention.submit_run(queue, args.rule)
            return {"job": job.to_dict()}
        if args.dry_run:
            planned = await retention.plan(archive, rules, max_deletions=settings.retention_max_deletions)
            return {"dry_run": True, **planned.to_json()}
        result = await retention.run(archive, rules, max_deletions=settings.retention_max_deletions)
        return {
            "dry_run": False,
            **result.plan.to_json(),
            "deleted": [c.to_json() for c in result.deleted],
            "deleted_count": len(result.deleted),
            "freed_bytes": result.freed_bytes,
            "spared": [{"study": s, "why": w} for s, w in result.spared],
            "summary": result.summary(),
        }
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if not settings.retention:
        print("minipacs: no [[retention]] rules are configured (docs/RETENTION.md)", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = asyncio.run(_act(settings, args))
    except ValueError as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    if "job" in out:
        print(f"job {out['job']['id']}: {out['job']['description']} queued (minipacs jobs show {out['job']['id']})")
        return EXIT_OK
    listed = out["studies"] if args.dry_run else out["deleted"]
    for c in listed:
        print(f"{c['study']}  {c['bytes']:>12,} B  rule {c['rule']}: {c['why']}")
    verb = "would delete" if args.dry_run else "deleted"
    freed = out["freed_bytes"]
    print(f"{verb} {len(listed)} study(ies), {freed:,} bytes; storage {out['storage_bytes']:,} bytes before")
    for rule, count in out["protected_spared"].items():
        print(f"rule {rule}: {count} study(ies) kept by their protecting label")
    if out.get("spared"):
        print(f"{len(out['spared'])} study(ies) spared at the last moment (labelled or received meanwhile)")
    if out["limited"]:
        print("more are due than retention_max_deletions allows in one run; run again")
    return EXIT_OK
