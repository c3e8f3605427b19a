"""`minipacs anonymize --study UID | --series UID | --patient ID [--option NAME ...] [--zip OUT]
[--delete-original] [--json]`: de-identify stored instances (core/anonymize.py, docs/ANONYMIZATION.md).

The result goes into this archive as new studies (through the one ingest path), or into a ZIP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.anonymize import AnonymizeRequest, AnonymizeResult
from minipacs.core.audit import login_name
from minipacs.core.deid import ALL_OPTIONS as OPTIONS
from minipacs.core.errors import ArchiveError

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("anonymize", help="de-identify a patient, study or series (PS3.15 Annex E)")
    settings_args(p)
    p.add_argument("--patient", metavar="ID", help="every study of this Patient ID")
    p.add_argument("--study", metavar="UID", help="this Study Instance UID")
    p.add_argument("--series", metavar="UID", help="this Series Instance UID (wins over --study)")
    p.add_argument(
        "--option", action="append", default=[], choices=OPTIONS, metavar="NAME", help=f"one of {', '.join(OPTIONS)}"
    )
    p.add_argument("--zip", metavar="OUT", type=Path, help="write a ZIP here instead of storing new studies")
    p.add_argument("--delete-original", action="store_true", help="delete the original once all is stored")
    p.add_argument("--json", action="store_true", help="JSON output, as the REST answer")


def _request(args: argparse.Namespace) -> AnonymizeRequest | None:
    for level, value in (("series", args.series), ("study", args.study), ("patient", args.patient)):
        if value:
            return AnonymizeRequest(level, value, frozenset(args.option), keep_original=not args.delete_original)
    return None


async def _run(settings: Settings, request: AnonymizeRequest, zip_path: Path | None) -> AnonymizeResult:
    from minipacs.bootstrap import anonymizer, open_archive

    archive = await open_archive(settings)
    try:
        who = ["cli", login_name(), ""]  # core/audit.py ActorKind.CLI
        return await anonymizer(settings, archive).run(request, zip_path=zip_path, who=who)
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    request = _request(args)
    if request is None:
        print("minipacs anonymize: name what to anonymize: --patient ID, --study UID or --series UID", file=sys.stderr)
        return EXIT_USAGE
    if args.zip is not None and args.delete_original:
        print("minipacs anonymize: --delete-original goes with storing, not with --zip", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(_run(settings, request, args.zip))
    except ArchiveError as exc:
        print(f"minipacs anonymize: {exc}", file=sys.stderr)
        return EXIT_USAGE
    answer = result.to_json(request.level)
    code = EXIT_PARTIAL if result.failures else EXIT_OK
    if args.json:
        print(json.dumps({**answer, "zip": str(args.zip) if args.zip else None, "exit_code": code}, indent=2))
        return code
    for failure in result.failures:
        print(f"failed {failure['uid']}: {failure['reason']}", file=sys.stderr)
    where = f"into {args.zip}" if args.zip else f"as {len(result.studies)} new study(ies): {', '.join(result.studies)}"
    print(f"anonymized {result.instances} instance(s) of patient {result.patient} {where}")
    if result.original_deleted:
        print(f"deleted the original {request.level} {request.id}")
    return code
