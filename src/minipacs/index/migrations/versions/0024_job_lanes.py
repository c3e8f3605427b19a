"""Ordered lanes in the job queue: ``jobs.lane``.

Jobs of one lane run one at a time, in the order they were submitted (their ids), whichever node
claims them: a queued job of a lane is not claimed while an older job of the same lane is queued or
running (index/jobs_repo.py ``claim``). HL7 ADT corrections use it (hl7/adt.py ``LANE``): an HL7 v2
feed is an ordered stream and the archive must end as if its messages were applied in that order.
Every job written before has no lane: the server default "".

A plain ALTER TABLE ADD COLUMN (no ``batch_alter_table``): see 0016.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lane", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_jobs_lane_state", "jobs", ["lane", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_lane_state", table_name="jobs")
    op.execute("ALTER TABLE jobs DROP COLUMN lane")
