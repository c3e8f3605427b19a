"""The changes journal, and the Study Status ID a complete study answers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", Id, primary_key=True),
        sa.Column("change_type", sa.String(32), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("study_completion") as batch:
        batch.add_column(sa.Column("study_status_id", sa.String(16), nullable=False, server_default="COMPLETED"))


def downgrade() -> None:
    with op.batch_alter_table("study_completion") as batch:
        batch.drop_column("study_status_id")
    op.drop_table("changes")
