"""The AE registry: the DICOM nodes we know, and where a C-MOVE really goes.

Real sites reuse AE titles (viewers named "SCU_" + the last digits of their IP
on every floor), so a title is not a key: a node is (AE title, host). A C-MOVE
destination shared by several nodes goes to the one at the requester's address,
or nowhere — never "the first one" — and every time a shared title is
involved a warning names all the candidates.

PS3.5 Table 6.2-1 (VR AE): at most 16 characters of the default repertoire
without backslash or control characters; leading and trailing spaces are not
significant. Titles are otherwise compared exactly (case matters).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import datetime as dt
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from minipacs.core.errors import AmbiguousDestination, ArchiveError, NotFound, UnknownDestination

if TYPE_CHECKING:
    from minipacs.index.database import IndexConnection

# The index (SQLAlchemy) is imported where the registry first uses it, not here:
# config.py imports this module for Node, and every command imports config.

log = logging.getLogger(__name__)

T = TypeVar("T")


class IndexAccess(Protocol):
    """How the registry reaches the index: ``Archive`` (its writer and its pool), or
    an index-only stand-in for commands that must not open the whole archive."""

    async def write(self, call: Callable[[IndexConnection], T]) -> T: ...

    async def read(self, call: Callable[[IndexConnection], T]) -> T: ...


#: What a node may ask of us, in the order we print them. "mpps": N-CREATE / N-SET of procedure
#: steps; "commit": storage commitment N-ACTION. Whoever may "store" may also do these two
#: (core/access.py IMPLIED_BY_STORE), so they need listing only to grant them without "store".
OPERATIONS: Final = ("echo", "store", "find", "move", "get", "mpps", "commit")
ALL_OPERATIONS: Final = frozenset(OPERATIONS)
#: How long a host name's addresses are trusted before resolving it again (s).
RESOLVE_TTL: Final = 300.0


class InvalidNode(ArchiveError, ValueError):
    """A node's title, host, port or permissions cannot be used; the message says which."""


@dataclass(frozen=True)
class Node:
    ae_title: str
    host: str
    port: int
    description: str = ""
    permissions: frozenset[str] = ALL_OPERATIONS  # what it may ask of us
    tls: bool = False
    id: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def label(self) -> str:
        """'SCU_12 at 10.1.2.12:104' for log lines and messages."""
        return f"{self.ae_title!r} at {self.address}"


# --------------------------------------------------------------------- values


def normalise_title(ae_title: str) -> str:
    """PS3.5 Table 6.2-1 AE: leading and trailing spaces are not significant."""
    return ae_title.strip(" ")


def title_problem(ae_title: str) -> str | None:
    """Why ``ae_title`` is not a valid AE title (PS3.5 Table 6.2-1), or None."""
    title = normalise_title(ae_title)
    if not 1 <= len(title) <= 16:
        return f"AE title {ae_title!r} must be 1 to 16 characters (not counting leading and trailing spaces)"
    if not all(0x20 <= ord(c) < 0x7F and c != "\\" for c in title):
        return f"AE title {ae_title!r} may only use printable ASCII characters without backslash"
    return None


def parse_permissions(text: str | Iterable[str]) -> frozenset[str]:
    """'echo,store' (or a list) -> the set; 'all' is every operation, 'none' or '' is none.

    Anything else (JSON true, 1, null, an object) is InvalidNode: ``list(True)`` was a TypeError, a 500."""
    if isinstance(text, str):
        items: list[object] = list(text.split(","))
    elif isinstance(text, (list, tuple, set, frozenset)):
        items = list(text)
    else:
        raise InvalidNode(
            f"permissions must be a comma-separated string or a list of operation names ({', '.join(OPERATIONS)}), "
            f"not {type(text).__name__} {text!r:.40}"
        )
    words = {str(item).strip().lower() for item in items} - {""}
    if words == {"all"}:
        return ALL_OPERATIONS
    if words == {"none"}:
        return frozenset()
    unknown = sorted(words - ALL_OPERATIONS)
    if unknown:
        raise InvalidNode(
            f"unknown permission {', '.join(map(repr, unknown))}; use any of {', '.join(OPERATIONS)} (or 'all', 'none')"
        )
    return frozenset(words)


def format_permissions(permissions: Iterable[str]) -> str:
    """The permissions in the order of OPERATIONS, comma-separated ('' for none)."""
    have = set(permissions)
    return ",".join(op for op in OPERATIONS if op in have)


def validated(node: Node) -> Node:
    """The node with its title and host normalised; raises InvalidNode saying what is wrong."""
    problem = title_problem(node.ae_title)
    if problem is not None:
        raise InvalidNode(problem)
    host = node.host.strip()
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidNode(f"host {node.host!r} of {node.ae_title!r} must be a host name or an IP address")
    if isinstance(node.port, bool) or not isinstance(node.port, int) or not 1 <= node.port <= 65535:
        raise InvalidNode(f"port {node.port!r:.40} of {node.ae_title!r} is outside 1..65535")
    unknown = sorted(set(node.permissions) - ALL_OPERATIONS)
    if unknown:
        raise InvalidNode(
            f"unknown permission {', '.join(map(repr, unknown))} for {node.ae_title!r}; "
            f"use any of {', '.join(OPERATIONS)}"
        )
    return dataclasses.replace(
        node, ae_title=normalise_title(node.ae_title), host=host, permissions=frozenset(node.permissions)
    )


def node_from_mapping(raw: Mapping[str, Any]) -> Node:
    """A node from a config table (``[[nodes]]``): ae_title, host, port, description, permissions, tls."""
    unknown = sorted(set(raw) - {"ae_title", "host", "port", "description", "permissions", "tls"})
    if unknown:
        raise InvalidNode(
            f"unknown key {', '.join(map(repr, unknown))}; a node has ae_title, host, port, "
            "description, permissions, tls"
        )
    missing = [key for key in ("ae_title", "host", "port") if key not in raw]
    if missing:
        raise InvalidNode(f"missing {', '.join(missing)}")
    port = raw["port"]
    # ASCII digits only, and not thousands of them: str.isdigit takes "²", which int() refuses, and int()
    # refuses more than 4300 digits; both were a ValueError (a 500 on POST /api/nodes), now InvalidNode below
    if isinstance(port, str) and (text := port.strip()).isascii() and text.isdigit() and len(text) <= 18:
        port = int(text)
    tls = raw.get("tls", False)
    if not isinstance(tls, bool):
        raise InvalidNode(f"tls must be true or false, not {tls!r}")
    permissions = parse_permissions(raw["permissions"]) if "permissions" in raw else ALL_OPERATIONS
    return validated(
        Node(str(raw["ae_title"]), str(raw["host"]), port, str(raw.get("description", "")), permissions, tls)
    )


def _node_from_row(row: Mapping[str, Any]) -> Node:
    perms = frozenset(p for p in str(row["permissions"]).split(",") if p)
    return Node(
        row["ae_title"], row["host"], int(row["port"]), row["description"], perms, bool(row["tls"]), int(row["id"])
    )


def _row_of(node: Node) -> dict[str, Any]:
    return {
        "ae_title": node.ae_title,
        "host": node.host,
        "port": node.port,
        "description": node.description,
        "permissions": format_permissions(node.permissions),
        "tls": node.tls,
    }


def _addresses(nodes: Iterable[Node]) -> str:
    return ", ".join(n.address for n in nodes)


# ------------------------------------------------------------ host addresses


def normalise_ip(text: str) -> str | None:
    """Canonical text of an IP address ('::ffff:10.0.0.1' -> '10.0.0.1'), None if not an address."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class HostResolver:
    """Host name -> its IP addresses, cached for RESOLVE_TTL seconds; IP literals need no lookup."""

    def __init__(self, ttl: float = RESOLVE_TTL) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def cached(self, host: str) -> frozenset[str] | None:
        """The addresses if known without a lookup (an IP literal or a fresh cache entry)."""
        ip = normalise_ip(host)
        if ip is not None:
            return frozenset({ip})
        hit = self._cache.get(host.lower())
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def addresses(self, host: str) -> frozenset[str]:
        known = self.cached(host)
        if known is not None:
            return known
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            log.warning("host name %r of a registered node does not resolve (%s); no request can match it", host, exc)
            found: frozenset[str] = frozenset()
        else:
            found = frozenset(ip for info in infos if (ip := normalise_ip(str(info[4][0]))) is not None)
        self._cache[host.lower()] = (time.monotonic() + self.ttl, found)
        return found


# ------------------------------------------------------------------ registry

Listener = Callable[[tuple[Node, ...]], Awaitable[None]]


class NodeRegistry:
    """The known nodes, kept in the index; every read and write goes through the archive."""

    def __init__(self, archive: IndexAccess, resolver: HostResolver | None = None) -> None:
        self.archive = archive
        self.resolver = resolver or HostResolver()
        self._listeners: builtins.list[Listener] = []
        self._snapshot: tuple[Node, ...] | None = None
        self._notified_at = 0.0

    # ------------------------------------------------------------ change feed
    def subscribe(self, listener: Listener) -> None:
        """``await listener(nodes)`` after every change seen by this process (its own writes,
        and other processes' writes found by ``refresh``)."""
        self._listeners.append(listener)

    @property
    def snapshot(self) -> tuple[Node, ...]:
        """The nodes as last read (empty before the first read)."""
        return self._snapshot or ()

    async def _publish(self, nodes: Sequence[Node], force: bool = False) -> None:
        fresh = tuple(nodes)
        if fresh == self._snapshot and not force:
            return
        self._snapshot = fresh
        self._notified_at = time.monotonic()
        for listener in self._listeners:
            try:
                await listener(fresh)
            except Exception:  # a listener failing must not break the registry
                log.exception("AE registry listener failed")

    async def refresh(self) -> tuple[Node, ...]:
        """Re-read the table (another process, e.g. `minipacs nodes add`, may have changed it)."""
        nodes = await self.list()
        # Re-resolve host names now and then even without a change (DHCP, DNS edits).
        await self._publish(nodes, force=time.monotonic() - self._notified_at > self.resolver.ttl)
        return self.snapshot

    async def watch(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the index may be briefly unreachable; try again next time
                log.warning("could not re-read the AE registry (trying again in %gs): %s", interval, exc)

    # ------------------------------------------------------------------ CRUD
    async def list(self) -> builtins.list[Node]:
        from minipacs.index import nodes_repo

        rows = await self.archive.read(nodes_repo.list_nodes)
        return [_node_from_row(row) for row in rows]

    async def add(self, node: Node, *, warn: bool = True) -> Node:
        """Register ``node``, or update the one with the same AE title and host.

        Raises InvalidNode. Warns (unless ``warn`` is False) when the title is now on several hosts.
        """
        from minipacs.index import nodes_repo

        node = validated(node)
        now = dt.datetime.now(dt.UTC)
        row, _created = await self.archive.write(lambda conn: nodes_repo.upsert_node(conn, _row_of(node), now))
        stored = _node_from_row(row)
        nodes = await self.list()
        shared = [n for n in nodes if n.ae_title == stored.ae_title and n.host != stored.host]
        if shared and warn:
            log.warning(
                "AE title %r is now registered on %d hosts (%s); a C-MOVE to it goes to the node at "
                "the requester's address, and is refused from anywhere else",
                stored.ae_title,
                len(shared) + 1,
                _addresses([stored, *shared]),
            )
        await self._publish(nodes)
        return stored

    async def add_all(self, nodes: Iterable[Node]) -> builtins.list[Node]:
        """Register several nodes (e.g. from the config file); returns them as stored.

        No warning per node: call ``check`` afterwards for one report."""
        return [await self.add(node, warn=False) for node in nodes]

    async def get(self, node_id: int) -> Node | None:
        """The node with this id, or None."""
        from minipacs.index import nodes_repo

        row = await self.archive.read(lambda conn: nodes_repo.node_by_id(conn, node_id))
        return _node_from_row(row) if row is not None else None

    async def update(self, node_id: int, node: Node) -> Node:
        """Replace every field of node ``node_id``; raises NotFound, or InvalidNode when another
        node already has the same AE title and host."""
        from minipacs.index import nodes_repo

        node = validated(node)
        now = dt.datetime.now(dt.UTC)

        def run(conn: IndexConnection) -> dict[str, Any]:
            if nodes_repo.node_by_id(conn, node_id) is None:
                raise NotFound(f"no node has the id {node_id}")
            if any(
                r["host"] == node.host and int(r["id"]) != node_id for r in nodes_repo.nodes_titled(conn, node.ae_title)
            ):
                raise InvalidNode(f"another node is already registered as {node.label()}; edit or remove that one")
            return nodes_repo.update_node(conn, node_id, _row_of(node), now)

        stored = _node_from_row(await self.archive.write(run))
        await self._publish(await self.list())
        return stored

    async def remove(self, ae_title: str, host: str | None = None) -> int:
        """Remove the nodes titled ``ae_title`` (only the one on ``host`` if given); how many."""
        from minipacs.index import nodes_repo

        title = normalise_title(ae_title)
        where = host.strip() if host is not None else None
        count = await self.archive.write(lambda conn: nodes_repo.delete_nodes(conn, title, where))
        await self._publish(await self.list())
        return count

    async def find(self, ae_title: str) -> builtins.list[Node]:
        """Nodes whose AE title is exactly ``ae_title`` (leading/trailing spaces ignored)."""
        from minipacs.index import nodes_repo

        title = normalise_title(ae_title)
        rows = await self.archive.read(lambda conn: nodes_repo.nodes_titled(conn, title))
        return [_node_from_row(row) for row in rows]

    # ------------------------------------------------------------- C-MOVE
    async def resolve_move_destination(self, ae_title: str, requester_host: str) -> Node:
        """The node a C-MOVE to ``ae_title`` requested from ``requester_host`` must go to.

        One node with that title: it. Several: the one whose host is the
        requester's address; if none (or more than one) is, AmbiguousDestination.
        None: UnknownDestination. Never the first of several.
        """
        title = normalise_title(ae_title)
        nodes = await self.list()
        candidates = [n for n in nodes if n.ae_title == title]
        near = [n for n in nodes if n.ae_title != title and n.ae_title.casefold() == title.casefold()]
        if not candidates:
            message = (
                f"C-MOVE destination {title!r} is not a registered node; add it with: "
                f"minipacs nodes add {title} HOST PORT"
            )
            if near:
                message += (
                    f" (registered titles differing only in case: {', '.join(n.label() for n in near)}; "
                    "DICOM compares AE titles exactly)"
                )
            raise UnknownDestination(message)
        if near:
            log.warning(
                "C-MOVE destination %r: registered titles %s differ from it only in case; they are other "
                "nodes to DICOM and receive nothing from this move",
                title,
                ", ".join(n.label() for n in near),
            )
        if len(candidates) == 1:
            return candidates[0]
        requester = normalise_ip(requester_host) or requester_host
        matches = [n for n in candidates if requester in await self.resolver.addresses(n.host)]
        where = _addresses(candidates)
        if len(matches) == 1:
            chosen = matches[0]
            log.warning(
                "C-MOVE destination %r is registered %d times (%s); the request came from %s, so images go to %s",
                title,
                len(candidates),
                where,
                requester_host,
                chosen.address,
            )
            return chosen
        if matches:
            message = (
                f"C-MOVE destination {title!r} is registered {len(candidates)} times ({where}) and "
                f"{len(matches)} of them ({_addresses(matches)}) are at the requester's address {requester_host}; "
                f"refusing rather than guessing: remove the stale entries with "
                f"'minipacs nodes remove {title} --host HOST'"
            )
        else:
            message = (
                f"C-MOVE destination {title!r} is registered {len(candidates)} times ({where}) and the request "
                f"came from {requester_host}, which is none of them; refusing rather than guessing: give each "
                f"workstation its own AE title, or request the move from the workstation that should receive it"
            )
        log.warning("%s", message)
        raise AmbiguousDestination(message)

    # -------------------------------------------------------------- checks
    async def check(self) -> builtins.list[str]:
        """Warnings about the registry, as plain sentences (empty: nothing to worry about)."""
        return registry_warnings(await self.list())


def registry_warnings(nodes: Sequence[Node]) -> builtins.list[str]:
    """A title on several hosts; titles differing only in case or surrounding spaces."""
    warnings: builtins.list[str] = []
    by_title: dict[str, builtins.list[Node]] = {}
    for node in nodes:
        by_title.setdefault(node.ae_title, []).append(node)
    for title, group in sorted(by_title.items()):
        hosts = {n.host for n in group}
        if len(hosts) > 1:
            warnings.append(
                f"AE title {title!r} is used by {len(group)} nodes ({_addresses(group)}). A C-MOVE to {title!r} "
                f"goes to the node whose host is the requester's address and is refused (0xA801) when the "
                f"request comes from any other address; give each node its own AE title if you can."
            )
    by_folded: dict[str, builtins.list[str]] = {}
    for title in by_title:
        by_folded.setdefault(normalise_title(title).casefold(), []).append(title)
    for _key, titles in sorted(by_folded.items()):
        if len(titles) < 2:
            continue
        group = [n for t in sorted(titles) for n in by_title[t]]
        listed = ", ".join(n.label() for n in group)
        spaces = len({normalise_title(t) for t in titles}) < len(titles)
        kind = "case or leading/trailing spaces" if spaces else "case"
        warnings.append(
            f"AE titles {listed} differ only in {kind}. DICOM compares AE titles exactly (ignoring surrounding "
            f"spaces), so a C-MOVE to one of them never reaches the others, and a peer configured with the "
            f"other spelling is not recognised; rename them so they differ clearly, or remove the wrong one."
        )
    return warnings


#: The operations that send images out of the archive.
RETRIEVE_OPERATIONS: Final = frozenset({"move", "get"})


def calling_host_warning(nodes: Sequence[Node], check_calling_host: bool) -> str | None:
    """With ``check_calling_host`` off, an AE title is all a caller needs to get a node's rights:
    say so when some registered node may retrieve (C-MOVE/C-GET) — None when nothing is exposed."""
    if check_calling_host:
        return None
    exposed = [n for n in nodes if n.permissions & RETRIEVE_OPERATIONS]
    if not exposed:
        return None
    listed = ", ".join(n.ae_title for n in exposed[:10]) + (
        f" and {len(exposed) - 10} more" if len(exposed) > 10 else ""
    )
    return (
        f"{len(exposed)} registered node(s) may retrieve images (C-MOVE/C-GET): {listed}. check_calling_host is "
        f"off, so ANY host that calls with one of these AE titles gets those rights and can pull every study; an "
        f"AE title is not a password. Set check_calling_host = true (each node must then call from its "
        f"registered host), or take move/get away from nodes that do not need them."
    )


def duplicate_titles(nodes: Iterable[Node]) -> dict[str, tuple[Node, ...]]:
    """AE title -> its nodes, for titles registered on more than one host."""
    by_title: dict[str, builtins.list[Node]] = {}
    for node in nodes:
        by_title.setdefault(node.ae_title, []).append(node)
    return {t: tuple(g) for t, g in by_title.items() if len({n.host for n in g}) > 1}


__all__ = [
    "ALL_OPERATIONS",
    "OPERATIONS",
    "HostResolver",
    "IndexAccess",
    "InvalidNode",
    "Node",
    "NodeRegistry",
    "RETRIEVE_OPERATIONS",
    "calling_host_warning",
    "duplicate_titles",
    "format_permissions",
    "node_from_mapping",
    "normalise_ip",
    "normalise_title",
    "parse_permissions",
    "registry_warnings",
    "title_problem",
    "validated",
]
