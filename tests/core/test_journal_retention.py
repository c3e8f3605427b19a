"""Pruning the changes journal (core/journal_retention.py, ``changes_retention_days``) on SQLite and
PostgreSQL: old rows go in batches, the newest row and the rows a routing cursor still needs stay, the
sequence goes on where it was, and GET /api/changes says which row is the first kept."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from minipacs.config import ConfigError, Settings
from minipacs.core import journal_retention
from minipacs.core.archive import Archive
from minipacs.core.changes import first_seq, last_seq, read_changes
from minipacs.core.model import Origin
from minipacs.index import routing_repo
from minipacs.index.schema import Change
from tests.dicomgen import write_ct

ORIGIN = Origin("import")
NOW = dt.datetime.now(dt.UTC)


async def _store(archive: Archive, folder: Path, count: int) -> None:
    study, series = str(generate_uid()), str(generate_uid())
    for i in range(count):
        await archive.import_file(
            write_ct(folder / f"{generate_uid()}.dcm", study_uid=study, series_uid=series, InstanceNumber=i + 1), ORIGIN
        )


async def _age(archive: Archive, up_to_seq: int, days: float) -> None:
    """Make the journal rows up to ``up_to_seq`` ``days`` old."""
    when = NOW - dt.timedelta(days=days)
    await archive.write(lambda c: c.execute(update(Change).where(Change.seq <= up_to_seq).values(created_at=when)))


async def _seqs(archive: Archive) -> list[int]:
    return await archive.read(lambda c: [int(s) for s in c.execute(select(Change.seq).order_by(Change.seq)).scalars()])


def test_rows_older_than_the_retention_go_in_batches_and_the_rest_stay(
    with_archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_retention, "BATCH", 3)  # several writer transactions

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path / "old", 5)  # NewPatient, NewStudy, NewSeries, 5 x NewInstance
        old = await archive.read(last_seq)
        await _store(archive, tmp_path / "new", 2)
        await _age(archive, old, 40)
        kept_before = [s for s in await _seqs(archive) if s > old]
        assert await journal_retention.prune(archive, 0) == 0  # 0: keep for ever
        assert await journal_retention.prune(archive, 30) == old
        assert await _seqs(archive) == kept_before
        assert await archive.read(first_seq) == old + 1
        assert await journal_retention.prune(archive, 30) == 0  # nothing left to prune

    with_archive(body)


def test_the_newest_row_stays_and_the_sequence_goes_on(with_archive: Any, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path / "a", 2)
        newest = await archive.read(last_seq)
        await _age(archive, newest, 40)  # every row is old
        assert await journal_retention.prune(archive, 30) == newest - 1
        assert await _seqs(archive) == [newest]
        await _store(archive, tmp_path / "b", 1)
        after = await _seqs(archive)
        assert after[0] == newest and min(after[1:]) > newest  # no seq handed out twice
        found, _last, _done = await archive.read(lambda c: read_changes(c, newest, 100))
        assert [c.seq for c in found] == after[1:]  # a reader paging from the newest sees the new rows

    with_archive(body)


def test_rows_a_routing_cursor_has_not_passed_stay(with_archive: Any, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path / "a", 6)
        newest = await archive.read(last_seq)
        await _age(archive, newest, 40)
        await archive.write(lambda c: routing_repo.set_arrival_cursor(c, "node-b", 4, NOW))  # routed up to 4
        await archive.write(lambda c: routing_repo.set_arrival_cursor(c, "node-a", newest, NOW))
        assert await journal_retention.prune(archive, 30) == 4
        assert (await _seqs(archive))[0] == 5

    with_archive(body)


@pytest.mark.parametrize("days", [-1, -30])
def test_changes_retention_days_is_checked(tmp_path: Path, days: int) -> None:
    with pytest.raises(ConfigError, match="changes_retention_days must be 0"):
        Settings(data_dir=tmp_path, changes_retention_days=days).validate()
