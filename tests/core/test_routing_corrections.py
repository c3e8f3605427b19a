"""Which deliveries a correction sends again (core/routing.py ``corrected_deliveries``), one row of the
decision per case; the end-to-end runs with DCMTK storescp are tests/interop/test_routing_corrections.py."""

from __future__ import annotations

from typing import Any

import pytest

from minipacs.core.reforward import corrected_deliveries

KEY = ("rule", "C-STORE", "DEST")


def receipt(sop: str, status: str, job_state: str | None, destination: str = "DEST") -> dict[str, Any]:
    return {
        "rule": "rule",
        "method": "C-STORE",
        "destination": destination,
        "sop_instance_uid": sop,
        "status": status,
        "job_state": job_state,
    }


@pytest.mark.parametrize(
    ("receipts", "resent"),
    [
        # delivered: the destination holds the old values
        ([receipt("1", "sent", "done")], ["1"]),
        ([receipt("1", "sent", None)], ["1"]),  # its job row pruned since
        # being sent right now: it may have read the file before the rewrite
        ([receipt("1", "queued", "running")], ["1"]),
        ([receipt("1", "retrying", "running")], ["1"]),
        # never delivered: nothing to correct there
        ([receipt("1", "failed", "failed")], []),
        ([receipt("1", "queued", "cancelled")], []),
        ([receipt("1", "retrying", "failed")], []),
        # waiting for a job that has not run: it sends the corrected file when it runs
        ([receipt("1", "queued", "queued")], []),
        ([receipt("1", "retrying", "queued")], []),
        # delivered once, and a later delivery (an earlier re-send) still waiting: that one sends it
        ([receipt("1", "sent", "done"), receipt("1", "queued", "queued")], []),
        # delivered once, failed later: the destination still has the old copy
        ([receipt("1", "sent", "done"), receipt("1", "failed", "failed")], ["1"]),
        # several instances, each by its own receipts
        ([receipt("2", "sent", "done"), receipt("1", "sent", "done"), receipt("3", "failed", "failed")], ["1", "2"]),
    ],
)
def test_what_a_correction_sends_again(receipts: list[dict[str, Any]], resent: list[str]) -> None:
    assert corrected_deliveries(receipts) == ({KEY: resent} if resent else {})


def test_each_destination_is_judged_on_its_own_receipts() -> None:
    receipts = [receipt("1", "sent", "done"), receipt("1", "queued", "queued", destination="OTHER")]
    assert corrected_deliveries(receipts) == {KEY: ["1"]}
