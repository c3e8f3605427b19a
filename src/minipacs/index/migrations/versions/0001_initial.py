"""Initial schema: patients, studies, series, instances, associations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", Id, primary_key=True),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(), nullable=False),
        sa.Column("patient_name", sa.String(), nullable=False),
        sa.Column("patient_name_norm", sa.String(), nullable=False),
        sa.Column("patient_birth_date", sa.Date(), nullable=True),
        sa.Column("patient_birth_date_raw", sa.String(), nullable=False),
        sa.Column("patient_sex", sa.String(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_id_issuer"),
    )
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"])
    op.create_index("ix_patients_patient_name_norm", "patients", ["patient_name_norm"])

    op.create_table(
        "studies",
        sa.Column("id", Id, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_pk", Id, sa.ForeignKey("patients.id", name="fk_studies_patient"), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("study_date_raw", sa.String(), nullable=False),
        sa.Column("study_time", sa.Time(), nullable=True),
        sa.Column("study_time_raw", sa.String(), nullable=False),
        sa.Column("accession_number", sa.String(), nullable=False),
        sa.Column("study_id", sa.String(), nullable=False),
        sa.Column("study_description", sa.String(), nullable=False),
        sa.Column("referring_physician_name", sa.String(), nullable=False),
        sa.Column("referring_physician_name_norm", sa.String(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
    )
    op.create_index("ix_studies_patient_pk", "studies", ["patient_pk"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession_number", "studies", ["accession_number"])

    op.create_table(
        "series",
        sa.Column("id", Id, primary_key=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_pk", Id, sa.ForeignKey("studies.id", name="fk_series_study"), nullable=False),
        sa.Column("modality", sa.String(), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(), nullable=False),
        sa.Column("body_part_examined", sa.String(), nullable=False),
        sa.Column("series_date", sa.Date(), nullable=True),
        sa.Column("series_date_raw", sa.String(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
    )
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])

    op.create_table(
        "instances",
        sa.Column("id", Id, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("series_pk", Id, sa.ForeignKey("series.id", name="fk_instances_series"), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("received_at", Stamp, nullable=False),
        sa.Column("origin_kind", sa.String(), nullable=False),
        sa.Column("calling_aet", sa.String(), nullable=False),
        sa.Column("called_aet", sa.String(), nullable=False),
        sa.Column("peer_host", sa.String(), nullable=False),
    )
    op.create_index("ix_instances_series_pk", "instances", ["series_pk"])

    op.create_table(
        "associations",
        sa.Column("id", Id, primary_key=True),
        sa.Column("started_at", Stamp, nullable=False),
        sa.Column("ended_at", Stamp, nullable=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("calling_aet", sa.String(), nullable=False),
        sa.Column("called_aet", sa.String(), nullable=False),
        sa.Column("peer_host", sa.String(), nullable=False),
        sa.Column("peer_port", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reject_reason", sa.Text(), nullable=False),
        sa.Column("end_reason", sa.Text(), nullable=False),
        sa.Column("contexts", sa.Text(), nullable=False),
        sa.Column("operations", sa.Text(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_associations_started_at", "associations", ["started_at"])


def downgrade() -> None:
    for table in ("associations", "instances", "series", "studies", "patients"):
        op.drop_table(table)
