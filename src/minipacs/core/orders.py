"""Orders -> Modality Worklist entries: new, cancel, change (IHE RAD TF-1 4.1, RAD-4 / RAD-13).

An :class:`Order` is what the order asks for, as a worklist dataset (PS3.4 K.6), and what to
do with it (:class:`OrderControl`); the edge that received it builds it (hl7/orders.py for
HL7 v2 ORM/OMG/OMI). :func:`apply_orders` applies the orders of one message in ONE writer
transaction, so a refused message changes nothing. A refusal is an
:class:`OrderRefused` naming the order's control and the DICOM attribute at fault; the
edge turns it into its own codes (hl7/orders.py: HL7 acknowledgement codes). Orders of one
accession are found by Accession Number, else by Placer / Filler Order Number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydicom.dataset import Dataset

from minipacs.core.errors import ArchiveError
from minipacs.core.worklist import (
    CANCELLED,
    OPEN_STATES,
    SCHEDULED,
    InvalidWorklistEntry,
    Worklist,
    WorklistEntry,
    _columns,
    _entry,
    validated,
)
from minipacs.index import worklist_repo as repo
from minipacs.index.database import IndexConnection


class OrderControl(StrEnum):
    """What an order asks of the worklist."""

    NEW = "new"  # schedule it
    CANCEL = "cancel"  # take it off the modality's list (the entry stays, CANCELLED)
    CHANGE = "change"  # replace the open entry's content, in place


@dataclass(frozen=True)
class Order:
    control: OrderControl
    dataset: Dataset


class OrderRefused(ArchiveError):
    """An order that cannot be applied; nothing of its message was changed.

    ``control`` is what the order asked; ``keyword`` the DICOM attribute at fault ('' when none).
    """

    def __init__(self, reason: str, *, control: OrderControl, keyword: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.control = control
        self.keyword = keyword


class InvalidOrder(OrderRefused):
    """The order lacks what a worklist entry needs (PS3.4 K.6), or the number to find it by."""


class DuplicateOrder(OrderRefused):
    """A new order whose number is already open on the worklist."""


class AmbiguousOrder(OrderRefused):
    """A change matching several open entries without saying which (Requested Procedure ID)."""


class UnknownOrder(OrderRefused):
    """A cancel or change for an order with no open worklist entry."""


class OrderChanged(UnknownOrder):
    """The entry to change went while the change was being written (another node's writer)."""


Action = Callable[[IndexConnection, Dataset], str]


def order_key(ds: Dataset) -> str:
    return str(ds.get("AccessionNumber", "") or ds.get("PlacerOrderNumberImagingServiceRequest", "") or "")


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _existing(conn: IndexConnection, ds: Dataset, control: OrderControl) -> list[WorklistEntry]:
    """Open entries of the same order, as the transaction sees them (earlier orders of the message
    included): by Accession Number, else by Placer / Filler Order Number."""
    accession = _text(ds, "AccessionNumber")
    if accession:
        rows = repo.worklist_rows(conn, {"accession_number": accession}, OPEN_STATES)
        return [_entry(row) for row in rows]
    keys = [
        (k, _text(ds, k)) for k in ("PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest")
    ]
    keys = [(k, v) for k, v in keys if v]
    if not keys:
        raise InvalidOrder(
            "the order has neither an accession number nor placer/filler order numbers to find it by",
            control=control,
            keyword="AccessionNumber",
        )
    entries = [_entry(row) for row in repo.worklist_rows(conn, statuses=OPEN_STATES)]
    return [e for e in entries if any(_text(e.dataset, k) == v for k, v in keys)]


def _of_procedure(entries: list[WorklistEntry], procedure: str) -> list[WorklistEntry]:
    """The entries of Requested Procedure ID ``procedure``; all of them when it is ''. One order (one
    accession number) may hold several requested procedures (IHE RAD TF-1 4.1, PS3.3 C.30), each its
    own entry, told apart by the Requested Procedure ID (OBR-19 / IPC-2)."""
    if not procedure:
        return entries
    return [e for e in entries if _text(e.dataset, "RequestedProcedureID") == procedure]


def _step_id(ds: Dataset) -> str:
    """The Scheduled Procedure Step ID of the entry's (only) step."""
    steps = ds.get("ScheduledProcedureStepSequence") or []
    return _text(steps[0], "ScheduledProcedureStepID") if steps else ""


def _of_step(entries: list[WorklistEntry], step_id: str) -> list[WorklistEntry]:
    """The entries of Scheduled Procedure Step ID ``step_id``; all of them when it is ''. A requested
    procedure may have several steps, each its own worklist entry (PS3.4 K.6.1.2.1), told apart by the
    Scheduled Procedure Step ID (IPC-4 / OBR-20)."""
    if not step_id:
        return entries
    return [e for e in entries if _step_id(e.dataset) == step_id]


def _checked(ds: Dataset, control: OrderControl) -> Dataset:
    try:
        return validated(ds)
    except InvalidWorklistEntry as exc:
        raise InvalidOrder(str(exc), control=control) from exc


def _new(conn: IndexConnection, ds: Dataset) -> str:
    """A new order -> a new SCHEDULED entry. An open entry of the same order, requested procedure and
    step is a duplicate (an ID the new order leaves out matches any); another requested procedure or
    step of an open order is not."""
    procedure, step_id = _text(ds, "RequestedProcedureID"), _step_id(ds)  # as sent: validated() makes up missing IDs
    ds = _checked(ds, OrderControl.NEW)
    existing = _existing(conn, ds, OrderControl.NEW) if order_key(ds) else []
    duplicates = _of_step(_of_procedure(existing, procedure), step_id)
    if duplicates:
        what = f"order {order_key(ds)}" + (f" requested procedure {procedure}" if procedure else "")
        what += f" step {step_id}" if step_id else ""
        raise DuplicateOrder(f"{what} is already on the worklist", control=OrderControl.NEW, keyword="AccessionNumber")
    pk = repo.insert_worklist(conn, _columns(ds, SCHEDULED))
    return f"order {order_key(ds) or pk} scheduled as worklist entry {pk}"


def _cancel(conn: IndexConnection, ds: Dataset) -> str:
    """The open entries of the order (of its requested procedure, when it names one) become
    CANCELLED: they leave the modality's list."""
    procedure = _text(ds, "RequestedProcedureID")
    entries = _of_procedure(_existing(conn, ds, OrderControl.CANCEL), procedure)
    entries = _of_step(entries, _step_id(ds)) or entries  # one step of several, when it names one
    if not entries:
        what = f"order {order_key(ds) or '(no number)'}" + (f" requested procedure {procedure}" if procedure else "")
        raise UnknownOrder(
            f"no open worklist entry for {what} to cancel", control=OrderControl.CANCEL, keyword="AccessionNumber"
        )
    for entry in entries:
        repo.set_worklist_status(conn, entry.id, CANCELLED)
    return f"order {order_key(ds)} cancelled ({len(entries)} worklist entr{'y' if len(entries) == 1 else 'ies'})"


def _change(conn: IndexConnection, ds: Dataset) -> str:
    """The order's open entry gets the changed order, in place (its id, status and MPPS link stay;
    Study Instance UID and procedure IDs kept when not sent).

    A change for an order that is not open on the worklist is refused (UnknownOrder):
    taking it as new would resurrect a cancelled order or schedule one from a partial
    change. Several open entries with the order's number are told apart by the Requested
    Procedure ID.
    """
    control = OrderControl.CHANGE
    entries = _existing(conn, ds, control)
    if not entries:
        raise UnknownOrder(
            f"no open worklist entry for order {order_key(ds) or '(no number)'} to change",
            control=control,
            keyword="AccessionNumber",
        )
    procedure = _text(ds, "RequestedProcedureID")
    if len(entries) > 1 and procedure:
        entries = _of_procedure(entries, procedure) or entries
    if len(entries) > 1:
        entries = _of_step(entries, _step_id(ds)) or entries
    if len(entries) > 1:
        raise AmbiguousOrder(
            f"order {order_key(ds)} has {len(entries)} open worklist entries "
            f"({', '.join(str(e.id) for e in entries)}) and the change does not say which one it "
            "is for",
            control=control,
            keyword="RequestedProcedureID",
        )
    target = entries[0]
    if not _text(ds, "StudyInstanceUID"):
        ds.StudyInstanceUID = _text(target.dataset, "StudyInstanceUID")
    if not procedure:  # keep the IDs the modality has, not new ones
        ds.RequestedProcedureID = _text(target.dataset, "RequestedProcedureID")
    old_steps, new_steps = (
        target.dataset.get("ScheduledProcedureStepSequence"),
        ds.get("ScheduledProcedureStepSequence"),
    )
    if old_steps and new_steps and len(old_steps) == len(new_steps):
        for old, new in zip(old_steps, new_steps, strict=True):
            if not _text(new, "ScheduledProcedureStepID"):
                new.ScheduledProcedureStepID = _text(old, "ScheduledProcedureStepID")
    ds = _checked(ds, control)
    if not repo.update_worklist(conn, target.id, _columns(ds, target.status)):
        raise OrderChanged(
            f"order {order_key(ds)} was not changed: worklist entry {target.id} no longer exists", control=control
        )
    return f"order {order_key(ds)} changed (worklist entry {target.id})"


#: What each control does to the worklist, in the writer's transaction: check (and maybe refuse), then write.
PLANNERS: Final[dict[OrderControl, Action]] = {
    OrderControl.NEW: _new,
    OrderControl.CANCEL: _cancel,
    OrderControl.CHANGE: _change,
}


async def apply_orders(worklist: Worklist, orders: Sequence[Order]) -> str:
    """Apply every order to the worklist, or none: ONE writer transaction applies them in the
    message's order, each checked against the worklist as the orders before it leave it (a new order
    and its cancel, or two requested procedures of one order, in one message); a refusal or a failure
    rolls the whole message back.

    Returns what was done, one clause per order; raises :class:`OrderRefused`.
    """

    def run(conn: IndexConnection) -> str:
        # A savepoint: the writer commits the rest of its batch after a refusal (an ArchiveError), so
        # the orders written before the refused one must be rolled back here. Copies: the writer may
        # run the call again (a failed batch is retried job by job).
        with conn.begin_nested():
            return "; ".join(PLANNERS[order.control](conn, copy.deepcopy(order.dataset)) for order in orders)

    return await worklist.index.write(run)


__all__ = [
    "PLANNERS",
    "AmbiguousOrder",
    "DuplicateOrder",
    "InvalidOrder",
    "Order",
    "OrderChanged",
    "OrderControl",
    "OrderRefused",
    "UnknownOrder",
    "apply_orders",
    "order_key",
]
