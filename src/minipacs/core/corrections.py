"""Corrections: modify a patient, study or series, merge two patients, move a series to another study
(IHE RAD Patient Information Reconciliation; Orthanc's /modify, /merge, /split).

Consistency by rewriting (docs/CORRECTIONS.md). A correction first changes the index rows in ONE
writer transaction, which also writes the changes-journal row, the corrections-log row with the OLD
values and who asked (index/schema.py ``corrections``) and, for a patient, the open worklist entries;
C-FIND, QIDO-RS and the UI answer the new values from then on. Then every stored file under the
resource is rewritten THROUGH THE INGEST PATH (``Archive.ingest(replace_key=...)``): read, changed,
staged, structurally checked, given a new blob key (core/paths.py), indexed, its PS3.18 metadata
forgotten and computed again; the old blob is removed after the commit. So WADO (files and
metadata), C-MOVE/C-GET and exports hand out the corrected values. SOP Instance UIDs are kept
(a correction, not a new instance: IHE RAD TF-2 4.12 PIR); a series moved to another study takes
that study's Study Instance UID and its study and patient attributes.

A store into the resource while it is corrected is not lost: the rewrite replaces exactly the copy
it read (``replace_key``), and after each pass the instances under the resource whose copy it did
not write (stored meanwhile, or replaced under it) are rewritten in another pass, at most
``max_passes``, with the values the index holds then (a correction made meanwhile is not undone);
what is still left after them is counted in the correction's message.

Destinations that auto-routing already gave the instances to (their delivery receipts say so) get the
corrected instances again, as "route" jobs queued once the files are rewritten, unless the rule says
``on_correction = "ignore"`` (core/reforward.py, docs/ROUTING.md "Corrections").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from minipacs.core.archive import Archive
from minipacs.core.audit import Action, ActorKind
from minipacs.core.changes import ChangeType, change_row, record
from minipacs.core.errors import CorrectionConflict, InvalidCorrection, NotFound, UnreadableInstance
from minipacs.core.model import Origin, StagedPath
from minipacs.core.paths import new_copy_token
from minipacs.core.staging import stage_file
from minipacs.core.stored import read_stored
from minipacs.core.worklist import correct_open_entries, count_open_entries
from minipacs.index import corrections_repo as sql
from minipacs.index import deletion_repo
from minipacs.index import repository as repo
from minipacs.index.database import IndexConnection
from minipacs.index.entities import ENTITIES, Entity

if TYPE_CHECKING:
    from minipacs.core.jobs import JobContext, JobQueue

log = logging.getLogger(__name__)

#: The job kind large corrections run as (core/jobs.py).
JOB_KIND: Final = "correct"
#: The instance rows' origin is kept; this names the rewrite in the log.
ORIGIN: Final = Origin("correction")
#: Files rewritten at once: reading and writing overlap, and the writer commits several in one transaction.
REWRITES_AT_ONCE: Final = 8
#: Most corrections one listing returns.
MAX_LIST: Final = 1000

#: (correction id, SOP Instance UIDs rewritten, Study Instance UIDs their delivery receipts may name)
#: -> the ids of the jobs queued to send them again to where routing sent them (core/reforward.py,
#: wired by bootstrap and the web edge).
Resend = Callable[[int, Sequence[str], Sequence[str]], Awaitable[list[int]]]

#: Level names (the changes journal's) -> index entity; instances are never corrected alone.
LEVELS: Final[Mapping[str, Entity]] = {e.value: e for e in (Entity.PATIENT, Entity.STUDY, Entity.SERIES)}

# PS3.3 C.7.1.1 Patient Module, C.7.2.1 General Study Module, C.7.3.1 General Series Module: the
# attributes a correction may change at each level, the ones the index keeps (index/repository.py
# *_COLUMNS), less the UIDs that name the study and series (a series moves with ``move_series``).
MODIFIABLE: Final[Mapping[Entity, tuple[str, ...]]] = {
    entity: tuple(
        dict.fromkeys(
            keyword
            for keyword, _ in ENTITIES[entity].columns.values()
            if keyword not in ("StudyInstanceUID", "SeriesInstanceUID")
        )
    )
    for entity in LEVELS.values()
}
#: The level each modifiable attribute belongs to (a study cannot change its patient's name: modify the patient).
LEVEL_OF: Final[Mapping[str, Entity]] = {kw: entity for entity, kws in MODIFIABLE.items() for kw in kws}


# PS3.3 C.7.1.1 Patient Module: attributes whose values are enumerated (anything else is not DICOM).
ENUMERATED: Final[Mapping[str, frozenset[str]]] = {"PatientSex": frozenset({"M", "F", "O"})}
#: Unicode categories no corrected value may hold: control, surrogate, private use, unassigned,
#: line and paragraph separators (PS3.5 6.1.2.3: a single-line value has no control character).
REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
#: PS3.5 Table 6.2-1 PN: at most five components (family, given, middle, prefix, suffix) per group.
PN_COMPONENTS: Final = 5


def _vr_problem(keyword: str, vr: str, value: str) -> str | None:
    """What PS3.5 6.2 forbids in ``value`` beyond pydicom's own check (``validate_value``), None if nothing."""
    if vr == "PN":
        for group in value.split("="):
            if group.count("^") >= PN_COMPONENTS:
                return f"a person name has at most {PN_COMPONENTS} components (family^given^middle^prefix^suffix)"
    if vr == "DA" and value:
        try:
            dt.datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return "it is not a calendar date YYYYMMDD"
    allowed = ENUMERATED.get(keyword)
    if allowed is not None and value and value not in allowed:
        return f"it must be one of {', '.join(sorted(allowed))} (or empty)"
    if keyword == "PatientID" and any(c in value for c in "*?"):
        return "a Patient ID with * or ? would read as a wildcard (PS3.4 C.2.2.2.4) and name no one patient"
    return None


class _Values:
    """keyword -> text, read like a parsed header (index/repository.py ``InstanceHeader``)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values

    def get(self, keyword: str) -> str:
        return self.values.get(keyword, "")


def raw_values(entity: Entity, row: Mapping[str, Any]) -> dict[str, str]:
    """The row's attributes as DICOM text, by keyword: the raw-text column of each keyword
    (``as_text`` in the columns table), else the typed column as text (SeriesNumber)."""
    out: dict[str, str] = {}
    for column, (keyword, convert) in ENTITIES[entity].columns.items():
        if convert is repo.as_text:
            out[keyword] = str(row[column] or "")
        elif keyword not in out:
            out.setdefault(keyword, "" if row[column] is None else str(row[column]))
    return out


def check_changes(entity: Entity, changes: Mapping[str, Any]) -> dict[str, str]:
    """``changes`` fit for ``entity``: known attributes of its level, one value each that its VR can
    hold (PS3.5 6.2); raises InvalidCorrection saying which and why."""
    if not changes:
        raise InvalidCorrection('nothing to change: give {"changes": {"Keyword": "value", ...}}')
    out: dict[str, str] = {}
    for keyword, value in changes.items():
        owner = LEVEL_OF.get(keyword)
        if owner is None:
            allowed = ", ".join(kw for kws in MODIFIABLE.values() for kw in kws)
            raise InvalidCorrection(f"{str(keyword)[:64]!r} cannot be corrected; these can: {allowed}")
        if owner is not entity:
            raise InvalidCorrection(
                f"{keyword} is a {owner.value} attribute: correct the {owner.value}, not the {entity.value}"
            )
        if not isinstance(value, str):
            raise InvalidCorrection(f"the new {keyword} must be text, not {type(value).__name__}")
        if "\\" in value or any(unicodedata.category(c) in REFUSED_CATEGORIES for c in value):
            raise InvalidCorrection(
                f"the new {keyword} holds a backslash, a control character or a line separator; give one plain value"
            )
        vr = dictionary_VR(keyword)
        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except ValueError as exc:
            raise InvalidCorrection(f"the new {keyword} {value[:70]!r} is not valid: {exc}") from None
        problem = _vr_problem(keyword, vr, value)
        if problem is not None:
            raise InvalidCorrection(f"the new {keyword} {value[:70]!r} is not valid: {problem}")
        out[keyword] = value
    if entity is Entity.PATIENT and "PatientID" in out and not out["PatientID"].strip(" "):
        raise InvalidCorrection("the Patient ID cannot be emptied: an empty one identifies nobody")
    return out


@dataclass(frozen=True)
class CorrectionResult:
    """What a correction did (``job`` set instead when it was queued as a job)."""

    operation: str
    level: str
    target: str
    id: int = 0  # its corrections-log row
    instances: int = 0  # files rewritten
    left: int = 0  # instances stored during it that still hold the old values
    old_values: dict[str, Any] = field(default_factory=dict)
    new_values: dict[str, Any] = field(default_factory=dict)
    job: int | None = None
    #: "route" jobs queued to send the corrected instances again to destinations that had them.
    resent: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "level": self.level,
            "target": self.target,
            "instances": self.instances,
            "left": self.left,
            "old_values": self.old_values,
            "new_values": self.new_values,
            "job": self.job,
            "resend_jobs": list(self.resent),
        }


@dataclass
class _Plan:
    """What the index step of a correction decided: the rewrite's scope and the values files get."""

    correction: int
    scope: Entity
    pks: list[int]
    copies: list[sql.StoredCopy]
    file_values: dict[str, str]
    old: dict[str, Any]
    new: dict[str, Any]
    target: str


def _one(conn: IndexConnection, entity: Entity, name: str) -> dict[str, Any]:
    if not name.strip(" "):
        raise InvalidCorrection(
            f"an empty {'Patient ID' if entity is Entity.PATIENT else 'UID'} names no {entity.value}: patients without "
            "an ID are kept apart, one per study; correct the study's patient by giving it an ID at patient level"
        )
    rows = sql.rows_named(conn, entity, name)
    if not rows:
        raise NotFound(f"{entity.value} {name[:70]!r} is not in the archive")
    if len(rows) > 1:  # only patients: one Patient ID under several issuers
        issuers = ", ".join(repr(r["issuer_of_patient_id"]) for r in rows)
        raise InvalidCorrection(
            f"Patient ID {name[:64]!r} belongs to {len(rows)} patients (issuers {issuers}); "
            "correct the Issuer of Patient ID of one of them first"
        )
    return rows[0]


#: State of a merge recorded ahead of its prior patient's instances (:meth:`Corrections.remember_merge`).
REMEMBERED: Final = "remembered"


def _log_row(operation: str, entity: Entity, target: str, actor: str, old: Any, new: Any) -> dict[str, Any]:
    return {
        "operation": operation,
        "level": entity.value,
        "target": target[:64],
        "actor": actor,
        "old_values": old,
        "new_values": new,
        "state": "rewriting",
        "instances": 0,
        "message": "",
        "created_at": dt.datetime.now(dt.UTC),
    }


def _modify_rows(conn: IndexConnection, entity: Entity, name: str, changes: dict[str, str], actor: str) -> _Plan:
    row = _one(conn, entity, name)
    old = raw_values(entity, row)
    new = {**old, **changes}
    values = repo.row_values(_Values(new), ENTITIES[entity].columns)
    target = name
    now = dt.datetime.now(dt.UTC)
    if entity is Entity.PATIENT:
        target = new["PatientID"]
        values["patient_key"] = repo.patient_key(new["PatientID"], "")
        if (new["PatientID"], new["IssuerOfPatientID"]) != (old["PatientID"], old["IssuerOfPatientID"]):
            taken = [r for r in sql.rows_named(conn, entity, new["PatientID"]) if r["id"] != row["id"]]
            if any(r["issuer_of_patient_id"] == new["IssuerOfPatientID"] for r in taken):
                raise CorrectionConflict(
                    f"another patient already has Patient ID {new['PatientID'][:64]!r}; merge the two patients "
                    f"(POST /api/patients/merge, `minipacs merge`) instead of giving this one its ID"
                )
        correct_open_entries(conn, old["PatientID"], {k: changes[k] for k in changes})
    sql.update_row(conn, entity, int(row["id"]), values)
    record(conn, [change_row(ChangeType.MODIFIED, target, name if entity is Entity.STUDY else "", now, entity.value)])
    before = {k: old[k] for k in changes}
    correction = sql.insert_correction(conn, _log_row("modify", entity, name, actor, before, changes))
    copies = sql.copies_under(conn, entity, [int(row["id"])])
    return _Plan(correction, entity, [int(row["id"])], copies, dict(changes), before, dict(changes), target)


_PATIENT_FILE_KEYWORDS: Final = MODIFIABLE[Entity.PATIENT]
_STUDY_FILE_KEYWORDS: Final = (*MODIFIABLE[Entity.STUDY], "StudyInstanceUID")


def _merge_rows(conn: IndexConnection, source: str, target: str, demographics: Mapping[str, str], actor: str) -> _Plan:
    src = _one(conn, Entity.PATIENT, source)
    dst = _one(conn, Entity.PATIENT, target)
    if src["id"] == dst["id"]:
        raise InvalidCorrection(f"patient {source[:64]!r} cannot be merged with itself")
    now = dt.datetime.now(dt.UTC)
    if demographics:  # the surviving patient's demographics as the merge message gives them (HL7 A40 PID)
        merged = {**raw_values(Entity.PATIENT, dst), **demographics}
        sql.update_row(conn, Entity.PATIENT, int(dst["id"]), repo.row_values(_Values(merged), repo.PATIENT_COLUMNS))
        dst = {**dst, **repo.row_values(_Values(merged), repo.PATIENT_COLUMNS)}
    studies = sql.studies_of_patient(conn, int(src["id"]))
    # new demographics change the survivor's own files too, or they would keep the old values while its
    # row (C-FIND, QIDO) gives the new ones
    own = sql.studies_of_patient(conn, int(dst["id"])) if demographics else []
    sql.move_studies(conn, int(src["id"]), int(dst["id"]))
    journal = [change_row(ChangeType.PATIENTS_MERGED, target, "", now)]
    journal += _orphans(conn, now)
    record(conn, journal)
    file_values = {k: v for k, v in raw_values(Entity.PATIENT, dst).items() if k in _PATIENT_FILE_KEYWORDS}
    correct_open_entries(conn, source, file_values)
    old = {**raw_values(Entity.PATIENT, src), "StudyInstanceUIDs": [uid for _, uid in studies]}
    correction = sql.insert_correction(conn, _log_row("merge", Entity.PATIENT, target, actor, old, file_values))
    pks = [pk for pk, _ in studies] + [pk for pk, _ in own]
    return _Plan(
        correction, Entity.STUDY, pks, sql.copies_under(conn, Entity.STUDY, pks), file_values, old, file_values, target
    )


def _move_rows(conn: IndexConnection, series_uid: str, study_uid: str | None, actor: str) -> _Plan:
    series = _one(conn, Entity.SERIES, series_uid)
    before = sql.row_by_pk(conn, Entity.STUDY, int(series["study_pk"]))
    if before is None:  # pragma: no cover - foreign keys keep it
        raise NotFound(f"series {series_uid} has lost its study row")
    now = dt.datetime.now(dt.UTC)
    journal = []
    if study_uid is None:  # a new study of the same patient, with the old one's attributes and a new UID
        study_uid = generate_uid()
        values = {**raw_values(Entity.STUDY, before), "StudyInstanceUID": study_uid}
        repo.ensure_study(conn, _Values(values), int(before["patient_pk"]), now)
        journal.append(change_row(ChangeType.NEW_STUDY, study_uid, study_uid, now))
    study = _one(conn, Entity.STUDY, study_uid)
    if series["study_pk"] == study["id"]:
        raise InvalidCorrection(f"series {series_uid} is already in study {study_uid}")
    patient = sql.row_by_pk(conn, Entity.PATIENT, int(study["patient_pk"]))
    if patient is None:  # pragma: no cover - foreign keys keep it
        raise NotFound(f"study {study_uid} has lost its patient row")
    sql.move_series(conn, int(series["id"]), int(study["id"]), now)
    journal.append(change_row(ChangeType.SERIES_MOVED, series_uid, study_uid, now))
    journal += _orphans(conn, now)
    record(conn, journal)
    file_values = {
        **{k: v for k, v in raw_values(Entity.STUDY, study).items() if k in _STUDY_FILE_KEYWORDS},
        **{k: v for k, v in raw_values(Entity.PATIENT, patient).items() if k in _PATIENT_FILE_KEYWORDS},
    }
    old = {"StudyInstanceUID": str(before["study_instance_uid"])}
    new = {"StudyInstanceUID": study_uid}
    correction = sql.insert_correction(conn, _log_row("move", Entity.SERIES, series_uid, actor, old, new))
    pks = [int(series["id"])]
    return _Plan(
        correction, Entity.SERIES, pks, sql.copies_under(conn, Entity.SERIES, pks), file_values, old, new, series_uid
    )


def _orphans(conn: IndexConnection, now: dt.datetime) -> list[dict[str, Any]]:
    """Delete the studies and patients a merge or move left empty; their "Deleted" journal rows."""
    return [
        change_row(ChangeType.DELETED, parent.name, parent.study_instance_uid, now, parent.entity.value)
        for parent in deletion_repo.delete_orphans(conn)
    ]


class Corrections:
    """Modify, merge and move on ``archive``; above ``inline_max`` instances a correction is queued on
    ``jobs`` (kind :data:`JOB_KIND`) when there is a queue, else it runs at once anyway. ``resend``: queues
    the corrected instances again to where routing delivered them (None: nothing is re-sent)."""

    def __init__(
        self,
        archive: Archive,
        *,
        jobs: JobQueue | None = None,
        inline_max: int = 200,
        max_passes: int = 3,
        resend: Resend | None = None,
    ) -> None:
        self.archive = archive
        self.jobs = jobs
        self.inline_max = inline_max
        self.max_passes = max_passes
        self.resend = resend

    # ------------------------------------------------------------ the three operations

    async def modify(
        self, level: str, name: str, changes: Mapping[str, Any], actor: str, *, who: Sequence[str] = ()
    ) -> CorrectionResult:
        """Change attributes of a patient (by Patient ID), study or series (by UID). ``who``: (actor kind,
        actor, address) for the audit trail (core/audit.py; default: the system)."""
        entity = _entity(level)
        checked = check_changes(entity, changes)
        return await self._run(
            "modify", entity, name, actor, lambda conn: _modify_rows(conn, entity, name, checked, actor), who=who
        )

    async def merge(
        self,
        source: str,
        target: str,
        actor: str,
        demographics: Mapping[str, str] | None = None,
        *,
        who: Sequence[str] = (),
    ) -> CorrectionResult:
        """Every study of patient ``source`` moves to patient ``target``; ``source`` is gone after it."""
        extra = check_changes(Entity.PATIENT, demographics) if demographics else {}
        return await self._run(
            "merge",
            Entity.PATIENT,
            target,
            actor,
            lambda conn: _merge_rows(conn, source, target, extra, actor),
            True,
            who=who,
        )

    async def merged_away(self, patient_id: str) -> tuple[str, int] | None:
        """(the patient it ends in, the correction that merged it) when a merge took ``patient_id`` away and
        no later merge made it a survivor again (core/merge_watch.py ``survivors``); None otherwise."""
        from minipacs.core.merge_watch import survivors

        merges = await self.archive.read(sql.patient_merges)
        return survivors(merges).get(patient_id)

    async def remember_merge(self, source: str, target: str, actor: str, *, who: Sequence[str] = ()) -> int:
        """A merge of patient ``source`` into ``target`` when nothing is archived under ``source`` yet (an HL7
        A40 ahead of the images): recorded in the corrections log as a merge of 0 instances, state
        "remembered", so core/merge_watch.py treats instances that arrive under ``source`` later as it
        treats those of any merged-away ID (``merged_patient_arrivals``). Returns the correction's id."""
        if source == target:
            raise InvalidCorrection(f"patient {source[:64]!r} cannot be merged with itself")
        row = {
            **_log_row("merge", Entity.PATIENT, target, actor, {"PatientID": source}, {"PatientID": target}),
            "state": REMEMBERED,
            "message": (
                f"remembered: nothing was archived under patient {source[:64]!r} yet; instances that arrive "
                "under it later are handled as merged_patient_arrivals says"
            ),
            "finished_at": dt.datetime.now(dt.UTC),
        }
        pk = int(await self.archive.write(lambda conn: sql.insert_correction(conn, row)))
        kind, who_actor, address = (list(who) + ["", "", ""])[:3] if who else (ActorKind.SYSTEM.value, "", "")
        self.archive.audit.record(
            Action.MERGED,
            actor_kind=kind or ActorKind.SYSTEM.value,
            actor=who_actor,
            address=address,
            patient_id=target,
            detail=f"correction {pk}: merge of patient {source[:64]} remembered (nothing archived under it yet)",
        )
        log.info(
            "correction %d: merge of patient %r into %r remembered (nothing archived under it yet)", pk, source, target
        )
        return pk

    async def move_series(
        self, series_uid: str, study_uid: str | None, actor: str, *, who: Sequence[str] = ()
    ) -> CorrectionResult:
        """The series moves to study ``study_uid`` (a split): its instances take that study's UID and attributes;
        ``None``: to a new study of the same patient (a new Study Instance UID, the old study's attributes)."""
        return await self._run(
            "move",
            Entity.SERIES,
            series_uid,
            actor,
            lambda conn: _move_rows(conn, series_uid, study_uid, actor),
            True,
            who=who,
        )

    # ------------------------------------------------------------ patients as HL7 ADT sees them

    async def patient(self, patient_id: str) -> dict[str, str] | None:
        """The archived patient's attributes by keyword (:data:`MODIFIABLE`), None if not archived;
        InvalidCorrection when several patients (issuers) share the ID."""

        def run(conn: IndexConnection) -> dict[str, str] | None:
            rows = sql.rows_named(conn, Entity.PATIENT, patient_id)
            return raw_values(Entity.PATIENT, _one(conn, Entity.PATIENT, patient_id)) if rows else None

        return await self.archive.read(run)

    async def open_worklist_entries(self, patient_id: str) -> int:
        """How many open worklist entries (core/worklist.py OPEN_STATES) name ``patient_id``."""
        return await self.archive.read(lambda conn: count_open_entries(conn, patient_id))

    async def correct_worklist(self, patient_id: str, values: Mapping[str, str]) -> int:
        """Set ``values`` in the open worklist entries of ``patient_id`` only (a patient not archived yet);
        the entries changed."""
        checked = check_changes(Entity.PATIENT, values)
        return await self.archive.write(lambda conn: correct_open_entries(conn, patient_id, checked))

    # ------------------------------------------------------------ as a job when large

    async def submit(self, params: Mapping[str, Any]) -> CorrectionResult:
        """Run the correction ``params`` describe (:meth:`run`), or queue it as a job when it touches more
        than ``inline_max`` instances and there is a job queue."""
        operation, entity, name = _scope(params)
        if self.jobs is not None:
            total = await self.instances(entity.value, [name])
            if total > self.inline_max:
                _check_values(params)  # a bad value is refused now, not queued to fail as a job later
                job = await self.jobs.submit(
                    JOB_KIND, f"{operation} {entity.value} {name[:64]}", dict(params), total=total
                )
                return CorrectionResult(operation, entity.value, name, job=job.id)
        return await self.run(params)

    async def instances(self, level: str, names: Sequence[str]) -> int:
        """How many instances are stored under the ``level`` resources ``names`` (Patient IDs or UIDs)."""
        entity = _entity(level)

        def count(conn: IndexConnection) -> int:
            rows = [row for name in dict.fromkeys(names) for row in sql.rows_named(conn, entity, name)]
            return sql.count_under(conn, entity, [int(r["id"]) for r in rows])

        return await self.archive.read(count)

    async def run(self, params: Mapping[str, Any]) -> CorrectionResult:
        """``{"operation": "modify", "level", "target", "changes", "actor"[, "audit"]}``, ``{"operation": "merge",
        "source", "target", "actor"[, "demographics"]}`` or ``{"operation": "move", "series", "study" (None: a new
        one), "actor"}``."""
        operation = params.get("operation")
        actor = str(params.get("actor", ""))
        who = [str(v) for v in params.get("audit") or ()]  # (actor kind, actor, address): core/audit.py
        try:
            if operation == "modify":
                return await self.modify(str(params["level"]), str(params["target"]), params["changes"], actor, who=who)
            if operation == "merge":
                return await self.merge(
                    str(params["source"]), str(params["target"]), actor, params.get("demographics") or None, who=who
                )
            if operation == "move":
                study = params.get("study")
                return await self.move_series(str(params["series"]), str(study) if study else None, actor, who=who)
        except KeyError as exc:
            raise InvalidCorrection(f"a {operation} correction needs {exc.args[0]!r}") from None
        raise InvalidCorrection(f"unknown correction {str(operation)[:30]!r}; use modify, merge or move")

    async def handle_job(self, job: JobContext) -> str:
        """The :data:`JOB_KIND` handler (core/jobs.py)."""
        result = await self.run(job.params)
        job.total = job.done = result.instances
        job.details["correction"] = result.to_json()
        return (
            f"{result.operation} {result.level} {result.target}: {result.instances} file(s) rewritten"
            + (f"; {result.left} stored meanwhile still hold the old values" if result.left else "")
            + (f"; sent again to routing destinations by job(s) {_ids(result.resent)}" if result.resent else "")
        )

    # ------------------------------------------------------------ the common steps

    async def _run(
        self,
        operation: str,
        entity: Entity,
        name: str,
        actor: str,
        rows: Callable[[IndexConnection], _Plan],
        removes: bool = False,
        *,
        who: Sequence[str] = (),
    ) -> CorrectionResult:
        await self.archive.audit.flush()  # waiting events name studies by the patient they have now
        plan = await self.archive.write(rows, removes_entities=removes)
        log.info("%s %s %s by %s: rewriting %d file(s)", operation, entity.value, name, actor, len(plan.copies))
        try:
            written, left = await self._rewrite(plan)
        except Exception as exc:
            await self._finish(plan, "failed", 0, f"{type(exc).__name__}: {exc}")
            raise
        message = (
            f"{left} instance(s) stored during the correction, or whose file could not be read (see the server "
            "log), still hold the old values"
            if left
            else ""
        )
        resent, problem = await self._resend(operation, plan)
        message = "; ".join(m for m in (message, problem) if m)
        await self._finish(plan, "done", written, message)
        self._audit(operation, entity, plan, who)
        return CorrectionResult(
            operation, entity.value, plan.target, plan.correction, written, left, plan.old, plan.new, resent=resent
        )

    async def _resend(self, operation: str, plan: _Plan) -> tuple[tuple[int, ...], str]:
        """Queue the rewritten instances again to the routing destinations that had them (module
        docstring): (the jobs, "" or why it could not be done: the correction itself stands)."""
        if self.resend is None:
            return (), ""
        try:
            copies = await self.archive.read(lambda conn: sql.copies_under(conn, plan.scope, plan.pks))
            studies = {c.study_instance_uid for c in copies}
            if operation == "move":  # the receipts name the study the series was in when it was sent
                studies.add(str(plan.old.get("StudyInstanceUID", "")))
            jobs = await self.resend(plan.correction, [c.sop_instance_uid for c in copies], sorted(studies - {""}))
        except Exception as exc:  # the files are corrected; only the re-send is missing
            log.exception("correction %d: the re-send to routing destinations could not be queued", plan.correction)
            return (), (
                f"the corrected instances could not be queued again to the routing destinations that had them "
                f"({type(exc).__name__}: {exc}); send them by hand (POST /api/send) or run the correction again"
            )
        if jobs:
            log.info("correction %d: sent again to routing destinations by job(s) %s", plan.correction, _ids(jobs))
        return tuple(jobs), ""

    def _audit(self, operation: str, entity: Entity, plan: _Plan, who: Sequence[str]) -> None:
        """One audit row (core/audit.py) per study the correction touched: "merged" or "modified"."""
        kind, actor, address = (list(who) + ["", "", ""])[:3] if who else (ActorKind.SYSTEM.value, "", "")
        action = Action.MERGED if operation == "merge" else Action.MODIFIED
        patient = plan.target if entity is Entity.PATIENT else ""
        detail = f"correction {plan.correction}: {operation} {entity.value} {plan.target}, was {plan.old}"
        for study in sorted({c.study_instance_uid for c in plan.copies}) or [""]:
            self.archive.audit.record(
                action,
                actor_kind=kind or ActorKind.SYSTEM.value,
                actor=actor,
                address=address,
                patient_id=patient,
                study_uid=study,
                detail=detail,
            )

    async def _finish(self, plan: _Plan, state: str, written: int, message: str) -> None:
        def run(conn: IndexConnection) -> None:
            now = dt.datetime.now(dt.UTC)
            record(conn, _orphans(conn, now))  # rows a concurrent store re-created under old values
            sql.finish_correction(conn, plan.correction, state, written, message, now)

        await self.archive.write(run, removes_entities=True)

    async def _rewrite(self, plan: _Plan) -> tuple[int, int]:
        """Rewrite every copy under the plan's scope, in passes (module docstring); (rewritten, left)."""
        written: set[str] = set()
        todo = plan.copies
        gate = asyncio.Semaphore(REWRITES_AT_ONCE)

        values: dict[str, dict[str, str]] = {}  # by Series Instance UID, from the second pass on

        async def one(copy: sql.StoredCopy) -> None:
            async with gate:
                try:
                    written.add(await self._rewrite_one(copy, values.get(copy.series_instance_uid, plan.file_values)))
                except (CorrectionConflict, NotFound):
                    pass  # deleted or replaced under us: the next listing says which
                except UnreadableInstance as exc:  # its blob went with a replacement, or the file is broken
                    log.warning("SOP Instance %s not rewritten now: %s", copy.sop_instance_uid, exc)

        for _ in range(self.max_passes):
            await asyncio.gather(*(one(copy) for copy in todo))

            def listing(conn: IndexConnection) -> tuple[list[sql.StoredCopy], dict[str, dict[str, str]]]:
                left = [c for c in sql.copies_under(conn, plan.scope, plan.pks) if c.blob_key not in written]
                return left, _current(conn, left, plan.file_values)

            todo, values = await self.archive.read(listing)
            if not todo:
                break
        return len(written), len(todo)

    async def _rewrite_one(self, copy: sql.StoredCopy, values: Mapping[str, str]) -> str:
        archive = self.archive
        limits = archive.settings.dataset_limits

        def build() -> StagedPath:
            with archive.blobs.local_file(copy.blob_key) as path:
                ds = read_stored(path, limits)
            fit_charset(ds, values)
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            out = archive.staging_dir / f"correct-{new_copy_token()}.dcm"
            try:
                ds.save_as(out, enforce_file_format=True)
                return stage_file(archive.staging_dir, out, archive.settings.max_dataset_bytes)
            finally:
                out.unlink(missing_ok=True)

        staged = await asyncio.to_thread(build)
        outcome = await archive.ingest(staged, ORIGIN, replace_key=copy.blob_key)
        return outcome.relative_path


def _ids(jobs: Sequence[int]) -> str:
    return ", ".join(str(j) for j in jobs)


def fit_charset(ds: Dataset, values: Mapping[str, str]) -> None:
    """Make ``ds``'s Specific Character Set (0008,0005) able to hold ``values`` (PS3.5 6.1.2.5): kept when
    its one character set encodes them, else the whole dataset becomes UTF-8 (ISO_IR 192): every text
    value is decoded in the old set first, so nothing is written as '?' (pydicom's replacement) or as
    bytes of one set under the name of another."""
    if all(v.isascii() for v in values.values()):
        return
    terms = ds.get("SpecificCharacterSet", "") or ""
    codecs = convert_encodings(terms)
    if len(codecs) == 1 and terms:
        try:
            for value in values.values():
                value.encode(codecs[0])
            return
        except UnicodeEncodeError:
            pass
    ds.decode()  # raw text values -> str, in the old character set
    ds.SpecificCharacterSet = "ISO_IR 192"


def _current(
    conn: IndexConnection, copies: list[sql.StoredCopy], wanted: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """The values of ``wanted``'s keywords the files of ``copies`` must hold NOW, by Series Instance UID:
    those of their series', study's and patient's rows. A later pass writes these, not the values the
    correction began with, so a correction made meanwhile (another process, another request) is not
    undone by a re-pass of this one."""
    out: dict[str, dict[str, str]] = {}
    for series_uid, rows in sql.hierarchy(conn, [c.series_instance_uid for c in copies]).items():
        current: dict[str, str] = {}
        for entity, row in rows.items():
            current.update(raw_values(entity, row))
        out[series_uid] = {k: current.get(k, v) for k, v in wanted.items()}
    return out


def _check_values(params: Mapping[str, Any]) -> None:
    """The new values of a modify or merge, checked as :meth:`Corrections.run` will check them."""
    operation = params.get("operation")
    if operation == "modify":
        check_changes(_entity(str(params.get("level"))), params.get("changes") or {})
    elif operation == "merge" and params.get("demographics"):
        check_changes(Entity.PATIENT, params["demographics"])


def _entity(level: str) -> Entity:
    entity = LEVELS.get(level)
    if entity is None:
        raise InvalidCorrection(f"unknown level {level[:20]!r}; use {', '.join(LEVELS)}")
    return entity


def _scope(params: Mapping[str, Any]) -> tuple[str, Entity, str]:
    """(operation, level, name) whose instances a correction rewrites, to count them before."""
    operation = str(params.get("operation", ""))
    if operation == "modify":
        return operation, _entity(str(params.get("level", ""))), str(params.get("target", ""))
    if operation == "merge":
        return operation, Entity.PATIENT, str(params.get("source", ""))
    if operation == "move":
        return operation, Entity.SERIES, str(params.get("series", ""))
    raise InvalidCorrection(f"unknown correction {operation[:30]!r}; use modify, merge or move")


async def list_corrections(archive: Archive, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The corrections log, newest first (``target``: of that Patient ID or UID only)."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidCorrection(f"limit must be from 1 to {MAX_LIST}, not {limit}")
    rows = await archive.read(lambda conn: sql.corrections(conn, target, limit))
    for row in rows:
        for name in ("created_at", "finished_at"):
            row[name] = row[name].isoformat() if row[name] is not None else None
    return rows


def register_correction_jobs(queue: JobQueue, corrections: Corrections) -> None:
    """The :data:`JOB_KIND` kind. "fail" after an unclean stop: the index step is done by then and the
    files half rewritten; the job's message says to run the correction again (it rewrites them all)."""
    corrections.jobs = queue
    queue.register(JOB_KIND, corrections.handle_job, on_restart="fail", max_attempts=1)


__all__ = [
    "JOB_KIND",
    "LEVELS",
    "LEVEL_OF",
    "MODIFIABLE",
    "REMEMBERED",
    "CorrectionResult",
    "Resend",
    "Corrections",
    "check_changes",
    "list_corrections",
    "raw_values",
    "register_correction_jobs",
]
