"""Rejection notes (IHE IOCM, core/rejection.py): ``rejected_instances``, the instances a Key Object
Selection document titled with a rejection code rejected; a later store of one is refused.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rejected_instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("note_uid", sa.String(64), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rejected_instances_study_instance_uid", "rejected_instances", ["study_instance_uid"])
    op.create_index("ix_rejected_instances_rejected_at", "rejected_instances", ["rejected_at"])


def downgrade() -> None:
    op.drop_table("rejected_instances")
