"""Passive findings: what the association log already knows about the site's network.

No traffic: :func:`analyse` reads the latest associations (``diagnostics_window`` of them) and the
AE registry, and says, with the evidence and the fix:

- one calling AE title seen from several addresses (the seed: viewers named after the last digits of
  their IP address, so titles repeat across floors; a C-MOVE to such a title goes to one of them
  only), with each address, first/last seen and whether it is registered;
- a registered node's title used from an address it is not registered on;
- an unregistered title asking for C-MOVE or C-GET;
- C-MOVE destinations that were refused (unknown, ambiguous) or whose sub-operations failed;
- peers whose associations run at ~40 ms per operation with small messages (Nagle meeting delayed
  ACK: the log has no per-message times, so this is the per-operation average of an association);
- peers that abort or time out often;
- called AE titles that are not ours;
- storage commitment requests whose report could not be delivered (the requester closed its
  association before the report and is not a registered node, or refused the report).

:class:`FindingWatch` remembers which findings it has seen, so the server logs a WARNING only the
first time one appears.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import Node, normalise_ip, normalise_title

log = logging.getLogger("minipacs.diagnostics")

#: Average time per operation (ms) that looks like Nagle meeting delayed ACK, with at most this many
#: bytes per operation (so that the transfer itself cannot take that long), over at least MIN_OPS operations.
NAGLE_MS: Final = (30.0, 60.0)
NAGLE_MAX_BYTES_PER_OP: Final = 64 * 1024
NAGLE_MIN_OPS: Final = 10
#: A peer "aborts or times out often": at least this many such associations, and this share of its associations.
ABORT_MIN: Final = 3
ABORT_SHARE: Final = 0.2
#: Evidence lines listed per finding (the counts are always complete).
MAX_EVIDENCE: Final = 20

WARNING: Final = "warning"
INFO: Final = "info"


@dataclass
class Finding:
    """One thing the log shows: a stable ``key`` (to warn once), what, the evidence, the fix."""

    key: str
    kind: str
    severity: str
    title: str
    evidence: list[str] = field(default_factory=list)
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "fix": self.fix,
            "details": self.details,
        }


@dataclass
class _Seen:
    first: dt.datetime
    last: dt.datetime
    count: int = 0

    def add(self, when: dt.datetime) -> None:
        self.first, self.last = min(self.first, when), max(self.last, when)
        self.count += 1


def _when(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _same_host(a: str, b: str) -> bool:
    return a == b or (normalise_ip(a) or a) == (normalise_ip(b) or b)


def _registered_at(nodes: Sequence[Node], title: str, host: str) -> Node | None:
    return next((n for n in nodes if n.ae_title == title and _same_host(n.host, host)), None)


def analyse(records: Iterable[AssociationRecord], nodes: Sequence[Node], our_ae_title: str) -> list[Finding]:
    """The findings of ``records`` (any order) against the registry ``nodes``; warnings first."""
    everything = list(records)
    records = [r for r in everything if r.role == "acceptor"]
    findings: list[Finding] = []
    findings += _titles_from_several_addresses(records, nodes)
    findings += _registered_title_elsewhere(records, nodes)
    findings += _unregistered_retrievers(records, nodes)
    findings += _move_destinations(records)
    findings += _nagle(records)
    findings += _aborts(records)
    findings += _called_not_ours(records, our_ae_title)
    findings += _commitment_undelivered(records, nodes)
    findings += _reports_not_delivered(r for r in everything if r.role == "requestor")
    findings.sort(key=lambda f: (f.severity != WARNING, f.kind, f.key))
    return findings


# ------------------------------------------------------------------ one title, several addresses


def _by_title_and_host(records: Sequence[AssociationRecord]) -> dict[str, dict[str, _Seen]]:
    seen: dict[str, dict[str, _Seen]] = {}
    for rec in records:
        title = normalise_title(rec.calling_aet)
        if not title:
            continue
        hosts = seen.setdefault(title, {})
        entry = hosts.setdefault(rec.peer_host, _Seen(rec.started_at, rec.started_at))
        entry.add(rec.started_at)
    return seen


def _move_fate(title: str, hosts: Sequence[str], nodes: Sequence[Node]) -> str:
    """What happens to a C-MOVE to ``title`` requested from each of ``hosts`` (core/nodes.py rules)."""
    candidates = [n for n in nodes if n.ae_title == title]
    if not candidates:
        return (
            f"a C-MOVE to {title!r} is refused (0xA801, destination unknown) whoever asks: it is not registered, "
            "so none of these machines can retrieve images by C-MOVE"
        )
    if len(candidates) == 1:
        node = candidates[0]
        others = [h for h in hosts if not _same_host(node.host, h)]
        return (
            f"{title!r} is registered once, at {node.address}: every C-MOVE to {title!r} sends the images there, "
            f"also when {', '.join(others) or 'another machine'} asked for them; the C-MOVE answers success and "
            "the requester receives nothing (the images go to the other machine)"
        )
    unreg = [h for h in hosts if not any(_same_host(n.host, h) for n in candidates)]
    text = (
        f"{title!r} is registered {len(candidates)} times ({', '.join(n.address for n in candidates)}): a C-MOVE "
        "to it goes to the node at the requester's own address"
    )
    if unreg:
        text += f"; requested from {', '.join(unreg)} (not registered) it is refused as ambiguous (0xA801)"
    return text


def _titles_from_several_addresses(records: Sequence[AssociationRecord], nodes: Sequence[Node]) -> list[Finding]:
    out = []
    for title, hosts in sorted(_by_title_and_host(records).items()):
        if len(hosts) < 2:
            continue
        evidence = []
        for host, seen in sorted(hosts.items(), key=lambda kv: kv[1].first):
            node = _registered_at(nodes, title, host)
            evidence.append(
                f"{host}: {seen.count} association(s), first {_when(seen.first)}, last {_when(seen.last)}, "
                + (f"registered ({node.address})" if node else "not registered")
            )
        fate = _move_fate(title, list(hosts), nodes)
        out.append(
            Finding(
                key=f"title-several-addresses:{title}:{','.join(sorted(hosts))}",
                kind="title-several-addresses",
                severity=WARNING,
                title=f"AE title {title!r} calls us from {len(hosts)} addresses: {', '.join(sorted(hosts))}",
                evidence=[*evidence[:MAX_EVIDENCE], fate],
                fix=(
                    "give each machine its own AE title (not one built from the last digits of its IP address), "
                    "and register each: minipacs nodes add <TITLE> <HOST> <PORT>; until then, "
                    "'minipacs nodes list' shows which of them receives C-MOVEs"
                ),
                details={
                    "ae_title": title,
                    "addresses": [
                        {
                            "host": host,
                            "associations": seen.count,
                            "first_seen": seen.first.isoformat(),
                            "last_seen": seen.last.isoformat(),
                            "registered": _registered_at(nodes, title, host) is not None,
                        }
                        for host, seen in sorted(hosts.items())
                    ],
                    "c_move": fate,
                },
            )
        )
    return out


def _registered_title_elsewhere(records: Sequence[AssociationRecord], nodes: Sequence[Node]) -> list[Finding]:
    out = []
    registered = {n.ae_title for n in nodes}
    for title, hosts in sorted(_by_title_and_host(records).items()):
        if title not in registered:
            continue
        stray = {h: s for h, s in hosts.items() if _registered_at(nodes, title, h) is None}
        if not stray:
            continue
        where = ", ".join(n.address for n in nodes if n.ae_title == title)
        out.append(
            Finding(
                key=f"registered-title-elsewhere:{title}:{','.join(sorted(stray))}",
                kind="registered-title-elsewhere",
                severity=WARNING,
                title=f"the registered AE title {title!r} ({where}) also calls from {', '.join(sorted(stray))}",
                evidence=[
                    f"{h}: {s.count} association(s), first {_when(s.first)}, last {_when(s.last)}"
                    for h, s in sorted(stray.items())
                ][:MAX_EVIDENCE],
                fix=(
                    "if the node moved, register its new address (minipacs nodes add); if another machine copies its "
                    "title, give that machine its own; check_calling_host = true refuses such callers"
                ),
                details={"ae_title": title, "hosts": sorted(stray)},
            )
        )
    return out


def _retrieves(rec: AssociationRecord) -> list[str]:
    return sorted({str(op.get("op")) for op in rec.operations if op.get("op") in ("C-MOVE", "C-GET")})


def _unregistered_retrievers(records: Sequence[AssociationRecord], nodes: Sequence[Node]) -> list[Finding]:
    registered = {n.ae_title for n in nodes}
    asked: dict[str, dict[str, _Seen]] = {}
    for rec in records:
        title = normalise_title(rec.calling_aet)
        if title in registered or not _retrieves(rec):
            continue
        asked.setdefault(title, {}).setdefault(rec.peer_host, _Seen(rec.started_at, rec.started_at)).add(rec.started_at)
    return [
        Finding(
            key=f"unregistered-retriever:{title}",
            kind="unregistered-retriever",
            severity=WARNING,
            title=f"the unregistered AE title {title!r} asks for C-MOVE/C-GET",
            evidence=[
                f"from {h}: {s.count} association(s), first {_when(s.first)}, last {_when(s.last)}"
                for h, s in sorted(hosts.items())
            ][:MAX_EVIDENCE],
            fix=(
                f"if it is a workstation of this site, register it: minipacs nodes add {title} <HOST> <PORT>; "
                "otherwise find out who it is (allow_unregistered decides what it may do)"
            ),
            details={"ae_title": title, "hosts": sorted(hosts)},
        )
        for title, hosts in sorted(asked.items())
    ]


# ------------------------------------------------------------------ C-MOVE destinations


def _move_destinations(records: Sequence[AssociationRecord]) -> list[Finding]:
    bad: dict[str, list[tuple[AssociationRecord, dict[str, Any]]]] = {}
    for rec in records:
        for op in rec.operations:
            if op.get("op") != "C-MOVE":
                continue
            failed = op.get("outcome") in ("refused", "failed") or int(str(op.get("failed", 0) or 0)) > 0
            if failed:
                bad.setdefault(str(op.get("destination_ae", "")).strip(), []).append((rec, op))
    out = []
    for dest, items in sorted(bad.items()):
        evidence = []
        for rec, op in sorted(items, key=lambda x: x[0].started_at, reverse=True)[:MAX_EVIDENCE]:
            where = (
                f" -> {op.get('destination_host')}:{op.get('destination_port')}" if op.get("destination_host") else ""
            )
            why = str(op.get("error", "") or op.get("outcome", ""))
            evidence.append(
                f"{_when(rec.started_at)} requested by {rec.calling_aet.strip()!r} from {rec.peer_host}{where}: {why}"
            )
        ambiguous = any(
            "registered" in str(op.get("error", "")) and "times" in str(op.get("error", "")) for _r, op in items
        )
        out.append(
            Finding(
                key=f"move-destination:{dest}",
                kind="move-destination",
                severity=WARNING,
                title=(
                    f"{len(items)} C-MOVE(s) to {dest!r} failed"
                    + (" (the destination title is ambiguous)" if ambiguous else "")
                ),
                evidence=evidence,
                fix=(
                    "give each machine its own AE title and register it at its own address"
                    if ambiguous
                    else f"register {dest!r} with the address and port it listens on (minipacs nodes add), and check "
                    f"with: minipacs doctor {dest}"
                ),
                details={"destination_ae": dest, "count": len(items), "ambiguous": ambiguous},
            )
        )
    return out


# ------------------------------------------------------------------ timing, aborts, called titles


def _operations(rec: AssociationRecord) -> int:
    summary = next((op for op in rec.operations if op.get("op") == "summary"), None)
    if summary is not None:
        counts = summary.get("counts", {})
        return sum(int(v) for v in counts.values()) if isinstance(counts, dict) else 0
    return len(rec.operations)


def _nagle(records: Sequence[AssociationRecord]) -> list[Finding]:
    slow: dict[tuple[str, str], list[float]] = {}
    for rec in records:
        ops, seconds = _operations(rec), rec.duration_s
        if ops < NAGLE_MIN_OPS or seconds is None or not rec.accepted:
            continue
        per_op = seconds * 1000 / ops
        small = (rec.bytes_received + rec.bytes_sent) / ops <= NAGLE_MAX_BYTES_PER_OP
        if NAGLE_MS[0] <= per_op <= NAGLE_MS[1] and small:
            slow.setdefault((rec.calling_aet.strip(), rec.peer_host), []).append(per_op)
    return [
        Finding(
            key=f"nagle:{title}:{host}",
            kind="nagle",
            severity=WARNING,
            title=(
                f"{title!r} at {host}: about {sorted(ms)[len(ms) // 2]:.0f} ms per operation "
                f"in {len(ms)} association(s)"
            ),
            evidence=[
                "a steady ~40 ms per small message is Nagle's algorithm on one side meeting delayed ACK on the other, "
                "not the network"
            ],
            fix="turn Nagle off on that peer: for DCMTK-based peers set the environment variable TCP_NODELAY=1",
            details={"ae_title": title, "host": host, "ms_per_operation": [round(x, 1) for x in ms[:MAX_EVIDENCE]]},
        )
        for (title, host), ms in sorted(slow.items())
    ]


def _broke_off(rec: AssociationRecord) -> bool:
    text = (rec.end_reason or rec.reject_reason or "").lower()
    return "abort" in text or "timeout" in text or "timed out" in text or "artim" in text


def _aborts(records: Sequence[AssociationRecord]) -> list[Finding]:
    total: dict[tuple[str, str], int] = {}
    broken: dict[tuple[str, str], list[AssociationRecord]] = {}
    for rec in records:
        key = (rec.calling_aet.strip(), rec.peer_host)
        total[key] = total.get(key, 0) + 1
        if _broke_off(rec):
            broken.setdefault(key, []).append(rec)
    out = []
    for key, recs in sorted(broken.items()):
        if len(recs) < ABORT_MIN or len(recs) / total[key] < ABORT_SHARE:
            continue
        title, host = key
        reasons: dict[str, int] = {}
        for rec in recs:
            why = rec.end_reason or rec.reject_reason
            reasons[why] = reasons.get(why, 0) + 1
        out.append(
            Finding(
                key=f"aborts:{title}:{host}",
                kind="aborts",
                severity=WARNING,
                title=(
                    f"{title or '(no title)'!r} at {host}: {len(recs)} of {total[key]} association(s) "
                    "aborted or timed out"
                ),
                evidence=[f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])][:MAX_EVIDENCE],
                fix=(
                    "look at the peer's log for why it gives up; an idle or DIMSE timeout on either side shorter than "
                    "the work (large studies, slow disks) is the usual cause"
                ),
                details={"ae_title": title, "host": host, "broken": len(recs), "total": total[key]},
            )
        )
    return out


def _called_not_ours(records: Sequence[AssociationRecord], ours: str) -> list[Finding]:
    wrong: dict[str, dict[str, _Seen]] = {}
    for rec in records:
        called = normalise_title(rec.called_aet)
        if not called or called == normalise_title(ours):
            continue
        who = f"{rec.calling_aet.strip()!r} from {rec.peer_host}"
        wrong.setdefault(called, {}).setdefault(who, _Seen(rec.started_at, rec.started_at)).add(rec.started_at)
    return [
        Finding(
            key=f"called-not-ours:{called}",
            kind="called-not-ours",
            severity=INFO,
            title=f"peers call us as {called!r}; our AE title is {ours!r}",
            evidence=[f"{who}: {s.count} association(s), last {_when(s.last)}" for who, s in sorted(callers.items())][
                :MAX_EVIDENCE
            ],
            fix=(
                f"correct our AE title on those peers to {ours!r}: a C-MOVE destination or storage commitment "
                "configured with the wrong title goes nowhere (check_called_aet = true refuses such associations)"
            ),
            details={"called_ae": called, "callers": sorted(callers)},
        )
        for called, callers in sorted(wrong.items())
    ]


def _commitment_undelivered(records: Sequence[AssociationRecord], nodes: Sequence[Node]) -> list[Finding]:
    registered = {n.ae_title for n in nodes}
    lost: dict[str, list[str]] = {}
    for rec in records:
        asked = [op for op in rec.operations if op.get("op") == "N-ACTION" and op.get("outcome") == "success"]
        if not asked:
            continue
        reports = [op for op in rec.operations if op.get("op") == "N-EVENT-REPORT"]
        title = rec.calling_aet.strip()
        refused = [op for op in reports if op.get("outcome") != "success"]
        if refused or (not reports and title not in registered):
            why = (
                "the requester refused the report"
                if refused
                else "it closed its association before the report and is not a registered node"
            )
            for op in asked:
                lost.setdefault(title, []).append(f"{_when(rec.started_at)} transaction {op.get('transaction')}: {why}")
    return [
        Finding(
            key=f"commitment-undelivered:{title}",
            kind="commitment-undelivered",
            severity=WARNING,
            title=f"{len(lines)} storage commitment report(s) for {title!r} could not be delivered",
            evidence=lines[:MAX_EVIDENCE],
            fix=(
                f"register {title!r} (minipacs nodes add {title} <HOST> <PORT>) so that reports can go on a new "
                "association, or have the modality keep its association open until the report arrives"
            ),
            details={"ae_title": title, "count": len(lines)},
        )
        for title, lines in sorted(lost.items())
    ]


def _reports_not_delivered(records: Iterable[AssociationRecord]) -> list[Finding]:
    """Our own associations carrying a storage commitment report (services/commitment.py) that failed."""
    lost: dict[tuple[str, str], list[str]] = {}
    for rec in records:
        for op in rec.operations:
            if op.get("op") == "N-EVENT-REPORT" and op.get("outcome") != "success":
                why = str(op.get("error", "") or rec.reject_reason or rec.end_reason or "failed")
                lost.setdefault((rec.called_aet.strip(), f"{rec.peer_host}:{rec.peer_port}"), []).append(
                    f"{_when(rec.started_at)} transaction {op.get('transaction')}: {why}"
                )
    return [
        Finding(
            key=f"commitment-report-failed:{title}:{where}",
            kind="commitment-undelivered",
            severity=WARNING,
            title=f"{len(lines)} storage commitment report(s) to {title!r} at {where} failed",
            evidence=lines[:MAX_EVIDENCE],
            fix=(
                f"check that {title!r} listens at {where} and accepts Storage Commitment Push Model as SCU with "
                f"the SCP role for us (minipacs doctor {title})"
            ),
            details={"ae_title": title, "address": where, "count": len(lines)},
        )
        for (title, where), lines in sorted(lost.items())
    ]


# ------------------------------------------------------------------ warn once


class FindingWatch:
    """Logs a WARNING the first time a finding's key appears (the running server calls :meth:`update`)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def update(self, findings: Iterable[Finding]) -> list[Finding]:
        new = [f for f in findings if f.key not in self.seen]
        for f in new:
            self.seen.add(f.key)
            if f.severity == WARNING:
                log.warning("diagnostics: %s (%s); fix: %s", f.title, "; ".join(f.evidence[:3]), f.fix)
        return new


__all__ = ["Finding", "FindingWatch", "analyse"]
