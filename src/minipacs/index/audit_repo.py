"""SQL of the audit trail (core/audit.py gives the rows their meaning)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, delete, insert, select

from minipacs.index.schema import AuditEvent, Patient, Study

_AUDIT: Final = cast(Table, AuditEvent.__table__)

#: The columns of one audit row, in the order :func:`audit_rows` reads them.
AUDIT_FIELDS: Final = (
    "id",
    "time",
    "actor_kind",
    "actor",
    "address",
    "action",
    "patient_id",
    "study_uid",
    "detail",
    "node",
    "outcome",
)


def patients_of(conn: Connection, study_uids: Sequence[str]) -> dict[str, str]:
    """Study Instance UID -> Patient ID of those of ``study_uids`` in the index."""
    found: dict[str, str] = {}
    unique = sorted(set(study_uids))
    for start in range(0, len(unique), 500):
        query = (
            select(Study.study_instance_uid, Patient.patient_id)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.study_instance_uid.in_(unique[start : start + 500]))
        )
        found.update({str(r[0]): str(r[1]) for r in conn.execute(query)})
    return found


def insert_audit(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Append ``rows``; a row naming a study but no patient gets the study's Patient ID from the index
    (looked up here, in the batch, so that whoever records an event need not). The rows as written."""
    missing = [str(r["study_uid"]) for r in rows if r["study_uid"] and not r["patient_id"]]
    patients = patients_of(conn, missing) if missing else {}
    out = [
        {**r, "patient_id": patients.get(str(r["study_uid"]), "")}
        if r["study_uid"] and not r["patient_id"]
        else dict(r)
        for r in rows
    ]
    conn.execute(insert(_AUDIT), out)
    return out


def audit_rows(
    conn: Connection,
    *,
    patient_id: str = "",
    study_uid: str = "",
    actor: str = "",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Matching rows, newest first; every filter given must hold (exact values)."""
    t = _AUDIT
    query = select(*(t.c[name] for name in AUDIT_FIELDS))
    for column, value in ((t.c.patient_id, patient_id), (t.c.study_uid, study_uid), (t.c.actor, actor)):
        if value:
            query = query.where(column == value)
    if since is not None:
        query = query.where(t.c.time >= since)
    if until is not None:
        query = query.where(t.c.time < until)
    rows = conn.execute(query.order_by(t.c.time.desc(), t.c.id.desc()).limit(limit)).all()
    return [dict(zip(AUDIT_FIELDS, row, strict=True)) for row in rows]


def prune_audit(conn: Connection, before: dt.datetime) -> int:
    """Delete rows older than ``before``; how many."""
    return int(conn.execute(delete(_AUDIT).where(_AUDIT.c.time < before)).rowcount or 0)


__all__ = ["AUDIT_FIELDS", "audit_rows", "insert_audit", "patients_of", "prune_audit"]
