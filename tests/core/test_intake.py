"""The intake log (core/intake.py): one flush per batch of acknowledged instances, and the replay that
brings the index and storage back after a crash or a power cut.

A power cut is staged by taking away what the log's promise says may be lost: index commits after
the last checkpoint (rows deleted, the committed LSN set back) and the contents of files written
since (truncated or removed). After a start every acknowledged instance is back, byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from minipacs.blobs.packs import slot_of
from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core import archive as archive_module
from minipacs.core import intake as intake_module
from minipacs.core.archive import INTAKE_DIR, Archive
from minipacs.core.delete import delete_resource
from minipacs.core.errors import ArchiveError, BrokenDataset, DuplicateInstance
from minipacs.core.intake import FIRST_SEGMENT_BYTES, IntakeLog, IntakeLogError
from minipacs.core.model import DuplicatePolicy, StoreStatus
from minipacs.index import intake_repo
from minipacs.index.schema import Instance, IntakeState
from tests.core.test_archive import DICOM, stage
from tests.dicomgen import ExplicitVRLittleEndian, ImplicitVRLittleEndian, encode_dataset, generate_uid, make_ct
from tests.index.pg import postgres_schema_url
from tests.stored_files import lose_pack_entry

# ---------------------------------------------------------------- the log on its own


def _records(log: IntakeLog, count: int, size: int = 100, start: int = 0) -> list[int]:
    return log.append([({"n": start + i}, bytes([(start + i) % 256]) * size) for i in range(count)])


def test_records_come_back_in_order_after_reopening(tmp_path: Path) -> None:
    log, pending = IntakeLog.open(tmp_path, 1 << 16)
    assert pending == []
    assert _records(log, 3) == [1, 2, 3]
    assert _records(log, 2, start=3) == [4, 5]
    log.close()
    again, pending = IntakeLog.open(tmp_path, 1 << 16)
    assert [(r.lsn, r.meta["n"], r.data[:1]) for r in pending] == [(i + 1, i, bytes([i])) for i in range(5)]
    assert again.next_lsn == 6
    assert _records(again, 1, start=5) == [6]  # numbering goes on (in a new segment)


def test_a_torn_record_ends_the_log(tmp_path: Path) -> None:
    log, _ = IntakeLog.open(tmp_path, 1 << 16)
    _records(log, 3, size=1000)
    log.close()
    (segment,) = tmp_path.glob("*.seg")
    raw = bytearray(segment.read_bytes())
    second = 20 + 4 + len(b'{"n":0}') + 1000  # record 1: head, metadata length, metadata, data
    raw[second + 20 + 4 + 10 + 500] ^= 0xFF  # a bit of record 2's data: its CRC no longer matches
    segment.write_bytes(bytes(raw))
    _, pending = IntakeLog.open(tmp_path, 1 << 16)
    assert [r.lsn for r in pending] == [1]  # record 3 is intact, but nothing after a bad record counts


def test_checkpoint_recycles_segments_and_old_records_are_not_replayed(tmp_path: Path) -> None:
    log, _ = IntakeLog.open(tmp_path, 1 << 20)
    for n in range(6):  # 6 x 300 kB: segments of 1 MiB, a record never spans two
        _records(log, 1, size=300_000, start=n)
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) >= 2
    log.checkpoint(4)
    log.close()
    reopened, pending = IntakeLog.open(tmp_path, 1 << 20)
    assert [r.lsn for r in pending] == [5, 6]
    # a recycled segment is reused: its stale records (LSN 1..) never read as new ones
    reopened.append([({"n": 99}, b"x" * 300_000)] * 4)
    reopened.checkpoint(reopened.next_lsn - 1)
    reopened.close()
    assert sum(1 for _ in tmp_path.glob("*.seg")) <= len(segments) + 1
    _, pending = IntakeLog.open(tmp_path, 1 << 20)
    assert pending == []


def test_spare_segments_are_zero_filled_ahead_and_sizes_grow(tmp_path: Path) -> None:
    log, _ = IntakeLog.open(tmp_path, 4 * FIRST_SEGMENT_BYTES)
    _records(log, 1)
    assert log.wants_spare
    log.make_spare()
    assert not log.wants_spare
    spare = tmp_path / "spare.tmp"
    assert spare.stat().st_size == 2 * FIRST_SEGMENT_BYTES and spare.read_bytes()[:4096] == bytes(4096)
    _records(log, 1, size=FIRST_SEGMENT_BYTES)  # does not fit: the spare becomes the next segment
    assert not spare.exists()
    assert sorted(p.stat().st_size for p in tmp_path.glob("*.seg")) == [FIRST_SEGMENT_BYTES, 2 * FIRST_SEGMENT_BYTES]


# ---------------------------------------------------------------- the archive with its log


def _settings(data: Path, url: str = "", **extra: Any) -> Settings:
    # no checkpoint on its own during the test: the log keeps everything until close
    return Settings(data_dir=data, index_url=url, intake_checkpoint_seconds=3600, **extra)


def _instances(count: int, syntax: str = ExplicitVRLittleEndian) -> list[tuple[Any, bytes]]:
    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(count):
        ds = make_ct(study, series, generate_uid())
        out.append((ds, encode_dataset(ds, syntax)))
    return out


async def _store(
    archive: Archive, items: list[tuple[Any, bytes]], syntax: str = ExplicitVRLittleEndian, in_memory: bool = False
) -> None:
    staged = [stage(archive, ds, syntax, data, in_memory=in_memory) for ds, data in items]
    assert all((s.data is not None) == in_memory for s in staged)
    outcomes = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged))
    assert {o.status for o in outcomes} == {StoreStatus.STORED}


def _index(archive: Archive) -> dict[str, str]:
    rows = archive._index.read(lambda c: list(c.execute(select(Instance.sop_instance_uid, Instance.blob_key))))
    return {uid: key for uid, key in rows}


def _stored_dataset(archive: Archive, key: str) -> bytes:
    with archive.blobs.open(key) as fh:
        return fh.read()


def _power_cut(archive: Archive, lose_after: int) -> list[str]:
    """What a power cut may take once the process is gone: every index commit after the log record
    ``lose_after`` and the contents of every file written since the last checkpoint. Returns the
    SOP Instance UIDs whose rows were taken."""
    _, records = IntakeLog.open(archive.settings.data_dir / INTAKE_DIR, 1 << 20)
    lost = [str(r.meta["sop"]) for r in records if r.lsn > lose_after]

    def roll_back(conn: Any) -> None:
        conn.execute(delete(Instance).where(Instance.sop_instance_uid.in_(lost)))
        conn.execute(update(IntakeState).values(lsn=lose_after))

    with archive._index.engine.begin() as conn:
        roll_back(conn)
    archive._index.dispose()
    for record in records:
        key = Archive._record_key(record)
        if key is None:
            continue  # a refused dataset's record: nothing was ever stored under a key
        if slot_of(key) is not None:  # a pack entry (blobs/packs.py): its blocks never reached the disk
            lose_pack_entry(archive.blobs, key)  # type: ignore[arg-type]
            continue
        path = archive.blobs.path_of(key)
        if record.lsn % 2:
            path.unlink(missing_ok=True)  # the new directory entry was lost
        elif path.exists():
            os.truncate(path, 0)  # the entry survived, its data did not
    return lost


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> Any:
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_schema_url() as value:
            yield value


@pytest.mark.parametrize("in_memory", [False, True], ids=["staged-file", "received-into-memory"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_power_cut_loses_no_acknowledged_instance(tmp_path: Path, url: str, syntax: str, in_memory: bool) -> None:
    """Both ways an instance reaches the writer: a staged file (STOW-RS, uploads, import) renamed into
    storage, or bytes received into memory (C-STORE) written at its key."""
    items = _instances(30, syntax)
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(_settings(data, url))
        await _store(archive, items[:20], syntax, in_memory)
        committed = await archive.read(intake_repo.committed_lsn)
        assert committed >= 20  # the rows carry the log's position
        await _store(archive, items[20:], syntax, in_memory)
        keys = _index(archive)
        await archive.close(checkpoint=False)  # the process dies: no checkpoint
        lost = _power_cut(archive, lose_after=committed)
        assert len(lost) == 10

        again = await open_archive(_settings(data, url))
        try:
            after = _index(again)
            assert set(after) == {ds.SOPInstanceUID for ds, _ in items}
            for ds, encoded in items:
                stored = _stored_dataset(again, after[ds.SOPInstanceUID])
                assert stored.endswith(encoded), f"{ds.SOPInstanceUID}: the stored file differs"
            # the instances whose commit survived keep their keys; the others are stored again,
            # as new copies (core/paths.py), and the file the lost commit had renamed is gone
            assert all(after[uid] == keys[uid] for uid in keys if uid not in lost)
            assert all(after[uid] != keys[uid] and not again.blobs.exists(keys[uid]) for uid in lost)
            assert len(list(again.blobs.keys())) == 30
            assert await again.count_instances() == 30
            assert again._intake is not None and again._intake.checkpoint_lsn >= 30  # replayed, checkpointed
        finally:
            await again.close()
        third = await open_archive(_settings(data, url))  # nothing left to replay
        try:
            assert _index(third) == after
        finally:
            await third.close()

    asyncio.run(main())


def test_a_deleted_instance_is_not_brought_back_by_the_replay(tmp_path: Path) -> None:
    items = _instances(4)
    gone = items[0][0]
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(_settings(data))
        await _store(archive, items)
        gone_key = _index(archive)[gone.SOPInstanceUID]
        await delete_resource(archive, "instance", gone.SOPInstanceUID)
        assert not archive.blobs.exists(gone_key)
        await archive.close(checkpoint=False)
        again = await open_archive(_settings(data))
        try:
            assert set(_index(again)) == {ds.SOPInstanceUID for ds, _ in items[1:]}
            assert not again.blobs.exists(gone_key)
            assert len(list(again.blobs.keys())) == 3
        finally:
            await again.close()

    asyncio.run(main())


def test_a_clean_close_checkpoints_and_a_checkpoint_empties_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=data, intake_checkpoint_seconds=0.05))
        await _store(archive, _instances(3))
        intake = archive._intake
        assert intake is not None
        for _ in range(100):  # the checkpointer runs on its own
            if intake.checkpoint_lsn >= 3:
                break
            await asyncio.sleep(0.05)
        assert intake.checkpoint_lsn == 3
        await _store(archive, _instances(2))
        await archive.close()
        _, pending = IntakeLog.open(data / INTAKE_DIR, 1 << 20)
        assert pending == []  # close checkpointed the last two

    asyncio.run(main())


def test_large_files_and_fsync_off_bypass_the_log(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "a", intake_inline_max_bytes=2000))
        try:
            await _store(archive, _instances(2))  # ~9 kB each: over the limit, flushed on their own
            assert archive._intake is not None and archive._intake.next_lsn == 1
            assert await archive.count_instances() == 2
        finally:
            await archive.close()
        off = await open_archive(Settings(data_dir=tmp_path / "b", fsync=False))
        try:
            await _store(off, _instances(1))
            assert off._intake is None and not (tmp_path / "b" / INTAKE_DIR).exists()
        finally:
            await off.close()

    asyncio.run(main())


def test_a_log_left_by_a_crash_is_replayed_even_with_the_log_now_off(tmp_path: Path) -> None:
    items = _instances(3)
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(_settings(data))
        await _store(archive, items)
        await archive.close(checkpoint=False)
        _power_cut(archive, lose_after=0)
        again = await open_archive(_settings(data, intake_inline_max_bytes=0))
        try:
            assert set(_index(again)) == {ds.SOPInstanceUID for ds, _ in items}
            assert again._intake is None  # replayed, then off
        finally:
            await again.close()

    asyncio.run(main())


def test_record_crc_covers_metadata_and_data(tmp_path: Path) -> None:
    log, _ = IntakeLog.open(tmp_path, 1 << 16)
    log.append([({"key": "a"}, b"payload")])
    log.close()
    raw = next(tmp_path.glob("*.seg")).read_bytes()
    _magic, _lsn, length, crc = struct.unpack_from("<4sQII", raw)
    assert zlib.crc32(raw[20 : 20 + length]) == crc


MiB = 1 << 20


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("intake_inline_max_bytes", 0, -1),
        ("intake_inline_max_bytes", 64 * MiB, 64 * MiB + 1),
        ("receive_in_memory_max_bytes", 0, -1),
        ("receive_in_memory_max_bytes", 64 * MiB, 64 * MiB + 1),
        ("intake_segment_bytes", MiB, MiB - 1),
        ("intake_segment_bytes", 1024 * MiB, 1024 * MiB + 1),
        ("intake_checkpoint_seconds", 0.001, 0),
        ("intake_checkpoint_seconds", 3600, 3600.5),
        ("intake_checkpoint_bytes", MiB, MiB - 1),
        ("completion_recheck_seconds", 0.001, 0),
        ("completion_recheck_seconds", 86400, 86401),
        ("pack_bytes", 0, -1),
        ("pack_bytes", MiB, MiB - 1),
        ("pack_bytes", 4096 * MiB, 4096 * MiB + 1),
    ],
)
def test_intake_settings_at_their_limits(key: str, good: Any, bad: Any) -> None:
    from minipacs.config import ConfigError

    Settings(**{key: good}).validate()
    with pytest.raises(ConfigError, match=key):
        Settings(**{key: bad}).validate()


def test_a_file_of_exactly_intake_inline_max_bytes_is_logged_one_byte_more_is_not(tmp_path: Path) -> None:
    ((ds, data),) = _instances(1)

    async def size_of(root: Path) -> int:
        archive = await open_archive(Settings(data_dir=root, fsync=False))
        try:
            staged = stage(archive, ds, ExplicitVRLittleEndian, data)
            return staged.path.stat().st_size
        finally:
            await archive.close()

    size = asyncio.run(size_of(tmp_path / "probe"))

    async def logged_with(
        limit: int, root: Path, in_memory: bool = False, memory_limit: int = 64 * MiB
    ) -> tuple[int, bool]:
        """(records written, whether the instance was held in memory)"""
        archive = await open_archive(
            _settings(root, intake_inline_max_bytes=limit, receive_in_memory_max_bytes=memory_limit)
        )
        try:
            staged = stage(archive, ds, ExplicitVRLittleEndian, data, in_memory=in_memory)
            held = staged.data is not None
            assert (await archive.ingest(staged, DICOM)).status is StoreStatus.STORED
            assert archive._intake is not None
            assert list(archive.staging_dir.iterdir()) == []
            (key,) = _index(archive).values()
            assert _stored_dataset(archive, key).endswith(data)
            return archive._intake.next_lsn - 1, held
        finally:
            await archive.close()

    assert asyncio.run(logged_with(size, tmp_path / "at")) == (1, False)
    assert asyncio.run(logged_with(size - 1, tmp_path / "over")) == (0, False)
    # received into memory (C-STORE): held up to the same bound, on disk one byte past it
    assert asyncio.run(logged_with(size, tmp_path / "memory-at", in_memory=True)) == (1, True)
    assert asyncio.run(logged_with(size - 1, tmp_path / "memory-over", in_memory=True)) == (0, False)
    # and by receive_in_memory_max_bytes: past it a staging file, still logged
    assert asyncio.run(logged_with(size, tmp_path / "memory-cap-at", True, memory_limit=size)) == (1, True)
    assert asyncio.run(logged_with(size, tmp_path / "memory-cap-over", True, memory_limit=size - 1)) == (1, False)
    assert asyncio.run(logged_with(size, tmp_path / "memory-off", True, memory_limit=0)) == (1, False)


def _writer_pragma(archive: Archive, name: str) -> int:
    conn = archive._index_writer._conn
    assert conn is not None and conn.connection.driver_connection is not None
    return int(conn.connection.driver_connection.execute(f"PRAGMA {name}").fetchone()[0])


def test_with_the_log_on_the_checkpointer_not_a_commit_copies_the_wal(tmp_path: Path) -> None:
    """A commit that takes the WAL past 1000 pages would copy them into the database file and fsync
    twice on a C-STORE's critical path (SQLite's wal_autocheckpoint); with the intake log on, the
    checkpointer thread does it instead, every intake_checkpoint_seconds."""

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", intake_checkpoint_seconds=0.05))
        calls: list[int] = []
        real = archive._index.checkpoint_wal

        def counted() -> None:
            calls.append(1)
            real()

        archive._index.checkpoint_wal = counted  # type: ignore[method-assign]
        await _store(archive, _instances(40))
        assert _writer_pragma(archive, "wal_autocheckpoint") == 0
        for _ in range(100):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(calls) >= 2
        # everything committed so far is now in the database file: a checkpoint finds nothing left. The
        # checkpointer thread (every 0.05 s) or the metadata worker's read may hold the WAL for a moment
        # (busy = 1, seen once in CI): the claim is that it completes, so look again briefly.
        for _ in range(40):
            archive._index.checkpoint_wal()
            raw = archive._index.engine.raw_connection()
            try:
                busy, frames, copied = raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                raw.close()
            if busy == 0 and frames == copied:
                break
            await asyncio.sleep(0.05)
        assert busy == 0 and frames == copied
        await archive.close()

    asyncio.run(main())


def test_without_the_log_commits_checkpoint_the_wal_themselves(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        await _store(archive, _instances(2))
        assert archive._intake is None
        assert _writer_pragma(archive, "wal_autocheckpoint") == 1000
        await archive.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the flush beside the checks and statements


@pytest.fixture(params=["aio", "synchronous"])
def flush_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a flush runs: the C library's aio_fsync (Linux, 64-bit: this CI), or in the caller."""
    if request.param == "aio":
        assert intake_module._aio is not None, "POSIX aio_fsync was not found in the C library"
    else:
        monkeypatch.setattr(intake_module, "_aio", None)
    return str(request.param)


def test_a_started_flush_makes_the_records_durable_and_reports_a_failure(tmp_path: Path, flush_kind: str) -> None:
    log, _ = IntakeLog.open(tmp_path / "good", 1 << 16)
    lsns = log.write([({"n": 1}, b"a" * 5000), ({"n": 2}, b"b" * 7)])
    flush = log.start_flush(lsns)
    assert flush is not None and (flush.request is not None) == (flush_kind == "aio")
    log.finish_flush(flush)
    log.close()
    _, pending = IntakeLog.open(tmp_path / "good", 1 << 16)
    assert [(r.lsn, r.meta, r.data) for r in pending] == [(1, {"n": 1}, b"a" * 5000), (2, {"n": 2}, b"b" * 7)]

    # a flush the kernel refuses (here: of a descriptor closed behind the log's back) is an IntakeLogError
    broken, _ = IntakeLog.open(tmp_path / "bad", 1 << 16)
    lsns = broken.write([({"n": 1}, b"x")])
    assert broken._fd is not None
    os.close(broken._fd)
    with pytest.raises(IntakeLogError, match="cannot be written"):
        broken.finish_flush(broken.start_flush(lsns))
    assert broken._fd is None  # the next record starts a new segment


def test_the_flush_starts_before_the_checks_and_the_commit_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_kind: str
) -> None:
    """The order on the writer's thread: record written and flush started, then the structure walk and
    the header (prepare_ingest), then the rows; the commit only after the flush: at the wait no other
    connection sees the row yet."""
    ((ds, data),) = _instances(1)
    events: list[str] = []
    holder: list[Archive] = []
    real_start, real_finish, real_prepare = (
        IntakeLog.start_flush,
        IntakeLog.finish_flush,
        archive_module.prepare_ingest,
    )

    def start(self: IntakeLog, lsns: Any) -> Any:
        events.append("flush started")
        return real_start(self, lsns)

    def finish(self: IntakeLog, flush: Any) -> None:
        visible = holder[0]._index.read(lambda conn: list(conn.execute(select(Instance.sop_instance_uid))))
        events.append(f"flush waited, rows visible: {len(visible)}")
        real_finish(self, flush)

    def prepare(*args: Any) -> Any:
        events.append("checked")
        return real_prepare(*args)

    monkeypatch.setattr(IntakeLog, "start_flush", start)
    monkeypatch.setattr(IntakeLog, "finish_flush", finish)
    monkeypatch.setattr(archive_module, "prepare_ingest", prepare)

    async def main() -> None:
        archive = await open_archive(_settings(tmp_path / "data"))
        holder.append(archive)
        try:
            outcome = await archive.ingest(stage(archive, ds, ExplicitVRLittleEndian, data, in_memory=True), DICOM)
            assert outcome.status is StoreStatus.STORED
            assert await archive.count_instances() == 1
        finally:
            await archive.close()

    asyncio.run(main())
    assert events == ["flush started", "checked", "flush waited, rows visible: 0"]


@pytest.mark.parametrize("in_memory", [False, True], ids=["staged-file", "received-into-memory"])
def test_a_failed_flush_stores_nothing_and_the_next_instance_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    (first, first_data), (second, second_data) = _instances(2)
    real_finish = IntakeLog.finish_flush
    failing = [True]

    def finish(self: IntakeLog, flush: Any) -> None:
        real_finish(self, flush)
        if failing[0]:
            raise IntakeLogError("the intake log cannot be written (Input/output error)") from OSError(5, "EIO")

    monkeypatch.setattr(IntakeLog, "finish_flush", finish)

    async def main() -> None:
        archive = await open_archive(_settings(tmp_path / "data"))
        try:
            staged = stage(archive, first, ExplicitVRLittleEndian, first_data, in_memory=in_memory)
            with pytest.raises(ArchiveError, match="intake log cannot be written; nothing was stored"):
                await archive.ingest(staged, DICOM)
            assert await archive.count_instances() == 0
            assert list(archive.blobs.keys()) == []
            assert list(archive.staging_dir.iterdir()) == []
            failing[0] = False
            staged = stage(archive, second, ExplicitVRLittleEndian, second_data, in_memory=in_memory)
            assert (await archive.ingest(staged, DICOM)).status is StoreStatus.STORED
            assert set(_index(archive)) == {second.SOPInstanceUID}
        finally:
            await archive.close()

    asyncio.run(main())


@pytest.mark.parametrize("lose_after", ["nothing", "everything"])
def test_records_of_refused_datasets_bring_nothing_back(tmp_path: Path, lose_after: str) -> None:
    """Records are written before the checks, so a refused dataset has one too: a duplicate the policy
    refuses, a dataset whose element runs past its end. The replay stores neither, whether their
    records count as committed or are replayed as lost commits (refused again)."""
    ((ds, data),) = _instances(1)
    broken_ds, broken_data = _instances(1)[0]
    broken = broken_data[:-200] + struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 0xFFF0) + b"short"
    data_dir = tmp_path / "data"

    async def main() -> None:
        settings = _settings(data_dir, duplicate_policy=DuplicatePolicy.REJECT)
        archive = await open_archive(settings)
        try:
            await _store(archive, [(ds, data)], in_memory=True)
            with pytest.raises(DuplicateInstance):
                await archive.ingest(stage(archive, ds, ExplicitVRLittleEndian, data, in_memory=True), DICOM)
            with pytest.raises(BrokenDataset):
                await archive.ingest(stage(archive, broken_ds, ExplicitVRLittleEndian, broken, in_memory=True), DICOM)
            assert archive._intake is not None and archive._intake.next_lsn == 4  # three records
            keys = _index(archive)
            committed = await archive.read(intake_repo.committed_lsn)
        finally:
            await archive.close(checkpoint=False)
        lost = _power_cut(archive, lose_after=committed if lose_after == "nothing" else 0)
        # the broken dataset's record is past every commit (its ingest never reached a transaction)
        assert lost == (
            [broken_ds.SOPInstanceUID]
            if lose_after == "nothing"
            else [ds.SOPInstanceUID] * 2 + [broken_ds.SOPInstanceUID]
        )
        again = await open_archive(settings)
        try:
            after = _index(again)
            assert set(after) == {ds.SOPInstanceUID}
            if lose_after == "nothing":
                assert after == keys
            assert _stored_dataset(again, after[ds.SOPInstanceUID]).endswith(data)
            assert len(list(again.blobs.keys())) == 1
        finally:
            await again.close()

    asyncio.run(main())


def test_a_refused_asynchronous_flush_falls_back_to_a_synchronous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aio_fsync may refuse a request (EAGAIN: the C library cannot start a thread): the flush then
    happens at the wait, and the ingest succeeds, durably, as without aio."""
    assert intake_module._aio is not None

    def refuse(fd: int) -> Any:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(intake_module._aio, "start", refuse)
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(intake_module.os, "fdatasync", fdatasync)
    items = _instances(2)

    async def main() -> None:
        archive = await open_archive(_settings(tmp_path / "data"))
        try:
            await _store(archive, items, in_memory=True)
            assert set(_index(archive)) == {ds.SOPInstanceUID for ds, _ in items}
            assert archive._intake is not None and archive._intake._aio_refused
        finally:
            await archive.close()

    asyncio.run(main())
    assert synced  # the records were flushed, synchronously
