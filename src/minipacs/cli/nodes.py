"""`minipacs nodes add | list | remove | check`: the AE registry from the command line.

Works with the server stopped or running: it opens only the index (never the
archive's staging area, which a running server owns) and a running server
picks the changes up within ``nodes_refresh`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from minipacs.cli.exit_codes import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from minipacs.config import Settings
from minipacs.core.audit import Action, ActorKind, AuditLog, login_name
from minipacs.core.nodes import (
    ALL_OPERATIONS,
    InvalidNode,
    Node,
    NodeRegistry,
    calling_host_warning,
    format_permissions,
    normalise_title,
    parse_permissions,
)
from minipacs.index.database import WRITER_OPTION, create_index_engine, upgrade_schema

NEEDS_SETTINGS = True
T = TypeVar("T")


class IndexOnly:
    """The index without the rest of the archive (``IndexAccess`` for NodeRegistry)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, settings: Settings) -> IndexOnly:
        def prepare() -> Engine:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            engine = create_index_engine(settings.resolved_index_url, fsync=settings.fsync)
            try:
                upgrade_schema(engine)
            except Exception:
                engine.dispose()
                raise
            return engine

        return cls(await asyncio.to_thread(prepare))

    async def write(self, call: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect().execution_options(**{WRITER_OPTION: True}) as conn, conn.begin():
                return call(conn)

        return await asyncio.to_thread(run)

    async def read(self, call: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return call(conn)

        return await asyncio.to_thread(run)

    def close(self) -> None:
        self.engine.dispose()


def register(sub: Any) -> None:
    from minipacs.cli.main import settings_args

    parser = sub.add_parser("nodes", help="the AE registry: known DICOM nodes (add, list, remove, check)")
    actions = parser.add_subparsers(dest="nodes_action", required=True, metavar="ACTION")

    p = actions.add_parser("add", help="register a node, or update the one with that AE title and host")
    settings_args(p)
    p.add_argument("node_aet", metavar="AET", help="its AE title")
    p.add_argument("node_host", metavar="HOST", help="its host name or IP address")
    p.add_argument("node_port", metavar="PORT", type=int, help="its DICOM port (where C-MOVE sends images)")
    p.add_argument("--description", default="", help="free text, e.g. 'viewer, 3rd floor'")
    p.add_argument(
        "--permissions",
        default="all",
        help="what it may ask of us: any of echo,store,find,move,get, or all, or none [all]",
    )
    p.add_argument("--tls", action="store_true", help="the node uses TLS")

    p = actions.add_parser("list", help="list the registered nodes")
    settings_args(p)
    p.add_argument("--json", action="store_true", help="JSON output")

    p = actions.add_parser("remove", help="remove the nodes with that AE title (on one host with --host)")
    settings_args(p)
    p.add_argument("node_aet", metavar="AET", help="AE title")
    p.add_argument("--host", dest="node_host", help="only the node on this host")

    p = actions.add_parser("check", help="warn about shared AE titles and near-identical ones (exit 1 if any)")
    settings_args(p)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if settings is None:  # pragma: no cover - NEEDS_SETTINGS
        return EXIT_USAGE
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    index = await IndexOnly.open(settings)
    try:
        registry = NodeRegistry(index)
        if args.nodes_action == "check":
            return await _check(args, registry, settings)
        action: Callable[[argparse.Namespace, NodeRegistry], Any] = {
            "add": _add,
            "list": _list,
            "remove": _remove,
        }[args.nodes_action]
        code: int = await action(args, registry)
        if args.nodes_action in ("add", "remove") and code == EXIT_OK:
            await _audit(index, settings, f"minipacs nodes {args.nodes_action} {_spelled(args)}")
        return code
    finally:
        index.close()


def _spelled(args: argparse.Namespace) -> str:
    """The command's node, as typed (for the audit row)."""
    if args.nodes_action == "remove":
        return f"{args.node_aet}" + (f" --host {args.node_host}" if args.node_host else "")
    return f"{args.node_aet} {args.node_host} {args.node_port}"


async def _audit(index: IndexOnly, settings: Settings, detail: str) -> None:
    """The change in the audit trail (PS3.15 A.5.3.11 Network Configuration), as the server records one
    made over REST; written here at once (the command has no audit writer running)."""
    trail = AuditLog(index.write, index.read, settings.node_id)
    trail.record(Action.NETWORK_CONFIG, actor_kind=ActorKind.CLI, actor=login_name(), detail=detail)
    try:
        await trail.flush()
    except Exception as exc:  # noqa: BLE001 - the change is made; say the trail missed it
        print(f"warning: the change is not in the audit trail: {exc}", file=sys.stderr)


async def _add(args: argparse.Namespace, registry: NodeRegistry) -> int:
    try:
        node = Node(
            args.node_aet,
            args.node_host,
            args.node_port,
            args.description,
            parse_permissions(args.permissions),
            args.tls,
        )
        existed = any(n.host == node.host.strip() for n in await registry.find(node.ae_title))
        stored = await registry.add(node, warn=False)
    except InvalidNode as exc:
        print(f"minipacs nodes add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{'updated' if existed else 'registered'} {stored.label()} "
        f"(may {format_permissions(stored.permissions) or 'nothing'}{', TLS' if stored.tls else ''})"
    )
    mark = repr(stored.ae_title)
    for warning in await registry.check():
        if mark in warning:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


async def _list(args: argparse.Namespace, registry: NodeRegistry) -> int:
    nodes = await registry.list()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": n.id,
                        "ae_title": n.ae_title,
                        "host": n.host,
                        "port": n.port,
                        "description": n.description,
                        "permissions": format_permissions(n.permissions).split(",") if n.permissions else [],
                        "tls": n.tls,
                    }
                    for n in nodes
                ],
                indent=2,
            )
        )
        return EXIT_OK
    if not nodes:
        print("no nodes registered; add one with: minipacs nodes add AET HOST PORT")
        return EXIT_OK
    rows = [("AE TITLE", "HOST", "PORT", "MAY", "TLS", "DESCRIPTION")]
    for n in nodes:
        may = "all" if n.permissions == ALL_OPERATIONS else format_permissions(n.permissions) or "nothing"
        rows.append((n.ae_title, n.host, str(n.port), may, "yes" if n.tls else "", n.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip())
    warnings = await registry.check()
    if warnings:
        print(f"{len(warnings)} warning(s) about these nodes: see 'minipacs nodes check'", file=sys.stderr)
    return EXIT_OK


async def _remove(args: argparse.Namespace, registry: NodeRegistry) -> int:
    title = normalise_title(args.node_aet)
    count = await registry.remove(title, args.node_host)
    where = f" on host {args.node_host}" if args.node_host else ""
    if count == 0:
        print(
            f"minipacs nodes remove: no node {title!r}{where} is registered; see 'minipacs nodes list'", file=sys.stderr
        )
        return EXIT_PARTIAL
    print(f"removed {count} node(s) {title!r}{where}")
    return EXIT_OK


async def _check(args: argparse.Namespace, registry: NodeRegistry, settings: Settings) -> int:
    warnings = await registry.check()
    for warning in warnings:
        print(f"warning: {warning}")
    # The default (check_calling_host off) is a choice, not an error: said every time, exit code unchanged.
    exposed = calling_host_warning(await registry.list(), settings.check_calling_host)
    if exposed:
        print(f"warning: {exposed}")
    if warnings:
        return EXIT_PARTIAL
    print(f"{len(await registry.list())} node(s), no shared or near-identical AE titles")
    return EXIT_OK
