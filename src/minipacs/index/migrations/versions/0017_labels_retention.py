"""Labels on studies (core/labels.py), and the reason of a change (retention names its rule).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "study_labels",
        sa.Column("id", Id, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("study_instance_uid", "label", name="uq_study_labels"),
    )
    op.create_index("ix_study_labels_label", "study_labels", ["label"])
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("reason", sa.String(100), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("reason")
    op.drop_index("ix_study_labels_label", table_name="study_labels")
    op.drop_table("study_labels")
