"""Worklist entries, MPPS instances and study completion.

Revision ID: 0003
Revises: 0002
Create Date: 2025-02-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)
UID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "worklist",
        sa.Column("id", Id, primary_key=True),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("scheduled_station_ae", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("start_date", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
    )
    for column in ("accession_number", "patient_id", "study_instance_uid", "scheduled_station_ae", "status"):
        op.create_index(f"ix_worklist_{column}", "worklist", [column])
    op.create_table(
        "mpps",
        sa.Column("id", Id, primary_key=True),
        sa.Column("sop_instance_uid", UID, nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("worklist_pk", Id, nullable=True),
        sa.Column("referenced", sa.Text(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
    )
    op.create_index("ix_mpps_study_instance_uid", "mpps", ["study_instance_uid"])
    op.create_table(
        "study_completion",
        sa.Column("id", Id, primary_key=True),
        sa.Column("study_instance_uid", UID, nullable=False, unique=True),
        sa.Column("mpps_sop_instance_uid", UID, nullable=False),
        sa.Column("completed_at", Stamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("study_completion")
    op.drop_index("ix_mpps_study_instance_uid", "mpps")
    op.drop_table("mpps")
    for column in ("accession_number", "patient_id", "study_instance_uid", "scheduled_station_ae", "status"):
        op.drop_index(f"ix_worklist_{column}", "worklist")
    op.drop_table("worklist")
