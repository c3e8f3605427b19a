"""The intake log's committed LSN (core/intake.py).

One row, id 1: the last intake-log record whose index rows are committed. At start, records
after it are ingested again (their commit was lost); records up to it only have their files
checked. Also an index on ``instances.blob_key``, which that check and the orphan check use.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "intake_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lsn", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.bulk_insert(table, [{"id": 1, "lsn": 0}])
    # Start-up replay and the orphan check look instances up by blob key.
    op.create_index("ix_instances_blob_key", "instances", ["blob_key"])


def downgrade() -> None:
    op.drop_index("ix_instances_blob_key", table_name="instances")
    op.drop_table("intake_state")
