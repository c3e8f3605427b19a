"""Retention (core/retention.py) on SQLite and PostgreSQL: age by study date and by arrival, the
storage quota, protected studies, the dry run, the per-run limit, attribution in the changes journal,
and the "retention" job kind."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from minipacs.core import labels, retention, routing
from minipacs.core.archive import Archive
from minipacs.core.changes import read_changes
from minipacs.core.delete import Spared, delete_resource
from minipacs.core.jobs import JobContext, JobQueue, JobSettings, JobState
from minipacs.core.model import Origin
from minipacs.core.retention import InvalidRetentionRule, RetentionRule, rule_from_mapping
from minipacs.index import stats_repo
from minipacs.index.schema import Study
from tests.dicomgen import write_ct

ORIGIN = Origin("import", "", "", "", 0)
NOW = dt.datetime.now(dt.UTC)
_n = iter(range(1, 10**6))


async def store(archive: Archive, tmp: Path, study_date: str = "", modality: str = "CT", count: int = 1) -> str:
    study = f"1.2.826.0.1.3680043.10.78.{NOW.microsecond}.{next(_n)}"
    series = f"{study}.1"
    for i in range(count):
        path = write_ct(
            tmp / f"{study}.{i}.dcm",
            study_uid=study,
            series_uid=series,
            sop_uid=f"{series}.{i}",
            StudyDate=study_date,
            Modality=modality,
        )
        await archive.import_file(path, ORIGIN)
    return study


async def arrived(archive: Archive, study: str, days_ago: float) -> None:
    """Pretend the study's last instance arrived ``days_ago`` days ago."""
    when = NOW - dt.timedelta(days=days_ago)
    await archive.write(
        lambda conn: conn.execute(update(Study).where(Study.study_instance_uid == study).values(updated_at=when))
    )


async def studies(archive: Archive) -> set[str]:
    from sqlalchemy import select

    return set(await archive.read(lambda conn: conn.execute(select(Study.study_instance_uid)).scalars().all()))


async def reasons(archive: Archive) -> dict[str, str]:
    """Study -> reason of its "Deleted" study row in the journal."""
    found, _, _ = await archive.read(lambda conn: read_changes(conn, 0, 1000))
    return {c.uid: c.reason for c in found if c.type == "Deleted" and c.level == "study"}


def test_age_by_study_date_dry_run_then_run_attributed(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        old = await store(archive, tmp_path, "20000101")
        recent = await store(archive, tmp_path, (NOW.date() - dt.timedelta(days=10)).strftime("%Y%m%d"))
        undated = await store(archive, tmp_path, "")
        await arrived(archive, undated, 5000)  # received long ago, but no Study Date: not old by study date
        rule = RetentionRule("old-studies", older_than_days=365, by="study_date")
        planned = await retention.plan(archive, [rule])
        assert [c.study for c in planned.candidates] == [old]
        assert "study date 2000-01-01" in planned.candidates[0].why
        assert await studies(archive) == {old, recent, undated}  # the dry run deleted nothing
        result = await retention.run(archive, [rule])
        assert [c.study for c in result.deleted] == [old]
        assert await studies(archive) == {recent, undated}
        assert await reasons(archive) == {old: "retention:old-studies"}
        found, _, _ = await archive.read(lambda conn: read_changes(conn, 0, 1000))
        assert {c.reason for c in found if c.type == "Deleted"} == {"retention:old-studies"}  # instance rows too

    with_archive(body, fsync=False)


def test_age_by_arrival_protected_and_match(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        old_ct = await store(archive, tmp_path, "20250101")
        kept = await store(archive, tmp_path)
        old_mr = await store(archive, tmp_path, modality="MR")
        fresh = await store(archive, tmp_path)
        for study in (old_ct, kept, old_mr):
            await arrived(archive, study, 31)
        await arrived(archive, fresh, 29)
        await labels.add_label(archive, kept, "keep")
        only_ct = RetentionRule("ct-30d", older_than_days=30, match={"ModalitiesInStudy": "CT"})
        planned = await retention.plan(archive, [only_ct])
        assert {c.study for c in planned.candidates} == {old_ct}
        assert planned.spared == {"ct-30d": 1}
        every = RetentionRule("all-30d", older_than_days=30)
        planned = await retention.plan(archive, [only_ct, every])
        assert [(c.study, c.rule) for c in planned.candidates] == [(old_ct, "ct-30d"), (old_mr, "all-30d")]
        await retention.run(archive, [only_ct, every])
        assert await studies(archive) >= {kept, fresh}
        assert await reasons(archive) == {old_ct: "retention:ct-30d", old_mr: "retention:all-30d"}
        # no protecting label at all: the labelled study goes too
        result = await retention.run(archive, [RetentionRule("bare", older_than_days=30, protect_label="")])
        assert [c.study for c in result.deleted] == [kept]

    with_archive(body, fsync=False)


def test_label_put_on_after_the_plan_still_protects(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        study = await store(archive, tmp_path)
        await arrived(archive, study, 10)
        rule = RetentionRule("r", older_than_days=1)
        (candidate,) = (await retention.plan(archive, [rule])).candidates
        await labels.add_label(archive, study, "keep")
        with pytest.raises(Spared, match="carries the label 'keep'"):
            await delete_resource(archive, "study", study, reason=rule.reason, guard=retention._guard(candidate, rule))
        await labels.remove_label(archive, study, "keep")
        await archive.import_file(write_ct(tmp_path / "late.dcm", study_uid=study), ORIGIN)  # arrives meanwhile
        with pytest.raises(Spared, match="received instances after the plan"):
            await delete_resource(archive, "study", study, reason=rule.reason, guard=retention._guard(candidate, rule))
        assert await studies(archive) == {study}

    with_archive(body, fsync=False)


def test_a_study_with_a_delivery_still_waiting_is_not_deleted(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    """A forward-then-purge node: the destination is down, the route job retries, the quota (or the
    age) rule must not delete what has not reached the destination yet; once the delivery is sent
    (or its job given up), the study goes."""

    async def body(archive: Archive) -> None:
        waiting = await store(archive, tmp_path, count=2)
        plain = await store(archive, tmp_path)
        for study in (waiting, plain):
            await arrived(archive, study, 10)
        queue = JobQueue(archive)

        async def later(job: JobContext) -> str:  # pragma: no cover - the queue is not started
            return ""

        queue.register(routing.ROUTE, later)
        job = await queue.submit(routing.ROUTE, "rule to-pacs: 2 instances", {}, total=2)
        sops = [f"{waiting}.1.{i}" for i in range(2)]
        rows = [routing.receipt_row(job.id, "to-pacs", "C-STORE", "PACS", waiting, f"{waiting}.1", s) for s in sops]
        await routing.add_receipts(archive, rows)
        await routing.record_outcomes(archive, job.id, [sops[0]], {sops[1]: "PACS is down"}, retrying=True)
        rules = [RetentionRule("age", older_than_days=1), RetentionRule("quota", max_storage_bytes=0)]
        planned = await retention.plan(archive, rules)
        assert [c.study for c in planned.candidates] == [plain]
        assert planned.spared == {"age": 1, "quota": 1}
        rule = rules[0]
        candidate = retention.Candidate(waiting, rule.name, "test", 0, None, NOW - dt.timedelta(days=10))
        guard = retention._guard(candidate, rule)
        with pytest.raises(Spared, match="1 routing delivery"):  # waiting at the last moment too
            await delete_resource(archive, "study", waiting, reason=rule.reason, guard=guard)
        result = await retention.run(archive, rules)
        assert [c.study for c in result.deleted] == [plain] and await studies(archive) == {waiting}
        await routing.record_outcomes(archive, job.id, [sops[1]], {}, retrying=False)  # delivered at last
        result = await retention.run(archive, rules)
        assert [c.study for c in result.deleted] == [waiting] and await studies(archive) == set()

    with_archive(body, fsync=False)


def test_quota_oldest_first_at_the_limit_and_protected(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        a = await store(archive, tmp_path)
        b = await store(archive, tmp_path)
        c = await store(archive, tmp_path)
        for study, days in ((a, 3), (b, 2), (c, 1)):
            await arrived(archive, study, days)
        total = (await archive.read(stats_repo.read_counts)).instance_bytes
        assert not (await retention.plan(archive, [RetentionRule("q", max_storage_bytes=total)])).candidates
        planned = await retention.plan(archive, [RetentionRule("q", max_storage_bytes=total - 1)])
        assert [x.study for x in planned.candidates] == [a] and "over the quota" in planned.candidates[0].why
        await labels.add_label(archive, a, "keep")
        planned = await retention.plan(archive, [RetentionRule("q", max_storage_bytes=total - 1)])
        assert [x.study for x in planned.candidates] == [b] and planned.spared == {"q": 1}
        result = await retention.run(archive, [RetentionRule("q", max_storage_bytes=0)])
        assert [x.study for x in result.deleted] == [b, c]  # the protected one stays, over quota or not
        assert await studies(archive) == {a}
        assert await reasons(archive) == {b: "retention:q", c: "retention:q"}

    with_archive(body, fsync=False)


def test_max_deletions_per_run(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        for _ in range(3):
            await arrived(archive, await store(archive, tmp_path), 10)
        rule = RetentionRule("r", older_than_days=1)
        planned = await retention.plan(archive, [rule], max_deletions=2)
        assert len(planned.candidates) == 2 and planned.limited
        assert not (await retention.plan(archive, [rule], max_deletions=3)).limited
        result = await retention.run(archive, [rule], max_deletions=2)
        assert len(result.deleted) == 2 and "next run goes on" in result.summary()
        assert len(await studies(archive)) == 1

    with_archive(body, fsync=False)


def test_retention_job_on_the_queue(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        old = await store(archive, tmp_path)
        await arrived(archive, old, 10)
        queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.1, stale_seconds=5))
        rules = (RetentionRule("r", older_than_days=1),)
        retention.register_retention_job(queue, archive, rules, 1000)
        await queue.start()
        try:
            job = await queue.wait((await retention.submit_run(queue)).id, timeout=60)
            assert job.state is JobState.DONE, job.message
            assert job.done == 1 and "deleted 1 study" in job.message
            assert [d["study"] for d in job.details["deleted"]] == [old]
            assert job.details["deleted"][0]["rule"] == "r"
            bad = await queue.wait((await retention.submit_run(queue, ["nope"])).id, timeout=60)
            assert bad.state is JobState.FAILED and "no retention rule 'nope'" in bad.message
        finally:
            await queue.close()
        assert await reasons(archive) == {old: "retention:r"}

    with_archive(body, fsync=False)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"name": "x"}, "deletes nothing"),
        ({"name": "x", "older_than_days": 0}, "positive number"),
        ({"name": "x", "older_than_days": 1, "by": "birth"}, "by must be"),
        ({"name": "x", "max_storage_bytes": -1}, "whole number"),
        ({"name": "x", "max_storage_bytes": 1, "protect_label": "no space"}, "protect_label"),
        ({"name": "x", "max_storage_bytes": 1, "match": {"Modality": "CT"}}, "cannot be matched at the study level"),
        ({"name": "x", "max_storage_bytes": 1, "match": {"NoSuchKeyword": "CT"}}, "not a DICOM keyword"),
        ({"name": "x", "max_storage_bytes": 1, "whatever": 1}, "unknown key"),
        ({"name": "", "max_storage_bytes": 1}, "name must be"),
    ],
)
def test_invalid_rules(table: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidRetentionRule, match=error):
        rule_from_mapping(table)


def test_rule_defaults() -> None:
    rule = rule_from_mapping({"name": "x", "older_than_days": 30, "match": {"ModalitiesInStudy": "CT"}})
    assert (rule.by, rule.protect_label, rule.max_storage_bytes) == ("arrival", "keep", None)


def test_config_tables_and_limits(tmp_path: Path) -> None:
    from minipacs.config import ConfigError, Settings, load_settings

    config = tmp_path / "m.toml"
    config.write_text(
        'retention_interval_seconds = 60\n[[retention]]\nname = "ct"\nolder_than_days = 365\nby = "study_date"\n'
        'match = { ModalitiesInStudy = "CT" }\n[[retention]]\nname = "quota"\nmax_storage_bytes = 1000000\n'
    )
    settings = load_settings(config, env={})
    assert [r.name for r in settings.retention] == ["ct", "quota"]
    assert settings.retention[0].match == {"ModalitiesInStudy": "CT"} and settings.retention_interval_seconds == 60
    config.write_text(
        '[[retention]]\nname = "a"\nolder_than_days = 1\n[[retention]]\nname = "a"\nolder_than_days = 2\n'
    )
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(config, env={})
    config.write_text('[[retention]]\nname = "a"\nolder_than_dayz = 1\n')
    with pytest.raises(ConfigError, match=r"\[\[retention\]\] number 1: unknown key"):
        load_settings(config, env={})
    assert Settings(retention_max_deletions=100000).validate()
    for bad in (
        {"retention_max_deletions": 0},
        {"retention_max_deletions": 100001},
        {"retention_interval_seconds": -1},
    ):
        with pytest.raises(ConfigError):
            Settings(**bad).validate()


def test_periodic_queues_one_run_at_a_time() -> None:
    class Queue:
        def __init__(self) -> None:
            self.submitted: list[str] = []

        async def list(self, **kw: Any) -> list[Any]:
            return [object()] if self.submitted else []

        async def submit(self, kind: str, description: str, params: Any) -> Any:
            self.submitted.append(kind)
            return None

    async def main() -> list[str]:
        queue = Queue()
        task = asyncio.ensure_future(retention.periodic(queue, 0.01))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return queue.submitted

    assert asyncio.run(main()) == ["retention"]
