"""dicom/reasons.py: PS3.8 Table 9-21 (A-ASSOCIATE-RJ) and Table 9-26 (A-ABORT), and their two readers."""

from __future__ import annotations

from minipacs.dicom.reasons import (
    ABORT_REASONS,
    ABORT_SOURCES,
    REJECT_REASONS,
    REJECT_SOURCES,
    in_words,
)
from minipacs.net.association import describe_rejection
from minipacs.net.dul import describe_abort
from minipacs.net.pdu import AAssociateRJ


def test_reject_reasons_are_table_9_21() -> None:
    assert REJECT_REASONS == {
        (1, 1): "no-reason-given",
        (1, 2): "application-context-name-not-supported",
        (1, 3): "calling-AE-title-not-recognized",
        (1, 7): "called-AE-title-not-recognized",
        (2, 1): "no-reason-given",
        (2, 2): "protocol-version-not-supported",
        (3, 1): "temporary-congestion",
        (3, 2): "local-limit-exceeded",
    }
    assert set(REJECT_SOURCES) == {1, 2, 3}


def test_abort_reasons_are_table_9_26() -> None:
    assert ABORT_REASONS[2] == "unexpected-PDU" and ABORT_REASONS[6] == "invalid-PDU-parameter-value"
    assert sorted(ABORT_REASONS) == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(ABORT_SOURCES) == [0, 1, 2]


def test_standard_terms_and_plain_words_come_from_one_table() -> None:
    rj = AAssociateRJ(1, 1, 3)
    assert describe_rejection(rj) == "association rejected (permanent) by service-user: calling AE title not recognized"
    assert describe_rejection(AAssociateRJ(2, 3, 2)) == (
        "association rejected (transient) by service-provider (presentation): local limit exceeded"
    )
    assert describe_rejection(AAssociateRJ(1, 1, 9)).endswith("service-user: reason 9")
    assert describe_abort(2, 5) == "service-provider: unexpected PDU parameter"
    assert describe_abort(0, 5) == "service-user"
    assert describe_abort(2, 9) == "service-provider: reason 9"
    assert in_words("called-AE-title-not-recognized") == "called AE title not recognized"
