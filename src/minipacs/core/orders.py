"""Orders -> Modality Worklist entries: new, cancel, change (IHE RAD TF-1 4.1, RAD-4 / RAD-13).

An :class:`Order` is what the order asks for, as a worklist dataset (PS3.4 K.6), and what to
do with it (:class:`OrderControl`); the edge that received it builds it (hl7/orders.py for
HL7 v2 ORM/OMG). :func:`apply_orders` checks every order of a message against the worklist
before it writes anything, so a refused message changes nothing. A refusal is an
:class:`OrderRefused` naming the order's control and the DICOM attribute at fault; the
edge turns it into its own codes (hl7/orders.py: HL7 acknowledgement codes). Orders of one
accession are found by Accession Number, else by Placer / Filler Order Number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydicom.dataset import Dataset

from minipacs.core.errors import ArchiveError
from minipacs.core.worklist import (
    CANCELLED,
    OPEN_STATES,
    InvalidWorklistEntry,
    Worklist,
    WorklistEntry,
    WorklistEntryChanged,
    validated,
)


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
    """The entry to change left the open states, or went, while the change was being written."""


Action = Callable[[Worklist], Awaitable[str]]
Planner = Callable[[Worklist, Dataset], Awaitable[Action]]


def order_key(ds: Dataset) -> str:
    return str(ds.get("AccessionNumber", "") or ds.get("PlacerOrderNumberImagingServiceRequest", "") or "")


async def _existing(worklist: Worklist, ds: Dataset, control: OrderControl) -> list[WorklistEntry]:
    """Open entries of the same order: by Accession Number, else by Placer / Filler Order Number."""
    accession = str(ds.get("AccessionNumber", "") or "")
    if accession:
        entries = await worklist.by_accession(accession)
    else:
        keys = [
            (k, str(ds.get(k, "") or ""))
            for k in ("PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest")
        ]
        keys = [(k, v) for k, v in keys if v]
        if not keys:
            raise InvalidOrder(
                "the order has neither an accession number nor placer/filler order numbers to find it by",
                control=control,
                keyword="AccessionNumber",
            )
        entries = [e for e in await worklist.list() if any(str(e.dataset.get(k, "") or "") == v for k, v in keys)]
    return [e for e in entries if e.status in OPEN_STATES]


def _checked(ds: Dataset, control: OrderControl) -> Dataset:
    try:
        return validated(ds)
    except InvalidWorklistEntry as exc:
        raise InvalidOrder(str(exc), control=control) from exc


async def _new(worklist: Worklist, ds: Dataset) -> Action:
    """A new order -> a new SCHEDULED entry; an open order with the same number is a duplicate."""
    ds = _checked(ds, OrderControl.NEW)
    duplicates = await _existing(worklist, ds, OrderControl.NEW) if order_key(ds) else []
    if duplicates:
        raise DuplicateOrder(
            f"order {order_key(ds)} is already on the worklist", control=OrderControl.NEW, keyword="AccessionNumber"
        )

    async def run(wl: Worklist) -> str:
        entry = await wl.add(ds)
        return f"order {order_key(ds) or entry.id} scheduled as worklist entry {entry.id}"

    return run


async def _cancel(worklist: Worklist, ds: Dataset) -> Action:
    """The open entries of the order become CANCELLED (they leave the modality's list)."""
    entries = await _existing(worklist, ds, OrderControl.CANCEL)
    if not entries:
        raise UnknownOrder(
            f"no open worklist entry for order {order_key(ds) or '(no number)'} to cancel",
            control=OrderControl.CANCEL,
            keyword="AccessionNumber",
        )

    async def run(wl: Worklist) -> str:
        for entry in entries:
            await wl.set_status(entry.id, CANCELLED)
        return f"order {order_key(ds)} cancelled ({len(entries)} worklist entr{'y' if len(entries) == 1 else 'ies'})"

    return run


async def _change(worklist: Worklist, ds: Dataset) -> Action:
    """The order's open entry gets the changed order, in place (one writer transaction: its id,
    status and MPPS link stay; Study Instance UID kept when not sent).

    A change for an order that is not open on the worklist is refused (UnknownOrder):
    taking it as new would resurrect a cancelled order or schedule one from a partial
    change. Several open entries with the order's number are told apart by the Requested
    Procedure ID.
    """
    control = OrderControl.CHANGE
    entries = await _existing(worklist, ds, control)
    if not entries:
        raise UnknownOrder(
            f"no open worklist entry for order {order_key(ds) or '(no number)'} to change",
            control=control,
            keyword="AccessionNumber",
        )
    procedure = str(ds.get("RequestedProcedureID", "") or "")
    if len(entries) > 1 and procedure:
        entries = [e for e in entries if str(e.dataset.get("RequestedProcedureID", "") or "") == procedure] or entries
    if len(entries) > 1:
        raise AmbiguousOrder(
            f"order {order_key(ds)} has {len(entries)} open worklist entries "
            f"({', '.join(str(e.id) for e in entries)}) and the change does not say which one it "
            "is for",
            control=control,
            keyword="RequestedProcedureID",
        )
    target = entries[0]
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = str(target.dataset.get("StudyInstanceUID", "") or "")
    if not str(ds.get("RequestedProcedureID", "") or ""):  # keep the IDs the modality has, not new ones
        ds.RequestedProcedureID = str(target.dataset.get("RequestedProcedureID", "") or "")
    old_steps, new_steps = (
        target.dataset.get("ScheduledProcedureStepSequence"),
        ds.get("ScheduledProcedureStepSequence"),
    )
    if old_steps and new_steps and len(old_steps) == len(new_steps):
        for old, new in zip(old_steps, new_steps, strict=True):
            if not str(new.get("ScheduledProcedureStepID", "") or ""):
                new.ScheduledProcedureStepID = str(old.get("ScheduledProcedureStepID", "") or "")
    ds = _checked(ds, control)

    async def run(wl: Worklist) -> str:
        try:
            await wl.update(target.id, ds, states=OPEN_STATES)
        except WorklistEntryChanged as exc:
            raise OrderChanged(f"order {order_key(ds)} was not changed: {exc}", control=control) from exc
        return f"order {order_key(ds)} changed (worklist entry {target.id})"

    return run


#: What each control does to the worklist: a planner checks (and may refuse) before anything is written.
PLANNERS: Final[dict[OrderControl, Planner]] = {
    OrderControl.NEW: _new,
    OrderControl.CANCEL: _cancel,
    OrderControl.CHANGE: _change,
}


async def apply_orders(worklist: Worklist, orders: Sequence[Order]) -> str:
    """Apply every order to the worklist, or none: all are checked first, then written.

    Returns what was done, one clause per order; raises :class:`OrderRefused`.
    """
    plans = [await PLANNERS[order.control](worklist, order.dataset) for order in orders]
    return "; ".join([await plan(worklist) for plan in plans])


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
