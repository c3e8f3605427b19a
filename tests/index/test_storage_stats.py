"""Migration 0010: the storage counters and the triggers that keep them (SQLite and PostgreSQL). Issue 10."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from minipacs.index.database import alembic_config, create_index_engine, upgrade_schema
from minipacs.index.stats_repo import StorageCounts, count_rows, read_counts, recount
from tests.index.pg import postgres_schema_url

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)

#: The triggers migration 0010 creates, by dialect.
TRIGGERS = {
    "sqlite": {
        f"storage_stats_{name}"
        for name in (
            "instances_insert",
            "instances_delete",
            "instances_size",
            "patients_insert",
            "patients_delete",
            "studies_insert",
            "studies_delete",
            "series_insert",
            "series_delete",
        )
    },
    "postgresql": {
        f"storage_stats_{name}"
        for name in (
            "instances_insert",
            "instances_delete",
            "instances_update",
            "patients_insert",
            "patients_delete",
            "studies_insert",
            "studies_delete",
            "series_insert",
            "series_delete",
            "instances_flush",
            "patients_flush",
            "studies_flush",
            "series_flush",
        )
    },
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty index, not migrated."""
    if request.param == "sqlite":
        made = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
        yield made
        made.dispose()
    else:
        with postgres_schema_url() as url:
            made = create_index_engine(url)
            yield made
            made.dispose()


def _insert(conn: sa.Connection, table: str, **values: Any) -> int:
    columns = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    return int(
        conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"), values).scalar_one()
    )


def _patient(conn: sa.Connection, patient_id: str) -> int:
    return _insert(
        conn,
        "patients",
        patient_key=patient_id,
        patient_id=patient_id,
        issuer_of_patient_id="",
        patient_name="",
        patient_name_norm="",
        patient_birth_date_raw="",
        patient_sex="",
        created_at=NOW,
    )


def _study(conn: sa.Connection, patient_pk: int, uid: str) -> int:
    blank = dict.fromkeys(
        (
            "study_date_raw",
            "study_time_raw",
            "accession_number",
            "study_id",
            "study_description",
            "referring_physician_name",
            "referring_physician_name_norm",
        ),
        "",
    )
    return _insert(
        conn, "studies", study_instance_uid=uid, patient_pk=patient_pk, created_at=NOW, updated_at=NOW, **blank
    )


def _series(conn: sa.Connection, study_pk: int, uid: str) -> int:
    return _insert(
        conn,
        "series",
        series_instance_uid=uid,
        study_pk=study_pk,
        modality="CT",
        series_description="",
        body_part_examined="",
        series_date_raw="",
        created_at=NOW,
    )


def _instance(conn: sa.Connection, series_pk: int, uid: str, size: int) -> int:
    return _insert(
        conn,
        "instances",
        sop_instance_uid=uid,
        series_pk=series_pk,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"{uid}.dcm",
        size=size,
        received_at=NOW,
        origin_kind="import",
        calling_aet="",
        called_aet="",
        peer_host="",
    )


def _archive_of_0009(conn: sa.Connection) -> None:
    """Two patients, three studies, four series, five instances (150 bytes), as 0009 kept them."""
    p1, p2 = _patient(conn, "P1"), _patient(conn, "P2")
    s1, s2, s3 = _study(conn, p1, "1.1"), _study(conn, p1, "1.2"), _study(conn, p2, "1.3")
    series = [
        _series(conn, s1, "1.1.1"),
        _series(conn, s1, "1.1.2"),
        _series(conn, s2, "1.2.1"),
        _series(conn, s3, "1.3.1"),
    ]
    for n, size in enumerate((10, 20, 30, 40, 50)):
        _instance(conn, series[min(n, 3)], f"1.9.{n}", size)


def _counts(engine: Engine) -> StorageCounts:
    with engine.connect() as conn:
        return read_counts(conn)


def _triggers(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars()
        else:
            found = conn.execute(
                sa.text(
                    "SELECT DISTINCT trigger_name FROM information_schema.triggers "
                    "WHERE trigger_schema = current_schema()"
                )
            ).scalars()
        return {str(name) for name in found if str(name).startswith("storage_stats")}


def test_the_counters_and_their_triggers_exist_at_head(engine: Engine) -> None:
    """A later migration that rebuilds one of the four tables (SQLite batch mode) drops its
    triggers and fails here: it must create them again."""
    upgrade_schema(engine)
    assert _triggers(engine) == TRIGGERS[engine.dialect.name]
    assert _counts(engine) == (0, 0, 0, 0, 0)


def test_migration_0010_counts_the_rows_of_an_existing_archive(engine: Engine) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0009")
        _archive_of_0009(conn)
    upgrade_schema(engine)
    assert _counts(engine) == (2, 3, 4, 5, 150)
    # down and up again, with a row written in between: the figures are counted afresh
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0009")
    assert _triggers(engine) == set() and "storage_stats" not in sa.inspect(engine).get_table_names()
    with engine.begin() as conn:
        series = conn.execute(sa.text("SELECT id FROM series WHERE series_instance_uid = '1.3.1'")).scalar_one()
        _instance(conn, series, "1.9.9", 7)
    upgrade_schema(engine)
    assert _counts(engine) == (2, 3, 4, 6, 157)


def test_any_statement_keeps_the_counters(engine: Engine) -> None:
    """The triggers count what plain SQL does, not only what the repositories do: inserts, a size
    that changes (a replaced copy), an update that leaves the size, deletes of many rows at once, and
    a transaction rolled back."""
    upgrade_schema(engine)
    with engine.begin() as conn:
        _archive_of_0009(conn)
    assert _counts(engine) == (2, 3, 4, 5, 150)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE instances SET size = size + 1000 WHERE sop_instance_uid = '1.9.0'"))
        conn.execute(sa.text("UPDATE instances SET blob_key = 'elsewhere.dcm'"))
    assert _counts(engine) == (2, 3, 4, 5, 1150)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM instances WHERE size >= 40"))
        conn.execute(
            sa.text("DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instances WHERE series_pk = series.id)")
        )
    assert _counts(engine) == (2, 3, 2, 2, 50)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM instances"))
        raise RuntimeError("rolled back")
    assert _counts(engine) == (2, 3, 2, 2, 50)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM instances"))
        conn.execute(sa.text("DELETE FROM series"))
        conn.execute(sa.text("DELETE FROM studies"))
        conn.execute(sa.text("DELETE FROM patients"))
    assert _counts(engine) == (0, 0, 0, 0, 0)


def test_a_rolled_back_savepoint_is_not_counted(engine: Engine) -> None:
    upgrade_schema(engine)
    with engine.begin() as conn:
        _archive_of_0009(conn)
        series = conn.execute(sa.text("SELECT id FROM series ORDER BY id LIMIT 1")).scalar_one()
        _instance(conn, series, "3.1", 1000)
        savepoint = conn.begin_nested()
        _instance(conn, series, "3.2", 2000)
        conn.execute(sa.text("DELETE FROM instances WHERE sop_instance_uid = '1.9.0'"))
        savepoint.rollback()
        _instance(conn, series, "3.3", 4000)
    assert _counts(engine) == (2, 3, 4, 7, 5150)


def test_recount_repairs_counters_the_triggers_missed(engine: Engine) -> None:
    """Rows changed with the triggers off (here: dropped and created again around the change on SQLite,
    disabled on PostgreSQL) leave the counters wrong; recount sets them from the rows."""
    upgrade_schema(engine)
    with engine.begin() as conn:
        _archive_of_0009(conn)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE instances DISABLE TRIGGER USER"))
            conn.execute(sa.text("DELETE FROM instances WHERE size > 30"))
            conn.execute(sa.text("ALTER TABLE instances ENABLE TRIGGER USER"))
        else:
            ddl = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'storage_stats_instances_delete'")
            ).scalar_one()
            conn.execute(sa.text("DROP TRIGGER storage_stats_instances_delete"))
            conn.execute(sa.text("DELETE FROM instances WHERE size > 30"))
            conn.execute(sa.text(ddl))
    assert _counts(engine) == (2, 3, 4, 5, 150)
    with engine.begin() as conn:
        assert count_rows(conn) == (2, 3, 4, 3, 60)
        assert recount(conn) == ((2, 3, 4, 5, 150), (2, 3, 4, 3, 60))
    assert _counts(engine) == (2, 3, 4, 3, 60)
    with engine.begin() as conn:  # and the triggers go on from there
        _instance(conn, conn.execute(sa.text("SELECT min(id) FROM series")).scalar_one(), "6.1", 5)
    assert _counts(engine) == (2, 3, 4, 4, 65)


@pytest.mark.postgres
def test_writers_of_several_nodes_do_not_queue_on_the_counters() -> None:
    """PostgreSQL, several nodes' writers on one index. A transaction adds to the counters only as it
    commits, so another writer never waits for it (it would wait from the first insert to the commit,
    after renames and fsyncs, if the counter row were updated by each statement). And at commit the
    counters are spread over rows by transaction id: even a transaction that applied them early (SET
    CONSTRAINTS ALL IMMEDIATE) and holds its row lets another commit."""
    with postgres_schema_url() as url:
        engine = create_index_engine(url)
        try:
            upgrade_schema(engine)
            with engine.begin() as conn:
                _archive_of_0009(conn)
                series = conn.execute(sa.text("SELECT id FROM series ORDER BY id LIMIT 1")).scalar_one()
            for early in (False, True):
                with engine.connect() as first, engine.connect() as second:
                    first.begin()
                    _instance(first, series, f"2.1.{early}", 100)
                    if early:
                        first.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))  # applies its deltas now
                    for attempt in range(3):  # other sessions' transaction ids may give both one row
                        second.begin()
                        second.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                        try:
                            _instance(second, series, f"2.2.{early}.{attempt}", 1000)
                            second.commit()
                        except OperationalError:  # lock timeout: it queued behind the first
                            second.rollback()
                            continue
                        break
                    else:
                        pytest.fail(f"a second writer waited three times for the first (early={early})")
                    first.commit()
            assert _counts(engine) == (2, 3, 4, 9, 2350)
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM storage_stats")).scalar_one() > 1
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_postgresql_updates_the_counters_once_per_transaction() -> None:
    """Not once per statement or row: a counter row updated again and again in one transaction grows
    a version chain every later update walks (a 20,000-instance delete took 2.5 s instead of 0.07 s)."""
    with postgres_schema_url() as url:
        engine = create_index_engine(url)
        try:
            upgrade_schema(engine)
            with engine.begin() as conn:
                _archive_of_0009(conn)
                series = conn.execute(sa.text("SELECT id FROM series ORDER BY id LIMIT 1")).scalar_one()
            with engine.begin() as conn:
                for n in range(40):
                    _instance(conn, series, f"4.{n}", 10)
                conn.execute(sa.text("DELETE FROM instances WHERE sop_instance_uid LIKE '4.1%'"))
                conn.execute(sa.text("UPDATE instances SET size = 20 WHERE sop_instance_uid = '4.2'"))
                # the backend's updates of storage_stats not yet reported (this one's and earlier ones')
                updated = sa.text(
                    "SELECT n_tup_upd FROM pg_stat_xact_user_tables "
                    "WHERE relname = 'storage_stats' AND schemaname = current_schema()"
                )
                before = conn.execute(updated).scalar_one()
                conn.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))  # apply the deltas now, to look
                assert conn.execute(updated).scalar_one() - before == 1
            assert _counts(engine) == (2, 3, 4, 5 + 29, 150 + 29 * 10 + 10)
        finally:
            engine.dispose()
