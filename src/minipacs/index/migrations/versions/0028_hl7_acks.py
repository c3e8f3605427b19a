"""``hl7_acks``: the acknowledgements (AA) of the HL7 messages accepted lately, by the digest of the
message's bytes, so that a message sent again after a restart, or to another node of the index,
gets its ACK again instead of being applied twice (hl7/adt.py, core/hl7_acks.py).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hl7_acks",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("ack", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hl7_acks_received_at", "hl7_acks", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_hl7_acks_received_at", table_name="hl7_acks")
    op.drop_table("hl7_acks")
