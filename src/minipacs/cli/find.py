"""`minipacs find`: C-FIND like DCMTK findscu, printing a table or JSON.

  minipacs find HOST PORT -aec PACS -S -k PatientName=Doe* -k StudyDate=20240101-20240131
  minipacs find HOST PORT -aec PACS -P -L SERIES -k PatientID=123 -k StudyInstanceUID=1.2.3 --json

Exit codes: 0 success; 1 the peer answered with a failure or the query was
cancelled; 2 usage error; 3 no association.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from pydicom.dataset import Dataset

from minipacs.cli.exit_codes import EXIT_NETWORK, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.cli.keys import parse_keys
from minipacs.cli.main import network_args, outbound, peer
from minipacs.config import Settings
from minipacs.dicom.levels import LEVEL_NAMES
from minipacs.services.outbound import FindRequest, InvalidKeys, OutboundError
from minipacs.services.status import FIND, describe

NEEDS_SETTINGS = False
_HIDDEN = {0x00080005, 0x00080052}  # SpecificCharacterSet, QueryRetrieveLevel: not columns


def register(sub: Any) -> None:
    p = sub.add_parser("find", help="query a DICOM node with C-FIND (like DCMTK findscu)")
    network_args(p, "FINDSCU")
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "-P", "--patient", dest="model", action="store_const", const="patient", help="Patient Root information model"
    )
    model.add_argument(
        "-S",
        "--study",
        dest="model",
        action="store_const",
        const="study",
        help="Study Root information model [default]",
    )
    model.add_argument(
        "-O",
        "--psonly",
        dest="model",
        action="store_const",
        const="patient-study",
        help="Patient/Study Only information model (retired)",
    )
    p.add_argument(
        "-L",
        "--level",
        type=str.upper,
        choices=LEVEL_NAMES,
        help="QueryRetrieveLevel [PATIENT for -P/-O, STUDY for -S]",
    )
    p.add_argument(
        "-k",
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="key as keyword or (gggg,eeee), e.g. PatientName=Doe* or (0010,0020)=; "
        "sequence items as Name[0].Keyword=value (repeatable)",
    )
    p.add_argument("--cancel", type=int, metavar="N", help="send C-CANCEL after N matches")
    p.add_argument(
        "--max-matches",
        type=int,
        default=10_000,
        metavar="N",
        help="keep at most N matches (default 10000): past them C-CANCEL is sent and the rest dropped",
    )
    p.add_argument("--json", action="store_true", help="print the matches as PS3.18 JSON")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    try:
        request = FindRequest.build(parse_keys(args.keys), model=args.model or "study", level=args.level)
    except InvalidKeys as exc:
        print(f"minipacs find: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_find(args, request))


async def _find(args: argparse.Namespace, request: FindRequest) -> int:
    start = time.perf_counter()
    try:
        result = await outbound(args).query(peer(args), request, cancel_after=args.cancel)
    except OutboundError as exc:
        print(f"minipacs find: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    took = time.perf_counter() - start
    matches, status, error = result.matches, result.status, result.error_comment
    columns = [elem.tag for elem in request.identifier if elem.tag not in _HIDDEN]
    if args.json:
        print(json.dumps([_json(ds) for ds in matches], indent=2, ensure_ascii=False))
    else:
        _print_table(columns, matches)
    summary = f"{len(matches)} match(es) in {took:.2f} s; final status {describe(status, FIND)}"
    if result.dropped:
        summary += f"; {result.dropped} more after the C-CANCEL dropped"
    print(summary + (f" ({error})" if error else ""), file=sys.stderr)
    return EXIT_OK if status == 0 else EXIT_PARTIAL


def _json(ds: Dataset) -> dict[str, Any]:
    try:
        result: dict[str, Any] = ds.to_json_dict()
        return result
    except Exception as exc:  # noqa: BLE001 - a value the JSON model cannot carry
        return {"error": f"cannot convert this match to JSON: {exc}"}


def _text(ds: Dataset, tag: int) -> str:
    if tag not in ds:
        return ""
    elem = ds[tag]
    if elem.VR == "SQ":
        return f"<{len(elem.value)} item(s)>"
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _print_table(columns: list[Any], matches: list[Dataset]) -> None:
    from pydicom.datadict import keyword_for_tag

    headers = [keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})" for tag in columns]
    rows = [[_text(ds, tag) for tag in columns] for ds in matches]
    widths = [min(max([len(h)] + [len(r[i]) for r in rows]), 64) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v[:64].ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
