"""Patients without a Patient ID are kept apart, one per study.

Issue 12 item 5. Before, every instance with an empty Patient ID (common in research and anonymised data) was
filed under ONE patient, named after the first such instance. Now a patient's row is unique on
``patient_key`` (and the issuer): the Patient ID when there is one, else a per-study key
(index/repository.py ``patient_key``). ``patient_id`` stays what queries answer ("" here).

The old ``patient_id`` column is renamed ``patient_key`` (the unique constraint and its index
follow it: no table rebuild, which SQLite could not do under the studies' foreign key), and a new
``patient_id`` column gets the answered value. Each merged empty-ID patient is then split: its
first study keeps the row, every other study gets a new one. The name, birth date and sex of each
come from the stored PS3.18 JSON metadata of one of the study's instances (``instance_metadata``);
a study without any keeps the merged row's values (a warning says which).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from minipacs.dicom.values import as_date, normalise_name

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

#: index/repository.py NO_ID_KEY_PREFIX, frozen here as this revision wrote it.
_NO_ID = "\\study\\"
#: The key of an empty-ID patient row that has no study at all (nothing to name it after).
_NO_STUDY = "\\patient\\"

_patients = sa.table(
    "patients",
    sa.column("id", sa.Integer),
    sa.column("patient_key", sa.String),
    sa.column("patient_id", sa.String),
    sa.column("issuer_of_patient_id", sa.String),
    sa.column("patient_name", sa.String),
    sa.column("patient_name_norm", sa.String),
    sa.column("patient_birth_date", sa.Date),
    sa.column("patient_birth_date_raw", sa.String),
    sa.column("patient_sex", sa.String),
    sa.column("created_at", sa.DateTime),
)
_studies = sa.table(
    "studies",
    sa.column("id", sa.Integer),
    sa.column("patient_pk", sa.Integer),
    sa.column("study_instance_uid", sa.String),
)
_series = sa.table("series", sa.column("id", sa.Integer), sa.column("study_pk", sa.Integer))
_instances = sa.table(
    "instances",
    sa.column("id", sa.Integer),
    sa.column("series_pk", sa.Integer),
    sa.column("sop_instance_uid", sa.String),
)
_metadata = sa.table("instance_metadata", sa.column("sop_instance_uid", sa.String), sa.column("json", sa.Text))


def _text(model: Mapping[str, Any], tag: str) -> str:
    """One attribute of a PS3.18 JSON object (F.2) as DICOM text: values joined by '\\', a person name's
    groups by '=' (trailing empty groups dropped)."""
    values = model.get(tag, {}).get("Value") or []
    out = []
    for value in values:
        if isinstance(value, dict):
            groups = [str(value.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            out.append("=".join(groups))
        else:
            out.append("" if value is None else str(value))
    return "\\".join(out)


def _patient_of(conn: sa.Connection, study_pk: int) -> dict[str, Any] | None:
    """Name, birth date and sex of a study's patient as its first instance with metadata stored says."""
    found = conn.execute(
        sa.select(_metadata.c.json)
        .select_from(
            _instances.join(_series, _instances.c.series_pk == _series.c.id).join(
                _metadata, _metadata.c.sop_instance_uid == _instances.c.sop_instance_uid
            )
        )
        .where(_series.c.study_pk == study_pk)
        .order_by(_instances.c.id)
        .limit(1)
    ).scalar()
    if found is None:
        return None
    try:
        model = json.loads(found)
    except ValueError:
        return None
    name, birth = _text(model, "00100010"), _text(model, "00100030")
    return {
        "patient_name": name,
        "patient_name_norm": normalise_name(name),
        "patient_birth_date": as_date(birth),
        "patient_birth_date_raw": birth,
        "patient_sex": _text(model, "00100040"),
    }


def upgrade() -> None:
    conn = op.get_bind()
    op.execute("ALTER TABLE patients RENAME COLUMN patient_id TO patient_key")
    op.drop_index("ix_patients_patient_id", table_name="patients")  # it followed the column
    op.add_column("patients", sa.Column("patient_id", sa.String(), nullable=False, server_default=""))
    conn.execute(sa.update(_patients).values(patient_id=_patients.c.patient_key))
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"])

    merged = [
        row._asdict() for row in conn.execute(sa.select(_patients).where(sa.func.trim(_patients.c.patient_key) == ""))
    ]
    for row in merged:
        studies = conn.execute(
            sa.select(_studies.c.id, _studies.c.study_instance_uid)
            .where(_studies.c.patient_pk == row["id"])
            .order_by(_studies.c.id)
        ).all()
        if not studies:
            conn.execute(
                sa.update(_patients)
                .where(_patients.c.id == row["id"])
                .values(patient_key=f"{_NO_STUDY}{row['id']}", patient_id="")
            )
            continue
        for index, (study_pk, study_uid) in enumerate(studies):
            own = _patient_of(conn, study_pk)
            if own is None:
                log.warning(
                    "study %s had no Patient ID and no stored metadata: its patient keeps the name, "
                    "birth date and sex of the patient it was merged with",
                    study_uid,
                )
            values = {"patient_key": _NO_ID + study_uid, "patient_id": "", **(own or {})}
            if index == 0:
                conn.execute(sa.update(_patients).where(_patients.c.id == row["id"]).values(**values))
                continue
            copied = {k: v for k, v in row.items() if k != "id"}
            pk = conn.execute(sa.insert(_patients).values(**{**copied, **values}).returning(_patients.c.id)).scalar()
            conn.execute(sa.update(_studies).where(_studies.c.id == study_pk).values(patient_pk=pk))
        if len(studies) > 1:
            log.info(
                "the patient without a Patient ID of %d studies was split into one patient per study", len(studies)
            )


def downgrade() -> None:
    conn = op.get_bind()
    # Patients without a Patient ID are merged again (the old unique key cannot hold them apart).
    for issuer in (
        conn.execute(sa.select(_patients.c.issuer_of_patient_id).distinct().where(_patients.c.patient_id == ""))
        .scalars()
        .all()
    ):
        pks = (
            conn.execute(
                sa.select(_patients.c.id)
                .where(_patients.c.patient_id == "", _patients.c.issuer_of_patient_id == issuer)
                .order_by(_patients.c.id)
            )
            .scalars()
            .all()
        )
        conn.execute(sa.update(_studies).where(_studies.c.patient_pk.in_(pks[1:])).values(patient_pk=pks[0]))
        conn.execute(sa.delete(_patients).where(_patients.c.id.in_(pks[1:])))
    conn.execute(sa.update(_patients).values(patient_key=_patients.c.patient_id))
    op.drop_index("ix_patients_patient_id", table_name="patients")
    op.drop_column("patients", "patient_id")
    op.execute("ALTER TABLE patients RENAME COLUMN patient_key TO patient_id")
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"])
