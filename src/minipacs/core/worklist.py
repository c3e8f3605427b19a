"""Modality Worklist entries and their matching: PS3.4 Annex K (K.6 matching).

Entries are whole datasets (kept as PS3.18 JSON) with a few keys copied into
indexed columns. A worklist query is matched with the ONE matching machinery
of the query engine (core/identifier.py keys, index/matching.py conditions,
``sequence_matches`` for the Scheduled Procedure Step Sequence, PS3.4
C.2.2.2.6); the indexed columns only narrow the candidates first. Never
speaks DIMSE.
"""

from __future__ import annotations

import builtins
import json
import secrets
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pydicom.valuerep import VR, validate_value

from minipacs.core.errors import ArchiveError
from minipacs.core.identifier import Key, key_matches, read_keys
from minipacs.dicom.identifier import element_text
from minipacs.index import worklist_repo as repo
from minipacs.index.database import IndexConnection
from minipacs.index.matching import Matching

T = TypeVar("T")

SPS_SEQUENCE: Final = 0x00400100  # (0040,0100) Scheduled Procedure Step Sequence
#: PS3.4 K.2.2.2: Specific Character Set (0008,0005), Timezone Offset From UTC (0008,0201).
NEVER_MATCHED: Final = frozenset({0x00080005, 0x00080201})
#: PS3.4 Table K.6-1, remark on (0040,0003): Scheduled Procedure Step Start Date and Time, both given
#: as ranges, are ONE period (July 5 to 7 with 10:00 to 18:00: July 5 10:00 until July 7 18:00).
COMBINED_DATE_TIME: Final = {0x00400002: 0x00400003}
#: Entry states: SCHEDULED (new), IN PROGRESS / COMPLETED / DISCONTINUED (MPPS), CANCELLED (order).
SCHEDULED: Final = "SCHEDULED"
CANCELLED: Final = "CANCELLED"
#: States a worklist query answers (done and cancelled steps leave the modality's list).
OPEN_STATES: Final = ("SCHEDULED", "IN PROGRESS")
#: Every entry state; a query that asks for a Scheduled Procedure Step Status by value reads them all.
ALL_STATES: Final = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")
SPS_STATUS: Final = 0x00400020  # (0040,0020) Scheduled Procedure Step Status
#: PS3.3 C.4.10 (0040,0020) Scheduled Procedure Step Status, defined terms: what each entry state
#: answers (the MPPS states of PS3.4 F.7 as dcm4chee-arc maps them; DICOM spells CANCELED with one L).
#: None: a SCHEDULED entry answers the status its order gave it (ARRIVED, READY...), else SCHEDULED.
SPS_STATUS_OF_STATE: Final[dict[str, str | None]] = {
    "SCHEDULED": None,
    "IN PROGRESS": "STARTED",
    "COMPLETED": "COMPLETED",
    "DISCONTINUED": "DISCONTINUED",
    "CANCELLED": "CANCELED",
}
#: Stored statuses a SCHEDULED entry keeps (the steps before it starts); any other is SCHEDULED.
SCHEDULED_SPS_STATUSES: Final = frozenset({"SCHEDULED", "ARRIVED", "READY"})


class IndexAccess(Protocol):
    async def write(self, call: Callable[[IndexConnection], T]) -> T: ...

    async def read(self, call: Callable[[IndexConnection], T]) -> T: ...


class InvalidWorklistEntry(ArchiveError, ValueError):
    """A worklist entry lacks what a modality needs; the message says what."""


class WorklistEntryChanged(ArchiveError):
    """The entry to update is gone, or no longer in a state the caller may update."""


@dataclass(frozen=True)
class WorklistEntry:
    id: int
    status: str
    dataset: Dataset

    @property
    def accession_number(self) -> str:
        return str(self.dataset.get("AccessionNumber", "") or "")

    def summary(self) -> dict[str, str]:
        """The columns `minipacs worklist list` shows."""
        ds = self.dataset
        sps = _first_sps(ds)
        return {
            "id": str(self.id),
            "status": self.status,
            "accession": self.accession_number,
            "patient_id": _value(ds, "PatientID"),
            "patient_name": _value(ds, "PatientName"),
            "modality": _value(sps, "Modality"),
            "station": _value(sps, "ScheduledStationAETitle"),
            "start": f"{_value(sps, 'ScheduledProcedureStepStartDate')} "
            f"{_value(sps, 'ScheduledProcedureStepStartTime')}".strip(),
            "procedure": _value(ds, "RequestedProcedureDescription")
            or _value(sps, "ScheduledProcedureStepDescription"),
            "study_uid": _value(ds, "StudyInstanceUID"),
        }


def _value(ds: Dataset, keyword: str) -> str:
    """``keyword``'s value as DICOM text: several values joined by backslashes (PS3.5 6.4), as a
    step scheduled on two stations (AA32\\AA33) reads, not as Python's list; "" when absent."""
    return element_text(ds[keyword]) if keyword in ds else ""


def _first_sps(ds: Dataset) -> Dataset:
    seq = ds.get("ScheduledProcedureStepSequence")
    return seq[0] if seq else Dataset()


# ------------------------------------------------------------------ storage form


def to_text(ds: Dataset) -> str:
    """The dataset as PS3.18 JSON (binary values inline)."""
    return json.dumps(ds.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=None))


def from_text(text: str) -> Dataset:
    return Dataset.from_json(text)


#: PS3.5 Table 6.2-1: the value representations (the ambiguous "US or SS" kinds are not a VR).
KNOWN_VRS: Final = frozenset(vr.value for vr in VR if " or " not in vr.value)


def check_values(ds: Dataset) -> Dataset:
    """PS3.5 6.2 (Table 6.2-1): every value of the entry, nested ones too, is valid for its VR (a DA is
    YYYYMMDD, a CS upper case, an SH at most 16 characters...), as pydicom's validators say, and a DA
    or TM is one value, not a range as a query key may be (PS3.4 C.2.2.2.5). The ONE
    value check of entries people type: the REST API (``POST /api/worklist``) and ``minipacs worklist
    add``. Raises InvalidWorklistEntry naming every invalid attribute.
    """
    problems: list[str] = []
    for elem in ds.iterall():
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR not in KNOWN_VRS:
            problems.append(f"({elem.tag.group:04X},{elem.tag.element:04X}) has the unknown VR {elem.VR!r}")
            continue
        if elem.VR == "SQ":
            continue
        values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
        for value in values:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    validate_value(elem.VR, value, pydicom_config.RAISE)
                if elem.VR in ("DA", "TM") and "-" in str(value):  # pydicom takes a query's range (C.2.2.2.5)
                    raise ValueError(
                        f"a stored {elem.VR} is one {'date, YYYYMMDD' if elem.VR == 'DA' else 'time, HHMM[SS]'}"
                        ", not a range"
                    )
            except (ValueError, TypeError, UserWarning) as exc:
                problems.append(f"{name} {str(value)!r}: {str(exc).split(' Please see')[0]}")
                break
    if problems:
        raise InvalidWorklistEntry("worklist entry refused: " + "; ".join(problems))
    return ds


def new_procedure_id() -> str:
    """A Requested Procedure ID / Scheduled Procedure Step ID (SH, at most 16 characters) for an entry
    that came without one: 16 hex digits, random, so two servers on one index never hand out the same."""
    return secrets.token_hex(8).upper()


def validated(ds: Dataset) -> Dataset:
    """PS3.4 K.6 / PS3.3 C.30: an entry needs patient identity and one Scheduled Procedure Step.

    A missing Study Instance UID is generated (MPPS and the images link to it), and so are a missing
    Requested Procedure ID and Scheduled Procedure Step ID: both are Type 1 return keys of the
    Modality Worklist (PS3.4 Table K.6-1), so a modality must get a value (a single Scheduled Procedure
    Step gets the Requested Procedure ID as its ID, as `worklist add --procedure-id` gives both).
    """
    problems = []
    if not str(ds.get("PatientID", "") or "").strip():
        problems.append("PatientID is missing")
    seq = ds.get("ScheduledProcedureStepSequence")
    if not seq:
        problems.append("ScheduledProcedureStepSequence (0040,0100) has no item")
    elif not str(seq[0].get("Modality", "") or "").strip():
        problems.append("the Scheduled Procedure Step has no Modality")
    if problems:
        raise InvalidWorklistEntry("worklist entry refused: " + "; ".join(problems))
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        ds.StudyInstanceUID = generate_uid()
    if not str(ds.get("RequestedProcedureID", "") or "").strip():
        ds.RequestedProcedureID = new_procedure_id()
    for sps in seq:
        if not str(sps.get("ScheduledProcedureStepID", "") or "").strip():
            sps.ScheduledProcedureStepID = str(ds.RequestedProcedureID) if len(seq) == 1 else new_procedure_id()
    return ds


def _columns(ds: Dataset, status: str) -> dict[str, Any]:
    sps = _first_sps(ds)
    return {
        "accession_number": _value(ds, "AccessionNumber")[:16],
        "patient_id": _value(ds, "PatientID")[:64],
        "study_instance_uid": _value(ds, "StudyInstanceUID")[:64],
        "scheduled_station_ae": _value(sps, "ScheduledStationAETitle")[:16],
        "modality": _value(sps, "Modality")[:16],
        "start_date": _value(sps, "ScheduledProcedureStepStartDate")[:8],
        "status": status,
        "dataset": to_text(ds),
    }


def _entry(row: dict[str, Any]) -> WorklistEntry:
    return WorklistEntry(int(row["id"]), str(row["status"]), from_text(str(row["dataset"])))


def read_worklist_file(path: Path) -> Dataset:
    """A DCMTK ``.wl`` file (wlmscpfs): a DICOM dataset, Part 10 or raw; raises InvalidWorklistEntry."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom's guesses about garbage become a refusal
            read = pydicom.dcmread(path, force=True)
            read.decode()
            ds = Dataset({tag: read[tag] for tag in read.keys() if tag.group != 0x0002})
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError, UserWarning) as exc:
        raise InvalidWorklistEntry(f"{path}: not a readable DICOM dataset ({exc})") from exc
    if len(ds) == 0:
        raise InvalidWorklistEntry(f"{path}: no DICOM elements found")
    return ds


# ------------------------------------------------------------------ PS3.4 K.6 matching


def matches(keys: Sequence[Key], ds: Dataset) -> bool:
    """PS3.4 K.6.1.2.2 / C.2.2.2: every non-universal key matches ``ds``.

    Specific Character Set and Timezone Offset From UTC are never matched (PS3.4 K.2.2.2,
    C.2.2.2): an ISO_IR 192 query finds an ISO_IR 100 or ASCII entry.
    """
    for key in keys:
        if key.is_universal or key.tag in NEVER_MATCHED:
            continue
        if key.vr == "SQ":
            if not _sequence_matches(key, ds.get(key.tag)):
                return False
            continue
        elem = ds.get(key.tag)
        if not key_matches(key, element_text(elem) if elem is not None else None, ds):
            return False
    return True


def _sequence_matches(key: Key, elem: DataElement | None) -> bool:
    """C.2.2.2.6: some stored item matches every key of the query item."""
    if elem is None or not isinstance(elem.value, (DicomSequence, list)):
        return False
    return any(matches(query_item, item) for query_item in key.items for item in elem.value)


def response(keys: Sequence[Key], ds: Dataset) -> Dataset:
    """K.6.1.2.2: every requested key answered — the stored value, or empty when there is none.

    A sequence key with no item or one empty item returns the stored sequence whole; with
    keys in its item, the stored items that match it, each reduced to the item's keys.
    """
    out = Dataset()
    for key in keys:
        if key.keyword == "SpecificCharacterSet":
            continue
        stored = ds.get(key.tag)
        if key.vr == "SQ":
            items: list[Dataset] = []
            if stored is not None and isinstance(stored.value, (DicomSequence, list)):
                # PS3.4 C.2.2.2.6: no item, or one empty item, is universal matching: the whole sequence.
                if not key.items or not any(len(query_item) for query_item in key.items):
                    items = [item for item in stored.value]
                else:
                    query_item = key.items[0]
                    items = [response(query_item, item) for item in stored.value if matches(query_item, item)]
            out.add(DataElement(key.tag, "SQ", DicomSequence(items)))
        elif stored is not None:
            out.add(stored)
        else:
            out.add(DataElement(key.tag, key.vr, None))
    return out


def with_state(ds: Dataset, status: str) -> Dataset:
    """``ds`` with the Scheduled Procedure Step Status (0040,0020) of every step set from the entry's
    ``status`` (:data:`SPS_STATUS_OF_STATE`), in place: the state an MPPS or an order gave the entry
    (kept in its own column) is what a modality sees and matches, not the status stored with the
    order. PS3.4 F.7.2.1 note: the N-CREATE lets "an SCP of the Modality Worklist SOP Class ...
    update the Modality Worklist"."""
    for sps in ds.get("ScheduledProcedureStepSequence") or []:
        term = SPS_STATUS_OF_STATE.get(status)
        if term is None:
            stored = element_text(sps.get(SPS_STATUS)).strip().upper() if SPS_STATUS in sps else ""
            term = stored if stored in SCHEDULED_SPS_STATUSES else "SCHEDULED"
        sps.add(DataElement(SPS_STATUS, "CS", term))
    return ds


def per_step(ds: Dataset) -> builtins.list[Dataset]:
    """The worklist items of entry ``ds``, one per Scheduled Procedure Step: PS3.4 K.1.1, "each item is
    related to one task", and K.6.1.1, the worklist "is structured according to Scheduled Procedure
    Steps" (K.4.1.3: a Pending response per match). An entry with several steps is as many items,
    each with the entry's other attributes and ONE step; the stored entry is not changed."""
    seq = ds.get(SPS_SEQUENCE)
    if seq is None or not isinstance(seq.value, (DicomSequence, list)) or len(seq.value) < 2:
        return [ds]
    items = []
    for sps in seq.value:
        item = Dataset(dict(ds.items()))  # a dict of its own (Dataset(ds) and copy() share ds's)
        item[SPS_SEQUENCE] = DataElement(SPS_SEQUENCE, "SQ", DicomSequence([sps]))
        items.append(item)
    return items


def _states(keys: Sequence[Key]) -> tuple[str, ...]:
    """The entry states to read: the open ones, or those whose Scheduled Procedure Step Status the
    query asks for by value (a modality asking for COMPLETED steps wants to see them; dcm4chee-arc's
    hidden statuses yield to such a key the same way). Only those: a modality that always sends
    SCHEDULED must not make each query read every entry ever done; a wildcard reads them all."""
    for key in keys:
        if key.tag != SPS_SEQUENCE:
            continue
        for item in key.items:
            for k in item:
                if k.tag != SPS_STATUS or k.is_universal:
                    continue
                parts = k.condition.parts or (k.condition,)
                if any(part.kind is not Matching.SINGLE for part in parts):
                    return ALL_STATES
                asked = {value.strip() for part in parts for value in part.values}
                return tuple(state for state in ALL_STATES if asked & _TERMS_OF_STATE[state])
    return OPEN_STATES


#: Entry state -> the Scheduled Procedure Step Status terms it can answer (:func:`with_state`).
_TERMS_OF_STATE: Final[dict[str, frozenset[str]]] = {
    state: frozenset({term}) if term is not None else SCHEDULED_SPS_STATUSES
    for state, term in SPS_STATUS_OF_STATE.items()
}


def _prefilter(keys: Sequence[Key]) -> dict[str, str]:
    """Keys whose single value can narrow the candidates in SQL (exact equality only)."""
    equal: dict[str, str] = {}
    for key in keys:
        column = repo.WORKLIST_PREFILTER.get(key.keyword)
        if column is not None and key.condition.kind is Matching.SINGLE:
            equal[column] = key.condition.values[0]
    return equal


# ------------------------------------------------------------------ the API


class Worklist:
    """Worklist entries in the index: add, list, get, update, remove, import, find."""

    def __init__(self, index: IndexAccess) -> None:
        self.index = index

    async def add(self, ds: Dataset, status: str = SCHEDULED) -> WorklistEntry:
        ds = validated(ds)
        values = _columns(ds, status)
        pk = await self.index.write(lambda conn: repo.insert_worklist(conn, values))
        return WorklistEntry(pk, status, ds)

    async def list(self, *, include_closed: bool = True) -> builtins.list[WorklistEntry]:
        statuses = None if include_closed else OPEN_STATES
        rows = await self.index.read(lambda conn: repo.worklist_rows(conn, statuses=statuses))
        return [_entry(row) for row in rows]

    async def get(self, pk: int) -> WorklistEntry | None:
        row = await self.index.read(lambda conn: repo.worklist_row(conn, pk))
        return _entry(row) if row else None

    async def by_accession(self, accession: str) -> builtins.list[WorklistEntry]:
        rows = await self.index.read(lambda conn: repo.worklist_rows(conn, {"accession_number": accession}))
        return [_entry(row) for row in rows]

    async def by_study(self, study_uid: str) -> builtins.list[WorklistEntry]:
        rows = await self.index.read(lambda conn: repo.worklist_rows(conn, {"study_instance_uid": study_uid}))
        return [_entry(row) for row in rows]

    async def remove(self, key: str) -> int:
        """Remove the entry with id ``key``, or every entry with that accession number."""

        def run(conn: IndexConnection) -> int:
            if key.isdigit() and repo.worklist_row(conn, int(key)) is not None:
                return repo.delete_worklist(conn, [int(key)])
            pks = [int(r["id"]) for r in repo.worklist_rows(conn, {"accession_number": key})]
            return repo.delete_worklist(conn, pks) if pks else 0

        return await self.index.write(run)

    async def update(self, pk: int, ds: Dataset, *, states: Sequence[str] | None = None) -> WorklistEntry:
        """Replace entry ``pk``'s dataset in ONE writer transaction, keeping its id and status.

        ``states``: only while the entry is in one of these (checked in the same
        transaction); else, or when it is gone, WorklistEntryChanged and nothing changes.
        """
        ds = validated(ds)

        def run(conn: IndexConnection) -> str:
            row = repo.worklist_row(conn, pk)
            if row is None:
                raise WorklistEntryChanged(f"worklist entry {pk} no longer exists")
            status = str(row["status"])
            if states is not None and status not in states:
                raise WorklistEntryChanged(
                    f"worklist entry {pk} is {status} now (only {', '.join(states)} entries may be changed)"
                )
            repo.update_worklist(conn, pk, _columns(ds, status))
            return status

        status = await self.index.write(run)
        return WorklistEntry(pk, status, ds)

    async def set_status(self, pk: int, status: str) -> None:
        await self.index.write(lambda conn: repo.set_worklist_status(conn, pk, status))

    async def import_files(self, paths: Iterable[Path]) -> tuple[int, builtins.list[str]]:
        """Import ``.wl`` files (folders: recursively); (entries added, problems)."""
        added = 0
        problems: builtins.list[str] = []
        for path in paths:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if path.is_dir() and file.suffix.lower() not in (".wl", ".dcm", ""):
                    continue
                try:
                    await self.add(read_worklist_file(file))
                    added += 1
                except InvalidWorklistEntry as exc:
                    problems.append(f"{file}: {exc}" if str(file) not in str(exc) else str(exc))
        return added, problems

    async def find(self, identifier: Dataset) -> builtins.list[Dataset]:
        """Response identifiers of the open entries matching ``identifier`` (PS3.4 K.6);
        raises InvalidKeyValue."""
        keys = read_keys(identifier, combined=COMBINED_DATE_TIME)
        equal = _prefilter(keys)
        states = _states(keys)

        def run(conn: IndexConnection) -> builtins.list[Dataset]:
            # Parsing and matching every open entry is CPU work: it runs here, off the event loop.
            found = []
            for row in repo.worklist_rows(conn, equal, states):
                for step in per_step(with_state(from_text(str(row["dataset"])), str(row["status"]))):
                    if matches(keys, step):
                        found.append(response(keys, step))
            return found

        return await self.index.read(run)


def count_open_entries(conn: IndexConnection, patient_id: str) -> int:
    """The open entries (:data:`OPEN_STATES`) of Patient ID ``patient_id``: what
    :func:`correct_open_entries` would change."""
    return len(repo.worklist_rows(conn, {"patient_id": patient_id}, statuses=OPEN_STATES))


def correct_open_entries(conn: IndexConnection, patient_id: str, values: dict[str, str]) -> int:
    """Set ``values`` (DICOM keyword -> text) in every open entry (:data:`OPEN_STATES`) of Patient ID
    ``patient_id``, in the caller's (writer's) transaction: a patient correction or an HL7 ADT
    update or merge reaches the worklist too (IHE RAD PIR). Returns the entries changed."""
    changed = 0
    for row in repo.worklist_rows(conn, {"patient_id": patient_id}, statuses=OPEN_STATES):
        ds = from_text(str(row["dataset"]))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        repo.update_worklist(conn, int(row["id"]), _columns(ds, str(row["status"])))
        changed += 1
    return changed


__all__ = [
    "correct_open_entries",
    "count_open_entries",
    "InvalidWorklistEntry",
    "Worklist",
    "WorklistEntry",
    "WorklistEntryChanged",
    "check_values",
    "matches",
    "new_procedure_id",
    "per_step",
    "read_worklist_file",
    "response",
    "validated",
    "with_state",
]
