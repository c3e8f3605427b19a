"""The changes journal (core/changes.py) on SQLite and PostgreSQL: written in the writer's
transaction by ingest, deletion and MPPS, and read back in pages."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.changes import CHANGE_TYPES, ChangeType, change_row, last_seq, read_changes
from minipacs.core.delete import delete_resource
from minipacs.core.model import DuplicatePolicy, Origin, StoreStatus
from minipacs.core.mpps import ProcedureSteps
from minipacs.core.worklist import Worklist
from minipacs.index import worklist_repo
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url
from tests.modality import mpps_create, mpps_final

ORIGIN = Origin("import", "", "", "", 0)
Body = Callable[[Archive, Path], Awaitable[None]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_schema_url() as url:
            yield url


@pytest.fixture
def on_archive(tmp_path: Path, index_url: str) -> Callable[..., None]:
    """``on_archive(body, **settings)`` runs ``await body(archive, tmp_path)`` on a fresh archive."""

    def run(body: Body, **settings: Any) -> None:
        async def main() -> None:
            archive = await open_archive(
                Settings(data_dir=tmp_path / "data", index_url=index_url, fsync=False, **settings)
            )
            try:
                await body(archive, tmp_path)
            finally:
                await archive.close()

        asyncio.run(main())

    return run


def generate_uid() -> str:
    """A study or MPPS UID short enough for series and instance suffixes."""
    return f"1.2.826.0.1.3680043.10.77.{uuid.uuid4().int % 10**12}"


async def journal(archive: Archive, since: int = 0) -> list[tuple[str, str, str, str]]:
    found, _, done = await archive.read(lambda conn: read_changes(conn, since, 1000))
    assert done
    return [(c.type, c.level, c.uid, c.study) for c in found]


async def store(archive: Archive, tmp: Path, study: str, series: str, sop: str, patient: str = "P1") -> StoreStatus:
    path = write_ct(tmp / f"{sop}.dcm", study_uid=study, series_uid=series, sop_uid=sop, patient_id=patient)
    return (await archive.import_file(path, ORIGIN)).status


def test_every_change_type_has_a_level_and_a_description() -> None:
    assert set(CHANGE_TYPES) == set(ChangeType)
    for kind, (level, uid, when) in CHANGE_TYPES.items():
        assert uid and when and (level or kind in (ChangeType.DELETED, ChangeType.MODIFIED))
    for kind in (ChangeType.DELETED, ChangeType.MODIFIED):  # the level is the resource's, given per row
        with pytest.raises(ValueError, match=f"{kind.value} change needs"):
            change_row(kind, "1.2", "", dt.datetime.now(dt.UTC))


def test_ingest_journals_new_patient_study_series_and_each_instance(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        st = "1.2.826.0.1.3680043.10.77.1"
        assert await store(archive, tmp, st, f"{st}.1", f"{st}.1.1") is StoreStatus.STORED
        assert await store(archive, tmp, st, f"{st}.1", f"{st}.1.2") is StoreStatus.STORED
        assert await store(archive, tmp, st, f"{st}.2", f"{st}.2.1") is StoreStatus.STORED
        assert await store(archive, tmp, st, f"{st}.1", f"{st}.1.1") is StoreStatus.DUPLICATE_KEPT  # no row
        assert await journal(archive) == [
            ("NewPatient", "patient", "P1", st),
            ("NewStudy", "study", st, st),
            ("NewSeries", "series", f"{st}.1", st),
            ("NewInstance", "instance", f"{st}.1.1", st),
            ("NewInstance", "instance", f"{st}.1.2", st),
            ("NewSeries", "series", f"{st}.2", st),
            ("NewInstance", "instance", f"{st}.2.1", st),
        ]

    on_archive(body)


def test_concurrent_ingests_in_group_commits_journal_each_instance_once(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        studies = [generate_uid() for _ in range(3)]
        paths = [
            write_ct(
                tmp / f"{n}.dcm",
                study_uid=studies[n % 3],
                series_uid=f"{studies[n % 3]}.{n % 2}",
                sop_uid=f"{studies[n % 3]}.9.{n}",
                patient_id=f"P{n % 3}",
            )
            for n in range(60)
        ]
        outcomes = await asyncio.gather(*(archive.import_file(p, ORIGIN) for p in paths))
        assert all(o.status is StoreStatus.STORED for o in outcomes)
        assert archive.stats.multi_job_batches > 0  # the journal went through group commits
        rows = await journal(archive)
        seq_of = {(kind, uid): n for n, (kind, _, uid, _) in enumerate(rows)}
        assert sorted(uid for kind, _, uid, _ in rows if kind == "NewInstance") == sorted(
            o.sop_instance_uid for o in outcomes
        )
        assert sum(kind == "NewSeries" for kind, *_ in rows) == 6
        assert sum(kind == "NewStudy" for kind, *_ in rows) == 3
        assert sum(kind == "NewPatient" for kind, *_ in rows) == 3
        for outcome in outcomes:  # a resource is announced before anything below it
            mine = seq_of[("NewInstance", outcome.sop_instance_uid)]
            assert seq_of[("NewSeries", outcome.series_instance_uid)] < mine
            assert seq_of[("NewStudy", outcome.study_instance_uid)] < mine

    on_archive(body)


def test_a_refused_ingest_leaves_no_journal_row(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        st = generate_uid()
        await store(archive, tmp, st, f"{st}.1", f"{st}.1.1")
        before = await archive.read(last_seq)
        with pytest.raises(Exception, match="duplicate policy is 'reject'"):
            await store(archive, tmp, st, f"{st}.1", f"{st}.1.1")
        assert await archive.read(last_seq) == before

    on_archive(body, duplicate_policy=DuplicatePolicy.REJECT)


def test_replace_journals_the_instance_again(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        st = generate_uid()
        await store(archive, tmp, st, f"{st}.1", f"{st}.1.1")
        before = await archive.read(last_seq)
        assert await store(archive, tmp, st, f"{st}.1", f"{st}.1.1") is StoreStatus.REPLACED
        assert await journal(archive, before) == [("NewInstance", "instance", f"{st}.1.1", st)]

    on_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


def test_deletion_journals_every_resource_removed(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        st = generate_uid()
        for sop in (f"{st}.1.1", f"{st}.1.2", f"{st}.2.1"):
            await store(archive, tmp, st, sop.rsplit(".", 1)[0], sop, patient="PDEL")
        mark = await archive.read(last_seq)
        await delete_resource(archive, "series", f"{st}.1")
        assert sorted(await journal(archive, mark)) == sorted(
            [
                ("Deleted", "instance", f"{st}.1.1", st),
                ("Deleted", "instance", f"{st}.1.2", st),
                ("Deleted", "series", f"{st}.1", st),
            ]
        )
        mark = await archive.read(last_seq)
        await delete_resource(archive, "instance", f"{st}.2.1")  # the last one: everything above goes too
        assert await journal(archive, mark) == [
            ("Deleted", "instance", f"{st}.2.1", st),
            ("Deleted", "series", f"{st}.2", st),
            ("Deleted", "study", st, st),
            ("Deleted", "patient", "PDEL", ""),
        ]

    on_archive(body)


def test_paging_since_limit_last_and_done(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        assert await archive.read(lambda conn: read_changes(conn, 0, 10)) == ([], 0, True)
        st = generate_uid()
        for n in range(5):
            await store(archive, tmp, st, f"{st}.1", f"{st}.1.{n}")  # 3 + 5 rows
        first, last, done = await archive.read(lambda conn: read_changes(conn, 0, 3))
        assert [c.type for c in first] == ["NewPatient", "NewStudy", "NewSeries"] and not done
        assert last == first[-1].seq and [c.seq for c in first] == sorted(c.seq for c in first)
        rest, end, done = await archive.read(lambda conn: read_changes(conn, last, 5))
        assert [c.type for c in rest] == ["NewInstance"] * 5 and done and end == rest[-1].seq
        assert all(c.seq > last for c in rest) and rest[0].time.tzinfo is not None
        assert await archive.read(lambda conn: read_changes(conn, end, 5)) == ([], end, True)
        assert await archive.read(lambda conn: read_changes(conn, end + 100, 5)) == ([], end, True)
        with pytest.raises(ValueError):
            await archive.read(lambda conn: read_changes(conn, 0, 0))

    on_archive(body)


def test_mpps_and_study_completion_are_journalled_after_the_instances(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        steps = ProcedureSteps(archive, Worklist(archive))
        archive.on_stored.append(steps.instance_stored)
        st = generate_uid()
        sops = [f"{st}.1.{n}" for n in range(3)]
        done_uid, stopped_uid = generate_uid(), generate_uid()
        await steps.create(done_uid, mpps_create(st))
        await store(archive, tmp, st, f"{st}.1", sops[0])
        await steps.set(done_uid, mpps_final(f"{st}.1", sops))  # two instances still missing: not complete
        for sop in sops[1:]:
            await store(archive, tmp, st, f"{st}.1", sop)
        await steps.drain()
        other = generate_uid()
        await steps.create(stopped_uid, mpps_create(other, "ACC2"))
        await steps.set(stopped_uid, mpps_final(f"{other}.1", [], status="DISCONTINUED"))
        rows = await journal(archive)
        assert [r for r in rows if r[1] in ("mpps",) or r[0] == "StudyComplete"] == [
            ("MppsCreated", "mpps", done_uid, st),
            ("MppsCompleted", "mpps", done_uid, st),
            ("StudyComplete", "study", st, st),
            ("MppsCreated", "mpps", stopped_uid, other),
            ("MppsDiscontinued", "mpps", stopped_uid, other),
        ]
        kinds = [kind for kind, *_ in rows]
        last_instance = max(n for n, kind in enumerate(kinds) if kind == "NewInstance")
        assert kinds.index("StudyComplete") > last_instance

    on_archive(body)


def test_deleting_an_instance_withdraws_completion_until_it_is_sent_again(on_archive: Callable[..., None]) -> None:
    async def body(archive: Archive, tmp: Path) -> None:
        steps = ProcedureSteps(archive, Worklist(archive))
        archive.on_stored.append(steps.instance_stored)
        archive.on_uncompleted.append(steps.studies_uncompleted)
        st = generate_uid()
        sops = [f"{st}.1.{n}" for n in range(2)]
        step = generate_uid()
        await steps.create(step, mpps_create(st))
        for sop in sops:
            await store(archive, tmp, st, f"{st}.1", sop)
        await store(archive, tmp, st, f"{st}.2", f"{st}.2.1")  # not referenced by the step
        await steps.set(step, mpps_final(f"{st}.1", sops))
        await steps.drain()

        async def complete() -> bool:
            return st in await archive.read(worklist_repo.completed_studies)

        assert await complete()
        # An instance the step does not reference: the study is checked again and stays complete.
        await delete_resource(archive, "instance", f"{st}.2.1")
        await steps.drain()
        assert await complete()
        # A referenced one: no longer complete, and it waits for the instance.
        await delete_resource(archive, "instance", sops[0])
        await steps.drain()
        assert not await complete()
        assert st in steps.waiting
        await store(archive, tmp, st, f"{st}.1", sops[0])
        await steps.drain()
        assert await complete()
        kinds = [kind for kind, _, uid, _ in await journal(archive) if kind == "StudyComplete" and uid == st]
        assert kinds == ["StudyComplete"] * 3  # first, after the unreferenced deletion, after the re-send

    on_archive(body)


def test_an_empty_page_stays_at_since_even_if_rows_commit_between_its_two_statements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal's highest seq is a second statement: rows another node committed after the first
    one are visible to it. Answering it as ``last`` made a paging reader skip them (issue 11 item 6)."""
    from minipacs.core import changes

    monkeypatch.setattr(changes.journal_repo, "changes_after", lambda conn, since, limit: [])
    monkeypatch.setattr(changes.journal_repo, "last_seq", lambda conn: 57)  # 50-57 committed meanwhile
    assert read_changes(None, 50, 10) == ([], 50, True)  # type: ignore[arg-type]
    # a reader past the journal's end still learns where it ends (another journal, e.g. restored)
    assert read_changes(None, 90, 10) == ([], 57, True)  # type: ignore[arg-type]
