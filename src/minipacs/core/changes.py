"""The changes journal, like Orthanc's ``/changes``: what happened to the index, in order.

Every row is written by the archive's writer thread in the SAME transaction as the
change it records (``Archive`` for new resources, core/delete.py for deletions,
core/mpps.py for procedure steps and study completion), so the journal never
disagrees with the index: a rolled-back ingest leaves no row, a committed one
always has its row. ``seq`` only grows; a reader pages with ``since`` (the last
``seq`` it saw) and ``limit``.

Retention: the journal is kept whole unless ``changes_retention_days`` is set
(core/journal_retention.py prunes the older rows); one row is about 150 bytes.
With several nodes on one PostgreSQL index, sequence numbers are handed out
before commit, so a row may become visible after a higher one: readers that need
every row should re-read a short window behind their ``since``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from minipacs.dicom.levels import LEVEL_SPELLINGS
from minipacs.index import journal_repo
from minipacs.index.database import IndexConnection

#: Most changes one read returns.
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100


class ChangeType(enum.Enum):
    """Kinds of change; the names follow Orthanc's change types where one exists."""

    NEW_PATIENT = "NewPatient"
    NEW_STUDY = "NewStudy"
    NEW_SERIES = "NewSeries"
    NEW_INSTANCE = "NewInstance"
    DELETED = "Deleted"
    MPPS_CREATED = "MppsCreated"
    MPPS_COMPLETED = "MppsCompleted"
    MPPS_DISCONTINUED = "MppsDiscontinued"
    STUDY_COMPLETE = "StudyComplete"
    MODIFIED = "Modified"
    PATIENTS_MERGED = "PatientsMerged"
    SERIES_MOVED = "SeriesMoved"


# Change type -> (level, what ``uid`` names, when the row is written). "Deleted" carries
# the level of the resource removed. MPPS states: PS3.4 F.7 (IN PROGRESS -> COMPLETED | DISCONTINUED).
CHANGE_TYPES: Final[Mapping[ChangeType, tuple[str, str, str]]] = {
    # a patient without a Patient ID (kept per study, index/repository.py patient_key): uid "", study its study
    ChangeType.NEW_PATIENT: ("patient", "Patient ID", "an ingest indexes the patient's first instance"),
    ChangeType.NEW_STUDY: ("study", "Study Instance UID", "an ingest indexes the study's first instance"),
    ChangeType.NEW_SERIES: ("series", "Series Instance UID", "an ingest indexes the series' first instance"),
    ChangeType.NEW_INSTANCE: (
        "instance",
        "SOP Instance UID",
        "an instance is stored (also when the duplicate policy 'replace' overwrites it)",
    ),
    ChangeType.DELETED: (
        "",
        "the resource's UID (Patient ID for a patient)",
        "a patient, study, series or instance is deleted, once per resource removed",
    ),
    ChangeType.MPPS_CREATED: ("mpps", "MPPS SOP Instance UID", "N-CREATE of a step (IN PROGRESS)"),
    ChangeType.MPPS_COMPLETED: ("mpps", "MPPS SOP Instance UID", "N-SET moves a step to COMPLETED"),
    ChangeType.MPPS_DISCONTINUED: ("mpps", "MPPS SOP Instance UID", "N-SET moves a step to DISCONTINUED"),
    ChangeType.STUDY_COMPLETE: (
        "study",
        "Study Instance UID",
        "the study's step is COMPLETED and every instance it references is stored",
    ),
    # corrections (core/corrections.py): who did it and the old values are in the corrections log
    ChangeType.MODIFIED: (
        "",
        "the Patient ID (its new one), Study or Series Instance UID",
        "a correction changed a patient's, study's or series' attributes (its files are rewritten)",
    ),
    ChangeType.PATIENTS_MERGED: ("patient", "the surviving Patient ID", "a patient's studies moved to another"),
    ChangeType.SERIES_MOVED: ("series", "Series Instance UID", "a series moved to another study (``study``)"),
}

#: Levels a "Deleted" change may carry (core/delete.py LEVEL_COLUMNS): the nouns of dicom/levels.py.
DELETED_LEVELS: Final = frozenset(s.noun for s in LEVEL_SPELLINGS.values())


@dataclass(frozen=True)
class Change:
    seq: int
    type: str
    level: str
    uid: str
    study: str
    time: dt.datetime
    #: What made the change when no person asked for it: "retention:<rule name>"; else "".
    reason: str = ""
    node: str = ""  # the node_id whose transaction made it (several nodes share one index)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "level": self.level,
            "uid": self.uid,
            "study": self.study,
            "time": self.time.isoformat(),
            "reason": self.reason,
            "node": self.node,
        }


#: Longest reason (the column's size).
MAX_REASON: Final = 100


def change_row(
    kind: ChangeType, uid: str, study: str, now: dt.datetime, level: str = "", reason: str = ""
) -> dict[str, Any]:
    """The journal row of one change, for :func:`record` (``level`` only for "Deleted" and "Modified"; ``reason``
    when no person asked for it, e.g. "retention:<rule>")."""
    fixed = CHANGE_TYPES[kind][0]
    if not fixed and level not in DELETED_LEVELS:
        raise ValueError(f"a {kind.value} change needs one of the levels {sorted(DELETED_LEVELS)}, not {level!r}")
    row = {
        "change_type": kind.value,
        "level": fixed or level,
        "uid": uid[:64],
        "study_instance_uid": study[:64],
        "created_at": now,
    }
    if reason:  # else the column's default "": the rows of an ingest keep their few keys
        row["reason"] = reason[:MAX_REASON]
    return row


def record(conn: IndexConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` (from :func:`change_row`) in order, in the caller's (writer's) transaction."""
    journal_repo.insert_changes(conn, rows)


def first_seq(conn: IndexConnection) -> int:
    """The lowest ``seq`` in the journal (rows before it were pruned), 0 when it is empty."""
    return journal_repo.first_seq(conn)


def last_seq(conn: IndexConnection) -> int:
    """The highest ``seq`` in the journal, 0 when it is empty."""
    return journal_repo.last_seq(conn)


#: How long a gap in the journal's sequence may be a transaction still in flight (see read_changes).
GAP_WAIT: Final = dt.timedelta(seconds=2)


def read_changes(conn: IndexConnection, since: int = 0, limit: int = DEFAULT_LIMIT) -> tuple[list[Change], int, bool]:
    """(changes after ``since`` in ``seq`` order, at most ``limit``; the last ``seq``; no more after it).

    With nothing after ``since``, the last ``seq`` is the journal's highest (lower than ``since``
    tells the reader the journal is not the one it was reading).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    rows = journal_repo.changes_after(conn, since, limit + 1)
    found = [Change(*row) for row in rows[:limit]]
    # Several nodes on one index: a sequence number is handed out at insert, the row is visible at
    # commit, so a lower seq may still be on its way while a higher one is visible. A reader paging
    # past it would never see it. Stop before a recent gap (a transaction in flight); a gap older
    # than GAP_WAIT is a rolled-back insert, and is passed.
    now = dt.datetime.now(dt.UTC)
    expected = since + 1
    for index, change in enumerate(found):
        if change.seq != expected and now - change.time < GAP_WAIT:
            kept = found[:index]  # done: nothing more in order now (come back for the rest)
            return kept, kept[-1].seq if kept else since, not kept
        expected = change.seq + 1
    # Nothing after ``since``: stay there. The journal's highest seq is read by a second statement,
    # which may already see rows committed since the first: answering it would skip them. It only
    # tells a reader whose ``since`` is past the end that the journal is not the one it was reading.
    last = found[-1].seq if found else min(since, last_seq(conn))
    return found, last, len(rows) <= limit


__all__ = [
    "CHANGE_TYPES",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_REASON",
    "Change",
    "ChangeType",
    "change_row",
    "first_seq",
    "last_seq",
    "read_changes",
    "record",
]
