"""Presentation context negotiation as the acceptor answers it (PS3.8 9.3.2.2, 9.3.3.2, Table 9-18;
PS3.7 D.3.3.4), table by table, without sockets: net/presentation.py ``negotiate``."""

from __future__ import annotations

import pytest

from minipacs.net.pdu_items import PresentationContextRQ, RoleSelection
from minipacs.net.presentation import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    NO_REASON,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTION,
    SupportedContext,
    negotiate,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.91"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
ALL = frozenset({IMPLICIT, EXPLICIT, JPEG_BASELINE, JPEG_LOSSLESS, J2K, J2K_LOSSLESS})
LOSSY = frozenset({JPEG_BASELINE, J2K})
SUPPORTED = {
    CT: SupportedContext(CT, ALL, chosen_last=LOSSY),
    MR: SupportedContext(MR, ALL, scu_role=True, chosen_last=LOSSY),
    GET: SupportedContext(GET, frozenset({IMPLICIT, EXPLICIT})),
}


def answers(*contexts: PresentationContextRQ, roles: tuple[RoleSelection, ...] = ()) -> list[tuple[int, int, str]]:
    acs, _accepted, _roles = negotiate(contexts, SUPPORTED, roles)
    return [(ac.context_id, ac.result, ac.transfer_syntax) for ac in acs]


def test_128_contexts_each_answered() -> None:
    """PS3.8 9.3.2.2: up to 128 contexts, odd IDs 1 to 255; every one gets its answer, in order."""
    proposed = [PresentationContextRQ(i, CT, [EXPLICIT]) for i in range(1, 256, 2)]
    got = answers(*proposed)
    assert len(got) == 128
    assert got == [(i, ACCEPTANCE, EXPLICIT) for i in range(1, 256, 2)]


def test_even_and_repeated_ids_are_answered_per_item() -> None:
    """PS3.8 9.3.2.2: an even ID is rejected (no reason, Table 9-18) and the others go on; a repeated
    ID is answered once, for its first proposal."""
    got = answers(
        PresentationContextRQ(1, CT, [EXPLICIT]),
        PresentationContextRQ(2, CT, [EXPLICIT]),
        PresentationContextRQ(1, MR, [IMPLICIT]),
        PresentationContextRQ(3, MR, [IMPLICIT]),
    )
    assert got == [(1, ACCEPTANCE, EXPLICIT), (2, NO_REASON, ""), (3, ACCEPTANCE, IMPLICIT)]


def test_same_abstract_syntax_in_several_contexts_each_answered_on_its_own() -> None:
    got = answers(
        PresentationContextRQ(1, CT, [JPEG_LOSSLESS]),
        PresentationContextRQ(3, CT, [IMPLICIT]),
        PresentationContextRQ(5, CT, ["1.2.3.4.5.999"]),
        PresentationContextRQ(7, CT, [JPEG_BASELINE]),
    )
    assert got == [
        (1, ACCEPTANCE, JPEG_LOSSLESS),
        (3, ACCEPTANCE, IMPLICIT),
        (5, TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
        (7, ACCEPTANCE, JPEG_BASELINE),  # alone in its context: the sender holds it so
    ]


def test_unknown_abstract_syntax_and_unknown_transfer_syntaxes() -> None:
    got = answers(
        PresentationContextRQ(1, "1.3.12.2.1107.5.9.1", [IMPLICIT]),  # a private SOP class
        PresentationContextRQ(3, CT, ["1.2.3.4", "1.2.3.5"]),
    )
    assert got == [(1, ABSTRACT_SYNTAX_NOT_SUPPORTED, ""), (3, TRANSFER_SYNTAXES_NOT_SUPPORTED, "")]


@pytest.mark.parametrize(
    ("proposed", "chosen"),
    [
        # storescu +C -xy for a native image: [JPEG Baseline, Explicit LE, Implicit LE]
        ([JPEG_BASELINE, EXPLICIT, IMPLICIT], EXPLICIT),
        ([J2K, J2K_LOSSLESS, EXPLICIT], J2K_LOSSLESS),
        ([JPEG_BASELINE, J2K], JPEG_BASELINE),  # nothing lossless proposed: the requestor's first
        ([JPEG_LOSSLESS, EXPLICIT], JPEG_LOSSLESS),  # lossless compressed: the requestor's order holds
        ([IMPLICIT, EXPLICIT], IMPLICIT),
        (["1.2.3.4", JPEG_BASELINE, "1.2.3.5", IMPLICIT], IMPLICIT),
    ],
)
def test_a_lossy_syntax_is_chosen_only_when_nothing_lossless_is_proposed(proposed: list[str], chosen: str) -> None:
    assert answers(PresentationContextRQ(1, CT, proposed)) == [(1, ACCEPTANCE, chosen)]


def test_role_selection_per_sop_class() -> None:
    """PS3.7 D.3.3.4: each proposed role is granted or refused; a context whose roles all end refused is
    rejected by the user; no item for a SOP class that was not asked about."""
    acs, accepted, roles = negotiate(
        [
            PresentationContextRQ(1, MR, [EXPLICIT]),
            PresentationContextRQ(3, CT, [EXPLICIT]),
            PresentationContextRQ(5, GET, [EXPLICIT]),
        ],
        SUPPORTED,
        [RoleSelection(MR, False, True), RoleSelection(CT, False, True), RoleSelection(GET, True, False)],
    )
    assert [(ac.context_id, ac.result) for ac in acs] == [(1, ACCEPTANCE), (3, USER_REJECTION), (5, ACCEPTANCE)]
    assert {(r.sop_class_uid, r.scu_role, r.scp_role) for r in roles} == {
        (MR, False, True),
        (CT, False, False),
        (GET, True, False),
    }
    assert [(c.context_id, c.requestor_is_scu, c.requestor_is_scp) for c in accepted] == [
        (1, False, True),
        (5, True, False),
    ]
