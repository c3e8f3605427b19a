"""HL7 v2 ADT patient updates and merges -> corrections of the archive and of the worklist
(IHE RAD TF-2 4.12 Patient Update RAD-12: ADT^A08, A40; HL7 v2.5 3.3.8 A08, 3.3.34 A34,
3.3.40 A40, 3.3.47 A47; docs/CORRECTIONS.md).

What each event does is one row of ``EVENTS``; the patient identifiers are read from PID-3
(the patient as it is now to be known) and MRG-1 (the prior identifier, HL7 v2.5 3.4.3), the
demographics through the order receiver's mapping (hl7/orders.py ``FIELD_MAP``, PID rows).
Archived instances are corrected (their files rewritten) and open worklist entries updated.
Refusals become acknowledgements through ``REFUSALS``: an unknown patient AE 204, an ID that
another patient already has AE 205, a missing segment AE 100, an empty required field AE 101.
Messages apply in the order their sender sent them: one that must wait (a large one, or any while an
earlier one of the same sender waits) is queued whole in the sender's job lane (:class:`ADTApplier`,
hl7/sequence.py, core/jobs.py lanes). :class:`HL7Receiver` is the MLLP listener's handler: ADT here,
orders to hl7/orders.py through the same lanes (an order behind a queued merge waits for it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Final

from minipacs.core.audit import Action, ActorKind, Outcome
from minipacs.core.corrections import Corrections
from minipacs.core.errors import ArchiveError, CorrectionConflict, InvalidCorrection, NotFound
from minipacs.core.hl7_acks import AckStore
from minipacs.core.jobs import JobContext, JobFailed, JobQueue
from minipacs.core.worklist import Worklist
from minipacs.hl7 import orders, sequence
from minipacs.hl7.errors import ERROR, REJECT, HL7Error
from minipacs.hl7.message import Message, Segment
from minipacs.hl7.mllp import PEER

log = logging.getLogger("minipacs.hl7")


@dataclass(frozen=True)
class Event:
    """What an ADT trigger event does: ``merge`` (PID-3 survives, MRG-1 goes into it), ``rename``
    (MRG-1 takes the ID of PID-3, which must be new), ``update`` (PID-3's demographics) or ``none``
    (acknowledged, nothing changed)."""

    action: str
    needs_mrg: bool
    summary: str


# HL7 v2.5 Table 0003 event types minipacs takes (chapter 3). "none": a HIS sends its whole ADT feed to
# the PACS (admissions, visits, registrations: IHE RAD-1 goes to the Order Filler, but interface engines
# copy it); minipacs keeps patients only with their studies and worklist entries (no patient or visit
# records of its own), so these are acknowledged AA and change nothing. Refusing them (AR) would fill the
# sender's error queue with messages that can never succeed. (dcm4chee-arc creates or updates a patient
# record from A01 - A07 and A28; here a demographic change reaches the studies only by A08 / A31.)
EVENTS: Final[Mapping[str, Event]] = {
    "A01": Event("none", False, "admit/visit notification"),
    "A02": Event("none", False, "transfer a patient"),
    "A03": Event("none", False, "discharge/end visit"),
    "A04": Event("none", False, "register a patient"),
    "A05": Event("none", False, "pre-admit a patient"),
    "A06": Event("none", False, "change an outpatient to an inpatient"),
    "A07": Event("none", False, "change an inpatient to an outpatient"),
    "A11": Event("none", False, "cancel admit/visit notification"),
    "A12": Event("none", False, "cancel transfer"),
    "A13": Event("none", False, "cancel discharge/end visit"),
    "A38": Event("none", False, "cancel pre-admit"),
    "A28": Event("none", False, "add person information"),
    "A35": Event("none", True, "merge patient information - account number only"),
    "A36": Event("merge", True, "merge patient information - patient ID and account number"),
    "A08": Event("update", False, "update patient information"),
    "A31": Event("update", False, "update person information"),
    "A34": Event("merge", True, "merge patient information - patient ID only"),
    "A40": Event("merge", True, "merge patient - patient identifier list"),
    "A47": Event("rename", True, "change patient identifier list"),
}

#: The order mapping's rows of patient demographics (hl7/orders.py FIELD_MAP; IHE RAD TF-2 Table B-1).
DEMOGRAPHICS: Final = tuple(
    row for row in orders.FIELD_MAP if row.keyword in ("PatientName", "PatientBirthDate", "PatientSex")
)


#: Most patient groups (PID [MRG]) one ADT message may hold: each can rewrite a patient's files.
MAX_PATIENT_GROUPS: Final = 100

#: The job kind of a queued ADT message (all its patient groups).
JOB_KIND: Final = "adt"

#: One patient group as applied: (PID-3 Patient ID, MRG-1 prior Patient ID or "", demographics by keyword).
Group = tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class Refusal:
    ack_code: str
    error_code: int  # HL7 Table 0357
    location: str


# core refusals -> acknowledgement (AE: a message we take whose content cannot be applied)
REFUSALS: Final[Mapping[type[ArchiveError], Refusal]] = {
    NotFound: Refusal(ERROR, 204, "PID-3"),
    CorrectionConflict: Refusal(ERROR, 205, "PID-3"),
    InvalidCorrection: Refusal(ERROR, 102, "PID"),
}


def _identifier(message: Message, segment: Segment, field: int, name: str) -> str:
    """The ID (component 1) of a CX identifier list's first repetition; AE 101 when empty."""
    value = message.value(segment, field, 1)
    if not value.strip():
        raise HL7Error(
            f"{segment.name}-{field} {name} is empty: the patient cannot be identified",
            error_code=101,
            location=f"{segment.name}-{field}",
        )
    return _checked_identifier(value, segment.name, field)


def _checked_identifier(value: str, segment: str, field: int) -> str:
    """``value`` as a Patient ID DICOM can hold (LO without backslash or wildcards); AE 102 otherwise."""
    if len(value) > 64 or any(c in value for c in "\\*?") or not value.isprintable():
        raise HL7Error(
            f"{segment}-{field} {value[:70]!r} is not a Patient ID DICOM can hold (at most 64 printable "
            "characters, no backslash, no wildcard * or ?)",
            error_code=102,
            location=f"{segment}-{field}",
        )
    return value


def _domain(message: Message, rep: str) -> tuple[str, str]:
    """A CX identifier's domain: CX.4 Assigning Authority (its namespace ID) and CX.5 Identifier Type Code."""
    return message.component(rep, 4, 1).upper(), message.component(rep, 5).upper()


def _prior(message: Message, mrg: Segment, pid: Segment) -> str:
    """MRG-1's one prior Patient ID. MRG-1, like PID-3, lists the prior patient's identifiers, one per
    domain (HL7 v2.5 3.4.3.1: a medical record number, a national ID ...): the one in the domain of
    PID-3's identifier (CX.4 Assigning Authority, CX.5 Identifier Type Code) is the Patient ID the
    archive knows. Repetitions naming different IDs in that domain, or none of them in it, are refused
    (AE 102): the archive knows a patient by one Patient ID and cannot tell which of them is meant, and
    merging only the first would leave the others behind while the sender believes them merged."""
    reps = message.repetitions(mrg, 1)
    ids = {message.component(rep, 1) for rep in reps} - {""}
    if len(ids) > 1:
        domain = _domain(message, (message.repetitions(pid, 3) or [""])[0])
        same = {message.component(rep, 1) for rep in reps if _domain(message, rep) == domain} - {""}
        if len(same) == 1:
            return _checked_identifier(same.pop(), "MRG", 1)
    if len(ids) > 1:
        listed = ", ".join(repr(i[:20]) for i in sorted(ids)[:5])
        raise HL7Error(
            f"MRG-1 lists several prior identifiers ({listed}); send one MRG segment (with its PID) per "
            "prior patient, each naming the Patient ID the archive knows",
            error_code=102,
            location="MRG-1",
        )
    return _identifier(message, mrg, 1, "Prior Patient Identifier List")


#: PS3.5 6.2 PN: the component and group separators, and the value separator (a name is one value).
PN_DELIMITERS: Final = "^=\\"


def _plain_name(message: Message, pid: Segment, source: str) -> None:
    """AE 102 when a component of the XPN holds '^', '=' or a backslash (an escape such as \\S\\ or
    \\E\\ produces it): in the DICOM name they would split or end components and groups, and a
    correction writes the reshaped name into every file of the patient. (An order keeps it as sent:
    hl7/orders.py; a worklist entry is replaced by the next order, an archived file is not.)"""
    field = int(source.partition("-")[2])
    for rep in orders.name_repetitions(message, message.repetitions(pid, field), 0):
        for number in range(1, 6):
            if not any(c in message.component(rep, number) for c in PN_DELIMITERS):
                continue
            raise HL7Error(
                f"{source} component {number} holds '^', '=' or a backslash (from an escape such as \\S\\); "
                "in a DICOM person name they separate components and groups (PS3.5 6.2 PN), so the name "
                "would change its meaning: the sender must leave them out",
                error_code=102,
                location=source,
            )


def demographics(message: Message, pid: Segment) -> dict[str, str]:
    """The PID's non-empty demographics, as DICOM keyword -> value."""
    found: dict[str, str] = {}
    for row in DEMOGRAPHICS:
        source = row.sources[0]
        if row.kind == "PN":
            _plain_name(message, pid, source)
        raw = orders._value(message, pid, source, row.kind)  # one mapping for orders and ADT
        if raw:
            value = orders._convert(raw, row.kind, source, row.keyword)
            found[row.keyword] = orders._checked(row.keyword, value, source)
    return {k: v for k, v in found.items() if v}


def _pairs(message: Message, event: Event) -> list[tuple[Segment, Segment | None]]:
    """(PID, its MRG) of each patient group (HL7 v2.5 3.3.40: PID, [PD1], MRG, [PV1] repeated)."""
    if message.first("PID") is None:
        raise HL7Error("the message has no PID segment (patient identification)", error_code=100, location="PID")
    pairs: list[tuple[Segment, Segment | None]] = []
    for segment in message.segments[1:]:
        if segment.name == "PID":
            pairs.append((segment, None))
        elif segment.name == "MRG":
            if not pairs or pairs[-1][1] is not None:
                raise HL7Error("an MRG segment without its PID segment before it", error_code=100, location="MRG")
            pairs[-1] = (pairs[-1][0], segment)
    if len(pairs) > MAX_PATIENT_GROUPS:
        raise HL7Error(
            f"the message has {len(pairs)} patient groups (PID); at most {MAX_PATIENT_GROUPS} are taken in one "
            "message: split it",
            error_code=100,
            location="PID",
        )
    if event.needs_mrg and any(mrg is None for _, mrg in pairs):
        raise HL7Error(
            "the message has no MRG segment (merge patient information): it names the prior patient identifier",
            error_code=100,
            location="MRG",
        )
    return pairs


def _actor(message: Message) -> tuple[str, list[str]]:
    """(who, for the corrections log; (actor kind, actor, address) for the audit trail): the sender is
    MSH-3/MSH-4 (sending application/facility), the address the host of the MLLP connection."""
    kind, event = message.message_type
    sender = sequence.sender(message)
    address = PEER.get()  # hl7/mllp.py: the connection the message came on
    return f"HL7 {kind}^{event} {message.control_id} from {sender}", [ActorKind.HL7.value, sender, address]


class ADTApplier:
    """Applies ADT messages through ``corrections`` (archive and worklist), in the order received.

    An HL7 v2 feed is an ordered stream (one MLLP connection, one ACK per message: HL7 v2.5 2.9
    original acknowledgment mode), and the archive must end as if each message had been applied in
    that order. A message is applied at once, its ACK saying what was done or why not, unless its
    sender's job lane (hl7/sequence.py :func:`~minipacs.hl7.sequence.lane_ahead`) has a job queued or
    running, or the message touches more than ``inline_max`` instances: then the WHOLE message becomes
    one job of kind :data:`JOB_KIND` in that lane, which runs after the sender's jobs before it (ADT
    or orders), on whichever node, and
    makes every check against the archive as they leave it. Queued behind another job, a message is
    acknowledged AA before those checks (it is taken: the job is in the index); a refusal when the job
    runs fails the job with the sentence an AE would have carried, and is written to the audit trail
    (outcome 8). docs/CORRECTIONS.md "Order"."""

    def __init__(self, corrections: Corrections) -> None:
        self.corrections = corrections

    async def apply(self, message: Message) -> str:
        """Every patient group of ``message`` checked first, then applied in order (or the message
        queued in the ADT lane); the MSA-3 text."""
        kind, trigger = message.message_type
        event = EVENTS.get(trigger)
        if event is None:
            raise HL7Error(
                f"ADT^{trigger or '(empty)'} is not an ADT event minipacs takes (only "
                f"{', '.join(sorted(EVENTS))}; A08/A31 update, A34/A36/A40 merge, A47 changes the identifier)",
                ack_code=REJECT,
                error_code=201,
                location="MSH-9",
            )
        if event.action == "none":
            _pairs(message, event)  # the segments it must have (PID; A35 its MRG)
            return (
                f"ADT^{trigger} ({event.summary}) acknowledged: minipacs keeps no patient or visit records of "
                "its own, nothing changed (A08/A31 update the patient's studies and worklist entries, A40 merges)"
            )
        groups: list[Group] = []
        for pid, mrg in _pairs(message, event):
            current = _identifier(message, pid, 3, "Patient Identifier List")
            prior = _prior(message, mrg, pid) if mrg is not None else ""
            groups.append((current, prior, demographics(message, pid)))
        actor, who = _actor(message)
        queue = self.corrections.jobs
        if queue is not None:
            lane, ahead = await sequence.lane_ahead(queue, message)
            size = await self._size(groups) if ahead is None else 0
            if ahead is not None or size > self.corrections.inline_max:
                if ahead is None:  # nothing before it: its refusals can still go into this ACK
                    await self._refused(self._check(event, groups), [])
                job = await queue.submit(
                    JOB_KIND,
                    _description(actor, event, groups),
                    {"event": trigger, "groups": [list(g) for g in groups], "actor": actor, "audit": who},
                    total=len(groups),
                    lane=lane,
                )
                if ahead is not None:
                    return sequence.queued_behind(job, ahead)
                return f"checked and queued as job {job.id}: {size} instance(s) to rewrite"
        said: list[str] = []
        await self._refused(self._apply(event, groups, actor, who, said), said)
        return "; ".join(said)

    async def _refused(self, work: Awaitable[None], said: list[str]) -> None:
        """``work``, its core refusals (:data:`REFUSALS`) raised as the HL7Error of the ACK."""
        try:
            await work
        except ArchiveError as exc:
            row = next((REFUSALS[c] for c in type(exc).__mro__ if c in REFUSALS), None)
            if row is None:
                raise
            raise HL7Error(
                str(exc) + (f" ({len(said)} earlier patient(s) of the message applied)" if said else ""),
                ack_code=row.ack_code,
                error_code=row.error_code,
                location=row.location,
            ) from exc

    async def _apply(self, event: Event, groups: list[Group], actor: str, who: list[str], said: list[str]) -> None:
        """Check every group (several), then apply each in order; what each did is appended to ``said``."""
        if len(groups) > 1:
            await self._check(event, groups)
        for current, prior, demo in groups:
            said.append(await self._one(event, current, prior, demo, actor, who))

    async def _size(self, groups: list[Group]) -> int:
        """The instances of every patient the message names (PID-3, MRG-1), each counted once."""
        named = {current for current, _, _ in groups} | {prior for _, prior, _ in groups if prior}
        return await self.corrections.instances("patient", sorted(named))

    async def handle_job(self, job: JobContext) -> str:
        """The :data:`JOB_KIND` handler: the queued message's groups, checked and applied now."""
        params = job.params
        event = EVENTS.get(str(params.get("event")))
        if event is None:
            raise JobFailed(f"not an ADT event minipacs takes: {str(params.get('event'))[:10]!r}")
        groups: list[Group] = [(str(c), str(p), {str(k): str(v) for k, v in d.items()}) for c, p, d in params["groups"]]
        actor = str(params.get("actor", ""))
        who = [str(v) for v in params.get("audit") or ()]
        said: list[str] = []
        job.total = len(groups)
        try:
            await self._refused(self._apply(event, groups, actor, who, said), said)
        except HL7Error as exc:
            self._audit_refusal(job.id, event, groups[min(len(said), len(groups) - 1)][0], actor, who, exc.reason)
            raise JobFailed(f"{actor}, acknowledged AA and queued, cannot be applied now: {exc.reason}") from exc
        finally:
            job.done = len(said)
        return "; ".join(said)

    def _audit_refusal(self, job: int, event: Event, patient: str, actor: str, who: list[str], reason: str) -> None:
        """An audit row (outcome 8, serious failure: the action was not done) for a queued ADT message
        refused when its job ran: the sender had its AA already, so an administrator must see it here."""
        kind, sender, address = (list(who) + ["", "", ""])[:3]
        self.corrections.archive.audit.record(
            Action.MERGED if event.action == "merge" else Action.MODIFIED,
            actor_kind=kind or ActorKind.HL7.value,
            actor=sender,
            address=address,
            patient_id=patient,
            detail=f"job {job}: {actor} refused when it ran: {reason}",
            outcome=Outcome.SERIOUS_FAILURE,
        )

    async def _check(self, event: Event, groups: list[Group]) -> None:
        """The refusals of :meth:`_one` that depend on the archive, for every patient group before any
        is applied, each against the archive as the groups before it leave it (a merge or a new
        identifier moves a patient, and its open worklist entries, to another ID): a message whose
        third group names an unknown patient changes nothing. Only a change between this check and
        the application (another message, a user) can still stop a message part-way."""
        c = self.corrections
        archived: dict[str, bool] = {}
        listed: dict[str, int] = {}
        taken: set[str] = set()

        async def is_archived(patient_id: str) -> bool:
            if patient_id not in archived:
                archived[patient_id] = await c.patient(patient_id) is not None
            return archived[patient_id]

        async def on_worklist(patient_id: str) -> int:
            if patient_id not in listed:
                listed[patient_id] = await c.open_worklist_entries(patient_id)
            return listed[patient_id]

        async def move(prior: str, current: str) -> None:
            listed[current] = await on_worklist(current) + await on_worklist(prior)
            listed[prior] = 0

        for current, prior, _ in groups:
            if event.action == "update":  # a patient minipacs does not know is no refusal (_one)
                continue
            source, target = await is_archived(prior), await is_archived(current)
            if not source:
                if event.action == "merge" and prior not in taken:  # remembered (_one), unless merged away
                    await self._not_merged_away(prior)
                elif not await on_worklist(prior):
                    raise _nothing_to_merge(prior)
            elif event.action != "merge" and target:
                raise _identifier_taken(current, prior)
            else:
                archived[prior], archived[current] = False, True
                taken.add(prior)  # an earlier group of this message takes it away
            await move(prior, current)

    async def _not_merged_away(self, prior: str) -> None:
        await _merged_away_refusal(self.corrections, prior)

    async def _one(
        self, event: Event, current: str, prior: str, demo: dict[str, str], actor: str, who: list[str]
    ) -> str:
        c = self.corrections
        if event.action == "update":
            archived = await c.patient(current)
            if archived is None:
                changed = await c.correct_worklist(current, demo) if demo else 0
                if not changed:  # most patients of a HIS never had an image: AA, as for A01 (EVENTS)
                    return f"patient {current}: neither archived nor on an open worklist entry, nothing to update"
                return f"patient {current}: {changed} worklist entry(ies) updated"
            changes = {k: v for k, v in demo.items() if archived.get(k) != v}
            if not changes:
                return f"patient {current}: nothing changed"
            result = await c.run(
                {
                    "operation": "modify",
                    "level": "patient",
                    "target": current,
                    "changes": changes,
                    "actor": actor,
                    "audit": who,
                }
            )
            return _done(f"patient {current} updated ({', '.join(changes)})", result.instances)
        source, target = await c.patient(prior), await c.patient(current)
        if source is None:
            if event.action == "merge":
                await self._not_merged_away(prior)
            changed = await c.correct_worklist(prior, {"PatientID": current, **demo})
            if event.action == "merge":  # ahead of the prior patient's images (a modality's old worklist)
                pk = await c.remember_merge(prior, current, actor, who=who)
                listed = f"; {changed} worklist entry(ies) updated" if changed else ""
                return (
                    f"patient {prior} -> {current}: nothing archived under {prior} yet, merge remembered "
                    f"(correction {pk}: later arrivals under {prior} go by merged_patient_arrivals){listed}"
                )
            if not changed:
                raise _nothing_to_merge(prior)
            return f"patient {prior} -> {current}: {changed} worklist entry(ies) updated"
        if event.action == "merge" and target is not None:
            extra = {k: v for k, v in demo.items() if target.get(k) != v}
            params = {
                "operation": "merge",
                "source": prior,
                "target": current,
                "actor": actor,
                "demographics": extra,
                "audit": who,
            }
            result = await c.run(params)
            return _done(f"patient {prior} merged into {current}", result.instances)
        if target is not None:  # A47: the new identifier must be new
            raise _identifier_taken(current, prior)
        changes = {"PatientID": current, **{k: v for k, v in demo.items() if source.get(k) != v}}
        params = {
            "operation": "modify",
            "level": "patient",
            "target": prior,
            "changes": changes,
            "actor": actor,
            "audit": who,
        }
        result = await c.run(params)
        return _done(f"patient {prior} is now {current}", result.instances)


async def _merged_away_refusal(corrections: Corrections, prior: str) -> None:
    """NotFound when a merge already took ``prior`` away: the message contradicts it (nothing to merge)."""
    away = await corrections.merged_away(prior)
    if away is not None:
        raise NotFound(
            f"prior patient {prior[:64]!r} (MRG-1) was merged into {away[0][:64]!r} by correction {away[1]}; "
            "nothing to merge"
        )


def _nothing_to_merge(prior: str) -> NotFound:
    return NotFound(
        f"prior patient {prior[:64]!r} (MRG-1) is neither archived nor on an open worklist entry; nothing to merge"
    )


def _identifier_taken(current: str, prior: str) -> CorrectionConflict:
    return CorrectionConflict(f"patient {current[:64]!r} (PID-3) already exists; send A40 to merge {prior!r} into it")


def _done(what: str, instances: int) -> str:
    return f"{what}: {instances} instance(s) rewritten"


def _description(actor: str, event: Event, groups: list[Group]) -> str:
    """The queued message's job description (the Jobs page): who sent it and what it asks."""
    asked = [
        current if event.action == "update" else f"{prior} {'into' if event.action == 'merge' else '->'} {current}"
        for current, prior, _ in groups[:5]
    ]
    more = f" and {len(groups) - 5} more" if len(groups) > 5 else ""
    return f"{actor}: {event.summary} ({', '.join(asked)}{more})"


def register_adt_jobs(queue: JobQueue, corrections: Corrections) -> None:
    """The :data:`JOB_KIND` kind. "fail" after an unclean stop, as a correction job (core/corrections.py):
    its rows may be corrected and its files half rewritten; the job fails saying the server restarted,
    and the lane goes on with the next message. And the kind of the orders queued behind them in the
    same lanes (hl7/sequence.py ``ORDER_JOB_KIND``)."""
    queue.register(JOB_KIND, ADTApplier(corrections).handle_job, on_restart="fail", max_attempts=1)
    sequence.register_order_jobs(queue, Worklist(corrections.archive))


class HL7Receiver:
    """The MLLP listener's handler (hl7/mllp.py): ADT to the corrections, orders to the worklist; one ACK each."""

    def __init__(
        self,
        worklist: Worklist,
        corrections: Corrections,
        application: str = "MINIPACS",
        resend_window: float = sequence.RESEND_WINDOW,
        resend_max: int = sequence.RESEND_MAX,
        acks: AckStore | None = None,
    ) -> None:
        self.worklist = worklist
        self.adt = ADTApplier(corrections)
        self.orders = sequence.OrderJobs(worklist, corrections.jobs)
        self.application = application
        self.resends = sequence.Resends(resend_window, resend_max)
        #: The same ACKs in the index (a resend after a restart, or to another node); None: memory only.
        self.acks = acks

    async def __call__(self, data: bytes) -> bytes:
        """The ACK of ``data``; a message sent again after its AA (the sender lost the ACK) gets that ACK
        again and is not applied twice (hl7/sequence.py :class:`~minipacs.hl7.sequence.Resends`)."""
        again = self.resends.ack_of(data)
        if again is None and self.acks is not None:
            again = await self.acks.find(data)
        if again is not None:
            log.info("HL7 message sent again (%d bytes) within the resend window: its ACK sent again", len(data))
            return again

        async def apply(message: Message) -> str:
            if message.message_type[0] == "ADT":
                return await self.adt.apply(message)
            return await self.orders.apply(message, data)

        ack = await orders.handle(data, self.worklist, self.application, apply)
        if self.resends.remember(data, ack) and self.acks is not None:
            await self.acks.keep(data, ack)
        return ack


__all__ = [
    "ADTApplier",
    "DEMOGRAPHICS",
    "EVENTS",
    "MAX_PATIENT_GROUPS",
    "Event",
    "Group",
    "HL7Receiver",
    "JOB_KIND",
    "REFUSALS",
    "demographics",
    "register_adt_jobs",
]
