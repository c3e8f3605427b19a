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
  (+3 to 6 us of CPU per instance, measured by bench/bench_stats_counters.py), where one more
  SQLAlchemy statement per batch costs +20 to 25 us of Python, i.e. per instance on a sequential
  association (a batch of one).

SQLite: row-level triggers (an UPDATE there is in place), one writer, one counter row (slot 0).

PostgreSQL: one counter update per transaction, at its commit. Statement-level triggers (with
transition tables: one call per statement, not per row) add the statement's changes to the
transaction's deltas, kept in a transaction-local setting (``_PG_DELTAS``: no row written, undone
with a rolled-back savepoint); a deferred constraint trigger applies them at commit (its first
event does; later events of the same commit find nothing left). Why not update the counter row in
each row trigger: a row updated again and again in one transaction leaves a version chain that
every later update walks (deleting 20,000 instances took 2.5 s instead of 0.07 s), and several
nodes on one index would queue on that row from their first insert to their commit (after their
renames and fsyncs), or deadlock on it. Now the row is locked only while the commit ends, and the
counters are split over ``_PG_SLOTS`` rows besides: a transaction updates row
``txid_current() % _PG_SLOTS``; readers sum the rows. The price, in PostgreSQL backend CPU per
inserted instance row: +22 us in a one-row transaction (per-row counter updates: +8 us), +6 us in
transactions of 16 to 512 rows; deleting 20,000 instances costs what it did without counters.

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


#: PostgreSQL: the transaction's own deltas (patients, studies, series, instances, bytes) until it
#: commits, as a transaction-local setting (SET LOCAL semantics: gone at the end of the transaction,
#: undone with a rolled-back savepoint).
_PG_DELTAS = "minipacs.storage_stats"

#: PostgreSQL statement-level triggers that add to the deltas: (name, table, event, transition
#: tables). A trigger with transition tables takes one event and no column list: one per event.
_PG_TRIGGERS = [
    (f"storage_stats_{table}_{event.lower()}", table, event, tables)
    for table in ("instances", *_COUNTED)
    for event, tables in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    )
    if table == "instances" or event != "UPDATE"
]


def _postgresql_triggers() -> list[str]:
    position = {"patients": 1, "studies": 2, "series": 3, "instances": 4}
    add = f"""CREATE FUNCTION storage_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        n bigint := 0;  -- rows added (negative: removed)
        b bigint := 0;  -- instance bytes added
        deltas bigint[];
    BEGIN
        -- (plpgsql plans a statement when it first runs it: size is read of instances only)
        IF TG_OP = 'INSERT' AND TG_TABLE_NAME = 'instances' THEN
            SELECT count(*), coalesce(sum(size), 0) INTO n, b FROM new_rows;
        ELSIF TG_OP = 'INSERT' THEN
            SELECT count(*) INTO n FROM new_rows;
        ELSIF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'instances' THEN
            SELECT -count(*), -coalesce(sum(size), 0) INTO n, b FROM old_rows;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT -count(*) INTO n FROM old_rows;
        ELSE  -- an UPDATE of instances: the count stays, the bytes may change (a replaced copy)
            SELECT coalesce(sum(size), 0) INTO b FROM new_rows;
            b := b - (SELECT coalesce(sum(size), 0) FROM old_rows);
        END IF;
        IF n = 0 AND b = 0 THEN
            RETURN NULL;  -- e.g. an INSERT ... ON CONFLICT DO NOTHING that inserted nothing
        END IF;
        deltas := coalesce(
            string_to_array(nullif(current_setting('{_PG_DELTAS}', true), ''), ',')::bigint[], '{{0,0,0,0,0}}');
        deltas[CASE TG_TABLE_NAME {" ".join(f"WHEN '{t}' THEN {k}" for t, k in position.items())} END] :=
            deltas[CASE TG_TABLE_NAME {" ".join(f"WHEN '{t}' THEN {k}" for t, k in position.items())} END] + n;
        deltas[5] := deltas[5] + b;
        PERFORM set_config('{_PG_DELTAS}', array_to_string(deltas, ','), true);
        RETURN NULL;
    END $$"""
    flush = f"""CREATE FUNCTION storage_stats_flush() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        deltas bigint[] := string_to_array(nullif(current_setting('{_PG_DELTAS}', true), ''), ',')::bigint[];
    BEGIN
        IF deltas IS NULL THEN
            RETURN NULL;  -- already flushed by an earlier event of this commit, or nothing counted
        END IF;
        PERFORM set_config('{_PG_DELTAS}', '', true);
        IF deltas <> '{{0,0,0,0,0}}' THEN
            UPDATE storage_stats SET patients = patients + deltas[1], studies = studies + deltas[2],
                series = series + deltas[3], instances = instances + deltas[4],
                instance_bytes = instance_bytes + deltas[5]
                WHERE slot = txid_current() % {_PG_SLOTS};
        END IF;
        RETURN NULL;
    END $$"""
    statements = [add, flush]
    statements += [
        f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {tables} "
        "FOR EACH STATEMENT EXECUTE FUNCTION storage_stats_add()"
        for name, table, event, tables in _PG_TRIGGERS
    ]
    statements += [
        f"CREATE CONSTRAINT TRIGGER storage_stats_{table}_flush AFTER INSERT OR DELETE "
        f"{'OR UPDATE ' if table == 'instances' else ''}ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION storage_stats_flush()"
        for table in ("instances", *_COUNTED)
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
        for name, table, _, _ in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER {name} ON {table}")
        for table in ("instances", *_COUNTED):
            op.execute(f"DROP TRIGGER storage_stats_{table}_flush ON {table}")
        op.execute("DROP FUNCTION storage_stats_add()")
        op.execute("DROP FUNCTION storage_stats_flush()")
    else:
        for name in ("instances_insert", "instances_delete", "instances_size"):
            op.execute(f"DROP TRIGGER storage_stats_{name}")
        for table in _COUNTED:
            op.execute(f"DROP TRIGGER storage_stats_{table}_insert")
            op.execute(f"DROP TRIGGER storage_stats_{table}_delete")
    op.drop_table("storage_stats")
