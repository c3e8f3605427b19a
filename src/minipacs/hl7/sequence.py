"""A sender's HL7 messages applied in the order it sent them: one job lane per sender (core/jobs.py lanes).

HL7 v2.5 2.9 (original acknowledgment mode) and 2.10.1 (sequence number protocol): a sender sends its
next message only once the last one is acknowledged, and the receiver applies them in that order. An
ADT message that must wait is queued whole in a job lane (hl7/adt.py :class:`ADTApplier`); any later
message of the same sender, ADT or order, must then wait behind it in the same lane, or an order that
followed an A40 merge would reach the worklist before the merge (or a change to a merged patient's
order would leave the merge nothing to merge). So: one lane per sender (:func:`sender_lane`, MSH-3
Sending Application / MSH-4 Sending Facility); a message whose sender's lane has a job queued or running
is queued behind it (:func:`lane_ahead`), anything else is applied at once, as before. Senders do not
wait for each other: a large merge from one hospital system delays only that system's later messages.

Orders queued so (:data:`ORDER_JOB_KIND`) keep the message's bytes and are read and applied again when
their turn comes (:class:`OrderJobs`); the checks of the message itself (its segments, fields and
values) were made before its AA, those against the worklist are made when it runs, and a refusal then
fails the job with the sentence an AE would have carried (docs/CORRECTIONS.md "Order").
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from minipacs.core.jobs import MAX_LANE, Job, JobContext, JobFailed, JobQueue
from minipacs.core.worklist import Worklist
from minipacs.hl7 import orders
from minipacs.hl7.errors import ACCEPT, HL7Error
from minipacs.hl7.message import Message, parse_bytes

log = logging.getLogger("minipacs.hl7")

#: The one ADT lane of earlier versions (every sender in it). Jobs still queued there after an upgrade
#: run first: while it is busy, new messages of every sender queue behind them there, as they did.
LEGACY_LANE: Final = "hl7-adt"
#: A sender's lane is this prefix and the sender (MSH-3/MSH-4), shortened to fit MAX_LANE with a hash.
LANE_PREFIX: Final = "hl7:"
#: The job kind of a queued order message (all its order groups, in one transaction when it runs).
ORDER_JOB_KIND: Final = "hl7-order"


def sender(message: Message) -> str:
    """Who sent ``message``: MSH-3 Sending Application / MSH-4 Sending Facility (their first component,
    HD namespace ID), "an unnamed sender" when both are empty (such senders share one lane)."""
    msh = message.first("MSH")
    return "/".join(v for v in (message.value(msh, 3), message.value(msh, 4)) if v) or "an unnamed sender"


def sender_lane(message: Message) -> str:
    """The job lane of ``message``'s sender: ``hl7:RIS/HOSP``; a name too long for a lane keeps its start
    and gets a hash of the whole, so two long names that share their start stay two lanes."""
    name = LANE_PREFIX + sender(message)
    if len(name) <= MAX_LANE:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{name[: MAX_LANE - len(digest) - 1]}~{digest}"


async def lane_ahead(queue: JobQueue, message: Message) -> tuple[str, Job | None]:
    """(the lane ``message`` goes into, the newest job queued or running there: None when the lane is free).
    The legacy lane (:data:`LEGACY_LANE`) while it is busy, else the sender's."""
    legacy = await queue.lane_tail(LEGACY_LANE)
    if legacy is not None:
        return LEGACY_LANE, legacy
    lane = sender_lane(message)
    return lane, await queue.lane_tail(lane)


def queued_behind(job: Job, ahead: Job) -> str:
    """The MSA-3 text of a message queued as ``job`` behind ``ahead``, its sender's newest waiting job."""
    what = {ORDER_JOB_KIND: "order", "adt": "ADT"}.get(ahead.kind, ahead.kind)  # "adt": hl7/adt.py JOB_KIND
    return (
        f"queued as job {job.id} behind {what} job {ahead.id}: applied in the order received; "
        f"if it cannot be applied then, job {job.id} fails saying why"
    )


def _describe(message: Message) -> str:
    kind, event = message.message_type
    return f"HL7 {kind}^{event} {message.control_id} from {sender(message)}"


class OrderJobs:
    """Orders applied to ``worklist`` in their sender's order: at once when the sender's lane is free,
    else queued behind it as a job of :data:`ORDER_JOB_KIND` (:meth:`handle_job` applies it)."""

    def __init__(self, worklist: Worklist, queue: JobQueue | None) -> None:
        self.worklist = worklist
        self.queue = queue

    async def apply(self, message: Message, data: bytes) -> str:
        """Apply the orders of ``message`` (its bytes ``data``), or queue them; the MSA-3 text, or HL7Error."""
        found = orders.read_orders(message)  # the message's own faults are refused now, in the ACK
        if self.queue is not None:
            lane, ahead = await lane_ahead(self.queue, message)
            if ahead is not None:
                job = await self.queue.submit(
                    ORDER_JOB_KIND,
                    f"{_describe(message)}: {len(found)} order(s)",
                    {"data": base64.b64encode(data).decode("ascii"), "actor": _describe(message)},
                    total=len(found),
                    lane=lane,
                )
                return queued_behind(job, ahead)
        return await orders.apply_read(found, self.worklist)

    async def handle_job(self, job: JobContext) -> str:
        """The :data:`ORDER_JOB_KIND` handler: the queued message read again and applied now."""
        actor = str(job.params.get("actor", "an HL7 order"))
        try:
            data = base64.b64decode(str(job.params["data"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise JobFailed(f"{actor}: the queued message is unreadable ({exc})") from exc
        try:
            text = await orders.apply(parse_bytes(data), self.worklist)
        except HL7Error as exc:
            log.warning("HL7 job %d: %s, acknowledged AA and queued, refused when it ran: %s", job.id, actor, exc)
            raise JobFailed(f"{actor}, acknowledged AA and queued, cannot be applied now: {exc.reason}") from exc
        job.done = job.total
        return text


#: How long (seconds) and how many accepted messages a receiver remembers to answer a resend (:class:`Resends`).
RESEND_WINDOW: Final = 600.0
RESEND_MAX: Final = 1000


class Resends:
    """The ACKs of the messages accepted (AA) in the last ``window`` seconds, at most ``limit`` of them, by the
    digest of the message's bytes: the same bytes again get the same ACK and are not applied twice.

    HL7 v2.5 2.9.2 / 2.10.1: in original mode a sender that gets no ACK (lost, a connection cut, a timeout)
    sends the same message again, same MSH-10, and keeps the rest of its queue behind it. Applied again, a
    resent NW would be refused as a duplicate (AE 205), a resent CA or A40 as unknown (AE 204): the sender
    would file an error for a message that was applied. A resend is byte for byte the original (MSH-7 and
    MSH-10 included), so the bytes are the key; the window is short so that an administrator who replays
    a message on purpose later (after undoing it by hand) has it applied again. A refusal (AE/AR) is not
    remembered: sent again, it is checked again (AE 207 says "retry later"). This is the process's memory;
    core/hl7_acks.py keeps the same ACKs in the index for a resend after a restart or to another node."""

    def __init__(
        self, window: float = RESEND_WINDOW, limit: int = RESEND_MAX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.limit = limit
        self.clock = clock
        self._acks: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def _expire(self) -> None:
        now = self.clock()
        while self._acks and (len(self._acks) > self.limit or next(iter(self._acks.values()))[0] + self.window < now):
            self._acks.popitem(last=False)

    def ack_of(self, data: bytes) -> bytes | None:
        """The ACK already sent for these bytes, when they were accepted within the window."""
        self._expire()
        found = self._acks.get(hashlib.sha256(data).digest())
        return None if found is None else found[1]

    def remember(self, data: bytes, ack: bytes) -> bool:
        """Keep ``ack`` for ``data`` when it accepted the message (MSA-1 AA); whether it did."""
        if self.window <= 0 or self.limit <= 0:
            return False
        try:
            reply = parse_bytes(ack)
            accepted = reply.value(reply.first("MSA"), 1) == ACCEPT
        except HL7Error:
            return False
        if accepted:
            self._acks[hashlib.sha256(data).digest()] = (self.clock(), ack)
            self._expire()
        return accepted


def register_order_jobs(queue: JobQueue, worklist: Worklist) -> None:
    """The :data:`ORDER_JOB_KIND` kind. "resume" after an unclean stop: a message's orders are written in
    one transaction, so a job cut short wrote nothing, or everything (then the rerun is refused as a
    duplicate, and the job fails saying so; the worklist holds the orders)."""
    queue.register(ORDER_JOB_KIND, OrderJobs(worklist, queue).handle_job, on_restart="resume")


__all__ = [
    "LANE_PREFIX",
    "LEGACY_LANE",
    "ORDER_JOB_KIND",
    "OrderJobs",
    "RESEND_MAX",
    "RESEND_WINDOW",
    "Resends",
    "lane_ahead",
    "queued_behind",
    "register_order_jobs",
    "sender",
    "sender_lane",
]
