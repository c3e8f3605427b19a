"""HL7 v2 orders -> core orders on the Modality Worklist (IHE RAD TF-2 RAD-4 / RAD-13, Appendix B).

ORM^O01 (HL7 v2.3.1), OMI^O23 and OMG^O19 (v2.5.1) orders are read through ONE mapping
table (``FIELD_MAP``: HL7 field -> DICOM keyword, after IHE RAD TF-2 Table B-1)
into core orders (core/orders.py), by ORC-1 Order Control (``ORDER_CONTROL``, HL7
Table 0119). Every order group of the message is mapped before anything is written, and the
core applies them in one transaction, so a refused message changes nothing. The core's
refusals become HL7 acknowledgement codes here (``REFUSALS``); :func:`handle` turns
one message's bytes into its ACK's bytes. Never speaks MLLP (hl7/mllp.py does).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from minipacs.core.orders import (
    AmbiguousOrder,
    DuplicateOrder,
    InvalidOrder,
    Order,
    OrderChanged,
    OrderControl,
    OrderRefused,
    UnknownOrder,
    apply_orders,
)
from minipacs.core.worklist import Worklist
from minipacs.hl7.ack import build_ack, encode_ack
from minipacs.hl7.errors import ACCEPT, ERROR, REJECT, HL7Error
from minipacs.hl7.message import Message, Segment, parse, parse_bytes

log = logging.getLogger("minipacs.hl7")

#: Message types taken (MSH-9.1, MSH-9.2).
#: ORM^O01: IHE RAD-4 / RAD-13 in HL7 v2.3.1; OMI^O23 (imaging order): RAD-4 / RAD-13 in the HL7 v2.5.1
#: option (IHE RAD TF-2 4.4, 4.13), what an Order Filler sends an Image Manager; OMG^O19 (general order):
#: RAD-2 / RAD-3, taken too for senders that use it. One mapping for all (``FIELD_MAP``).
ORDER_MESSAGES: Final = frozenset({("ORM", "O01"), ("OMG", "O19"), ("OMI", "O23")})

#: Where a value goes: the top-level dataset, the Scheduled Procedure Step item, the
#: Requested Procedure Code Sequence item.
TOP, SPS, CODE = "top", "sps", "code"
#: Not a level: where ``_mapped`` notes the field each value came from.
SOURCE: Final = "source"


@dataclass(frozen=True)
class FieldMap:
    """One row: DICOM ``keyword`` (at ``level``) from the first non-empty ``sources``.

    A source is ``SEG-field`` or ``SEG-field.component``; ``kind`` says how the HL7
    value becomes a DICOM value: ST text, PN an XPN/XCN name, NDL a name in
    subcomponents (OBR-34), DA / TM the date / time part of a TS as sent, LDA / LTM the same in the
    archive's local time (a TS with an offset is converted), SEX Table 0001, PRIORITY the TQ priority.
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
    FieldMap("ScheduledProcedureStepStartDate", ("TQ1-7.1", "OBR-27.4", "ORC-7.4"), "LDA", SPS),
    FieldMap("ScheduledProcedureStepStartTime", ("TQ1-7.1", "OBR-27.4", "ORC-7.4"), "LTM", SPS),
    FieldMap("ScheduledProcedureStepID", ("OBR-20.1", "IPC-4.1"), level=SPS),
    FieldMap("ScheduledProcedureStepDescription", ("OBR-4.5", "OBR-4.2"), level=SPS),
    FieldMap("ScheduledPerformingPhysicianName", ("OBR-34",), "NDL", SPS),
)

#: HL7 Table 0001 Administrative Sex -> DICOM (0010,0040).
SEX: Final = {"M": "M", "F": "F", "O": "O", "U": "O", "A": "O", "N": "O"}
#: HL7 TQ priority -> DICOM Requested Procedure Priority (0040,1003).
PRIORITY: Final = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "MEDIUM", "C": "MEDIUM", "T": "MEDIUM"}

_SOURCE = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?$")
#: HL7 v2.5 2A.3.22 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ] (a time only after a whole date).
_TS = re.compile(r"^(\d{8}|\d{6}|\d{4})(\d{6}|\d{4}|\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


@dataclass
class OrderGroup:
    """The segments of one order (ORC and what follows it up to the next ORC); ``steps`` its IPC
    segments, one per Scheduled Procedure Step (OMI^O23 / OMG^O19: OBR {IPC})."""

    segments: dict[str, Segment] = field(default_factory=dict)
    steps: list[Segment] = field(default_factory=list)

    def get(self, name: str) -> Segment | None:
        return self.segments.get(name)


def _groups(message: Message) -> tuple[dict[str, Segment], list[OrderGroup]]:
    """Patient-level segments (the first of each) and one group per ORC (HL7 v2.5 4.4.1 / 4.4.6)."""
    patient: dict[str, Segment] = {}
    groups: list[OrderGroup] = []
    for seg in message.segments[1:]:
        if seg.name == "ORC":
            groups.append(OrderGroup({"ORC": seg}))
        elif groups and seg.name == "IPC":
            groups[-1].steps.append(seg)
            groups[-1].segments.setdefault("IPC", seg)
        elif groups and seg.name == "OBR" and "OBR" in groups[-1].segments:
            raise HL7Error(
                "an ORC segment with two OBR segments: each requested procedure is an order of its own, "
                "ORC then OBR (HL7 v2.5 4.4.1 ORM^O01, 4.4.6 OMI^O23); the second would be lost",
                error_code=100,
                location="OBR",
            )
        elif groups and seg.name in ("OBR", "TQ1", "IPC", "ZDS") and seg.name not in groups[-1].segments:
            groups[-1].segments[seg.name] = seg
        elif not groups and seg.name in ("OBR", "TQ1", "IPC", "ZDS"):
            raise HL7Error(
                f"{seg.name} segment before any ORC segment (each order starts with ORC)",
                error_code=100,
                location=seg.name,
            )
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
        offset = 1 if match.group(1) in ("PV1", "OBR", "ORC") else 0
        return person_name(message, message.repetitions(segment, number), offset)
    if kind == "NDL":  # OBR-34: CNN in subcomponents ID&family&given
        family, given = (message.value(segment, number, 1, n) for n in (2, 3))
        return "^".join((family, given)).rstrip("^")
    return message.value(segment, number, component)


#: XPN.8 / XCN.15 Name Representation Code (HL7 Table 4000) -> the DICOM PN component group it fills
#: (PS3.5 6.2.1: alphabetic, ideographic, phonetic).
NAME_REPRESENTATION: Final = {"A": 0, "I": 1, "P": 2}


def name_repetitions(message: Message, reps: list[str], offset: int) -> list[str]:
    """The repetitions of an XPN (``offset`` 0) or XCN (1) field that make the DICOM name, in group order.

    HL7 v2.5 2A.3.90 (XPN, internationalization note): a name is repeated once per representation,
    each repetition marked by its Name Representation Code (XPN.8, XCN.15; Table 4000: A alphabetic,
    I ideographic, P phonetic), as Japanese, Korean and Chinese order placers send it. When a
    repetition says I or P, the repetitions fill the DICOM name's component groups (the first
    repetition without a code counts as the alphabetic one); otherwise the first repetition alone is
    the name, as before (later ones are other names, e.g. a maiden name). The result has one entry
    per group, "" for an empty one."""
    if not reps:
        return [""]
    code_at = 8 if offset == 0 else 15
    codes = [message.component(rep, code_at).upper() for rep in reps]
    if not any(code in ("I", "P") for code in codes):
        return [reps[0]]
    groups = ["", "", ""]
    for rep, code in zip(reps, codes, strict=True):
        index = NAME_REPRESENTATION.get(code, 0 if not code and not groups[0] else -1)
        if index >= 0 and not groups[index]:
            groups[index] = rep
    return groups


def person_name(message: Message, reps: list[str], offset: int) -> str:
    """The DICOM PN value of an XPN or XCN field (:func:`name_repetitions`): family^given^middle^
    prefix^suffix per group, groups joined by "=", trailing empty parts dropped (PS3.5 6.2.1)."""
    groups = []
    for rep in name_repetitions(message, reps, offset):
        family, given, middle, suffix, prefix = (message.component(rep, offset + n) for n in range(1, 6))
        groups.append("^".join((family, given, middle, prefix, suffix)).rstrip("^"))
    return "=".join(groups).rstrip("=")


def _local(date: str, time: str, offset: str) -> tuple[str, str]:
    """(date, time) of a TS with a UTC offset in the archive's local time zone, the time at the
    precision it was sent: a modality shows, and a worklist query for "today" matches, the Scheduled
    Procedure Step's start as the local wall clock; DA and TM carry no offset (PS3.5 6.2)."""
    sign = 1 if offset[0] == "+" else -1
    zone = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    digits = time.ljust(6, "0")
    moment = dt.datetime(
        int(date[:4]), int(date[4:6]), int(date[6:8]), int(digits[:2]), int(digits[2:4]), int(digits[4:6]), tzinfo=zone
    ).astimezone()
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")[: len(time)]


def _calendar(date: str, time: str) -> bool:
    """Whether a whole date (and the time sent with it) is one on the calendar and the clock: no 30
    February, no hour 25, which DICOM DA / TM forbid as well (PS3.5 6.2)."""
    digits = time.ljust(6, "0")
    try:
        dt.datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        return False
    return True


def _convert(text: str, kind: str, source: str, keyword: str = "") -> str:
    if kind in ("DA", "TM", "LDA", "LTM"):
        match = _TS.match(text)
        wrong = match is None
        if match is not None and len(match.group(1)) == 8 and not _calendar(match.group(1), match.group(2) or ""):
            raise HL7Error(
                f"{source} {text!r} is not a calendar date and time" + (f" for {keyword}" if keyword else ""),
                error_code=102,
                location=source.partition(".")[0],
            )
        if match is not None and match.group(2) and kind in ("LDA", "LTM") and match.group(4):
            try:
                date, time = _local(match.group(1), match.group(2), match.group(4))
            except ValueError:  # an offset of a day or more (+2500), or past year 9999
                wrong = True
            else:
                return date if kind == "LDA" else time
        if wrong or match is None:
            raise HL7Error(
                f"{source} {text!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+/-ZZZZ])"
                + (f" for {keyword}" if keyword else ""),
                error_code=102,
                location=source.partition(".")[0],
            )
        if kind in ("DA", "LDA"):  # a year or a month alone (a birth date known that far) is no DICOM DA: unknown
            return match.group(1) if len(match.group(1)) == 8 else ""
        return match.group(2) or ""
    if kind == "SEX":
        return SEX.get(text.upper()[:1], "O")
    if kind == "PRIORITY":
        return PRIORITY.get(text.upper()[:1], "")
    return text


# PS3.5 §6.1.2.3 / §6.2: the only control characters a string value may hold are ESC (code
# extensions, ISO 2022) and, in the text VRs, LF, FF, CR and TAB (line formatting).
_TEXT_VRS: Final = frozenset({"ST", "LT", "UT"})
_LINE_FORMATTING: Final = re.compile(r"[\t\n\f\r]+")


def _checked(keyword: str, value: str, source: str) -> str:
    """``value`` fit for ``keyword``'s VR (PS3.5 §6.2): line formatting (\\.br\\, CR, LF, FF, TAB)
    is kept in a text VR and becomes one space in any other; any other control character (NUL,
    VT, ESC, DEL, C1 ...) refuses the order (AE 102), naming the field: it can only come from an
    escape like \\X00\\ or \\X0B\\, and a modality must never receive it. ESC is refused too:
    worklist entries never declare ISO 2022 code extensions, the only place PS3.5 allows it."""
    vr = dictionary_VR(keyword)
    if vr not in _TEXT_VRS:
        value = _LINE_FORMATTING.sub(" ", value).strip(" ")
        if "\\" in value:
            raise HL7Error(
                f"{source} holds a backslash, which separates values in {keyword} ({vr}, PS3.5 6.4): the one "
                "value would become several; the sender must leave it out (an escape such as \\E\\ produces it)",
                error_code=102,
                location=source.partition(".")[0],
            )
    for char in value:
        code = ord(char)
        if (code < 0x20 and char not in "\t\n\f\r") or 0x7F <= code <= 0x9F:
            raise HL7Error(
                f"{source} holds the control character U+{code:04X}, which DICOM does not allow in "
                f"{keyword} ({vr}, PS3.5 6.2); the sender must leave it out (an escape such as "
                f"\\X{code:02X}\\ produces it)",
                error_code=102,
                location=source.partition(".")[0],
            )
    return value


def _mapped(
    message: Message, patient: dict[str, Segment], group: OrderGroup, levels: tuple[str, ...], step: Segment | None
) -> dict[str, dict[str, str]]:
    """FIELD_MAP's rows of ``levels`` read from the group (IPC: ``step``) and the patient segments.

    An IPC source is read before the others: only OMI^O23 / OMG^O19 have IPC, and there OBR-18 / 19 / 20
    are the placer's and filler's own fields and OBR-24 a diagnostic service section ("RAD"), while
    IHE RAD TF-2 4.4 puts the accession, the procedure and step IDs, the Study Instance UID and the
    modality in IPC, each step's own. ORM^O01 has no IPC: its OBR fields are read as listed."""
    found: dict[str, dict[str, str]] = {level: {} for level in levels}
    found[SOURCE] = {}  # keyword -> the field its value came from (the ERR location of a refusal)
    for row in FIELD_MAP:
        if row.level not in levels:
            continue
        for source in sorted(row.sources, key=lambda s: not s.startswith("IPC")):
            name = source[:3]
            segment = step if name == "IPC" else group.get(name) or patient.get(name)
            raw = _value(message, segment, source, row.kind)
            if raw:
                value = _checked(row.keyword, _convert(raw, row.kind, source, row.keyword), source)
                if value:
                    found[row.level][row.keyword] = value
                    found[SOURCE][row.keyword] = source
                break
    return found


def to_datasets(message: Message, patient: dict[str, Segment], group: OrderGroup) -> list[Dataset]:
    """One order group -> its worklist entries, one per Scheduled Procedure Step: each IPC segment of
    the group is a step of its own (HL7 v2.5 4.4.8 OMI^O23, IHE RAD TF-2 4.4: one IPC per step), and a
    worklist item focuses on one step (PS3.4 K.6.1.2.1: one C-FIND response per step). With several
    steps each must name its Scheduled Procedure Step ID (IPC-4), by which they are told apart."""
    if len(group.steps) > 1:
        for n, step in enumerate(group.steps, 1):
            if not message.value(step, 4):
                raise HL7Error(
                    f"IPC segment {n} of the order has no Scheduled Procedure Step ID (IPC-4); an order with "
                    "several steps names each",
                    error_code=101,
                    location="IPC-4",
                )
    steps: list[Segment | None] = list(group.steps) or [None]
    return [to_dataset(message, patient, group, step) for step in steps]


def to_dataset(
    message: Message, patient: dict[str, Segment], group: OrderGroup, step: Segment | None = None
) -> Dataset:
    """One order group -> a worklist dataset, through FIELD_MAP, with the Scheduled Procedure Step of
    IPC segment ``step`` (default: the group's first); raises HL7Error."""
    if step is None and group.steps:
        step = group.steps[0]
    found = _mapped(message, patient, group, (TOP, SPS, CODE), step)
    if not found[TOP].get("PatientID"):
        raise HL7Error(
            "PID-3 Patient Identifier List is empty: a worklist entry needs the patient ID",
            error_code=101,
            location="PID-3",
        )
    if not found[SPS].get("Modality"):
        raise HL7Error(
            "the order has no modality (OBR-24 Diagnostic Service Section ID, or IPC-5 in OMG^O19); "
            "a worklist entry needs one",
            error_code=101,
            location="OBR-24",
        )
    ds = Dataset()
    charset = _specific_character_set(message, [v for k, level in found.items() if k != SOURCE for v in level.values()])
    if charset:
        ds.SpecificCharacterSet = charset
    _set_all(ds, found[TOP], found[SOURCE])
    if found[CODE].get("CodeValue"):
        code = Dataset()
        _set_all(code, found[CODE], found[SOURCE])
        ds.RequestedProcedureCodeSequence = [code]
    sps = Dataset()
    _set_all(sps, found[SPS], found[SOURCE])
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _specific_character_set(message: Message, values: list[str]) -> str:
    """(0008,0005) of the entry: none for ASCII values, else the DICOM term of the message's
    character set (MSH-18, hl7/message.py CHARSETS) when it holds every value, else ISO_IR 192."""
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


def _set_all(ds: Dataset, values: dict[str, str], sources: dict[str, str]) -> None:
    """Set DICOM attributes; a value its VR cannot hold (too long, bad characters) refuses the message,
    naming the field it came from (``sources``: IPC-1 in an OMI, OBR-18 in an ORM)."""
    for keyword, value in values.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                setattr(ds, keyword, value)
            except (UserWarning, ValueError) as exc:
                source = sources.get(keyword) or next(row.sources[0] for row in FIELD_MAP if row.keyword == keyword)
                raise HL7Error(
                    f"{keyword} from {source} cannot be stored in DICOM: {exc}",
                    error_code=102,
                    location=source.partition(".")[0],
                ) from None


# ------------------------------------------------------------------ order control

# HL7 Table 0119 Order Control codes an order receiver acts on -> what the core does
ORDER_CONTROL: Final[Mapping[str, OrderControl]] = {
    "NW": OrderControl.NEW,  # new order
    "CA": OrderControl.CANCEL,  # cancel order request
    "DC": OrderControl.CANCEL,  # discontinue order request
    "OC": OrderControl.CANCEL,  # order cancelled (by the filler)
    "XO": OrderControl.CHANGE,  # change order request
}


#: HL7 Table 0119 SC (status changed) with ORC-5 Order Status (HL7 Table 0038) -> what the core does: an
#: order the placer or filler reports cancelled or discontinued leaves the worklist as CA / DC do; any other
#: status (SC scheduled, IP in process, CM completed, HD on hold ...) is acknowledged and changes nothing:
#: the worklist entry's progress is the modality's to report (MPPS, IHE RAD-6/7), and XO changes an order.
STATUS_CHANGE: Final[Mapping[str, OrderControl]] = {
    "CA": OrderControl.CANCEL,
    "DC": OrderControl.CANCEL,
}


@dataclass(frozen=True)
class Refusal:
    """How a core refusal is acknowledged: MSA-1 (Table 0008), ERR-3 (Table 0357), ERR-2 (None: the
    HL7 field FIELD_MAP reads the refusal's DICOM keyword from), and what the sender can do next
    (by the order's control, in Table 0119 words)."""

    ack_code: str
    error_code: int
    location: str | None = None
    hints: Mapping[OrderControl, str] = field(default_factory=dict)


# core/orders.py refusals -> HL7 acknowledgement (HL7 v2.5 2.9.2; AE, not AR: the message itself is one we take)
REFUSALS: Final[Mapping[type[OrderRefused], Refusal]] = {
    InvalidOrder: Refusal(ERROR, 101),
    DuplicateOrder: Refusal(ERROR, 205, hints={OrderControl.NEW: "send XO to change it or CA to cancel it"}),
    AmbiguousOrder: Refusal(ERROR, 205, hints={OrderControl.CHANGE: "OBR-19 Requested Procedure ID says which"}),
    UnknownOrder: Refusal(ERROR, 204, hints={OrderControl.CHANGE: "send NW for a new order"}),
    OrderChanged: Refusal(ERROR, 204, location="ORC-1"),
}


def fields_of(keyword: str) -> list[str]:
    """The HL7 fields FIELD_MAP reads ``keyword`` from, like ``['OBR-18', 'IPC-1']``."""
    return [source.partition(".")[0] for row in FIELD_MAP if row.keyword == keyword for source in row.sources]


def refusal(exc: OrderRefused) -> HL7Error:
    """The HL7 error acknowledging a core refusal (``REFUSALS``, most specific class first)."""
    row = next(REFUSALS[cls] for cls in type(exc).__mro__ if cls in REFUSALS)
    fields = fields_of(exc.keyword)
    reason = exc.reason
    if isinstance(exc, InvalidOrder) and fields:
        reason += f" ({' / '.join(fields)})"
    hint = row.hints.get(exc.control)
    if hint:
        reason += f"; {hint}"
    location = row.location if row.location is not None else (fields[0] if fields else "")
    return HL7Error(reason, ack_code=row.ack_code, error_code=row.error_code, location=location)


def check_type(message: Message) -> None:
    """MSH-9 must be ORM^O01 or OMG^O19 (AR otherwise)."""
    kind, event = message.message_type
    if (kind, event) in ORDER_MESSAGES:
        return
    taken = " or ".join(f"{k}^{e}" for k, e in sorted(ORDER_MESSAGES))
    if not kind:
        raise HL7Error(
            f"MSH-9 message type is empty; it is required (HL7 v2.5 2.15.9.9): minipacs takes {taken} orders "
            "and ADT patient updates",
            ack_code=REJECT,
            error_code=101,
            location="MSH-9",
        )
    if kind in {k for k, _ in ORDER_MESSAGES}:
        raise HL7Error(
            f"{kind}^{event} is not an order event minipacs takes (only {taken})",
            ack_code=REJECT,
            error_code=201,
            location="MSH-9",
        )
    raise HL7Error(
        f"message type {kind or '(empty)'}^{event} is not supported: minipacs takes {taken} orders",
        ack_code=REJECT,
        error_code=200,
        location="MSH-9",
    )


def read_orders(message: Message) -> list[Order]:
    """Every order group of ``message`` -> a core order; raises HL7Error (nothing is applied yet)."""
    check_type(message)
    patient, groups = _groups(message)
    if "PID" not in patient:
        raise HL7Error("the message has no PID segment (patient identification)", error_code=100, location="PID")
    if not groups:
        raise HL7Error("the message has no ORC segment (common order)", error_code=100, location="ORC")
    orders: list[Order] = []
    for group in groups:
        if group.get("OBR") is None:
            raise HL7Error("an ORC segment without its OBR (observation request)", error_code=100, location="OBR")
        code = message.value(group.get("ORC"), 1).upper()
        control = ORDER_CONTROL.get(code)
        if code == "SC":
            control = STATUS_CHANGE.get(message.value(group.get("ORC"), 5).upper())
            if control is None:
                to_datasets(message, patient, group)  # its values checked all the same
                continue
        if control is None:
            raise HL7Error(
                f"ORC-1 order control {code or '(empty)'!r} is not supported; minipacs takes "
                f"{', '.join(ORDER_CONTROL)} and SC",
                error_code=103,
                location="ORC-1",
            )
        orders.extend(Order(control, ds) for ds in to_datasets(message, patient, group))
    return orders


async def apply(message: Message, worklist: Worklist) -> str:
    """Apply every order of ``message`` to the worklist; the text for MSA-3, or HL7Error.

    All groups are mapped and checked first; only then is anything written. A failure of
    the archive itself (not a refusal) propagates as it is.
    """
    return await apply_read(read_orders(message), worklist)


async def apply_read(orders: list[Order], worklist: Worklist) -> str:
    """Apply orders :func:`read_orders` read (one transaction); the text for MSA-3, or HL7Error."""
    if not orders:
        return "status change (ORC-1 SC) acknowledged: the worklist is unchanged"
    try:
        return await apply_orders(worklist, orders)
    except OrderRefused as exc:
        raise refusal(exc) from exc


def _for_ack(data: bytes) -> Message | None:
    """A message whose bytes could not be decoded, read as far as an ACK needs (MSH), or None."""
    try:
        return parse(data.decode("latin-1"))
    except HL7Error:
        return None


async def handle(
    data: bytes,
    worklist: Worklist,
    application: str = "MINIPACS",
    apply_message: Callable[[Message], Awaitable[str]] | None = None,
) -> bytes:
    """One message's bytes -> the ACK's bytes, in the message's character set (MSH-18).

    ``apply_message`` applies a parsed message (default: orders to ``worklist``; hl7/adt.py also
    takes ADT patient updates and merges) and returns the text for MSA-3, or raises HL7Error.

    Never raises for a bad message: a refusal is AE/AR with the reason (AR whenever the message
    itself cannot be read: resending the same bytes can never succeed); a failure of the archive
    is AE 207 (the sender should retry later).
    """
    message: Message | None = None
    try:
        try:
            message = parse_bytes(data)
        except HL7Error:
            raise
        except Exception as exc:
            log.exception("HL7 message could not be parsed")
            raise HL7Error(
                f"the message cannot be parsed ({type(exc).__name__}: {exc}); it is refused, "
                "resending it will not help",
                ack_code=REJECT,
                error_code=100,
                location="MSH",
            ) from exc
        text = await (apply(message, worklist) if apply_message is None else apply_message(message))
    except HL7Error as exc:
        if message is None and exc.location in ("MSH-18", "MSH-20"):  # the bytes, not their structure
            message = _for_ack(data)
        log.warning(
            "HL7 message %s refused (%s): %s", message.control_id if message else "(unparsed)", exc.ack_code, exc.reason
        )
        return encode_ack(build_ack(message, exc.ack_code, exc.reason, error=exc, application=application), message)
    except Exception as exc:  # an archive failure: the sender should retry later
        log.exception("HL7 message %s could not be applied", message.control_id if message else "(unparsed)")
        error = HL7Error(
            f"minipacs could not apply the message ({type(exc).__name__}: {exc}); retry later",
            ack_code=ERROR,
            error_code=207,
        )
        return encode_ack(build_ack(message, ERROR, error.reason, error=error, application=application), message)
    log.info("HL7 %s^%s %s accepted: %s", *message.message_type, message.control_id, text)
    return encode_ack(build_ack(message, ACCEPT, text, application=application), message)


class OrderReceiver:
    """The message handler of the MLLP listener (hl7/mllp.py): orders applied to ``worklist``,
    ACKs sent as ``application`` (MSH-3)."""

    def __init__(self, worklist: Worklist, application: str = "MINIPACS") -> None:
        self.worklist = worklist
        self.application = application

    async def __call__(self, data: bytes) -> bytes:
        return await handle(data, self.worklist, self.application)


__all__ = [
    "FIELD_MAP",
    "ORDER_CONTROL",
    "ORDER_MESSAGES",
    "REFUSALS",
    "STATUS_CHANGE",
    "FieldMap",
    "OrderReceiver",
    "Refusal",
    "apply",
    "apply_read",
    "check_type",
    "handle",
    "read_orders",
    "refusal",
    "to_dataset",
    "to_datasets",
]
