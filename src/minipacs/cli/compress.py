"""`minipacs compress --study UID [--syntax NAME | --policy NAME] [--dry-run] [--json]`: compress now.

Runs in this process on the index and storage of ``--data``/``--config`` (beside a running server,
as `minipacs import` does), instance by instance, with the same safe switch as the background
jobs (core/compression.py); ``--dry-run`` encodes and reports sizes, and changes nothing.
``--storage`` prints the disk saved (per study with ``--study``) and compresses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.compression import SYNTAXES, InvalidPolicy, Outcome

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("compress", help="compress stored instances losslessly now (JPEG-LS, JPEG 2000, RLE)")
    settings_args(p)
    p.add_argument("--study", action="append", default=[], metavar="UID", help="Study Instance UID (repeatable)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--syntax", choices=list(SYNTAXES), help="the syntax [jpeg-ls-lossless]")
    which.add_argument("--policy", metavar="NAME", help="a [[compression]] policy of the config: its syntax and match")
    p.add_argument("--dry-run", action="store_true", help="encode and report sizes; change nothing")
    p.add_argument("--storage", action="store_true", help="only report the disk saved (per study with --study)")
    p.add_argument("--json", action="store_true", help="JSON output")


async def _run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from minipacs.bootstrap import compressor, open_archive

    archive = await open_archive(settings)
    try:
        worker = compressor(settings, archive)
        if args.storage:
            report: dict[str, Any] = {"archive": await worker.savings()}
            report["studies"] = {uid: await worker.savings(uid) for uid in args.study}
            return report
        match: dict[str, str] = {}
        labels: tuple[str, ...] = ()
        syntax = SYNTAXES[args.syntax or "jpeg-ls-lossless"]
        if args.policy:
            policy = next((p for p in settings.compression if p.name == args.policy), None)
            if policy is None:
                known = ", ".join(p.name for p in settings.compression) or "none configured"
                raise InvalidPolicy(f"no [[compression]] policy named {args.policy!r} ({known})")
            syntax, match, labels = policy.target, dict(policy.match), policy.labels
        outcomes: list[Outcome] = []
        async for page in worker.candidates(match=match, study_uids=args.study, labels=labels):
            for candidate in page:
                outcomes.append(await worker.compress(candidate, syntax, dry_run=args.dry_run))
        return {
            "syntax": syntax.name,
            "dry_run": args.dry_run,
            "instances": [o.to_json() for o in outcomes],
            "studies": {uid: await worker.savings(uid) for uid in args.study},
        }
    finally:
        await archive.close()


def _print(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.storage:
        for label, figures in (("archive", report["archive"]), *report["studies"].items()):
            print(_saved_line(label, figures))
        return
    for item in report["instances"]:
        if item["status"] in ("compressed", "would compress"):
            print(f"{item['sop_instance_uid']}: {item['status']} {item['before']} -> {item['after']} bytes")
        else:
            print(f"{item['sop_instance_uid']}: {item['status']}: {item['reason']}")
    if not report["instances"]:
        print("nothing to compress: no instance of these studies is left that compression has not looked at")
    done = [i for i in report["instances"] if i["status"] in ("compressed", "would compress")]
    saved = sum(i["before"] - i["after"] for i in done)
    verb = "would save" if args.dry_run else "saved"
    print(f"{len(done)} of {len(report['instances'])} instance(s) to {report['syntax']}: {verb} {saved} bytes")
    for uid, figures in report["studies"].items():
        print(_saved_line(uid, figures))


def _saved_line(label: str, f: dict[str, Any]) -> str:
    ratio = f["original_bytes"] / f["stored_bytes"] if f["stored_bytes"] else 1.0
    return (
        f"{label}: {f['instances']} instance(s), {f['stored_bytes']} bytes stored, {f['original_bytes']} as "
        f"received, {f['saved_bytes']} saved (ratio {ratio:.2f}); {f['compressed']} compressed, {f['skipped']} skipped"
    )


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if not args.study and not args.storage:
        print("minipacs: compress needs --study UID (repeatable); the policies sweep the rest", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = asyncio.run(_run(settings, args))
    except InvalidPolicy as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, args)
    return EXIT_OK  # skipped instances (no pixel data, already compressed) are not a failure


__all__ = ["NEEDS_SETTINGS", "register", "run"]
