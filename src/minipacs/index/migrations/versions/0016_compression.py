"""Lossless compression of stored instances (the storage policy): sizes and deferred removals.

- ``instances.original_size``: the size of the file as it arrived, kept when the archive replaced it
  with a compressed copy (NULL: never compressed here, ``size`` is the original size); the disk
  saved is ``original_size - size`` (docs/COMPRESSION.md).
- ``instances.compression``: what compression made of the instance: "" (not tried), the syntax name
  it was compressed to, or ``skipped: <why>`` (no pixel data, already compressed, ...), so a
  background sweep does not try the same instance again.
- ``blob_removals``: blobs of replaced copies, removed ``remove_after`` a grace period, so a retrieve
  that chose the old copy just before the switch still finds its file (core/compression.py).

The columns are added with plain ALTER TABLE ADD COLUMN (no ``batch_alter_table``): on SQLite a
batch rebuild would drop the storage counters' triggers of migration 0010.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("original_size", sa.BigInteger(), nullable=True))
    op.add_column("instances", sa.Column("compression", sa.String(), nullable=False, server_default=""))
    op.create_table(
        "blob_removals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("blob_key", sa.String(255), nullable=False),
        sa.Column("remove_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_blob_removals_remove_after", "blob_removals", ["remove_after"])


def downgrade() -> None:
    op.drop_index("ix_blob_removals_remove_after", table_name="blob_removals")
    op.drop_table("blob_removals")
    # plain DROP COLUMN (SQLite 3.35+, PostgreSQL): no table rebuild, 0010's triggers stay
    op.execute("ALTER TABLE instances DROP COLUMN compression")
    op.execute("ALTER TABLE instances DROP COLUMN original_size")
