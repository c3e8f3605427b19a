"""Scale-out: the changes journal names the node of each change, each node's own figures are kept in
the index (``node_stats``), and PostgreSQL serves prefix wildcards on names and IDs from an index.

Prefix wildcards: ``PatientName=SMITH*`` becomes ``patient_name_norm LIKE 'smith%'``. A plain
btree serves LIKE only under the C collation; databases are usually created with a language
collation (Debian: C.UTF-8 or en_US.UTF-8, neither of which PostgreSQL 15 treats as C), so the
planner read every patient row (76 ms at 1,000,000 patients). An index with the
``text_pattern_ops`` operator class compares bytes and serves ``LIKE 'prefix%'`` whatever the
collation. SQLite needs nothing: GLOB is case-sensitive and uses the plain index.

Inner wildcards (``*MITH*``, ``LIKE '%mith%'``) on the patient name: a GIN index of trigrams
(``pg_trgm``, a contrib extension shipped with Debian's PostgreSQL packages; trusted since
PostgreSQL 13, so a database owner may create it). Where ``CREATE EXTENSION`` is refused (no
extension files, no privilege) the migration goes on without that index and logs a WARNING:
such queries then read every patient row, as before. The index is optional, so the SQLAlchemy
schema does not declare it (index/schema.py ``OPTIONAL_INDEXES``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

log = logging.getLogger("minipacs")

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
        _trigram_index()


#: The GIN trigram index of the patient name (inner wildcards), when pg_trgm can be had.
TRIGRAM_INDEX = "ix_patients_patient_name_norm_trgm"


def _trigram_index() -> None:
    conn = op.get_bind()
    try:
        with conn.begin_nested():  # a refusal rolls back to here, not the whole migration
            # into public when it is new (a schema of its own per test would drop it with the schema);
            # where it already is (a DBA's choice) when it exists
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
    except sa.exc.DBAPIError as exc:
        log.warning(
            "PostgreSQL refused CREATE EXTENSION pg_trgm (%s): inner wildcards on PatientName (*MITH*) "
            "will read every patient row. A superuser can run CREATE EXTENSION pg_trgm in this database "
            "(Debian ships it with the postgresql package); the index is then created by hand: "
            "CREATE INDEX %s ON patients USING gin (patient_name_norm gin_trgm_ops)",
            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
            TRIGRAM_INDEX,
        )
        return
    schema = conn.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    ).scalar_one()
    conn.exec_driver_sql(
        f'CREATE INDEX {TRIGRAM_INDEX} ON patients USING gin (patient_name_norm "{schema}".gin_trgm_ops)'
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")  # the extension stays: others may use it
        for name, table, _column in _PATTERN_INDEXES:
            op.drop_index(name, table_name=table)
    op.drop_table("node_stats")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("node")
