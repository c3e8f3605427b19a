"""PostgreSQL serves prefix wildcards on names and IDs from an index (issue 11, "PostgreSQL at a million
instances"; migration 0014). Before, ``PatientName=SMITH*`` read every patient row: the plain btree
cannot serve LIKE under a language collation. The SQL the query engine sends is EXPLAINed as sent."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, create_engine, event, text

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.query import query
from minipacs.dicom.levels import STUDY_ROOT, Level
from minipacs.dicom.values import normalise_name
from tests.core.test_two_writers import _ingest
from tests.dicomgen import generate_uid, make_ct
from tests.index.pg import postgres_schema_url

pytestmark = pytest.mark.postgres

#: (C-FIND key, the value asked, the index that must serve it).
CASES = [
    ("PatientName", "SMITH*", "ix_patients_patient_name_norm_pattern"),
    ("PatientID", "P_1*", "ix_patients_patient_id_pattern"),
    ("AccessionNumber", "AC%*", "ix_studies_accession_number_pattern"),
    ("ReferringPhysicianName", "WELBY^M*", "ix_studies_referring_physician_name_norm_pattern"),
    ("PatientName", "*MITH^AN*", "ix_patients_patient_name_norm_trgm"),  # an inner wildcard: trigrams
]


def _fill(url: str, patients: int) -> None:
    """``patients`` patients with one study each, by SQL: enough rows for the planner to choose."""
    engine = create_engine(url)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patients (patient_key, patient_id, issuer_of_patient_id, patient_name, "
                "patient_name_norm, patient_birth_date_raw, patient_sex, created_at) "
                "SELECT 'K' || g, 'K' || g, '', 'NAME' || g, :prefix || g, '', '', :now FROM generate_series(1, :n) g"
            ),
            {"n": patients, "now": now, "prefix": normalise_name("NAME")},
        )
        conn.execute(
            text(
                "INSERT INTO studies (study_instance_uid, patient_pk, study_date_raw, study_time_raw, "
                "accession_number, study_id, study_description, referring_physician_name, "
                "referring_physician_name_norm, created_at, updated_at) "
                "SELECT '1.2.3.' || id, id, '', '', 'N' || id, '', '', 'DOC' || id, 'doc' || id, :now, :now "
                "FROM patients WHERE patient_key LIKE 'K%'"
            ),
            {"now": now},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum would: GIN's pending list merged, statistics
    engine.dispose()


def _capture_sql(url: str, tmp: Path, keys: dict[str, str]) -> list[tuple[str, Any]]:
    """Every statement (and its parameters) the archive sends for one Study Root C-FIND."""
    sent: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    async def run() -> int:
        archive = await open_archive(Settings(data_dir=tmp / "data", index_url=url, fsync=False))
        try:
            ds = Dataset()
            ds.QueryRetrieveLevel = Level.STUDY.value
            ds.StudyInstanceUID = ""
            with pydicom.config.disable_value_validation():
                for keyword, value in keys.items():
                    setattr(ds, keyword, value)
            event.listen(Engine, "before_cursor_execute", listen)
            try:
                return len([m async for m in query(archive, None, ds, model=STUDY_ROOT)])
            finally:
                event.remove(Engine, "before_cursor_execute", listen)
        finally:
            await archive.close()

    assert asyncio.run(run()) == 1
    return [(sql, params) for sql, params in sent if "FROM studies" in sql or "FROM patients" in sql]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL index with one real study and a few thousand patients beside it."""
    tmp = tmp_path_factory.mktemp("pattern")
    with postgres_schema_url() as url:

        async def one_study() -> None:
            archive = await open_archive(Settings(data_dir=tmp / "data", index_url=url, fsync=False))
            try:
                uids = generate_uid(), generate_uid(), generate_uid()
                ds = make_ct(*uids, patient_id="P_1", patient_name="Smith^Anna")
                ds.AccessionNumber = "AC%1"
                ds.ReferringPhysicianName = "Welby^Marcus"
                await _ingest(archive, ds)
            finally:
                await archive.close()

        asyncio.run(one_study())
        _fill(url, 3000)
        yield url, tmp


@pytest.mark.parametrize(("keyword", "value", "index"), CASES)
def test_a_wildcard_is_served_by_an_index(filled: tuple[str, Path], keyword: str, value: str, index: str) -> None:
    url, tmp = filled
    sent = _capture_sql(url, tmp, {keyword: value})
    matching = [(sql, params) for sql, params in sent if " LIKE " in sql]
    assert matching, sent
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            # a few thousand rows: a sequential scan may cost the planner less; forbid it to see
            # whether an index CAN serve the SQL as sent (without one, the plan is a Seq Scan anyway)
            conn.exec_driver_sql("SET enable_seqscan = off")
            for sql, params in matching:
                assert "lower(" not in sql.lower()  # the column itself, as the index holds it
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, params))
                assert index in plan, plan
    finally:
        engine.dispose()


def test_without_pg_trgm_the_migration_goes_on_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A database whose owner may not create extensions: the schema is built without the trigram
    index, with a WARNING naming what to do; the prefix indexes are there."""
    import os
    import uuid

    from minipacs.index.database import create_index_engine, upgrade_schema
    from tests.index.pg import DEFAULT_URL

    base = os.environ.get("MINIPACS_TEST_POSTGRES_URL", DEFAULT_URL)
    name = f"t_noext_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{name}"')
            conn.exec_driver_sql(f'REVOKE CREATE ON DATABASE "{name}" FROM "{name}", PUBLIC')
        url = admin.url.set(username=name, database=name).render_as_string(hide_password=False)
        engine = create_index_engine(url)
        try:
            with caplog.at_level("WARNING", logger="minipacs"):
                upgrade_schema(engine)
            with engine.connect() as conn:
                names = {
                    r[0] for r in conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'patients'")
                }
        finally:
            engine.dispose()
        assert "ix_patients_patient_name_norm_pattern" in names
        assert "ix_patients_patient_name_norm_trgm" not in names
        assert "CREATE EXTENSION pg_trgm" in caplog.text and "read every patient row" in caplog.text
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
        admin.dispose()
