"""Who may associate with us, and what each caller may ask: the access policy.

Rules (each refusal names the one that applied):

- ``allow_unregistered``: what a calling AE that is not in the AE registry may
  do. Default echo, store, find (modalities and viewers just work); move and get
  send images out, so by default only registered nodes may ask for them. Empty:
  only registered nodes may associate at all.
- node permissions: a registered calling AE may do exactly what its
  ``permissions`` say.
- ``check_calling_host``: a registered calling AE must connect from the host
  it is registered on (any of them, when the title is registered several times).
- ``check_called_aet``: the Called AE Title must be ours.

The policy answers from an in-memory snapshot of the registry, replaced
whenever the registry changes (``load``), so a check is a few dict lookups:
no index query per association or per C-STORE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from minipacs.core.nodes import (
    ALL_OPERATIONS,
    OPERATIONS,
    HostResolver,
    Node,
    format_permissions,
    normalise_ip,
    normalise_title,
)

log = logging.getLogger(__name__)

#: Rule names, as they appear in log lines and the association log.
RULE_CALLED_AET: Final = "check_called_aet"
RULE_UNREGISTERED: Final = "allow_unregistered"
RULE_HOST: Final = "check_calling_host"
RULE_PERMISSIONS: Final = "node permissions"


@dataclass(frozen=True)
class AccessRules:
    """The rules of the module docstring; bootstrap.access_rules takes them from config.py's keys."""

    ae_title: str = "MINIPACS"
    allow_unregistered: frozenset[str] = frozenset({"echo", "store", "find"})
    check_calling_host: bool = False
    check_called_aet: bool = False


#: How many (operation, caller, address) answers AccessPolicy.operation_refusal keeps at most.
MAX_DECIDED = 1024


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the rule and a sentence saying what to do."""

    rule: str
    reason: str
    #: True when it is the Called AE Title that is wrong (A-ASSOCIATE-RJ reason 7, not 3).
    called: bool = False


#: Operations granted with "store": a modality that may send images may also report its
#: procedure steps (MPPS) and ask the archive to commit them (Storage Commitment).
IMPLIED_BY_STORE: Final = frozenset({"mpps", "commit"})
#: Operations that are not one C-xxx request, by the name a person reads.
_DIMSE_NAMES: Final = {"mpps": "MPPS N-CREATE/N-SET", "commit": "storage commitment N-ACTION"}


def _dimse(operation: str) -> str:
    return _DIMSE_NAMES.get(operation, f"C-{operation.upper()}")


def _grants(allowed: frozenset[str], operation: str) -> bool:
    return operation in allowed or (operation in IMPLIED_BY_STORE and "store" in allowed)


def _listed(operations: Iterable[str]) -> str:
    return format_permissions(operations).replace(",", ", ") or "nothing"


@dataclass(frozen=True)
class _Snapshot:
    by_title: Mapping[str, tuple[Node, ...]]
    #: node host -> its addresses (empty when it did not resolve)
    addresses: Mapping[str, frozenset[str]]


class AccessPolicy:
    def __init__(self, rules: AccessRules, nodes: Iterable[Node] = (), resolver: HostResolver | None = None) -> None:
        self.rules = rules
        self.resolver = resolver or HostResolver()
        self._snap = self._build(tuple(nodes), {})
        #: operation_refusal's answers, (operation, calling AE, peer host) -> refusal, valid for the
        #: snapshot and rules they were decided on (a registry change or new rules start afresh).
        self._decided: dict[tuple[str, str, str], Refusal | None] = {}
        self._decided_on: tuple[_Snapshot, AccessRules] = (self._snap, rules)

    # -------------------------------------------------------------- snapshot
    def _build(self, nodes: tuple[Node, ...], resolved: Mapping[str, frozenset[str]]) -> _Snapshot:
        by_title: dict[str, list[Node]] = {}
        addresses: dict[str, frozenset[str]] = {}
        for node in nodes:
            by_title.setdefault(node.ae_title, []).append(node)
            known = resolved.get(node.host)
            if known is None:
                known = self.resolver.cached(node.host)
            addresses[node.host] = known if known is not None else frozenset()
        return _Snapshot({t: tuple(g) for t, g in by_title.items()}, addresses)

    async def load(self, nodes: Iterable[Node]) -> None:
        """Replace the snapshot (host names are resolved here, off the hot path)."""
        fresh = tuple(nodes)
        resolved = {n.host: await self.resolver.addresses(n.host) for n in fresh}
        self._snap = self._build(fresh, resolved)

    def _nodes_of(self, calling_ae: str) -> tuple[Node, ...]:
        return self._snap.by_title.get(normalise_title(calling_ae), ())

    def _at(self, nodes: Iterable[Node], peer_host: str) -> list[Node]:
        peer = normalise_ip(peer_host) or peer_host
        return [n for n in nodes if peer in self._snap.addresses.get(n.host, frozenset()) or n.host == peer_host]

    def _near_miss(self, calling_ae: str) -> str:
        title = normalise_title(calling_ae).casefold()
        near = [n for t, group in self._snap.by_title.items() if t.casefold() == title for n in group]
        if not near:
            return ""
        return f" (registered titles differing only in case: {', '.join(n.label() for n in near)})"

    # ----------------------------------------------------------- decisions
    def association_refusal(self, calling_ae: str, called_ae: str, peer_host: str) -> Refusal | None:
        """Whether an A-ASSOCIATE-RQ may be accepted; synchronous, from the snapshot."""
        rules = self.rules
        calling = normalise_title(calling_ae)
        if rules.check_called_aet and normalise_title(called_ae) != normalise_title(rules.ae_title):
            return Refusal(
                RULE_CALLED_AET,
                (
                    f"called AE title {called_ae!r} is not ours ({rules.ae_title!r}); configure the peer to call "
                    f"{rules.ae_title!r}, or set check_called_aet = false"
                ),
                called=True,
            )
        nodes = self._nodes_of(calling)
        if not nodes:
            if rules.allow_unregistered:
                return None
            return Refusal(
                RULE_UNREGISTERED,
                (
                    f"calling AE title {calling!r} from {peer_host} is not a registered node, and only registered "
                    f"nodes may connect (allow_unregistered is empty){self._near_miss(calling)}; register it with: "
                    f"minipacs nodes add {calling} {peer_host} PORT"
                ),
            )
        if len({n.host for n in nodes}) > 1:
            log.warning(
                "calling AE title %r (from %s) is registered on %d hosts (%s)",
                calling,
                peer_host,
                len(nodes),
                ", ".join(n.address for n in nodes),
            )
        here = self._at(nodes, peer_host)
        if rules.check_calling_host and not here:
            return Refusal(
                RULE_HOST,
                (
                    f"calling AE title {calling!r} connected from {peer_host}, but it is registered only on "
                    f"{', '.join(n.host for n in nodes)}, and check_calling_host is on; if it moved, update it "
                    f"with: minipacs nodes add {calling} {peer_host} PORT"
                ),
            )
        if not self._permissions(nodes, here):
            return Refusal(
                RULE_PERMISSIONS,
                (
                    f"calling AE title {calling!r} (from {peer_host}) is registered with no permissions; grant "
                    f"some with: minipacs nodes add {calling} HOST PORT --permissions echo,store,..."
                ),
            )
        return None

    def operation_refusal(self, operation: str, calling_ae: str, peer_host: str) -> Refusal | None:
        """Whether ``calling_ae`` at ``peer_host`` may ask for ``operation`` (one of OPERATIONS).

        Asked for every request (dispatch.guarded): the answer is kept until the node registry or
        the rules change, because deciding it for a registered node (matching the peer's address,
        summing permissions) costs 3-4 us, and a C-STORE's whole event-loop share is ~200 us."""
        decided_on = self._decided_on
        if decided_on[0] is not self._snap or decided_on[1] is not self.rules:
            self._decided = {}
            self._decided_on = (self._snap, self.rules)
        key = (operation, calling_ae, peer_host)
        decided = self._decided
        if key in decided:
            return decided[key]
        refusal = self._operation_refusal(operation, calling_ae, peer_host)
        if len(decided) >= MAX_DECIDED:  # callers naming ever new titles or addresses: start afresh
            decided.clear()
        decided[key] = refusal
        return refusal

    def _operation_refusal(self, operation: str, calling_ae: str, peer_host: str) -> Refusal | None:
        if operation not in ALL_OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
        calling = normalise_title(calling_ae)
        nodes = self._nodes_of(calling)
        if not nodes:
            if _grants(self.rules.allow_unregistered, operation):
                return None
            return Refusal(
                RULE_UNREGISTERED,
                (
                    f"calling AE title {calling!r} from {peer_host} is not a registered node, and unregistered "
                    f"callers may only {_listed(self.rules.allow_unregistered)} (allow_unregistered), not "
                    f"{_dimse(operation)}{self._near_miss(calling)}; register it with: "
                    f"minipacs nodes add {calling} {peer_host} PORT"
                ),
            )
        here = self._at(nodes, peer_host)
        if self.rules.check_calling_host and not here:
            return Refusal(
                RULE_HOST,
                (
                    f"calling AE title {calling!r} asked for {_dimse(operation)} from {peer_host}, but it is "
                    f"registered only on {', '.join(n.host for n in nodes)}, and check_calling_host is on"
                ),
            )
        allowed = self._permissions(nodes, here)
        if _grants(allowed, operation):
            return None
        return Refusal(
            RULE_PERMISSIONS,
            (
                f"calling AE title {calling!r} (from {peer_host}) is registered with permission to "
                f"{_listed(allowed)}, not {_dimse(operation)}; grant it with: minipacs nodes add {calling} "
                f"{(here or nodes)[0].host} {(here or nodes)[0].port} "
                f"--permissions {format_permissions(allowed | {operation})}"
            ),
        )

    @staticmethod
    def _permissions(nodes: tuple[Node, ...], here: list[Node]) -> frozenset[str]:
        """The node at the caller's address decides; if the title is registered elsewhere only,
        what ALL its nodes allow (we cannot tell which one it is)."""
        if here:
            return frozenset(op for n in here for op in n.permissions)
        return frozenset(op for op in OPERATIONS if all(op in n.permissions for n in nodes))

    # -------------------------------------------------------- async contract
    async def check_association(self, calling_ae: str, called_ae: str, peer_host: str) -> str | None:
        """None when the association may be accepted, else the reason sentence."""
        refusal = self.association_refusal(calling_ae, called_ae, peer_host)
        return None if refusal is None else f"{refusal.reason} (rule: {refusal.rule})"

    async def check_operation(self, operation: str, calling_ae: str, peer_host: str) -> str | None:
        """None when the operation may go ahead, else the reason sentence."""
        refusal = self.operation_refusal(operation, calling_ae, peer_host)
        return None if refusal is None else f"{refusal.reason} (rule: {refusal.rule})"


__all__ = ["AccessPolicy", "AccessRules", "Refusal"]
