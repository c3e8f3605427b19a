"""HL7 v2 orders -> Modality Worklist entries (IHE RAD TF-2 RAD-4 / RAD-13, Appendix B).

ORM^O01 (HL7 v2.3.1) and OMG^O19 (v2.5.1) orders are read through ONE mapping
table (``FIELD_MAP``: HL7 field -> DICOM keyword, after IHE RAD TF-2 Table B-1)
and applied through the Worklist API by ORC-1 Order Control (``ORDER_CONTROL``,
HL7 Table 0119). Every order group of the message is checked before anything is
written, so a refused message changes nothing. Raises HL7Error; never speaks MLLP.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from pydicom.dataset import Dataset

from minipacs.core.hl7 import REJECT, HL7Error, Message, Segment
from minipacs.core.worklist import (
    CANCELLED,
    OPEN_STATES,
    InvalidWorklistEntry,
    Worklist,
    WorklistEntry,
    WorklistEntryChanged,
    validated,
)

#: Message types taken (MSH-9.1, MSH-9.2).
ORDER_MESSAGES: Final = frozenset({("ORM", "O01"), ("OMG", "O19")})

#: Where a value goes: the top-level dataset, the Scheduled Procedure Step item, the
#: Requested Procedure Code Sequence item.
TOP, SPS, CODE = "top", "sps", "code"


@dataclass(frozen=True)
class FieldMap:
    """One row: DICOM ``keyword`` (at ``level``) from the first non-empty ``sources``.

    A source is ``SEG-field`` or ``SEG-field.component``; ``kind`` says how the HL7
    value becomes a DICOM value: ST text, PN an XPN/XCN name, NDL a name in
    subcomponents (OBR-34), DA / TM the date / time part of a TS, SEX Table 0001,
    PRIORITY the TQ priority.
    """

    keyword: str
    sources: tuple[str, ...]
    kind: str = "ST"
    level: str = TOP


# IHE RAD TF-2 Table B-1 (HL7 order mapping to DICOM MWL attributes), ORM RAD-4 and OMG RAD-4
FIELD_MAP: Final[tuple[FieldMap, ...]] = (
    FieldMap("PatientID", ("PID-3.1",)),
    FieldMap("IssuerOfPatientID", ("PID-3.4",)),
    FieldMap("PatientName", ("PID-5",), "PN"),
    FieldMap("PatientBirthDate", ("PID-7.1",), "DA"),
    FieldMap("PatientSex", ("PID-8.1",), "SEX"),
    FieldMap("ReferringPhysicianName", ("PV1-8",), "PN"),
    FieldMap("AdmissionID", ("PV1-19.1",)),
    FieldMap("PlacerOrderNumberImagingServiceRequest", ("ORC-2.1", "OBR-2.1")),
    FieldMap("FillerOrderNumberImagingServiceRequest", ("ORC-3.1", "OBR-3.1")),
    FieldMap("AccessionNumber", ("OBR-18.1", "IPC-1.1")),
    FieldMap("RequestedProcedureID", ("OBR-19.1", "IPC-2.1")),
    FieldMap("StudyInstanceUID", ("ZDS-1.1", "IPC-3.1")),
    FieldMap("RequestedProcedureDescription", ("OBR-4.2",)),
    FieldMap("RequestingPhysician", ("OBR-16", "ORC-12"), "PN"),
    FieldMap("ReasonForTheRequestedProcedure", ("OBR-31.2", "OBR-31.1")),
    FieldMap("RequestedProcedurePriority", ("TQ1-9.1", "OBR-27.6", "ORC-7.6"), "PRIORITY"),
    FieldMap("CodeValue", ("OBR-4.1",), level=CODE),
    FieldMap("CodeMeaning", ("OBR-4.2",), level=CODE),
    FieldMap("CodingSchemeDesignator", ("OBR-4.3",), level=CODE),
    FieldMap("Modality", ("OBR-24.1", "IPC-5.1"), level=SPS),
    FieldMap("ScheduledStationAETitle", ("IPC-9.1",), level=SPS),
    FieldMap("ScheduledProcedureStepStartDate", ("TQ1-7.1", "OBR-27.4", "ORC-7.4"), "DA", SPS),
    FieldMap("ScheduledProcedureStepStartTime", ("TQ1-7.1", "OBR-27.4", "ORC-7.4"), "TM", SPS),
    FieldMap("ScheduledProcedureStepID", ("OBR-20.1", "IPC-4.1"), level=SPS),
    FieldMap("ScheduledProcedureStepDescription", ("OBR-4.5", "OBR-4.2"), level=SPS),
    FieldMap("ScheduledPerformingPhysicianName", ("OBR-34",), "NDL", SPS),
)

#: HL7 Table 0001 Administrative Sex -> DICOM (0010,0040).
SEX: Final = {"M": "M", "F": "F", "O": "O", "U": "O", "A": "O", "N": "O"}
#: HL7 TQ priority -> DICOM Requested Procedure Priority (0040,1003).
PRIORITY: Final = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "MEDIUM", "C": "MEDIUM", "T": "MEDIUM"}

_SOURCE = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?$")
_TS = re.compile(r"^(\d{8})(\d{2,6})?(\.\d+)?([+-]\d{4})?$")


@dataclass
class OrderGroup:
    """The segments of one order (ORC and what follows it up to the next ORC)."""

    segments: dict[str, Segment] = field(default_factory=dict)

    def get(self, name: str) -> Segment | None:
        return self.segments.get(name)


def _groups(message: Message) -> tuple[dict[str, Segment], list[OrderGroup]]:
    """Patient-level segments (the first of each) and one group per ORC (HL7 v2.5 4.4.1 / 4.4.6)."""
    patient: dict[str, Segment] = {}
    groups: list[OrderGroup] = []
    for seg in message.segments[1:]:
        if seg.name == "ORC":
            groups.append(OrderGroup({"ORC": seg}))
        elif groups and seg.name in ("OBR", "TQ1", "IPC", "ZDS") and seg.name not in groups[-1].segments:
            groups[-1].segments[seg.name] = seg
        elif not groups and seg.name in ("OBR", "TQ1", "IPC", "ZDS"):
            raise HL7Error(f"{seg.name} segment before any ORC segment (each order starts with ORC)",
                           error_code=100, location=seg.name)
        else:
            patient.setdefault(seg.name, seg)
    return patient, groups


def _value(message: Message, segment: Segment | None, source: str, kind: str) -> str:
    match = _SOURCE.match(source)
    if match is None:  # a programming error in FIELD_MAP
        raise ValueError(f"bad FIELD_MAP source {source!r}")
    number = int(match.group(2))
    component = int(match.group(3) or 1)
    if kind == "PN":  # XPN / XCN: family^given^middle^suffix^prefix (XCN: ID first)
        rep = (message.repetitions(segment, number) or [""])[0]
        offset = 1 if match.group(1) in ("PV1", "OBR", "ORC") else 0
        family, given, middle, suffix, prefix = (message.component(rep, offset + n) for n in range(1, 6))
        return "^".join((family, given, middle, prefix, suffix)).rstrip("^")
    if kind == "NDL":  # OBR-34: CNN in subcomponents ID&family&given
        family, given = (message.value(segment, number, 1, n) for n in (2, 3))
        return "^".join((family, given)).rstrip("^")
    return message.value(segment, number, component)


def _convert(text: str, kind: str, source: str) -> str:
    if kind in ("DA", "TM"):
        match = _TS.match(text)
        if match is None:
            raise HL7Error(f"{source} {text!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]])",
                           error_code=102, location=source.partition(".")[0])
        return match.group(1) if kind == "DA" else (match.group(2) or "")
    if kind == "SEX":
        return SEX.get(text.upper()[:1], "O")
    if kind == "PRIORITY":
        return PRIORITY.get(text.upper()[:1], "")
    return text


def to_dataset(message: Message, patient: dict[str, Segment], group: OrderGroup) -> Dataset:
    """One order group -> a worklist dataset, through FIELD_MAP; raises HL7Error."""
    found: dict[str, dict[str, str]] = {TOP: {}, SPS: {}, CODE: {}}
    for row in FIELD_MAP:
        for source in row.sources:
            name = source[:3]
            segment = group.get(name) or patient.get(name)
            raw = _value(message, segment, source, row.kind)
            if raw:
                value = _convert(raw, row.kind, source)
                if value:
                    found[row.level][row.keyword] = value
                break
    if not found[TOP].get("PatientID"):
        raise HL7Error("PID-3 Patient Identifier List is empty: a worklist entry needs the patient ID",
                       error_code=101, location="PID-3")
    if not found[SPS].get("Modality"):
        raise HL7Error("the order has no modality (OBR-24 Diagnostic Service Section ID, or IPC-5 in OMG^O19); "
                       "a worklist entry needs one", error_code=101, location="OBR-24")
    ds = Dataset()
    charset = _specific_character_set(message, [v for level in found.values() for v in level.values()])
    if charset:
        ds.SpecificCharacterSet = charset
    _set_all(ds, found[TOP])
    if found[CODE].get("CodeValue"):
        code = Dataset()
        _set_all(code, found[CODE])
        ds.RequestedProcedureCodeSequence = [code]
    sps = Dataset()
    _set_all(sps, found[SPS])
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _specific_character_set(message: Message, values: list[str]) -> str:
    """(0008,0005) of the entry: none for ASCII values, else the DICOM term of the message's
    character set (MSH-18, core/hl7.py CHARSETS) when it holds every value, else ISO_IR 192."""
    if all(v.isascii() for v in values):
        return ""
    charset = message.charset
    if charset is not None and charset.dicom:
        try:
            for v in values:
                v.encode(charset.codec)
            return charset.dicom
        except UnicodeEncodeError:  # a \Xhh\ escape brought in what the declared set lacks
            pass
    return "ISO_IR 192"


def _set_all(ds: Dataset, values: dict[str, str]) -> None:
    """Set DICOM attributes; a value its VR cannot hold (too long, bad characters) refuses the message."""
    for keyword, value in values.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                setattr(ds, keyword, value)
            except (UserWarning, ValueError) as exc:
                source = next(row.sources[0] for row in FIELD_MAP if row.keyword == keyword)
                raise HL7Error(f"{keyword} from {source} cannot be stored in DICOM: {exc}",
                               error_code=102, location=source.partition(".")[0]) from None


# ------------------------------------------------------------------ order control

Action = Callable[[Worklist], Awaitable[str]]


def _order_key(ds: Dataset) -> str:
    return str(ds.get("AccessionNumber", "") or ds.get("PlacerOrderNumberImagingServiceRequest", "") or "")


async def _existing(worklist: Worklist, ds: Dataset) -> list[WorklistEntry]:
    """Open entries of the same order: by accession number, else by placer / filler order number."""
    accession = str(ds.get("AccessionNumber", "") or "")
    if accession:
        entries = await worklist.by_accession(accession)
    else:
        keys = [(k, str(ds.get(k, "") or "")) for k in ("PlacerOrderNumberImagingServiceRequest",
                                                        "FillerOrderNumberImagingServiceRequest")]
        keys = [(k, v) for k, v in keys if v]
        if not keys:
            raise HL7Error("the order has neither an accession number (OBR-18 / IPC-1) nor placer/filler "
                           "order numbers (ORC-2 / ORC-3) to find it by", error_code=101, location="OBR-18")
        entries = [e for e in await worklist.list() if any(str(e.dataset.get(k, "") or "") == v for k, v in keys)]
    return [e for e in entries if e.status in OPEN_STATES]


def _checked(ds: Dataset) -> Dataset:
    try:
        return validated(ds)
    except InvalidWorklistEntry as exc:
        raise HL7Error(str(exc), error_code=101) from exc


async def _new(worklist: Worklist, ds: Dataset) -> Action:
    """NW: a new order -> a new SCHEDULED entry; an open order with the same number is a duplicate."""
    ds = _checked(ds)
    duplicates = await _existing(worklist, ds) if _order_key(ds) else []
    if duplicates:
        raise HL7Error(f"order {_order_key(ds)} is already on the worklist; send XO to change it or CA to "
                       "cancel it", error_code=205, location="OBR-18")

    async def run(wl: Worklist) -> str:
        entry = await wl.add(ds)
        return f"order {_order_key(ds) or entry.id} scheduled as worklist entry {entry.id}"

    return run


async def _cancel(worklist: Worklist, ds: Dataset) -> Action:
    """CA / DC / OC: the open entries of the order become CANCELLED (they leave the modality's list)."""
    entries = await _existing(worklist, ds)
    if not entries:
        raise HL7Error(f"no open worklist entry for order {_order_key(ds) or '(no number)'} to cancel",
                       error_code=204, location="OBR-18")

    async def run(wl: Worklist) -> str:
        for entry in entries:
            await wl.set_status(entry.id, CANCELLED)
        return f"order {_order_key(ds)} cancelled ({len(entries)} worklist entr{'y' if len(entries) == 1 else 'ies'})"

    return run


async def _change(worklist: Worklist, ds: Dataset) -> Action:
    """XO: the order's open entry gets the changed order, in place (one writer transaction: its id,
    status and MPPS link stay; Study Instance UID kept when not sent).

    An XO for an order that is not open on the worklist is refused (AE, 204 Unknown key):
    HL7 Table 0119 XO changes an existing order, and taking it as new would resurrect
    a cancelled order or schedule one from a partial change. Several open entries with
    the order's number are told apart by the Requested Procedure ID (OBR-19 / IPC-2).
    """
    entries = await _existing(worklist, ds)
    if not entries:
        raise HL7Error(f"no open worklist entry for order {_order_key(ds) or '(no number)'} to change; "
                       "send NW for a new order", error_code=204, location="OBR-18")
    procedure = str(ds.get("RequestedProcedureID", "") or "")
    if len(entries) > 1 and procedure:
        entries = [e for e in entries if str(e.dataset.get("RequestedProcedureID", "") or "") == procedure] or entries
    if len(entries) > 1:
        raise HL7Error(f"order {_order_key(ds)} has {len(entries)} open worklist entries "
                       f"({', '.join(str(e.id) for e in entries)}) and the XO does not say which one it changes "
                       "(OBR-19 Requested Procedure ID)", error_code=205, location="OBR-19")
    target = entries[0]
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = str(target.dataset.get("StudyInstanceUID", "") or "")
    ds = _checked(ds)

    async def run(wl: Worklist) -> str:
        try:
            await wl.update(target.id, ds, states=OPEN_STATES)
        except WorklistEntryChanged as exc:
            raise HL7Error(f"order {_order_key(ds)} was not changed: {exc}", error_code=204,
                           location="ORC-1") from exc
        return f"order {_order_key(ds)} changed (worklist entry {target.id})"

    return run


Planner = Callable[[Worklist, Dataset], Awaitable[Action]]

# HL7 Table 0119 Order Control codes an order receiver acts on
ORDER_CONTROL: Final[dict[str, Planner]] = {
    "NW": _new,      # new order
    "CA": _cancel,   # cancel order request
    "DC": _cancel,   # discontinue order request
    "OC": _cancel,   # order cancelled (by the filler)
    "XO": _change,   # change order request
}


def check_type(message: Message) -> None:
    """MSH-9 must be ORM^O01 or OMG^O19 (AR otherwise)."""
    kind, event = message.message_type
    if (kind, event) in ORDER_MESSAGES:
        return
    taken = " or ".join(f"{k}^{e}" for k, e in sorted(ORDER_MESSAGES))
    if kind in {k for k, _ in ORDER_MESSAGES}:
        raise HL7Error(f"{kind}^{event} is not an order event minipacs takes (only {taken})",
                       ack_code=REJECT, error_code=201, location="MSH-9")
    raise HL7Error(f"message type {kind or '(empty)'}^{event} is not supported: minipacs takes {taken} orders",
                   ack_code=REJECT, error_code=200, location="MSH-9")


async def apply(message: Message, worklist: Worklist) -> str:
    """Apply every order of ``message`` to the worklist; the text for MSA-3, or HL7Error.

    All groups are mapped and checked first; only then is anything written.
    """
    check_type(message)
    patient, groups = _groups(message)
    if "PID" not in patient:
        raise HL7Error("the message has no PID segment (patient identification)", error_code=100, location="PID")
    if not groups:
        raise HL7Error("the message has no ORC segment (common order)", error_code=100, location="ORC")
    plans: list[Action] = []
    for group in groups:
        if group.get("OBR") is None:
            raise HL7Error("an ORC segment without its OBR (observation request)", error_code=100, location="OBR")
        control = message.value(group.get("ORC"), 1).upper()
        planner = ORDER_CONTROL.get(control)
        if planner is None:
            raise HL7Error(f"ORC-1 order control {control or '(empty)'!r} is not supported; minipacs takes "
                           f"{', '.join(ORDER_CONTROL)}", error_code=103, location="ORC-1")
        plans.append(await planner(worklist, to_dataset(message, patient, group)))
    return "; ".join([await plan(worklist) for plan in plans])


__all__ = ["FIELD_MAP", "ORDER_CONTROL", "ORDER_MESSAGES", "FieldMap", "apply", "check_type", "to_dataset"]
