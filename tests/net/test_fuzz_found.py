"""Defects that fuzzing the network input found (tools/fuzz_net.py and live mutated byte streams).

Each test states the input, what minipacs did, and the part of PS3.7 / PS3.8 it now follows.
"""

from __future__ import annotations

from minipacs.net.pdu_items import PresentationContextAC, PresentationContextRQ, RoleSelection
from minipacs.net.presentation import accepted_by_peer

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


# ------------------------------------------------------------ the requestor's view of an A-ASSOCIATE-AC
def test_an_accepted_context_with_a_transfer_syntax_not_proposed_is_not_used() -> None:
    """PS3.8 9.3.3.2: the Transfer Syntax Sub-Item of an accepted context holds "a single transfer
    syntax name proposed by the association-requestor" for that context. An acceptor answering
    context 3 (proposed in native syntaxes only) with JPEG 2000 made us send JPEG 2000 data on
    it (store_file matched the file's syntax), a syntax the context never proposed. Such an answer
    is no acceptance we can use: the context is left out, as one the acceptor rejected."""
    proposed = [
        PresentationContextRQ(1, CT_IMAGE, [EXPLICIT_LE]),
        PresentationContextRQ(3, CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE]),
    ]
    answers = [
        PresentationContextAC(1, 0, EXPLICIT_LE),
        PresentationContextAC(3, 0, JPEG_2000_LOSSLESS),
    ]
    accepted = accepted_by_peer(proposed, answers)
    assert [(c.context_id, c.transfer_syntax) for c in accepted] == [(1, EXPLICIT_LE)]


def test_a_role_reply_grants_no_role_that_was_not_proposed() -> None:
    """PS3.7 D.3.3.4 (Table D.3-9): a role the requestor proposed as 0 cannot be accepted by the
    acceptor ("not allowed"). An A-ASSOCIATE-AC whose role reply said SCP for a context we proposed
    as SCU only made the context one on which we act as SCP. The roles granted are those both
    proposed and accepted."""
    proposed = [PresentationContextRQ(1, CT_IMAGE, [IMPLICIT_LE])]
    answers = [PresentationContextAC(1, 0, IMPLICIT_LE)]
    asked = [RoleSelection(CT_IMAGE, scu_role=True, scp_role=False)]
    reply = [RoleSelection(CT_IMAGE, scu_role=True, scp_role=True)]
    (context,) = accepted_by_peer(proposed, answers, reply, asked)
    assert (context.requestor_is_scu, context.requestor_is_scp) == (True, False)
