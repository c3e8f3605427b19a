"""Index reads and writes, on a SQLAlchemy Connection the caller owns.

The keyword ↔ column mapping for every level lives in the ``*_COLUMNS`` tables
below and nowhere else. When a later instance of a known patient, study or
series carries different values, the first values are kept (a debug line says so).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.dicom.values import (
    as_date,
    as_time,
    normalise_name,
)
from minipacs.index import stats_repo
from minipacs.index.fastsql import Prepared
from minipacs.index.schema import Association, Instance, Patient, Series, Study

log = logging.getLogger(__name__)

Converter = Callable[[str], Any]


class InstanceHeader(Protocol):
    """What the index reads of a parsed header (core/header.py): the text of an attribute by
    keyword, "" when absent."""

    def get(self, keyword: str) -> str: ...


def as_text(value: str) -> str:
    return value


def as_int(value: str) -> int | None:
    """IS / US text → int within the 32-bit range of the column; anything else → None."""
    if not value:  # absent (NumberOfFrames of most images): None, without raising and catching
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if -(2**31) <= number < 2**31 else None


# Column → (DICOM keyword, converter), one table per level (PS3.4 C.6.1.1 levels).
PATIENT_COLUMNS: Final[Mapping[str, tuple[str, Converter]]] = {
    "patient_id": ("PatientID", as_text),
    "issuer_of_patient_id": ("IssuerOfPatientID", as_text),
    "patient_name": ("PatientName", as_text),
    "patient_name_norm": ("PatientName", normalise_name),
    "patient_birth_date": ("PatientBirthDate", as_date),
    "patient_birth_date_raw": ("PatientBirthDate", as_text),
    "patient_sex": ("PatientSex", as_text),
}
STUDY_COLUMNS: Final[Mapping[str, tuple[str, Converter]]] = {
    "study_instance_uid": ("StudyInstanceUID", as_text),
    "study_date": ("StudyDate", as_date),
    "study_date_raw": ("StudyDate", as_text),
    "study_time": ("StudyTime", as_time),
    "study_time_raw": ("StudyTime", as_text),
    "accession_number": ("AccessionNumber", as_text),
    "study_id": ("StudyID", as_text),
    "study_description": ("StudyDescription", as_text),
    "referring_physician_name": ("ReferringPhysicianName", as_text),
    "referring_physician_name_norm": ("ReferringPhysicianName", normalise_name),
}
SERIES_COLUMNS: Final[Mapping[str, tuple[str, Converter]]] = {
    "series_instance_uid": ("SeriesInstanceUID", as_text),
    "modality": ("Modality", as_text),
    "series_number": ("SeriesNumber", as_int),
    "series_description": ("SeriesDescription", as_text),
    "body_part_examined": ("BodyPartExamined", as_text),
    "series_date": ("SeriesDate", as_date),
    "series_date_raw": ("SeriesDate", as_text),
}
INSTANCE_COLUMNS: Final[Mapping[str, tuple[str, Converter]]] = {
    "sop_instance_uid": ("SOPInstanceUID", as_text),
    "sop_class_uid": ("SOPClassUID", as_text),
    "instance_number": ("InstanceNumber", as_int),
    "number_of_frames": ("NumberOfFrames", as_int),
    "rows": ("Rows", as_int),
    "columns": ("Columns", as_int),
}


def row_values(header: InstanceHeader, columns: Mapping[str, tuple[str, Converter]]) -> dict[str, Any]:
    """The column values of one level, from the header, per the mapping table."""
    return {column: convert(header.get(keyword)) for column, (keyword, convert) in columns.items()}


_PATIENTS: Final = cast(Table, Patient.__table__)
_STUDIES: Final = cast(Table, Study.__table__)
_SERIES: Final = cast(Table, Series.__table__)
_ASSOCIATIONS: Final = cast(Table, Association.__table__)
_INSTANCES: Final = cast(Table, Instance.__table__)

# Statements on the hot ingest path, built once; values are bound per call.
_FIND_INSTANCE: Final = select(_INSTANCES.c.id, _INSTANCES.c.blob_key, _INSTANCES.c.size).where(
    _INSTANCES.c.sop_instance_uid == bindparam("uid")
)
_INSERT_INSTANCE: Final = insert(_INSTANCES).returning(_INSTANCES.c.id)
_UPDATE_INSTANCE: Final = update(_INSTANCES).where(_INSTANCES.c.id == bindparam("pk"))
_FAST_FIND_INSTANCE: Final = Prepared(_FIND_INSTANCE)
_FAST_INSERT_INSTANCE: Final = Prepared(_INSERT_INSTANCE)
_TOUCH_STUDY: Final = update(_STUDIES).where(_STUDIES.c.id == bindparam("pk")).values(updated_at=bindparam("now"))
#: The insert of an instance not known to be stored: nothing (no row returned) when its SOP Instance
#: UID is, so the duplicate check costs no statement of its own when there is no duplicate. SQLite
#: only: there a skipped insert takes no row id. PostgreSQL's would take a number from the id
#: sequence, and the rows' ids would no longer be the ones find-then-insert gives.
_FAST_INSERT_NEW_INSTANCE: Final[Mapping[str, Prepared]] = {
    "sqlite": Prepared(
        sqlite.insert(_INSTANCES).on_conflict_do_nothing(index_elements=["sop_instance_uid"]).returning(_INSTANCES.c.id)
    ),
}

# Dialects whose INSERT can skip a row that violates a unique constraint.
_INSERT_IGNORING: Final[Mapping[str, Callable[[Table, Mapping[str, Any], list[str]], Any]]] = {
    "sqlite": lambda t, v, k: sqlite.insert(t).values(**v).on_conflict_do_nothing(index_elements=k),
    "postgresql": lambda t, v, k: postgresql.insert(t).values(**v).on_conflict_do_nothing(index_elements=k),
}


def _ensure(
    conn: Connection, table: Table, key: Mapping[str, Any], values: Mapping[str, Any], what: str
) -> tuple[int, bool]:
    """(primary key of the row with ``key``, whether this call inserted it), inserting ``values`` if
    there is none.

    Concurrent inserters (other nodes) are tolerated: the insert skips on conflict.
    """
    where = [table.c[name] == value for name, value in key.items()]
    existing = conn.execute(select(table).where(*where)).mappings().first()
    if existing is None:
        statement = _INSERT_IGNORING[conn.dialect.name](table, values, list(key)).returning(table.c.id)
        inserted = conn.execute(statement).scalar()
        if inserted is not None:
            return int(inserted), True
        # another node inserted it first
        existing = conn.execute(select(table).where(*where)).mappings().one()
        if all(existing[name] == value for name, value in values.items()):
            return int(existing["id"]), False
    differing = sorted(n for n, v in values.items() if n in existing and existing[n] != v and n != "created_at")
    if differing and log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s keeps its first values of %s", what, dict(key), ", ".join(differing))
    return int(existing["id"]), False


#: The internal key of a patient without a Patient ID: this, then the Study Instance UID. A Patient ID
#: is one LO value, which holds no backslash (PS3.5 6.2), so no Patient ID equals such a key.
NO_ID_KEY_PREFIX: Final = "\\study\\"


def patient_key(patient_id: str, study_instance_uid: str) -> str:
    """The internal key of a patient (``patients.patient_key``, unique with the issuer): the Patient ID
    when there is one; for an empty one (or only spaces) the study's own key.

    An empty Patient ID identifies nobody (research and anonymised data often have none): such
    instances are not merged with other studies' by it; the instances of one study share one patient.
    """
    return patient_id if patient_id.strip(" ") else NO_ID_KEY_PREFIX + study_instance_uid


def study_of_patient_key(key: str) -> str:
    """The Study Instance UID of a patient without a Patient ID (from its :func:`patient_key`), else ""."""
    return key[len(NO_ID_KEY_PREFIX) :] if key.startswith(NO_ID_KEY_PREFIX) else ""


def ensure_patient(conn: Connection, header: InstanceHeader, now: dt.datetime) -> tuple[int, bool]:
    """(primary key, newly inserted) of the instance's patient: by Patient ID and issuer, or, without a
    Patient ID, the patient of the instance's study (:func:`patient_key`)."""
    values = row_values(header, PATIENT_COLUMNS)
    if not values["patient_id"].strip(" "):
        values["patient_id"] = ""
    values["patient_key"] = patient_key(values["patient_id"], header.get("StudyInstanceUID"))
    key = {"patient_key": values["patient_key"], "issuer_of_patient_id": values["issuer_of_patient_id"]}
    return _ensure(conn, _PATIENTS, key, {**values, "created_at": now}, "patient")


def ensure_study(conn: Connection, header: InstanceHeader, patient_pk: int, now: dt.datetime) -> tuple[int, bool]:
    """(primary key, newly inserted) of the instance's study."""
    values = row_values(header, STUDY_COLUMNS)
    key = {"study_instance_uid": values["study_instance_uid"]}
    row = {**values, "patient_pk": patient_pk, "created_at": now, "updated_at": now}
    study_pk, created = _ensure(conn, _STUDIES, key, row, "study")
    conn.execute(_TOUCH_STUDY, {"pk": study_pk, "now": now})
    return study_pk, created


def ensure_series(conn: Connection, header: InstanceHeader, study_pk: int, now: dt.datetime) -> tuple[int, bool]:
    """(primary key, newly inserted) of the instance's series."""
    values = row_values(header, SERIES_COLUMNS)
    key = {"series_instance_uid": values["series_instance_uid"]}
    return _ensure(conn, _SERIES, key, {**values, "study_pk": study_pk, "created_at": now}, "series")


def find_instance(conn: Connection, sop_instance_uid: str) -> tuple[int, str, int] | None:
    """(primary key, blob key, size) of a stored instance, or None."""
    cursor = _FAST_FIND_INSTANCE.execute(conn, {"uid": sop_instance_uid})
    row = cursor.fetchone()
    cursor.close()
    return None if row is None else (int(row[0]), str(row[1]), int(row[2]))


def write_instance(conn: Connection, values: Mapping[str, Any], replace_pk: int | None) -> int:
    """Insert the instance row, or overwrite row ``replace_pk``; return its primary key."""
    if replace_pk is None:
        cursor = _FAST_INSERT_INSTANCE.execute(conn, values)
        pk = int(cursor.fetchone()[0])
        cursor.close()
        return pk
    conn.execute(_UPDATE_INSTANCE.values({name: bindparam(name) for name in values}), {**values, "pk": replace_pk})
    return replace_pk


def inserts_new_instance(conn: Connection) -> bool:
    """Whether :func:`insert_new_instance` works on this connection's database (SQLite)."""
    return conn.dialect.name in _FAST_INSERT_NEW_INSTANCE


def insert_new_instance(conn: Connection, values: Mapping[str, Any]) -> int | None:
    """Insert the row of an instance and return its primary key, or write nothing and return None when
    an instance with its SOP Instance UID is stored (then :func:`find_instance` and the duplicate
    policy decide). One statement where :func:`find_instance` then :func:`write_instance` take two,
    for the same row. Only where :func:`inserts_new_instance` says so."""
    cursor = _FAST_INSERT_NEW_INSTANCE[conn.dialect.name].execute(conn, values)
    row = cursor.fetchone()
    cursor.close()
    return None if row is None else int(row[0])


def count_instances(conn: Connection) -> int:
    """From the counters the index keeps (index/stats_repo.py, migration 0010): not a COUNT(*)."""
    return stats_repo.count_instances(conn)


def blob_key_of(conn: Connection, sop_instance_uid: str) -> str | None:
    found = find_instance(conn, sop_instance_uid)
    return None if found is None else found[1]


def blob_keys(conn: Connection) -> list[tuple[str, str]]:
    """(SOP Instance UID, blob key) of every stored instance (``minipacs check``: ~100 bytes each)."""
    return [
        (str(uid), str(key)) for uid, key in conn.execute(select(_INSTANCES.c.sop_instance_uid, _INSTANCES.c.blob_key))
    ]


#: Columns of the association log (index/schema.py ``associations``); ``contexts`` and
#: ``operations`` are lists of mappings, kept as JSON text.
ASSOCIATION_FIELDS: Final = (
    "started_at",
    "ended_at",
    "role",
    "calling_aet",
    "called_aet",
    "peer_host",
    "peer_port",
    "accepted",
    "reject_reason",
    "end_reason",
    "contexts",
    "operations",
    "bytes_received",
    "bytes_sent",
    "tls",
    "tls_peer",
    "user_identity",
    "node",
)
_JSON_FIELDS: Final = frozenset({"contexts", "operations"})


def save_association(conn: Connection, record: Mapping[str, Any], pk: int | None) -> int:
    """Insert the association ``record`` (:data:`ASSOCIATION_FIELDS`), or update row ``pk``; return its id."""
    values = {
        name: json.dumps(record[name], default=str) if name in _JSON_FIELDS else record[name]
        for name in ASSOCIATION_FIELDS
    }
    if pk is None:
        return int(conn.execute(insert(Association).values(**values).returning(Association.id)).scalar_one())
    conn.execute(update(Association).where(Association.id == pk).values(**values))
    return pk


def load_associations(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The most recent associations, newest first: :data:`ASSOCIATION_FIELDS` and ``id`` of each."""
    table = _ASSOCIATIONS
    rows = conn.execute(select(table).order_by(table.c.started_at.desc(), table.c.id.desc()).limit(limit)).mappings()
    return [
        {
            **{name: json.loads(row[name]) if name in _JSON_FIELDS else row[name] for name in ASSOCIATION_FIELDS},
            "id": row["id"],
        }
        for row in rows
    ]


__all__ = [
    "ASSOCIATION_FIELDS",
    "INSTANCE_COLUMNS",
    "InstanceHeader",
    "NO_ID_KEY_PREFIX",
    "PATIENT_COLUMNS",
    "SERIES_COLUMNS",
    "STUDY_COLUMNS",
    "as_date",
    "as_int",
    "as_text",
    "as_time",
    "blob_key_of",
    "blob_keys",
    "count_instances",
    "ensure_patient",
    "ensure_series",
    "ensure_study",
    "find_instance",
    "insert_new_instance",
    "inserts_new_instance",
    "load_associations",
    "normalise_name",
    "patient_key",
    "row_values",
    "save_association",
    "study_of_patient_key",
    "write_instance",
]
