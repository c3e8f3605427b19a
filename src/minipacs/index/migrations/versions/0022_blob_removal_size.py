"""Every replaced copy waits its grace period, not only a compressed one: ``blob_removals.size``.

Since 0022 a copy replaced by a re-sent one (duplicate_policy "replace") or by a corrected one is
queued in ``blob_removals`` too, in the transaction that switches its row, and removed
``keep_replaced_seconds`` later (core/blob_removals.py). Its size is kept with it, so ``GET /api/stats``
can say how much disk the copies waiting for removal still take. Rows queued before have size 0.

A plain ALTER TABLE ADD COLUMN (no ``batch_alter_table``): see 0016.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("blob_removals", sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.execute("ALTER TABLE blob_removals DROP COLUMN size")
