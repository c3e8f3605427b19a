"""The audit trail says how an event ended: ``audit.outcome``.

Since 0023 a refused UI login is recorded (core/audit.py Action.LOGIN), so a row may stand for
something that was tried and failed. ``outcome`` holds the PS3.15 A.5 EventOutcomeIndicator as a
number: 0 success, 4 minor failure (a refused login), 8 serious failure, 12 major failure. Every
row written before was a success: the server default 0.

A plain ALTER TABLE ADD COLUMN (no ``batch_alter_table``): see 0016.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("outcome", sa.SmallInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.execute("ALTER TABLE audit DROP COLUMN outcome")
