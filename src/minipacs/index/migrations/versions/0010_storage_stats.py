"""Storage counters kept in the index: ``GET /api/stats`` no longer walks the storage folder.

Issue 10. Before, the statistics summed the size of every file under ``storage/`` and counted
the instance rows on each request: 5.5 s at 300,000 files, on the event loop. Now the table
``storage_stats`` holds the number of patients, studies, series and instances and the bytes
of the stored instances, and triggers on those four tables keep it right in the transaction
that inserts, replaces or deletes a row, whatever code path issues the statement.

Why triggers and not counter updates in Python next to each statement:
- every path is covered, present and future (ingest, replace, each delete level, a later
  migration or repair that writes rows) without anyone remembering the counters;
- on the ingest hot path they cost no Python at all: a SQLite trigger runs inside the insert
  (a few microseconds of C), where one more SQLAlchemy statement per batch costs ~40 us of
  Python, i.e. per instance on a sequential association (a batch of one).

PostgreSQL (several nodes on one index): a single counter row would be locked by each ingest
transaction from its first insert to its commit (after its renames and fsyncs), serialising
all nodes. So the counters are split over ``_PG_SLOTS`` rows; a transaction updates the row
``txid_current() % _PG_SLOTS`` and readers sum the rows. SQLite has one writer: one row, slot 0.

Existing rows are counted once, after the triggers exist (on PostgreSQL CREATE TRIGGER locks
the tables against writers until this migration commits, so no row is counted twice or missed).

NOTE for later migrations: on SQLite, ``batch_alter_table`` rebuilds a table and drops its
triggers; such a migration must create these triggers again (tests/index/test_storage_stats.py
checks that they exist at head).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Counter rows on PostgreSQL: two concurrent writer transactions share one with odds 1/16.
_PG_SLOTS = 16

#: Table -> its counter column, for the row-counting triggers.
_COUNTED = {"patients": "patients", "studies": "studies", "series": "series"}


def _sqlite_triggers() -> list[str]:
    slot = "WHERE slot = 0"
    statements = [
        f"""CREATE TRIGGER storage_stats_instances_insert AFTER INSERT ON instances BEGIN
            UPDATE storage_stats SET instances = instances + 1, instance_bytes = instance_bytes + NEW.size {slot};
            END""",
        f"""CREATE TRIGGER storage_stats_instances_delete AFTER DELETE ON instances BEGIN
            UPDATE storage_stats SET instances = instances - 1, instance_bytes = instance_bytes - OLD.size {slot};
            END""",
        f"""CREATE TRIGGER storage_stats_instances_size AFTER UPDATE OF size ON instances
            WHEN NEW.size IS NOT OLD.size BEGIN
            UPDATE storage_stats SET instance_bytes = instance_bytes + NEW.size - OLD.size {slot};
            END""",
    ]
    for table, column in _COUNTED.items():
        statements += [
            f"""CREATE TRIGGER storage_stats_{table}_insert AFTER INSERT ON {table} BEGIN
                UPDATE storage_stats SET {column} = {column} + 1 {slot}; END""",
            f"""CREATE TRIGGER storage_stats_{table}_delete AFTER DELETE ON {table} BEGIN
                UPDATE storage_stats SET {column} = {column} - 1 {slot}; END""",
        ]
    return statements


def _postgresql_triggers() -> list[str]:
    slot = f"WHERE slot = txid_current() % {_PG_SLOTS}"
    statements = [
        f"""CREATE FUNCTION storage_stats_instances() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE storage_stats SET instances = instances + 1, instance_bytes = instance_bytes + NEW.size {slot};
            ELSIF TG_OP = 'DELETE' THEN
                UPDATE storage_stats SET instances = instances - 1, instance_bytes = instance_bytes - OLD.size {slot};
            ELSIF NEW.size IS DISTINCT FROM OLD.size THEN
                UPDATE storage_stats SET instance_bytes = instance_bytes + NEW.size - OLD.size {slot};
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER storage_stats_instances AFTER INSERT OR DELETE OR UPDATE OF size ON instances
        FOR EACH ROW EXECUTE FUNCTION storage_stats_instances()""",
    ]
    for table, column in _COUNTED.items():
        statements += [
            f"""CREATE FUNCTION storage_stats_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE storage_stats SET {column} = {column} + CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END {slot};
                RETURN NULL;
            END $$""",
            f"""CREATE TRIGGER storage_stats_{table} AFTER INSERT OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION storage_stats_{table}()""",
        ]
    return statements


def upgrade() -> None:
    conn = op.get_bind()
    postgresql = conn.dialect.name == "postgresql"
    stats = op.create_table(
        "storage_stats",
        sa.Column("slot", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("patients", sa.BigInteger(), nullable=False),
        sa.Column("studies", sa.BigInteger(), nullable=False),
        sa.Column("series", sa.BigInteger(), nullable=False),
        sa.Column("instances", sa.BigInteger(), nullable=False),
        sa.Column("instance_bytes", sa.BigInteger(), nullable=False),
    )
    zero = {"patients": 0, "studies": 0, "series": 0, "instances": 0, "instance_bytes": 0}
    op.bulk_insert(stats, [{"slot": slot, **zero} for slot in range(_PG_SLOTS if postgresql else 1)])
    for statement in _postgresql_triggers() if postgresql else _sqlite_triggers():
        op.execute(statement)
    # The rows already there, counted after the triggers exist (see the module docstring).
    count = {table: sa.select(sa.func.count()).select_from(sa.table(table)).scalar_subquery() for table in _COUNTED}
    instances = sa.table("instances", sa.column("size", sa.BigInteger))
    conn.execute(
        sa.update(stats)
        .where(stats.c.slot == 0)
        .values(
            **{column: count[table] for table, column in _COUNTED.items()},
            instances=sa.select(sa.func.count()).select_from(instances).scalar_subquery(),
            instance_bytes=sa.select(sa.func.coalesce(sa.func.sum(instances.c.size), 0)).scalar_subquery(),
        )
    )


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for table in ("instances", *_COUNTED):
            op.execute(f"DROP TRIGGER storage_stats_{table} ON {table}")
            op.execute(f"DROP FUNCTION storage_stats_{table}()")
    else:
        for name in ("instances_insert", "instances_delete", "instances_size"):
            op.execute(f"DROP TRIGGER storage_stats_{name}")
        for table in _COUNTED:
            op.execute(f"DROP TRIGGER storage_stats_{table}_insert")
            op.execute(f"DROP TRIGGER storage_stats_{table}_delete")
    op.drop_table("storage_stats")
