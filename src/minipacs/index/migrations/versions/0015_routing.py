"""Auto-routing: rules created through the API, the marks of waiting triggers, the delivery receipts.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "routing_rules",
        sa.Column("id", Id, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "routing_marks",
        sa.Column("id", Id, primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("last_arrival_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("rule", "key", name="uq_routing_marks_rule_key"),
    )
    op.create_index("ix_routing_marks_due", "routing_marks", ["rule", "last_arrival_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", Id, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("job_id", Id, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deliveries_study_instance_uid", "deliveries", ["study_instance_uid"])
    op.create_index("ix_deliveries_job_id", "deliveries", ["job_id"])
    op.create_index("ix_deliveries_rule_destination_sop", "deliveries", ["rule", "destination", "sop_instance_uid"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_index("ix_routing_marks_due", table_name="routing_marks")
    op.drop_table("routing_marks")
    op.drop_table("routing_rules")
