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
from minipacs.cli.main import network_args
from minipacs.cli.retrieve_common import (
    ProgressPrinter,
    assoc_settings,
    identifier,
    receiver_service,
    retrieve_args,
    summary,
)
from minipacs.config import Settings
from minipacs.net.association import AssociationError, build_rq, connect
from minipacs.services.dispatch import request_handler
from minipacs.services.retrieve_scu import KeySyntaxError, c_get, get_contexts

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    p = sub.add_parser("get", help="C-GET studies/series/images into a folder or the archive (like DCMTK getscu)")
    network_args(p, "GETSCU")
    retrieve_args(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="write the received files into DIR")
    where.add_argument("--into-archive", action="store_true", help="store the received files in the archive")
    p.add_argument("--sop-class", action="append", default=[], metavar="UID",
                   help="also offer this Storage SOP class (the first 127 standard ones are offered)")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    try:
        ident = identifier(args)
    except (KeySyntaxError, ValueError) as exc:
        print(f"minipacs get: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_get(args, settings, ident))


async def _get(args: argparse.Namespace, settings: Settings | None, ident: tuple[str, str, bytes]) -> int:
    model, level, data = ident
    async with receiver_service(args, settings, args.out) as (service, where):
        aset = assoc_settings(args)
        contexts, roles = get_contexts(model, args.sop_class)
        rq = build_rq(args.calling_aet, args.called_aet, contexts, aset, roles=roles)
        try:
            assoc = await connect(args.host, args.port, rq, aset, connect_timeout=args.connect_timeout,
                                  handler=request_handler(service, "C-STORE-RQ"), sink_factory=service.sink_for,
                                  tls=args.tls)
        except AssociationError as exc:
            print(f"minipacs get: {exc}", file=sys.stderr)
            return EXIT_NETWORK
        printer = ProgressPrinter(not args.no_progress, "get")
        try:
            result = await c_get(assoc, model, data, printer)
        except (AssociationError, LookupError) as exc:
            printer.close()
            print(f"minipacs get: {exc}", file=sys.stderr)
            assoc.abort()
            await assoc.wait_closed()
            return EXIT_NETWORK
        printer.close()
        await assoc.release()
        return summary(f"C-GET {level}", result, printer.elapsed, where)
