"""`minipacs rules list|check`: the auto-routing rules in force (core/rules.py; docs/ROUTING.md).

``list`` shows the config file's rules (read-only) and those made through ``/api/rules`` (stored in
the index, shared by every node); ``check`` also says which name a node that is not registered
(what ``serve`` refuses to start with). Rules are edited in the config file or through the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings

NEEDS_SETTINGS = True


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    p = sub.add_parser("rules", help="auto-routing rules: list, check against the AE registry")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "every rule in force"), ("check", "rules naming nodes that are not registered")):
        action = actions.add_parser(name, help=text)
        settings_args(action)
        action.add_argument("--json", action="store_true", help="JSON output, as GET /api/rules")


async def _read(settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    from minipacs.bootstrap import open_archive
    from minipacs.core.nodes import NodeRegistry
    from minipacs.core.rules import RuleBook, check_against_nodes

    archive = await open_archive(settings)
    try:
        nodes = NodeRegistry(archive)
        rules = await RuleBook(archive, settings.rules).all()
        registered = [*await nodes.list(), *[n for n in settings.nodes if not await nodes.find(n.ae_title)]]
        return [r.to_json() for r in rules], check_against_nodes(rules, registered)
    finally:
        await archive.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    rules, problems = asyncio.run(_read(settings))
    if args.action == "check":
        if args.json:
            print(json.dumps({"problems": problems}, indent=2))
        for problem in problems if not args.json else ():
            print(f"minipacs: {problem}", file=sys.stderr)
        if not problems and not args.json:
            print(f"{len(rules)} rule(s); every destination is a registered node")
        return EXIT_PARTIAL if problems else EXIT_OK
    if args.json:
        print(json.dumps(rules, indent=2))
        return EXIT_OK
    for rule in rules:
        where = "config file, read-only" if rule["read_only"] else "API"
        rest = {k: v for k, v in rule.items() if k not in ("name", "when", "source", "read_only")}
        print(f"{rule['name']:<20} {rule['when']:<9} ({where}) {json.dumps(rest, sort_keys=True)}")
    if not rules:
        print("no rules (add [[rules]] to the config file, or POST /api/rules)")
    return EXIT_OK
