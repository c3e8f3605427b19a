"""PostgreSQL: the plan of a C-FIND page (index/query_sql.py ``match_page``) on a hot index (issue 11).

A one-month StudyDate range over 100,000 studies matches ~550 of them; at PostgreSQL's default
random_page_cost (4.0) the planner joined them to their patients by a hash join over a sequential
scan of all 50,000 patients (18 ms) instead of ~550 primary-key lookups (6 ms). The page statements
run with PAGE_RANDOM_PAGE_COST, transaction-local.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, create_engine, event

from minipacs.core.query import page_query, prepare_query
from minipacs.dicom.levels import STUDY_ROOT, Level
from minipacs.index import query_sql
from minipacs.index.database import IndexDatabase, upgrade_schema
from tests.index.pg import postgres_schema_url

pytestmark = pytest.mark.postgres

PATIENTS = 50_000
STUDIES = 100_000


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """The bench's shape (bench_pg_query.py) without series or instances: studies over 15 years."""
    with postgres_schema_url() as url:
        eng = create_engine(url)
        upgrade_schema(eng)
        with eng.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO patients (id, patient_key, patient_id, issuer_of_patient_id, patient_name, "
                "patient_name_norm, patient_birth_date_raw, patient_sex, created_at) "
                f"SELECT g, 'P' || g, 'P' || g, '', 'NAME' || g, 'name' || g, '', 'O', now() "
                f"FROM generate_series(1, {PATIENTS}) g"
            )
            conn.exec_driver_sql(
                "INSERT INTO studies (id, study_instance_uid, patient_pk, study_date, study_date_raw, "
                "study_time_raw, accession_number, study_id, study_description, referring_physician_name, "
                "referring_physician_name_norm, created_at, updated_at) "
                f"SELECT g + 1, '1.2.3.' || g, mod(g, {PATIENTS}) + 1, d, to_char(d, 'YYYYMMDD'), '', "
                "'A' || g, '', '', '', '', now(), now() "
                "FROM (SELECT g, DATE '2010-01-01' + mod(g::bigint * 7919, 5475)::int AS d "
                f"FROM generate_series(0, {STUDIES - 1}) g) s"
            )
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        try:
            yield eng
        finally:
            eng.dispose()


def _month_query() -> query_sql.PageQuery:
    ds = Dataset()
    ds.QueryRetrieveLevel = Level.STUDY.value
    ds.StudyDate = "20150301-20150331"
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        setattr(ds, keyword, "")
    return page_query(prepare_query(ds, STUDY_ROOT))


def test_a_date_range_page_joins_its_patients_by_key_not_by_scanning_them(engine: Engine) -> None:
    sent: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", listen)
        try:
            rows, _position = query_sql.match_page(conn, _month_query(), 0, 1000)
        finally:
            event.remove(engine, "before_cursor_execute", listen)
        assert 500 < len(rows) < 1000
        page = [(sql, params) for sql, params in sent if "FROM studies" in sql]
        assert len(page) == 1, sent
        # in the same transaction: the page statement's settings still hold
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + page[0][0], page[0][1]))
        conn.rollback()
    assert "Seq Scan on patients" not in plan, plan
    assert "patients_pkey" in plan, plan


def test_the_cost_setting_ends_with_the_read(engine: Engine) -> None:
    """SET LOCAL: the pooled connection goes back with the database's own setting."""
    index = IndexDatabase(engine)
    default = index.read(lambda conn: conn.exec_driver_sql("SHOW random_page_cost").scalar())
    assert default != query_sql.PAGE_RANDOM_PAGE_COST

    def page_then_show(conn: Any) -> Any:
        query_sql.match_page(conn, _month_query(), 0, 10)
        return conn.exec_driver_sql("SHOW random_page_cost").scalar()

    assert index.read(page_then_show) == query_sql.PAGE_RANDOM_PAGE_COST
    for _ in range(3):  # every pooled connection
        assert index.read(lambda conn: conn.exec_driver_sql("SHOW random_page_cost").scalar()) == default
