"""The anonymization mapping: original value <-> pseudonym, visible to admins.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "anonymization_mappings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("original", sa.String(400), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("kind", "original", "pseudonym", name="uq_anonymization_mapping"),
    )
    op.create_index("ix_anonymization_mappings_pseudonym", "anonymization_mappings", ["pseudonym"])


def downgrade() -> None:
    op.drop_index("ix_anonymization_mappings_pseudonym", table_name="anonymization_mappings")
    op.drop_table("anonymization_mappings")
