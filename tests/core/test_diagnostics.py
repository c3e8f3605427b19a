"""Passive findings of the association log (core/diagnostics.py, issue 15): each kind found from
records as the server writes them, with its evidence and fix, and not found when it is not there."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from minipacs.core.diagnostics import (
    ABORT_MIN,
    NAGLE_MIN_OPS,
    FindingWatch,
    analyse,
)
from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import Node

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def rec(
    calling: str,
    host: str,
    minute: int = 0,
    *,
    called: str = "MINIPACS",
    ops: list[dict[str, Any]] | None = None,
    seconds: float = 1.0,
    end: str = "released",
    accepted: bool = True,
    nbytes: int = 1000,
) -> AssociationRecord:
    start = T0 + dt.timedelta(minutes=minute)
    return AssociationRecord(
        started_at=start,
        ended_at=start + dt.timedelta(seconds=seconds),
        role="acceptor",
        calling_aet=calling,
        called_aet=called,
        peer_host=host,
        peer_port=50000,
        accepted=accepted,
        end_reason=end if accepted else "",
        reject_reason="" if accepted else end,
        operations=ops or [],
        bytes_received=nbytes,
    )


def kinds(findings: list[Any]) -> list[str]:
    return [f.kind for f in findings]


def test_the_seed_one_registered_the_other_asks_and_its_images_go_to_the_first() -> None:
    """As on the floors of the seed: SCU_12 registered once (the first viewer), the second viewer uses the
    same title from another address; the finding says where a C-MOVE goes and that the requester gets nothing."""
    nodes = [Node("SCU_12", "10.1.1.12", 104)]
    records = [
        rec("SCU_12", "10.1.1.12", 0),
        rec("SCU_12", "10.3.1.12", 5),
        rec("SCU_12", "10.3.1.12", 9, ops=[{"op": "C-MOVE", "destination_ae": "SCU_12", "outcome": "success"}]),
    ]
    findings = analyse(records, nodes, "MINIPACS")
    seed = next(f for f in findings if f.kind == "title-several-addresses")
    assert seed.title == "AE title 'SCU_12' calls us from 2 addresses: 10.1.1.12, 10.3.1.12"
    assert seed.evidence[0].startswith("10.1.1.12: 1 association(s), first 2026-12-01 08:00:00")
    assert seed.evidence[0].endswith("registered (10.1.1.12:104)")
    assert seed.evidence[1] == (
        "10.3.1.12: 2 association(s), first 2026-12-01 08:05:00, last 2026-12-01 08:09:00, not registered"
    )
    assert "every C-MOVE to 'SCU_12' sends the images there, also when 10.3.1.12 asked" in seed.details["c_move"]
    assert "the requester receives nothing" in seed.details["c_move"]
    # ... and the same title from an address it is not registered on is its own finding
    assert "registered-title-elsewhere" in kinds(findings)


def test_one_address_per_title_is_no_finding() -> None:
    nodes = [Node("A", "10.0.0.1", 104), Node("B", "10.0.0.2", 104)]
    records = [rec("A", "10.0.0.1", i) for i in range(5)] + [rec("B", "10.0.0.2", i) for i in range(5)]
    assert analyse(records, nodes, "MINIPACS") == []


def test_unregistered_title_retrieving() -> None:
    found = analyse([rec("STRANGER", "10.9.9.9", ops=[{"op": "C-GET", "outcome": "success"}])], [], "MINIPACS")
    assert kinds(found) == ["unregistered-retriever"]
    assert "minipacs nodes add STRANGER" in found[0].fix
    # a registered one is fine, and so is an unregistered one that only queries
    assert analyse([rec("X", "10.0.0.1", ops=[{"op": "C-GET"}])], [Node("X", "10.0.0.1", 104)], "MINIPACS") == []
    assert analyse([rec("Y", "10.0.0.2", ops=[{"op": "C-FIND"}])], [], "MINIPACS") == []


def test_failed_and_ambiguous_move_destinations() -> None:
    why = "C-MOVE destination 'WS' is registered 2 times (10.0.0.1:104, 10.0.0.2:104) and the request came from"
    records = [
        rec("WS", "10.0.0.3", 1, ops=[{"op": "C-MOVE", "destination_ae": "WS", "outcome": "refused", "error": why}]),
        rec("P", "10.0.0.4", 2, ops=[{"op": "C-MOVE", "destination_ae": "GONE", "outcome": "success", "failed": 3}]),
        rec("P", "10.0.0.4", 3, ops=[{"op": "C-MOVE", "destination_ae": "OK", "outcome": "success", "failed": 0}]),
    ]
    nodes = [Node("WS", "10.0.0.1", 104), Node("WS", "10.0.0.2", 104), Node("P", "10.0.0.4", 104)]
    moves = {
        f.details["destination_ae"]: f for f in analyse(records, nodes, "MINIPACS") if f.kind == "move-destination"
    }
    assert set(moves) == {"WS", "GONE"}
    assert moves["WS"].details["ambiguous"] and "ambiguous" in moves["WS"].title
    assert "requested by 'WS' from 10.0.0.3" in moves["WS"].evidence[0]
    assert not moves["GONE"].details["ambiguous"]


def test_nagle_signature_at_the_limits() -> None:
    def assoc(ms_per_op: float, ops: int = NAGLE_MIN_OPS, nbytes: int = 1000) -> AssociationRecord:
        return rec("SLOW", "10.0.0.5", ops=[{"op": "C-STORE"}] * ops, seconds=ms_per_op * ops / 1000, nbytes=nbytes)

    assert kinds(analyse([assoc(41.0)], [Node("SLOW", "10.0.0.5", 104)], "MINIPACS")) == ["nagle"]
    assert analyse([assoc(41.0, ops=NAGLE_MIN_OPS - 1)], [Node("SLOW", "10.0.0.5", 104)], "MINIPACS") == []
    assert analyse([assoc(5.0)], [Node("SLOW", "10.0.0.5", 104)], "MINIPACS") == []
    big = assoc(41.0, nbytes=NAGLE_MIN_OPS * 2 * 1024 * 1024)  # large images: the transfer takes the time
    assert analyse([big], [Node("SLOW", "10.0.0.5", 104)], "MINIPACS") == []


def test_frequent_aborts_at_the_limit() -> None:
    node = [Node("MOD", "10.0.0.6", 104)]
    aborted = [rec("MOD", "10.0.0.6", i, end="aborted by peer") for i in range(ABORT_MIN)]
    found = analyse(aborted + [rec("MOD", "10.0.0.6", 10)], node, "MINIPACS")
    assert kinds(found) == ["aborts"]
    assert found[0].evidence == [f"{ABORT_MIN} x aborted by peer"]
    assert analyse(aborted[:-1], node, "MINIPACS") == []


def test_called_title_not_ours() -> None:
    found = analyse([rec("MOD", "10.0.0.6", called="MINIPAC")], [Node("MOD", "10.0.0.6", 104)], "MINIPACS")
    assert kinds(found) == ["called-not-ours"]
    assert found[0].title == "peers call us as 'MINIPAC'; our AE title is 'MINIPACS'"


def test_commitment_report_undelivered() -> None:
    ask = {"op": "N-ACTION", "outcome": "success", "transaction": "1.2.3"}
    lost = analyse([rec("MOD", "10.0.0.7", ops=[ask])], [], "MINIPACS")
    assert kinds(lost) == ["commitment-undelivered"]
    assert "transaction 1.2.3" in lost[0].evidence[0]
    delivered = [ask, {"op": "N-EVENT-REPORT", "outcome": "success"}]
    assert analyse([rec("MOD", "10.0.0.7", ops=delivered)], [], "MINIPACS") == []
    refused = [ask, {"op": "N-EVENT-REPORT", "outcome": "failed"}]
    assert kinds(analyse([rec("MOD", "10.0.0.7", ops=refused)], [], "MINIPACS")) == ["commitment-undelivered"]


def test_a_finding_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="minipacs.diagnostics")
    records = [rec("SCU_1", "10.0.0.1"), rec("SCU_1", "10.0.0.2")]
    watch = FindingWatch()
    assert len(watch.update(analyse(records, [], "MINIPACS"))) == 1
    assert watch.update(analyse(records, [], "MINIPACS")) == []
    assert [r.getMessage()[:75] for r in caplog.records] == [
        "diagnostics: AE title 'SCU_1' calls us from 2 addresses: 10.0.0.1, 10.0.0.2"
    ]
