"""The audit trail's core (core/audit.py): batched writes, queries, folding, retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.audit import Action, ActorKind, AuditLog, AuditSettings, patient_query
from minipacs.core.model import Origin
from tests.dicomgen import write_ct


def test_record_query_and_patient_filled_from_the_study(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    study = generate_uid()

    async def body(archive: Archive) -> None:
        await archive.import_file(write_ct(tmp_path / "a.dcm", study_uid=study, patient_id="PAT9"), Origin("import"))
        audit = archive.audit
        audit.record(Action.VIEWED, actor_kind=ActorKind.USER, actor="alice", address="10.0.0.1", study_uid=study)
        audit.record(Action.DELETED, actor_kind="token", actor="robot", patient_id="OTHER", detail="x" * 5000)
        audit.record(Action.RETRIEVED, actor_kind=ActorKind.DICOM, actor="VIEWER", address="10.0.0.2", study_uid=study)
        assert audit.pending == 3
        rows = await audit.query(patient_id="PAT9")  # flushes first
        assert audit.pending == 0
        assert [(r["action"], r["actor"], r["study_uid"]) for r in rows] == [
            ("retrieved", "VIEWER", study),
            ("viewed", "alice", study),
        ]
        assert all(r["patient_id"] == "PAT9" and r["time"].tzinfo is not None for r in rows)
        assert [r["action"] for r in await audit.query(actor="robot")] == ["deleted"]
        assert len((await audit.query(actor="robot"))[0]["detail"]) == 2000  # cut to fit, never refused
        assert [r["actor"] for r in await audit.query(study_uid=study, actor="alice")] == ["alice"]
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        assert await audit.query(since=later) == []
        assert len(await audit.query(until=later)) == 3
        assert len(await audit.query(limit=1)) == 1
        with pytest.raises(ValueError):
            audit.record("looked", actor="x")  # an action is one of the Action verbs

    with_archive(body)


def test_views_fold_and_retention_prunes(with_archive: Callable[..., Any]) -> None:
    async def body(archive: Archive) -> None:
        audit = archive.audit
        for _ in range(50):  # a viewer fetching 50 frames of one study: one row
            audit.record(Action.VIEWED, actor_kind="user", actor="bob", study_uid="1.2.3", detail="WADO-RS")
        audit.record(Action.VIEWED, actor_kind="user", actor="eve", study_uid="1.2.3", detail="WADO-RS")
        for _ in range(3):  # deletions are never folded
            audit.record(Action.DELETED, actor_kind="user", actor="bob", study_uid="1.2.3")
        assert audit.pending == 5
        assert await audit.flush() == 5
        audit.settings = AuditSettings(retention_days=30)
        now = dt.datetime.now(dt.UTC)
        assert await audit.prune(now + dt.timedelta(days=29)) == 0  # within retention: kept
        assert await audit.prune(now + dt.timedelta(days=31)) == 5  # past it: gone
        assert await audit.query() == []
        audit.settings = AuditSettings(retention_days=0)  # 0: kept for ever
        audit.record(Action.DELETED, actor="x")
        await audit.flush()
        assert await audit.prune(now + dt.timedelta(days=10_000)) == 0

    with_archive(body)


def test_batches_are_one_write_each_and_a_failed_write_keeps_the_events() -> None:
    import asyncio

    calls: list[int] = []
    fail = [True]

    async def write(call: Callable[[Any], Any]) -> Any:
        class Conn:
            def execute(self, statement: Any, rows: Any = None) -> None:
                if fail[0]:
                    raise OSError("index down")
                calls.append(len(rows))

        return call(Conn())

    async def read(call: Callable[[Any], Any]) -> Any:  # pragma: no cover - not used
        return None

    audit = AuditLog(write, read, "node-a", AuditSettings(batch=100, max_pending=1000))
    for n in range(250):
        audit.record(Action.DELETED, actor=f"u{n}")
    with pytest.raises(OSError):
        asyncio.run(audit.flush())
    assert audit.pending == 250 and calls == []  # kept for the next flush
    fail[0] = False
    assert asyncio.run(audit.flush()) == 250
    assert calls == [100, 100, 50] and audit.pending == 0
    for n in range(1001):  # at the limit the oldest are dropped, counted
        audit.record(Action.DELETED, actor=f"v{n}")
    assert audit.pending == 1000 and audit.dropped == 1


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": "P1", "StudyDate": "2024"}, ("P1", "PatientID=P1")),
        ({"PatientID": "P*"}, ("", "PatientID=P*")),
        ({"PatientName": "DOE^*"}, ("", "PatientName=DOE^*")),
        ({"PatientID": "*", "PatientName": ""}, None),
        ({"StudyDate": "20240101"}, None),
    ],
)
def test_which_queries_name_a_patient(keys: dict[str, str], expected: tuple[str, str] | None) -> None:
    assert patient_query(keys) == expected


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [("audit_retention_days", 0, -1), ("audit_flush_seconds", 0.05, 0.04), ("audit_max_pending", 1000, 999)],
)
def test_settings_at_their_limits(tmp_path: Path, key: str, good: float, bad: float) -> None:
    from minipacs.config import ConfigError, Settings

    Settings(data_dir=tmp_path, **{key: good}).validate()
    with pytest.raises(ConfigError, match=key):
        Settings(data_dir=tmp_path, **{key: bad}).validate()


def test_the_running_task_writes_without_being_asked_and_flushes_when_cancelled(tmp_path: Path) -> None:
    import asyncio

    from minipacs.bootstrap import audit_settings, open_archive
    from minipacs.config import Settings

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False, audit_flush_seconds=0.05)
        archive = await open_archive(settings)
        assert archive.audit.settings == audit_settings(settings)
        task = asyncio.ensure_future(archive.audit.run())
        try:
            archive.audit.record(Action.EXPORTED, actor="first")
            for _ in range(400):  # written by the task within a few flush intervals, nobody asking
                if archive.audit.pending == 0:
                    break
                await asyncio.sleep(0.05)
            assert archive.audit.pending == 0
            archive.audit.settings = AuditSettings(flush_seconds=3600)
            await asyncio.sleep(0.1)  # the task now sleeps for an hour
            archive.audit.record(Action.EXPORTED, actor="last")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert archive.audit.pending == 0  # the cancelled task wrote what was waiting
        rows = await archive.audit.query()
        await archive.close()
        assert [r["actor"] for r in rows] == ["last", "first"]

    asyncio.run(main())


@pytest.mark.parametrize("fails", [False, True])
def test_a_stop_while_a_batch_is_in_the_writer_still_forwards_it(fails: bool) -> None:
    """The stop cancels ``run`` while its periodic flush waits for the writer with the last rows (the
    Application Stop row, taken a moment before): the writer commits them anyway, so the batch is
    forwarded to the syslog sender before the task ends, once; a batch the writer failed stays waiting."""
    import asyncio

    async def main() -> tuple[list[list[str]], int]:
        started, gate = asyncio.Event(), asyncio.Event()

        async def write(call: Callable[[Any], Any]) -> Any:
            started.set()
            await gate.wait()  # the index transaction, still running when the stop comes
            if fails:
                raise OSError("index down")
            return list(call.keywords["rows"])  # type: ignore[attr-defined]

        async def read(call: Callable[[Any], Any]) -> Any:  # pragma: no cover - not used
            return None

        audit = AuditLog(write, read, "node-a", AuditSettings(flush_seconds=0.01, retention_days=0))  # no prune
        forwarded: list[list[str]] = []
        audit.forward.append(lambda rows: forwarded.append([r["actor"] for r in rows]))
        task = asyncio.ensure_future(audit.run())
        await asyncio.sleep(0.05)  # the task's first (empty) flush is done; it sleeps
        audit.record(Action.APP_STOP, actor="stop")
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # it waits for the batch it handed to the writer
        gate.set()
        await asyncio.gather(task, return_exceptions=True)
        return forwarded, audit.pending

    forwarded, pending = asyncio.run(main())
    if fails:
        assert (forwarded, pending) == ([], 1)  # nothing forwarded that is not in the index; kept
    else:
        assert (forwarded, pending) == ([["stop"]], 0)
