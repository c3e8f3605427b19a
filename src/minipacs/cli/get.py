"""`minipacs get`: C-GET, the images coming back on the same association (like DCMTK getscu).

minipacs get HOST PORT -aec PACS -k StudyInstanceUID=1.2.3 --out ./in
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_USAGE
from minipacs.cli.main import network_args, outbound, peer
from minipacs.cli.retrieve_common import (
    ProgressPrinter,
    failure,
    identifier,
    receiver_service,
    retrieve_args,
    summary,
)
from minipacs.config import Settings
from minipacs.services.outbound import OutboundError, RetrieveRequest

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    p = sub.add_parser("get", help="C-GET studies/series/images into a folder or the archive (like DCMTK getscu)")
    network_args(p, "GETSCU")
    retrieve_args(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="write the received files into DIR")
    where.add_argument("--into-archive", action="store_true", help="store the received files in the archive")
    p.add_argument(
        "--sop-class",
        action="append",
        default=[],
        metavar="UID",
        help="also offer this Storage SOP class (the first 127 standard ones are offered)",
    )


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    try:
        request = identifier(args)
    except ValueError as exc:
        print(f"minipacs get: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_get(args, settings, request))


async def _get(args: argparse.Namespace, settings: Settings | None, request: RetrieveRequest) -> int:
    async with receiver_service(args, settings, args.out) as (service, where):
        printer = ProgressPrinter(not args.no_progress, "get")
        try:
            result = await outbound(args).retrieve(
                peer(args), request, method="get", receiver=service, offer=args.sop_class, progress=printer
            )
        except OutboundError as exc:
            printer.close()
            return failure("get", str(exc), args.json, EXIT_NETWORK)
        printer.close()
        return summary(f"C-GET {request.level}", result, printer.elapsed, where, as_json=args.json, method="get")
