"""``watch_cursors``: how far in the changes journal a background watcher has looked, by name, shared by
every node of the index (core/merge_watch.py: the new patients under a merged-away ID). A watcher goes
on after a stop from where it was, and two nodes never look at the same rows (each claims its range
by moving the cursor from the value it read).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "watch_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("watch_cursors")
