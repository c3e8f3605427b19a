"""Instances are indexed by arrival time: the overview page counts the last hour's and day's arrivals
by reading only those rows.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_instances_received_at", "instances", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_instances_received_at", table_name="instances")
