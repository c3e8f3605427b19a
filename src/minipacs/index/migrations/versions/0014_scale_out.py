"""Scale-out: the changes journal names the node of each change, each node's own figures are kept in
the index (``node_stats``), and PostgreSQL serves prefix wildcards on names and IDs from an index.

Prefix wildcards: ``PatientName=SMITH*`` becomes ``patient_name_norm LIKE 'smith%'``. A plain
btree serves LIKE only under the C collation; databases are usually created with a language
collation (Debian: C.UTF-8 or en_US.UTF-8, neither of which PostgreSQL 15 treats as C), so the
planner read every patient row (76 ms at 1,000,000 patients). An index with the
``text_pattern_ops`` operator class compares bytes and serves ``LIKE 'prefix%'`` whatever the
collation. SQLite needs nothing: GLOB is case-sensitive and uses the plain index.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index, table, column) of the PostgreSQL pattern indexes.
_PATTERN_INDEXES = (
    ("ix_patients_patient_name_norm_pattern", "patients", "patient_name_norm"),
    ("ix_patients_patient_id_pattern", "patients", "patient_id"),
    ("ix_studies_referring_physician_name_norm_pattern", "studies", "referring_physician_name_norm"),
    ("ix_studies_accession_number_pattern", "studies", "accession_number"),
)


def upgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "node_stats",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested", sa.BigInteger(), nullable=False),
        sa.Column("index_batches", sa.BigInteger(), nullable=False),
        sa.Column("free_bytes", sa.BigInteger(), nullable=False),
        sa.Column("running", sa.Boolean(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, table, column in _PATTERN_INDEXES:
            op.create_index(name, table, [column], postgresql_ops={column: "text_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _column in _PATTERN_INDEXES:
            op.drop_index(name, table_name=table)
    op.drop_table("node_stats")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("node")
