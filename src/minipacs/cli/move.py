"""`minipacs move`: C-MOVE to a third AE, or to ourselves with a built-in storage SCP.

minipacs move HOST PORT -aec PACS -aem VIEWER -k StudyInstanceUID=1.2.3
minipacs move HOST PORT -aec PACS -aet ME --port 11113 --store-to ./in -k StudyInstanceUID=1.2.3
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
    p = sub.add_parser("move", help="C-MOVE studies/series/images to an AE, or to ourselves (like DCMTK movescu)")
    network_args(p, "MOVESCU")
    retrieve_args(p)
    p.add_argument("-aem", "--move-destination", help="destination AE title [our -aet when receiving]")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store-to", type=Path, metavar="DIR", help="receive the images ourselves into DIR")
    where.add_argument("--into-archive", action="store_true", help="receive the images ourselves into the archive")
    p.add_argument("--port", dest="listen_port", type=int, help="port of our storage SCP when receiving")
    p.add_argument("--bind", metavar="ADDR", help="local address to listen on and connect from [all / any]")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    receiving = args.store_to is not None or args.into_archive
    if receiving and not args.listen_port:
        print("minipacs move: receiving needs --port (the port the destination is registered with)", file=sys.stderr)
        return EXIT_USAGE
    if not receiving and not args.move_destination:
        print(
            "minipacs move: give -aem DESTINATION, or --store-to DIR / --into-archive to receive the images ourselves",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        request = identifier(args)
    except ValueError as exc:
        print(f"minipacs move: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_move(args, settings, request, receiving))


async def _move(args: argparse.Namespace, settings: Settings | None, request: RetrieveRequest, receiving: bool) -> int:
    destination = args.move_destination or args.calling_aet
    if not receiving:
        return await _request(args, request, destination, "")
    from minipacs.services.server import DicomServer

    async with receiver_service(args, settings, args.store_to) as (service, where):
        server = DicomServer(
            args.calling_aet,
            [service],
            host=args.bind or "0.0.0.0",
            port=args.listen_port,
            max_pdu_receive=args.max_pdu,
        )
        try:
            await server.start()
        except OSError as exc:
            return failure("move", f"cannot listen on port {args.listen_port}: {exc.strerror}", args.json, EXIT_NETWORK)
        try:
            return await _request(args, request, destination, where)
        finally:
            await server.close(grace=5.0)


async def _request(args: argparse.Namespace, request: RetrieveRequest, destination: str, where: str) -> int:
    printer = ProgressPrinter(not args.no_progress, "move")
    try:
        result = await outbound(args).retrieve(
            peer(args), request, method="move", destination=destination, progress=printer
        )
    except OutboundError as exc:
        printer.close()
        return failure("move", str(exc), args.json, EXIT_NETWORK)
    printer.close()
    return summary(f"C-MOVE {request.level} to {destination}", result, printer.elapsed, where, as_json=args.json)
