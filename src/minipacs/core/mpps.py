"""Modality Performed Procedure Steps: PS3.4 Annex F (F.7 state rules, Table F.7.2-1 attributes).

A step is created IN PROGRESS (N-CREATE) and moved once to COMPLETED or
DISCONTINUED (N-SET); after that it may no longer be updated. Each step is
linked to its worklist entry (Scheduled Step Attributes Sequence: Accession
Number, else Study Instance UID) and keeps the SOP instances its Performed
Series Sequence references. A study is complete when it has a COMPLETED step,
no step still IN PROGRESS, and every instance the completed steps reference is
stored: checked when a step completes and after each ingest of an instance of
a study that waits for it (``Archive.on_stored``). Never speaks DIMSE: refusals
are :class:`StepRefused` subclasses naming the offending attribute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from minipacs.core.changes import ChangeType, change_row, record
from minipacs.core.errors import ArchiveError
from minipacs.core.model import StoreOutcome
from minipacs.core.worklist import CANCELLED, OPEN_STATES, Worklist, WorklistEntry, from_text, to_text
from minipacs.dicom.values import as_date, as_time
from minipacs.index import worklist_repo as repo
from minipacs.index.database import IndexConnection

log = logging.getLogger("minipacs.mpps")

T = TypeVar("T")

IN_PROGRESS: Final = "IN PROGRESS"
COMPLETED: Final = "COMPLETED"
DISCONTINUED: Final = "DISCONTINUED"

# PS3.4 F.7 (and PS3.3 C.4.14 Performed Procedure Step Status enumerated values):
# state -> states an N-SET may move it to. COMPLETED and DISCONTINUED are final.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    IN_PROGRESS: frozenset({IN_PROGRESS, COMPLETED, DISCONTINUED}),
    COMPLETED: frozenset(),
    DISCONTINUED: frozenset(),
}

# PS3.4 Table F.7.2-1, N-CREATE usage 1 (SCU shall send, with a value).
CREATE_TYPE1: Final = (
    "ScheduledStepAttributesSequence",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
    "PerformedProcedureStepID",
)
# PS3.4 Table F.7.2-1, N-CREATE usage 1 inside each Scheduled Step Attributes Sequence item.
CREATE_ITEM_TYPE1: Final = ("StudyInstanceUID",)
# PS3.4 Table F.7.2-1, N-CREATE usage 2 (SCU shall send, maybe empty). Tolerated when absent
# (many modalities leave some out); the log says which were missing.
CREATE_TYPE2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "ProcedureCodeSequence",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription",
    "PerformedLocation",
    "StudyID",
    "PerformedSeriesSequence",
)
# PS3.4 Table F.7.2-1, N-SET usage "Not allowed": fixed once the step is created.
SET_NOT_ALLOWED: Final = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID",
        "Modality",
        "StudyID",
    }
)
#: PS3.3 C.4.14: where the instances a step produced are listed, inside each Performed Series item.
REFERENCE_SEQUENCES: Final = ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence")
#: PS3.4 F.7.2.2.2 / Table F.7.2-1 column "Final State" (note 1): Type 1 once an N-SET makes the step
#: COMPLETED or DISCONTINUED, checked on the stored step merged with the N-SET. The Performed Series
#: Sequence needs an item (note 2); the Discontinuation Reason Code Sequence stays optional (3/3).
FINAL_TYPE1: Final = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "PerformedSeriesSequence")
#: PS3.4 Table F.7.2-1: Type 1 in each Performed Series Sequence item (N-CREATE, N-SET and final state).
SERIES_ITEM_TYPE1: Final = ("SeriesInstanceUID", "ProtocolName")
#: PS3.4 Table F.7.2-1: Type 1 in each item of the Referenced Image / Non-Image Composite sequences.
REFERENCE_ITEM_TYPE1: Final = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")


class IndexAccess(Protocol):
    async def write(self, call: Callable[[IndexConnection], T]) -> T: ...

    async def read(self, call: Callable[[IndexConnection], T]) -> T: ...


class StepRefused(ArchiveError):
    """An N-CREATE / N-SET the archive refuses; ``keyword`` names the offending attribute, if any."""

    def __init__(self, message: str, keyword: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword

    @property
    def tag(self) -> int | None:
        return tag_for_keyword(self.keyword) if self.keyword else None


class MissingAttribute(StepRefused):
    """A Type 1 attribute is absent."""


class MissingAttributeValue(StepRefused):
    """A Type 1 attribute is present but empty."""


class InvalidAttributeValue(StepRefused):
    """A value the standard does not allow here (a status other than IN PROGRESS on create...)."""


class AttributeNotSettable(StepRefused):
    """N-SET of an attribute Table F.7.2-1 marks "Not allowed" for N-SET."""


class DuplicateStep(StepRefused):
    """N-CREATE of a SOP Instance UID that already exists."""


class NoSuchStep(StepRefused):
    """N-SET of a SOP Instance UID we never created."""


class StepClosed(StepRefused):
    """N-SET of a COMPLETED or DISCONTINUED step (PS3.4 F.7.2.2)."""


@dataclass(frozen=True)
class Step:
    sop_instance_uid: str
    status: str
    study_instance_uid: str
    accession_number: str
    worklist_pk: int | None
    referenced: tuple[str, ...]
    dataset: Dataset


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _has_value(ds: Dataset, keyword: str) -> bool:
    value = ds.get(keyword)
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return len(value) > 0
    return str(value).strip() != ""


def validate_create(ds: Dataset) -> list[str]:
    """PS3.4 F.7.2.1: Type 1 attributes and the initial status; returns the Type 2 keywords missing."""
    for keyword in CREATE_TYPE1:
        if keyword not in ds:
            raise MissingAttribute(f"N-CREATE lacks {keyword}, which PS3.4 Table F.7.2-1 requires", keyword)
        if not _has_value(ds, keyword):
            raise MissingAttributeValue(f"N-CREATE has {keyword} empty; PS3.4 Table F.7.2-1 requires a value", keyword)
    for n, item in enumerate(ds.ScheduledStepAttributesSequence):
        for keyword in CREATE_ITEM_TYPE1:
            if keyword not in item:
                raise MissingAttribute(f"Scheduled Step Attributes Sequence item {n + 1} lacks {keyword}", keyword)
            if not _text(item, keyword):
                raise MissingAttributeValue(
                    f"Scheduled Step Attributes Sequence item {n + 1} has {keyword} empty; PS3.4 Table F.7.2-1 "
                    "requires a value",
                    keyword,
                )
    _check_date(ds, "PerformedProcedureStepStartDate")  # Type 1: a value, and one of its VR (PS3.5 6.2)
    _check_time(ds, "PerformedProcedureStepStartTime")
    status = _text(ds, "PerformedProcedureStepStatus")
    if status != IN_PROGRESS:
        raise InvalidAttributeValue(
            f"Performed Procedure Step Status is {status!r}; a step is created IN PROGRESS (PS3.4 F.7.2.1)",
            "PerformedProcedureStepStatus",
        )
    return [keyword for keyword in CREATE_TYPE2 if keyword not in ds]


def validate_set(current: str, changes: Dataset, stored: Dataset | None = None) -> str:
    """PS3.4 F.7.2.2 and F.7 state rules; returns the status after the N-SET.

    ``stored`` is the step as it is; when the N-SET makes it COMPLETED or DISCONTINUED,
    the step merged with ``changes`` must meet the final state (:func:`validate_final`).
    """
    if not TRANSITIONS.get(current):
        raise StepClosed(f"Performed Procedure Step Object may no longer be updated: it is {current}")
    for elem in changes:
        keyword = keyword_for_tag(elem.tag)
        if keyword in SET_NOT_ALLOWED and not _unchanged(stored, elem):
            raise AttributeNotSettable(f"{keyword} cannot be changed by N-SET (PS3.4 Table F.7.2-1)", keyword)
    new = _text(changes, "PerformedProcedureStepStatus") if "PerformedProcedureStepStatus" in changes else current
    if new not in TRANSITIONS[current]:
        raise InvalidAttributeValue(
            f"Performed Procedure Step Status {new!r} is not allowed after {current} "
            f"(one of {', '.join(sorted(TRANSITIONS[current]))})",
            "PerformedProcedureStepStatus",
        )
    if "PerformedSeriesSequence" in changes:
        _validate_series(changes, "N-SET")
    if not TRANSITIONS[new]:
        validate_final(_merged(stored, changes), new)
    return new


def _unchanged(stored: Dataset | None, elem: DataElement) -> bool:
    """Whether ``elem`` of an N-SET repeats the step's value (compared in the PS3.18 JSON form, which
    does not care whether a name arrived as text or a PersonName, or an empty value as "" or None).
    Table F.7.2-1's "Not allowed" attributes cannot be changed; a modality that sends its whole step
    again in the N-SET that completes it changes nothing, and is not refused for it."""
    if stored is None or elem.tag not in stored:
        return False
    try:
        return bool(Dataset({elem.tag: stored[elem.tag]}).to_json_dict() == Dataset({elem.tag: elem}).to_json_dict())
    except (TypeError, ValueError):  # a value pydicom cannot write as JSON: not provably the same
        return False


def validate_final(ds: Dataset, status: str) -> None:
    """PS3.4 F.7.2.2.2: what a step must carry when it becomes COMPLETED or DISCONTINUED.

    The "Final State" column of Table F.7.2-1: End Date and End Time, and a Performed
    Series Sequence with at least one item (note 2), each item with its Type 1
    attributes. N-SET has no "Missing Attribute" status (PS3.7 10.1.3.1.9), so absent
    and empty alike are 0x0121 Missing Attribute Value; a malformed value is 0x0106.
    """
    for keyword in FINAL_TYPE1:
        if not _has_value(ds, keyword):
            how = "is empty" if keyword in ds else "is missing"
            raise MissingAttributeValue(
                f"{keyword} {how}: a step becomes {status} only with it (PS3.4 Table F.7.2-1, Final State); "
                "send it in this N-SET",
                keyword,
            )
    _check_date(ds, "PerformedProcedureStepEndDate")
    _check_time(ds, "PerformedProcedureStepEndTime")
    _validate_series(ds, status)


def _validate_series(ds: Dataset, when: str) -> None:
    """PS3.4 Table F.7.2-1: the Type 1 attributes inside the Performed Series Sequence items."""
    for n, series in enumerate(ds.get("PerformedSeriesSequence") or [], 1):
        for keyword in SERIES_ITEM_TYPE1:
            if not _text(series, keyword):
                raise MissingAttributeValue(
                    f"{keyword} is missing in Performed Series Sequence item {n} ({when}); PS3.4 Table F.7.2-1 "
                    "requires it (Type 1)",
                    keyword,
                )
        for name in REFERENCE_SEQUENCES:
            for m, ref in enumerate(series.get(name) or [], 1):
                for keyword in REFERENCE_ITEM_TYPE1:
                    if not _text(ref, keyword):
                        raise MissingAttributeValue(
                            f"{keyword} is missing in Performed Series Sequence item {n}, {name} item {m} "
                            f"({when}); PS3.4 Table F.7.2-1 requires it (Type 1)",
                            keyword,
                        )


def _check_date(ds: Dataset, keyword: str) -> None:
    value = _text(ds, keyword)
    if as_date(value, strict=True) is None:
        raise InvalidAttributeValue(f"{keyword} {value!r} is not a date (DA: YYYYMMDD, PS3.5 Table 6.2-1)", keyword)


def _check_time(ds: Dataset, keyword: str) -> None:
    value = _text(ds, keyword)
    if as_time(value, strict=True) is None:
        raise InvalidAttributeValue(
            f"{keyword} {value!r} is not a time (TM: HHMMSS.FFFFFF, PS3.5 Table 6.2-1)", keyword
        )


def _merged(stored: Dataset | None, changes: Dataset) -> Dataset:
    """The step as the N-SET would leave it (PS3.7 10.1.3), without touching ``stored``."""
    merged = Dataset()
    for elem in stored or ():
        merged[elem.tag] = elem
    for elem in changes:
        merged[elem.tag] = elem
    return merged


def referenced_instances(ds: Dataset) -> list[str]:
    """SOP Instance UIDs in PerformedSeriesSequence > Referenced Image / Non-Image Composite sequences."""
    found: list[str] = []
    for series in ds.get("PerformedSeriesSequence") or []:
        for name in REFERENCE_SEQUENCES:
            for ref in series.get(name) or []:
                uid = _text(ref, "ReferencedSOPInstanceUID")
                if uid:
                    found.append(uid)
    return list(dict.fromkeys(found))


def _scheduled(ds: Dataset) -> tuple[str, str]:
    """(Study Instance UID, Accession Number) of the first Scheduled Step Attributes item that has them."""
    study = accession = ""
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        study = study or _text(item, "StudyInstanceUID")
        accession = accession or _text(item, "AccessionNumber")
    return study, accession


def _fit(entry: WorklistEntry, *, item: Dataset) -> tuple[bool, bool, bool]:
    """How well worklist ``entry`` fits Scheduled Step Attributes ``item``: open, same Requested
    Procedure ID, same Scheduled Procedure Step ID (an ID the item leaves empty fits any entry)."""
    procedure, step_id = _text(item, "RequestedProcedureID"), _text(item, "ScheduledProcedureStepID")
    steps = entry.dataset.get("ScheduledProcedureStepSequence") or []
    return (
        entry.status in OPEN_STATES,
        not procedure or _text(entry.dataset, "RequestedProcedureID") == procedure,
        not step_id or any(_text(sps, "ScheduledProcedureStepID") == step_id for sps in steps),
    )


def _scheduled_entries(conn: IndexConnection, ds: Dataset, states: tuple[str, ...]) -> list[int]:
    """The worklist entries the step performs, one per Scheduled Step Attributes item (PS3.3 C.4.13;
    several items: the IHE group case, one step performing several requested procedures), in the
    writer's transaction: by the item's Accession Number, else its Study Instance UID; among several
    entries (requested procedures or steps of one order, a cancelled order scheduled again) the one with
    the item's Requested Procedure ID and Scheduled Procedure Step ID. Only entries in ``states``: a
    step never brings a CANCELLED or done entry back onto the modality's list."""
    found: list[int] = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        accession, study = _text(item, "AccessionNumber"), _text(item, "StudyInstanceUID")
        rows = repo.worklist_rows(conn, {"accession_number": accession}, states) if accession else []
        if not rows and study:
            rows = repo.worklist_rows(conn, {"study_instance_uid": study}, states)
        if rows:
            entries = [WorklistEntry(int(r["id"]), str(r["status"]), from_text(str(r["dataset"]))) for r in rows]
            best = max(entries, key=functools.partial(_fit, item=item))  # the first (oldest) of equals
            if best.id not in found:
                found.append(best.id)
    return found


def _follow(conn: IndexConnection, worklist_pk: int, status: str, study_uid: str = "") -> None:
    """The linked worklist entry takes the step's new status, in the step's own transaction, unless the
    order was cancelled meanwhile (hl7/orders.py CA): a cancelled entry stays off the modality's list,
    and the step keeps the record of what was done. With several steps for the entry (PS3.4 F.1: the
    performed steps need not map one to one to the scheduled ones; ``study_uid`` finds them, the step
    written already), :func:`_entry_state` of all of them."""
    row = repo.worklist_row(conn, worklist_pk)
    if row is None or str(row["status"]) == CANCELLED:
        return
    steps = repo.mpps_statuses_of_entry(conn, worklist_pk, study_uid) if study_uid else []
    repo.set_worklist_status(conn, worklist_pk, _entry_state([*steps, status]))


def _entry_state(steps: list[str]) -> str:
    """The state of a worklist entry performed by steps in these states: IN PROGRESS while one is (the
    modality is still acquiring for it), else COMPLETED if one completed (a step discontinued and done
    again, or a part of the exam given up, leaves the rest done), else DISCONTINUED."""
    for state in (IN_PROGRESS, COMPLETED):
        if state in steps:
            return state
    return DISCONTINUED


def _step(row: Mapping[str, Any]) -> Step:
    refs = tuple(r for r in str(row["referenced"] or "").split("\\") if r)
    pk = row["worklist_pk"]
    return Step(
        str(row["sop_instance_uid"]),
        str(row["status"]),
        str(row["study_instance_uid"]),
        str(row["accession_number"]),
        int(pk) if pk is not None else None,
        refs,
        from_text(str(row["dataset"])),
    )


def _merge(stored: Dataset, changes: Dataset) -> Dataset:
    """PS3.7 10.1.3: each attribute of the modification list replaces the stored one (sequences whole).

    PS3.4 F.7.2.2.3: but the N-SET's Specific Character Set does not replace the step's; the step must
    reflect both. The values are kept as Unicode, so when the two differ the step says ISO_IR 192,
    which holds the text of either (an N-CREATE in UTF-8 with a Japanese name, then an N-SET in
    Latin-1, left a step that claimed Latin-1 for its Japanese name)."""
    before = _charsets(stored)
    for elem in changes:
        stored[elem.tag] = elem
    after = _charsets(changes)
    if before and after and before != after:
        stored.SpecificCharacterSet = "ISO_IR 192"
    elif before:
        stored.SpecificCharacterSet = before if len(before) > 1 else before[0]
    return stored


def _charsets(ds: Dataset) -> list[str]:
    """The Specific Character Set (0008,0005) terms of ``ds`` ([] when absent: the default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return []
    terms = [value] if isinstance(value, str) else list(value)
    return [str(t).strip() for t in terms if str(t).strip()] or []


#: Step status an N-SET moves to -> the changes-journal row it writes (core/changes.py).
_STEP_CHANGES: Final[Mapping[str, ChangeType]] = {
    COMPLETED: ChangeType.MPPS_COMPLETED,
    DISCONTINUED: ChangeType.MPPS_DISCONTINUED,
}


def _study_complete(conn: IndexConnection, study_uid: str) -> tuple[str, int] | None:
    """(MPPS UID, instances) that completes ``study_uid`` now, or None. Runs in the writer."""
    steps = [_step(row) for row in repo.mpps_for_study(conn, study_uid)]
    done = [s for s in steps if s.status == COMPLETED]
    if not done or any(s.status == IN_PROGRESS for s in steps):
        return None
    wanted = [uid for s in done for uid in s.referenced]
    if not wanted or len(repo.stored_instances(conn, wanted)) < len(set(wanted)):
        return None
    if not repo.mark_study_complete(conn, study_uid, done[-1].sop_instance_uid):
        return None
    record(conn, [change_row(ChangeType.STUDY_COMPLETE, study_uid, study_uid, dt.datetime.now(dt.UTC))])
    return done[-1].sop_instance_uid, len(set(wanted))


#: How far back :meth:`ProcedureSteps.watch` looks for steps another node completed.
RECHECK_WINDOW: Final = dt.timedelta(days=1)


class ProcedureSteps:
    """MPPS instances in the index: create, set, and the study completion they lead to."""

    def __init__(self, index: IndexAccess, worklist: Worklist) -> None:
        self.index = index
        self.worklist = worklist
        #: Studies with a COMPLETED step whose instances have not all arrived.
        self.waiting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, sop_instance_uid: str) -> Step | None:
        row = await self.index.read(lambda conn: repo.mpps_row(conn, sop_instance_uid))
        return _step(row) if row else None

    async def create(self, sop_instance_uid: str, ds: Dataset) -> Step:
        """PS3.4 F.7.2.1 N-CREATE: validate, link to the worklist entry, store IN PROGRESS."""
        missing = validate_create(ds)
        if missing:
            log.warning(
                "MPPS %s created without %s (Type 2 in PS3.4 Table F.7.2-1; accepted)",
                sop_instance_uid,
                ", ".join(missing),
            )
        study, accession = _scheduled(ds)
        text = to_text(ds)

        def insert(conn: IndexConnection) -> list[int]:
            if repo.mpps_row(conn, sop_instance_uid) is not None:
                raise DuplicateStep(f"MPPS {sop_instance_uid} already exists; N-SET it instead")
            linked = _scheduled_entries(conn, ds, OPEN_STATES)
            values = {
                "sop_instance_uid": sop_instance_uid,
                "status": IN_PROGRESS,
                "study_instance_uid": study[:64],
                "accession_number": accession[:16],
                "worklist_pk": linked[0] if linked else None,
                "referenced": "\\".join(referenced_instances(ds)),
                "dataset": text,
            }
            repo.insert_mpps(conn, values)
            record(conn, [change_row(ChangeType.MPPS_CREATED, sop_instance_uid, study[:64], dt.datetime.now(dt.UTC))])
            for pk in linked:
                _follow(conn, pk, IN_PROGRESS, study[:64])
            return linked

        if not await self.index.write(insert):
            log.info(
                "MPPS %s (study %s, accession %r) matches no worklist entry: an unscheduled procedure",
                sop_instance_uid,
                study,
                accession,
            )
        return await self._require(sop_instance_uid)

    async def set(self, sop_instance_uid: str, changes: Dataset) -> Step:
        """PS3.4 F.7.2.2 N-SET: only an IN PROGRESS step, only settable attributes, F.7 transitions."""

        def update(conn: IndexConnection) -> Step:
            while True:  # PS3.4 F.7: of two N-SETs racing on two nodes, the second sees the first's result
                row = repo.mpps_row(conn, sop_instance_uid)
                if row is None:
                    raise NoSuchStep(f"no MPPS {sop_instance_uid} was created here (N-CREATE it first)")
                step = _step(row)
                status = validate_set(step.status, changes, step.dataset)
                merged = _merge(step.dataset, changes)
                values = {
                    "status": status,
                    "referenced": "\\".join(referenced_instances(merged)),
                    "dataset": to_text(merged),
                }
                if repo.update_mpps(conn, sop_instance_uid, values, was=row):
                    break
            if status != step.status:  # every entry the step performs (IHE group case), as N-CREATE linked them
                linked = _scheduled_entries(conn, step.dataset, (IN_PROGRESS,))
                for pk in dict.fromkeys([*([step.worklist_pk] if step.worklist_pk is not None else []), *linked]):
                    _follow(conn, pk, status, step.study_instance_uid)
            if status != step.status and status in _STEP_CHANGES:
                record(
                    conn,
                    [
                        change_row(
                            _STEP_CHANGES[status], sop_instance_uid, step.study_instance_uid, dt.datetime.now(dt.UTC)
                        )
                    ],
                )
            return _step(repo.mpps_row(conn, sop_instance_uid) or row)

        step = await self.index.write(update)
        if step.status == COMPLETED:
            await self.check_study(step.study_instance_uid)
        elif step.status == DISCONTINUED:
            log.info("MPPS %s DISCONTINUED (study %s)", sop_instance_uid, step.study_instance_uid)
        return step

    async def _require(self, sop_instance_uid: str) -> Step:
        step = await self.get(sop_instance_uid)
        if step is None:  # pragma: no cover - just written
            raise NoSuchStep(f"MPPS {sop_instance_uid} vanished")
        return step

    # ------------------------------------------------------------ study completion

    async def check_study(self, study_uid: str) -> bool:
        """Mark ``study_uid`` complete if it now is; True when this call did it."""
        if not study_uid:
            return False
        done = await self.index.write(lambda conn: _study_complete(conn, study_uid))
        if done is None:
            completed = await self.index.read(lambda conn: repo.completed_studies(conn))
            if study_uid not in completed and study_uid not in self.waiting:
                self.waiting.add(study_uid)
                log.info(
                    "study %s: its procedure step is COMPLETED; waiting for the referenced instances "
                    "to arrive before marking it complete",
                    study_uid,
                )
            elif study_uid in completed:
                self.waiting.discard(study_uid)
            return False
        self.waiting.discard(study_uid)
        mpps_uid, count = done
        log.info(
            "study %s is complete: procedure step %s is COMPLETED and all %d instance(s) it references are stored",
            study_uid,
            mpps_uid,
            count,
        )
        return True

    async def resume(self, since: dt.datetime | None = None) -> None:
        """At start-up (and every ``completion_recheck_seconds`` after, :meth:`watch`): studies with a
        COMPLETED step (changed ``since``) that are not yet complete are checked, and wait for their
        instances."""
        for study in await self.index.read(lambda conn: repo.studies_awaiting_completion(conn, since)):
            await self.check_study(study)

    async def watch(self, interval: float) -> None:
        """Several nodes on one index: a step completed by N-SET on another node, with the instances
        arriving here (or already here), is found within ``interval`` seconds; until then it waits
        in that node's memory only."""
        while True:
            await asyncio.sleep(interval)
            try:  # steps completed in the last day: older ones wait for their instances on this node's
                # own arrivals (and at the next start), so years of never-complete studies cost nothing
                await self.resume(dt.datetime.now(dt.UTC) - RECHECK_WINDOW)
            except ArchiveError as exc:
                log.warning("study completion re-check failed (%s); trying again in %g s", exc, interval)

    def instance_stored(self, outcome: StoreOutcome) -> None:
        """``Archive.on_stored`` listener: a set lookup unless the study is waiting for instances."""
        study = outcome.study_instance_uid
        if study in self.waiting:
            task = asyncio.ensure_future(self._recheck(study))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def studies_uncompleted(self, studies: AbstractSet[str]) -> None:
        """``Archive.on_uncompleted`` listener: a deletion withdrew these studies' completion;
        each is checked again (still complete if the deleted instances were not referenced)."""
        for study in studies:
            log.info("study %s: instances were deleted, so it is no longer marked complete; checking again", study)
            task = asyncio.ensure_future(self._recheck(study))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _recheck(self, study: str) -> None:
        try:
            await self.check_study(study)
        except ArchiveError as exc:
            log.warning("study %s: completion check failed (%s); it is checked again on the next instance", study, exc)

    async def drain(self) -> None:
        """Wait for the completion checks started by ingests (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


__all__ = [
    "COMPLETED",
    "DISCONTINUED",
    "IN_PROGRESS",
    "TRANSITIONS",
    "AttributeNotSettable",
    "DuplicateStep",
    "InvalidAttributeValue",
    "MissingAttribute",
    "MissingAttributeValue",
    "NoSuchStep",
    "ProcedureSteps",
    "Step",
    "StepClosed",
    "StepRefused",
    "referenced_instances",
    "validate_create",
    "validate_final",
    "validate_set",
]
