"""Routing survives a crash: ``routing_cursors``, per node, the changes journal's ``seq`` up to which
the instances the node stored are routed (core/routing.py). The router reads the journal after it
(rows written in the ingest's own transaction) instead of a list kept in memory, so an instance
acknowledged just before a kill is routed at the next start.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_cursors",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("routing_cursors")
