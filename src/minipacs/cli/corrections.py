"""`minipacs modify | merge | split | corrections`: corrections from the command line (core/corrections.py).

- ``minipacs modify --patient P1 PatientName=DOE^JANE`` (or ``--study UID`` / ``--series UID``)
- ``minipacs merge --from P2 --into P1``: every study of P2 moves to P1
- ``minipacs split --series UID [--study UID]``: the series moves to that study (or a new one)
- ``minipacs corrections [--target ID] [--json]``: who corrected what, with the old values

They open the archive themselves (beside a running server too: a second process stages privately),
and run the correction at once, however large; the server's REST API queues large ones as jobs.
The corrected instances that auto-routing had delivered are queued again as "route" jobs in the index
(docs/ROUTING.md "Corrections"): a running server sends them, or the next one to start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.audit import login_name
from minipacs.core.corrections import CorrectionResult, Corrections, list_corrections
from minipacs.core.errors import ArchiveError
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level

NEEDS_SETTINGS = True


def actor() -> str:
    """Who runs the command, for the corrections log."""
    return f"{login_name()} (command line on {socket.gethostname()})"


def register_modify(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("modify", help="correct a patient's, study's or series' attributes (files rewritten)")
    settings_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--patient", metavar="PATIENT_ID")
    which.add_argument("--study", metavar="STUDY_UID")
    which.add_argument("--series", metavar="SERIES_UID")
    p.add_argument("changes", nargs="+", metavar="Keyword=value", help="e.g. PatientName=DOE^JANE")


def register_merge(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("merge", help="merge two patients: every study of --from moves to --into")
    settings_args(p)
    p.add_argument("--from", dest="source", required=True, metavar="PATIENT_ID", help="the duplicate (goes away)")
    p.add_argument("--into", dest="target", required=True, metavar="PATIENT_ID", help="the patient that stays")


def register_split(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("split", help="move a series to another study (its instances take that study's UID)")
    settings_args(p)
    p.add_argument("--series", required=True, metavar="SERIES_UID")
    p.add_argument("--study", metavar="STUDY_UID", help="the study it moves to [a new study of the same patient]")


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("corrections", help="show the corrections log: who modified, merged or split what")
    settings_args(p)
    p.add_argument("--target", help="only those of this Patient ID or UID")
    p.add_argument("--limit", type=int, default=100, help="most shown [100]")
    p.add_argument("--json", action="store_true", help="JSON output, as GET /api/corrections")


async def _with_archive(settings: Settings, body: Callable[[Corrections], Awaitable[Any]]) -> Any:
    from minipacs.bootstrap import corrections, job_queue, open_archive
    from minipacs.core.nodes import NodeRegistry

    archive = await open_archive(settings)
    try:
        queue = job_queue(settings, archive, NodeRegistry(archive))  # not started: the server runs what it queues
        return await body(corrections(settings, archive, routing_jobs=queue))
    finally:
        await archive.close()


def _report(result: CorrectionResult) -> int:
    print(json.dumps(result.to_json(), indent=2))
    if result.left:
        print(
            f"minipacs: {result.left} instance(s) stored during the correction, or unreadable, still hold the old "
            "values; run it again (the server log names unreadable ones)",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def _correct(settings: Settings | None, params: dict[str, Any]) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    try:
        who = ["cli", login_name(), ""]  # core/audit.py ActorKind.CLI
        result = asyncio.run(_with_archive(settings, lambda c: c.run({**params, "actor": actor(), "audit": who})))
    except ArchiveError as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    return _report(result)


def run_modify(args: argparse.Namespace, settings: Settings | None) -> int:
    changes: dict[str, str] = {}
    for item in args.changes:
        keyword, sep, value = item.partition("=")
        if not sep or not keyword:
            print(f"minipacs: {item!r} is not Keyword=value (e.g. PatientName=DOE^JANE)", file=sys.stderr)
            return EXIT_USAGE
        changes[keyword] = value
    nouns = (LEVEL_SPELLINGS[lv].noun for lv in (Level.PATIENT, Level.STUDY, Level.SERIES))
    level, target = next((lv, v) for lv in nouns if (v := getattr(args, lv)) is not None)
    return _correct(settings, {"operation": "modify", "level": level, "target": target, "changes": changes})


def run_merge(args: argparse.Namespace, settings: Settings | None) -> int:
    return _correct(settings, {"operation": "merge", "source": args.source, "target": args.target})


def run_split(args: argparse.Namespace, settings: Settings | None) -> int:
    return _correct(settings, {"operation": "move", "series": args.series, "study": args.study})


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE

    async def read() -> list[dict[str, Any]]:
        from minipacs.bootstrap import open_archive

        archive = await open_archive(settings)
        try:
            return await list_corrections(archive, args.target, args.limit)
        finally:
            await archive.close()

    try:
        rows = asyncio.run(read())
    except ArchiveError as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        print(
            f"{row['id']:>6} {row['created_at'][:19]} {row['operation']:<6} {row['level']:<7} {row['target']} "
            f"by {row['actor']}: {json.dumps(row['old_values'])} -> {json.dumps(row['new_values'])} "
            f"[{row['state']}, {row['instances']} file(s)]"
        )
    return EXIT_OK
