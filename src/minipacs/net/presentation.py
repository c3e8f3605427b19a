"""Presentation context negotiation: PS3.8 §7.1.1.13, §9.3.3.2 and PS3.7 D.3.3.4.

The acceptor's policy is a table of :class:`SupportedContext` by abstract
syntax. For each proposed context we accept the requestor's first-proposed
transfer syntax that we support (the requestor knows its data best; storing
as received means no syntax is better for us than another) -- except that a
syntax the service names ``chosen_last`` (Storage: the ones that may be lossy)
is taken only when the context proposes no other we support, and on a context
where the requestor takes the SCP role only (C-GET: we send), where the
service may name syntaxes to choose first (``preferred_when_we_send``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from minipacs.net.pdu_items import PresentationContextAC, PresentationContextRQ, RoleSelection

# PS3.8 Table 9-18: Result/Reason of a presentation context
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

RESULT_NAMES = {
    ACCEPTANCE: "accepted",
    USER_REJECTION: "rejected by user",
    NO_REASON: "rejected (no reason)",
    ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax not supported",
    TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer syntaxes not supported",
}


@dataclass(frozen=True)
class SupportedContext:
    abstract_syntax: str
    transfer_syntaxes: frozenset[str]
    #: Roles we can play; by default we are SCP for what we accept (PS3.7 D.3.3.4).
    scu_role: bool = False
    scp_role: bool = True
    #: When the requestor takes the SCP role only (only we send: C-GET sub-operations), the transfer
    #: syntaxes to choose first, in this order, if proposed: those we can always produce.
    preferred_when_we_send: tuple[str, ...] = ()
    #: Chosen only when the context proposes none of our other ``transfer_syntaxes``, whatever the
    #: requestor's order. Storage names the syntaxes that may be lossy: DCMTK's storescu (+C -xy)
    #: proposes [JPEG Baseline, Explicit VR LE, ...] in one context for a native image and compresses
    #: it, irreversibly, to whatever is accepted -- as DCMTK's storescp and Orthanc, who prefer
    #: uncompressed, we never let the choice of syntax lose pixels.
    chosen_last: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NegotiatedContext:
    """An accepted presentation context, as both sides use it afterwards."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    #: Whether the requestor (peer, for an acceptor) may act as SCU / SCP.
    requestor_is_scu: bool = True
    requestor_is_scp: bool = False


def negotiate(
    proposed: Iterable[PresentationContextRQ],
    supported: Mapping[str, SupportedContext],
    roles: Iterable[RoleSelection] = (),
) -> tuple[list[PresentationContextAC], list[NegotiatedContext], list[RoleSelection]]:
    """Answer each proposed context; return (AC items, accepted contexts, role replies).

    PS3.8 9.3.2.2: the Presentation-context-IDs of a request are unique. A request that repeats one
    gets ONE answer for it, to its first proposal (the later ones are left out, as DCMTK does):
    two answers with the same ID would leave the requestor and us each choosing which one holds.
    They are also odd integers from 1 to 255: a context with an even ID is answered "no reason
    (provider rejection)" (PS3.8 Table 9-18) and never used (see :func:`even_ids`)."""
    role_rq = {r.sop_class_uid: r for r in roles}
    answers: list[PresentationContextAC] = []
    accepted: list[NegotiatedContext] = []
    role_ac: dict[str, RoleSelection] = {}
    answered: set[int] = set()
    for ctx in proposed:
        if ctx.context_id in answered:
            continue
        answered.add(ctx.context_id)
        if not ctx.context_id % 2:
            answers.append(PresentationContextAC(ctx.context_id, NO_REASON, ""))
            continue
        support = supported.get(ctx.abstract_syntax)
        if support is None:
            answers.append(PresentationContextAC(ctx.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
            continue
        ours = [ts for ts in ctx.transfer_syntaxes if ts in support.transfer_syntaxes]
        chosen = next((ts for ts in ours if ts not in support.chosen_last), ours[0] if ours else None)
        if chosen is None:
            answers.append(PresentationContextAC(ctx.context_id, TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            continue
        # PS3.7 D.3.3.4: without a role selection item the requestor is SCU only.
        req_scu, req_scp = True, False
        asked = role_rq.get(ctx.abstract_syntax)
        if asked is not None:
            req_scu = asked.scu_role and support.scp_role
            req_scp = asked.scp_role and support.scu_role
            role_ac[ctx.abstract_syntax] = RoleSelection(ctx.abstract_syntax, req_scu, req_scp)
        if req_scp and not req_scu:  # only we send on it: a syntax we can always produce, if proposed
            chosen = next((ts for ts in support.preferred_when_we_send if ts in ctx.transfer_syntaxes), chosen)
        if not (req_scu or req_scp):
            answers.append(PresentationContextAC(ctx.context_id, USER_REJECTION, chosen))
            continue
        answers.append(PresentationContextAC(ctx.context_id, ACCEPTANCE, chosen))
        accepted.append(NegotiatedContext(ctx.context_id, ctx.abstract_syntax, chosen, req_scu, req_scp))
    return answers, accepted, list(role_ac.values())


def even_ids(proposed: Iterable[PresentationContextRQ]) -> list[int]:
    """The proposed Presentation-context-IDs that are even: PS3.8 9.3.2.2 allows odd ones only."""
    return sorted({ctx.context_id for ctx in proposed if not ctx.context_id % 2})


def accepted_by_peer(
    proposed: Iterable[PresentationContextRQ],
    answers: Iterable[PresentationContextAC],
    roles: Iterable[RoleSelection] = (),
    asked_roles: Iterable[RoleSelection] = (),
) -> list[NegotiatedContext]:
    """The requestor's view: match AC answers to what we proposed (by context ID).

    PS3.8 9.3.3.2: an accepted context names one of the transfer syntaxes proposed for it; an
    answer naming another is not an acceptance we can use, and the context is left out.
    PS3.7 D.3.3.4: the acceptor accepts or rejects each role proposed; it cannot grant one that
    was not proposed, so a role is ours only when both items say so. A context ID proposed twice
    (PS3.8 9.3.2.2 forbids it) stands for its first proposal, the one :func:`negotiate` answers."""
    by_id: dict[int, PresentationContextRQ] = {}
    for context in proposed:
        by_id.setdefault(context.context_id, context)
    role_ac = {r.sop_class_uid: r for r in roles}
    role_rq = {r.sop_class_uid: r for r in asked_roles}
    result: list[NegotiatedContext] = []
    for ans in answers:
        rq = by_id.get(ans.context_id)
        if rq is None or ans.result != ACCEPTANCE or ans.transfer_syntax not in rq.transfer_syntaxes:
            continue
        scu, scp = True, False
        asked = role_rq.get(rq.abstract_syntax)
        if asked is not None:
            # PS3.7 D.3.3.4: no reply item means the acceptor did not grant the
            # proposed roles; default roles then apply.
            reply = role_ac.get(rq.abstract_syntax)
            if reply is not None:
                scu, scp = asked.scu_role and reply.scu_role, asked.scp_role and reply.scp_role
        result.append(NegotiatedContext(ans.context_id, rq.abstract_syntax, ans.transfer_syntax, scu, scp))
    return result
