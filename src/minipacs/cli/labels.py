"""`minipacs labels [--study UID] [--add LABEL] [--remove LABEL] [--json]`: labels on studies
(docs/RETENTION.md "Labels"), as ``/api/studies/{uid}/labels`` and the study page.

With no ``--study``: every label in use and how many studies carry it (``GET /api/labels``).
With ``--study``: that study's labels, after adding and removing the ones named. It works beside
a running server (the index only: no storage is opened).
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

    p = sub.add_parser("labels", help="list labels, or show, add and remove the labels of one study")
    settings_args(p)
    p.add_argument("--study", help="Study Instance UID: show (and change) this study's labels")
    p.add_argument("--add", action="append", default=[], metavar="LABEL", help="put LABEL on the study (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="LABEL", help="take LABEL off (repeatable)")
    p.add_argument("--json", action="store_true", help="JSON output")


async def _act(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from minipacs.cli.nodes import IndexOnly
    from minipacs.core import labels

    index = await IndexOnly.open(settings)
    try:
        if not args.study:
            return {"labels": [{"label": name, "studies": count} for name, count in await labels.all_labels(index)]}
        for label in args.add:
            await labels.add_label(index, args.study, label)
        for label in args.remove:
            await labels.remove_label(index, args.study, label)
        return {"study": args.study, "labels": await labels.labels_of(index, args.study)}
    finally:
        index.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    from minipacs.core.errors import NotFound
    from minipacs.core.labels import InvalidLabel

    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    if (args.add or args.remove) and not args.study:
        print("minipacs: --add and --remove need --study UID", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = asyncio.run(_act(settings, args))
    except (InvalidLabel, NotFound) as exc:
        print(f"minipacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(out, indent=2))
    elif "study" in out:
        print(f"{out['study']}: {', '.join(out['labels']) or '(no labels)'}")
    else:
        for row in out["labels"]:
            print(f"{row['label']}\t{row['studies']} stud{'y' if row['studies'] == 1 else 'ies'}")
    return EXIT_OK
