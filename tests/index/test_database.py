"""The index interface the core receives: IndexDatabase (reads, one writer) and the query
engine's page statement (index/query_sql.py). SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minipacs.index import journal_repo
from minipacs.index.database import IndexDatabase
from minipacs.index.entities import Entity
from minipacs.index.matching import ColumnKind, classify
from minipacs.index.query_sql import (
    IN_PAGE_DIALECTS,
    PK_LABEL,
    UNIQUE_LABEL,
    KeyMatch,
    PageQuery,
    aggregate_values,
    in_page_label,
    match_page,
)
from tests.index.pg import postgres_schema_url
from tests.index.query_fixture import STUDIES, STUDY_UIDS, QueryArchive, qa  # noqa: F401 - fixture


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexDatabase]:
    if request.param == "sqlite":
        made = IndexDatabase.open(f"sqlite:///{tmp_path / 'index.sqlite3'}", fsync=False)
        yield made
        made.dispose()
    else:
        with postgres_schema_url() as url:
            made = IndexDatabase.open(url, fsync=False)
            yield made
            made.dispose()


def _change(uid: str) -> dict[str, Any]:
    return {
        "change_type": "NewStudy",
        "level": "study",
        "uid": uid,
        "study_instance_uid": uid,
        "created_at": dt.datetime.now(dt.UTC),
    }


def test_open_migrates_to_head(index: IndexDatabase) -> None:
    assert index.read(journal_repo.last_seq) == 0  # the table exists, empty


def test_writer_commits_and_a_failed_transaction_leaves_nothing(index: IndexDatabase) -> None:
    writer = index.writer()
    with writer.transaction() as conn:
        journal_repo.insert_changes(conn, [_change("1.1")])
    first = writer._conn
    assert index.read(journal_repo.last_seq) == 1
    with pytest.raises(RuntimeError, match="spoiled"), writer.transaction() as conn:
        journal_repo.insert_changes(conn, [_change("1.2"), _change("1.3")])
        raise RuntimeError("spoiled")
    assert writer._conn is None  # dropped after the failure
    assert [row[3] for row in index.read(lambda c: journal_repo.changes_after(c, 0, 10))] == ["1.1"]
    with writer.transaction() as conn:  # a new connection, and it works
        journal_repo.insert_changes(conn, [_change("1.4")])
    assert writer._conn is not None and writer._conn is not first
    assert [row[3] for row in index.read(lambda c: journal_repo.changes_after(c, 0, 10))] == ["1.1", "1.4"]
    writer.close()
    assert writer._conn is None


def _pages(qa: QueryArchive, query: PageQuery, size: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    after = 0
    while True:
        rows, position = qa.runner.run(qa.archive.read(lambda c, a=after: match_page(c, query, a, size)))
        pages.append([(row[position[PK_LABEL]], row[position[UNIQUE_LABEL]]) for row in rows])
        if len(rows) < size:
            return pages
        after = rows[-1][position[PK_LABEL]]


def test_dispose_waits_for_a_read_still_running_and_closes_its_connection(index: IndexDatabase) -> None:
    """A read whose caller gave up (a cancelled ``Archive.read``) goes on in its thread; dispose must
    wait for it, or its connection, given back to the disposed pool, is left open (psycopg then warns
    "deleted while still open" at some later garbage collection: CI's flaky failure of session 9)."""
    started, driver = threading.Event(), []

    def slow(conn: Any) -> int:
        driver.append(conn.connection.driver_connection)
        started.set()
        time.sleep(0.3)
        return 1

    reader = threading.Thread(target=index.read, args=(slow,))
    reader.start()
    assert started.wait(10)
    index.dispose()
    assert not reader.is_alive(), "dispose returned while the read was still running"
    reader.join()
    with pytest.raises(Exception, match="(?i)closed"):
        driver[0].execute("SELECT 1")  # the pool closed it: nothing is left for the garbage collector


def test_pages_follow_the_primary_key(qa: QueryArchive) -> None:
    everything = PageQuery(Entity.STUDY)
    [whole] = _pages(qa, everything, 100)
    assert sorted(uid for _pk, uid in whole) == sorted(STUDY_UIDS.values())
    pks = [pk for pk, _uid in whole]
    assert pks == sorted(pks) and len(set(pks)) == len(STUDIES)
    paged = _pages(qa, everything, 2)
    assert [len(p) for p in paged] == [2, 2, 1]  # 5 studies: the short page is the last
    assert [row for page in paged for row in page] == whole


def test_a_page_matches_keys_of_the_levels_above(qa: QueryArchive) -> None:
    """A SERIES page matched on the patient's name joins series -> studies -> patients."""
    name = KeyMatch(
        "k00100010", Entity.PATIENT, "patient_name", "patient_name_norm", ColumnKind.NAME, classify("PN", "doe^j*")
    )
    [rows] = _pages(qa, PageQuery(Entity.SERIES, (name,)), 100)
    studies = {uid.rsplit(".", 1)[0] for _pk, uid in rows}
    assert studies == {STUDY_UIDS["A1"], STUDY_UIDS["A_2"]}  # Doe^John and DOE^JANE, two series each
    assert len(rows) == 4


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_writer_commits_without_waiting_only_when_asked(dialect: str, tmp_path: Path) -> None:
    """IndexWriter.transaction(durable=False) is for the intake log's batches (core/intake.py): only
    they commit without waiting for the disk; any other transaction waits, also right after them, and
    a connection goes back to the pool as it came."""
    from contextlib import ExitStack

    from sqlalchemy import text

    from tests.index.pg import postgres_schema_url

    with ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'i.sqlite3'}" if dialect == "sqlite" else stack.enter_context(postgres_schema_url())
        )
        index = IndexDatabase.open(url)
        writer = index.writer()
        show = "PRAGMA synchronous" if dialect == "sqlite" else "SHOW synchronous_commit"
        waits = {"sqlite": "2", "postgres": "on"}[dialect]  # FULL is 2
        seen = []
        for durable in (True, False, False, True, False, True):
            with writer.transaction(durable=durable) as conn:
                seen.append((durable, str(conn.execute(text(show)).scalar())))
        assert all((value == waits) == durable for durable, value in seen), seen
        writer.close()
        with index.engine.connect() as conn:
            assert str(conn.execute(text(show)).scalar()) in (waits, "1" if dialect == "sqlite" else waits)
        index.dispose()


@pytest.mark.parametrize(
    ("entity", "keywords"),
    [
        (Entity.STUDY, ("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedInstances")),
        (Entity.PATIENT, ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")),
        # the patient's counts at the Study level of the Study Root model (PS3.4 C.6.2.1.2)
        (
            Entity.STUDY,
            ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"),
        ),
        (Entity.SERIES, ("NumberOfSeriesRelatedInstances",)),
    ],
)
def test_computed_keys_in_the_page_equal_their_own_statement(
    qa: QueryArchive, entity: Entity, keywords: tuple[str, ...]
) -> None:
    """On PostgreSQL the page statement answers the computed keys itself (query_sql.IN_PAGE: one
    round trip, not two); its values are those of aggregate_values, the statement SQLite runs."""
    query = PageQuery(entity, answered=keywords)

    def read(conn: Any) -> tuple[Any, Any, dict[str, dict[int, list[str]]], str]:
        rows, position = match_page(conn, query, 0, 100)
        pks = [int(row[position[PK_LABEL]]) for row in rows]
        own = {keyword: aggregate_values(conn, keyword, entity, pks) for keyword in keywords}
        return rows, position, own, conn.dialect.name

    rows, position, own, dialect = qa.runner.run(qa.archive.read(read))
    assert rows
    for keyword in keywords:
        label = in_page_label(keyword)
        if dialect not in IN_PAGE_DIALECTS:
            assert label not in position
            continue
        in_page = {int(row[position[PK_LABEL]]): row[position[label]] for row in rows}
        if isinstance(next(iter(in_page.values())), int):  # a count: every row has one
            assert {pk: [str(n)] for pk, n in in_page.items() if n} == own[keyword]
        else:  # the distinct values
            assert {pk: sorted(v) for pk, v in in_page.items() if v} == {
                pk: sorted(v) for pk, v in own[keyword].items()
            }


@pytest.mark.postgres
def test_reads_keep_psycopgs_prepared_statements() -> None:
    """A read ends with COMMIT, not the pool's ROLLBACK (on which psycopg forgets every prepared
    statement): a statement read again and again is prepared after psycopg's prepare_threshold and
    PostgreSQL stops parsing it each time (issue 11: 1-2.5 ms of a C-FIND went to that)."""
    from sqlalchemy import text

    with postgres_schema_url() as url:
        made = IndexDatabase.open(url, fsync=False)
        try:
            statement = text("SELECT count(*) FROM studies WHERE id > :after")
            for after in range(8):
                made.read(lambda c, a=after: c.execute(statement, {"after": a}).scalar())
            prepared = made.read(
                lambda c: c.exec_driver_sql(
                    "SELECT count(*) FROM pg_prepared_statements WHERE strpos(statement, 'FROM studies WHERE id >') > 0"
                ).scalar()
            )
        finally:
            made.dispose()
    assert prepared == 1
