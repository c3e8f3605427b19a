"""An ingest on the event loop (core/archive.py ``Archive._ingest_here``): the usual C-STORE of a small
instance, received into memory, is applied by the loop itself when the writer is idle; everything
else, and everything while the writer is busy or after a slow cycle, goes through the writer thread.
Either way the promise is the same: once the outcome is back, the file and its row are there."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from minipacs.core import archive as archive_module
from minipacs.core.archive import Archive
from minipacs.core.errors import InvalidInstance
from minipacs.core.model import Origin, StoreStatus
from tests.core.test_archive import stage
from tests.dicomgen import ExplicitVRLittleEndian, encode_dataset, make_ct
from tests.stored_files import instance_blob

DICOM = Origin(kind="dicom", calling_aet="MODALITY", called_aet="MINIPACS", peer_host="127.0.0.1", peer_port=4242)
Run = Callable[..., Any]


def _spy(archive: Archive) -> list[str]:
    """The name of the thread each batch is applied on, in order."""
    threads: list[str] = []
    real = archive._commit_batch

    def commit_batch(batch: list[Any]) -> list[object]:
        threads.append(threading.current_thread().name)
        return real(batch)

    archive._commit_batch = commit_batch  # type: ignore[method-assign]
    return threads


WRITER = "minipacs-index-writer"


def _here(archive: Archive) -> str:
    """The thread an ingest that may run on the loop runs on: the loop's own on SQLite; on PostgreSQL
    always the writer (its statements are round trips the loop would sit through)."""
    return threading.current_thread().name if archive._index.is_sqlite else WRITER


def _ct(n: int) -> Any:
    return make_ct("1.2.826.9", "1.2.826.9.1", f"1.2.826.9.1.{n}", InstanceNumber=n)


def test_a_small_instance_in_memory_is_applied_on_the_loop_others_by_the_writer(with_archive: Run) -> None:
    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        here = await archive.ingest(stage(archive, _ct(1), in_memory=True), DICOM)
        on_disk = await archive.ingest(stage(archive, _ct(2)), DICOM)  # staged in a file: the writer
        assert here.status is on_disk.status is StoreStatus.STORED
        assert threads == [_here(archive), WRITER]
        for outcome in (here, on_disk):  # file and row there once the outcome is back
            key, stored = await instance_blob(archive, outcome.sop_instance_uid)
            assert key == outcome.relative_path and len(stored) == outcome.size
        assert await archive.count_instances() == 2

    with_archive(body)


def test_a_broken_instance_in_memory_is_refused_on_the_loop_as_by_the_writer(with_archive: Run) -> None:
    data = encode_dataset(_ct(1), ExplicitVRLittleEndian)

    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        with pytest.raises(InvalidInstance):
            await archive.ingest(stage(archive, _ct(1), data=data[:-7], in_memory=True), DICOM)  # cut short
        assert threads == [_here(archive)]
        assert await archive.count_instances() == 0
        if archive._index.is_sqlite:  # the transaction begun for it was rolled back: no write lock held
            import sqlite3

            other = sqlite3.connect(archive.settings.data_dir / "index.sqlite3", timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # SQLITE_BUSY if the loop's transaction were still open
                other.execute("ROLLBACK")
            finally:
                other.close()
        stored = await archive.ingest(stage(archive, _ct(1), data=data, in_memory=True), DICOM)
        assert stored.status is StoreStatus.STORED  # the loop's state is sound after a refusal

    with_archive(body)


def test_while_the_writer_holds_its_lock_an_ingest_waits_in_its_queue(with_archive: Run) -> None:
    """The writer in a batch (its lock held, as a checkpoint's barrier or a deletion would): the next
    ingest is not applied beside it on the loop but queued, and answered once the writer has it."""

    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        archive._commit_lock.acquire()
        releaser = threading.Timer(0.3, archive._commit_lock.release)
        started = time.monotonic()
        releaser.start()
        try:
            outcome = await asyncio.wait_for(archive.ingest(stage(archive, _ct(1), in_memory=True), DICOM), 10)
        finally:
            releaser.join()
        assert outcome.status is StoreStatus.STORED and time.monotonic() - started >= 0.25
        assert threads == [WRITER]

    with_archive(body)


def test_a_slow_cycle_on_the_loop_sends_ingests_to_the_writer_for_a_while(with_archive: Run) -> None:
    """A disk whose flush is slow must not hold the event loop instance after instance: cycles over
    ``loop_ingest_max_ms`` on average, and the ingests go through the writer for
    ``loop_ingest_pause_seconds``; then back."""

    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        loop_thread = _here(archive)
        await archive.ingest(stage(archive, _ct(1), in_memory=True), DICOM)
        await archive.ingest(stage(archive, _ct(2), in_memory=True), DICOM)
        assert threads == [loop_thread, WRITER]
        await asyncio.sleep(0.6)  # still paused
        await archive.ingest(stage(archive, _ct(3), in_memory=True), DICOM)
        assert threads[-1] == WRITER
        await asyncio.sleep(0.5)  # the pause is over
        await archive.ingest(stage(archive, _ct(4), in_memory=True), DICOM)
        assert threads[-1] == loop_thread
        assert await archive.count_instances() == 4

    # every cycle is "slow": no ingest takes under a microsecond; the shortest pause the setting allows
    with_archive(body, loop_ingest_max_ms=0.001, loop_ingest_pause_seconds=1)


def test_loop_ingest_max_ms_zero_sends_every_ingest_through_the_writer(with_archive: Run) -> None:
    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        for n in range(3):
            outcome = await archive.ingest(stage(archive, _ct(n), in_memory=True), DICOM)
            assert outcome.status is StoreStatus.STORED
        assert threads == [WRITER] * 3

    with_archive(body, loop_ingest_max_ms=0)


@pytest.mark.parametrize(
    ("options", "valid"),
    [
        ({"loop_ingest_max_ms": 0}, True),
        ({"loop_ingest_max_ms": 1000}, True),
        ({"loop_ingest_max_ms": -0.001}, False),
        ({"loop_ingest_max_ms": 1000.001}, False),
        ({"loop_ingest_pause_seconds": 1}, True),
        ({"loop_ingest_pause_seconds": 3600}, True),
        ({"loop_ingest_pause_seconds": 0.999}, False),
        ({"loop_ingest_pause_seconds": 3600.5}, False),
    ],
)
def test_the_loop_ingest_settings_are_checked_at_their_limits(
    tmp_path: Any, options: dict[str, float], valid: bool
) -> None:
    from minipacs.config import ConfigError, Settings

    settings = Settings(data_dir=tmp_path, **options)  # type: ignore[arg-type]
    if valid:
        settings.validate()
    else:
        with pytest.raises(ConfigError, match=next(iter(options))):
            settings.validate()


def test_many_associations_at_once_lose_nothing_and_keep_their_order_per_instance(with_archive: Run) -> None:
    """Eight senders at once, each on its own instances: some ingests run on the loop, the rest queue for
    the writer while it is busy; every one is stored once, with its own row and file."""

    async def body(archive: Archive) -> None:
        threads = _spy(archive)

        async def sender(k: int) -> list[str]:
            uids = []
            for n in range(25):
                outcome = await archive.ingest(stage(archive, _ct(1000 * k + n), in_memory=True), DICOM)
                assert outcome.status is StoreStatus.STORED
                uids.append(outcome.sop_instance_uid)
            return uids

        sent = await asyncio.gather(*(sender(k) for k in range(1, 9)))
        assert await archive.count_instances() == 200
        for uids in sent:
            for uid in uids:
                assert (await instance_blob(archive, uid))[1].startswith(bytes(128) + b"DICM")
        assert len(threads) >= 1

    with_archive(body)


def test_one_slow_cycle_does_not_stop_the_loops_path_a_slow_disk_does() -> None:
    """The first instance of a new series creates its patient, study and series rows (18 ms once, seen on
    the benchmark machine), a flush beside the intake checkpoint's syncfs takes 20 ms about once a
    second: alone they must not send a whole transfer to the writer. Cycles over the default
    ``loop_ingest_max_ms`` (5 ms) on average (a disk whose flush takes 8 ms) do, within ten or so instances."""
    guard = archive_module._HereGuard(0.005)
    checkpoints = ([0.001] * 40 + [0.02, 0.02]) * 20  # two slow in a row, once a second at 800/s
    assert not any(guard.too_slow(took) for took in [0.018, *checkpoints])
    cycles = 1
    while not guard.too_slow(0.008):
        cycles += 1
        assert cycles <= 12
    assert guard.average == 0.0  # it starts again after the pause
    assert guard.too_slow(0.001) is False


def test_while_another_process_writes_the_index_the_loop_does_not_wait_for_it(tmp_path: Any) -> None:
    """``minipacs import`` beside the server, or a command, holds the SQLite index's write lock: an
    ingest on the loop would wait for it there (up to SQLite's 30 s busy timeout), and every association
    and HTTP request with it. The writer thread waits instead, and the loop goes on."""
    import sqlite3

    from minipacs.bootstrap import open_archive
    from minipacs.config import Settings

    async def main() -> tuple[list[str], int, int]:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            threads = _spy(archive)
            await archive.ingest(stage(archive, _ct(1), in_memory=True), DICOM)  # the writer's connection is open
            other = sqlite3.connect(archive.settings.data_dir / "index.sqlite3", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process's write transaction
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticking = asyncio.ensure_future(ticker())
            asyncio.get_running_loop().call_later(0.5, other.rollback)  # its transaction ends
            started = time.monotonic()
            outcome = await asyncio.wait_for(archive.ingest(stage(archive, _ct(2), in_memory=True), DICOM), 10)
            waited = time.monotonic() - started
            ticking.cancel()
            other.close()
            assert outcome.status is StoreStatus.STORED and waited >= 0.4
            return list(threads), ticks, await archive.count_instances()
        finally:
            await archive.close()

    threads, ticks, count = asyncio.run(main())
    assert threads == [threading.current_thread().name, WRITER] and count == 2
    assert ticks >= 20  # the loop ran on while the writer waited (~50 ticks in 0.5 s)


def test_several_senders_at_once_share_the_writers_batches(with_archive: Run) -> None:
    """Two associations storing at once (two peer ports): their ingests go through the writer, whose
    batches share one flush among them; one sender alone again, after HERE_ALONE_SECONDS, on the loop."""
    from dataclasses import replace

    other = replace(DICOM, peer_port=4243)

    async def body(archive: Archive) -> None:
        threads = _spy(archive)
        here = _here(archive)
        await archive.ingest(stage(archive, _ct(1), in_memory=True), DICOM)
        await archive.ingest(stage(archive, _ct(2), in_memory=True), other)  # another sender, at once
        await archive.ingest(stage(archive, _ct(3), in_memory=True), DICOM)  # and the first again
        assert threads == [here, WRITER, WRITER]
        await asyncio.sleep(archive_module.HERE_ALONE_SECONDS + 0.05)
        await archive.ingest(stage(archive, _ct(4), in_memory=True), other)  # alone now
        await archive.ingest(stage(archive, _ct(5), in_memory=True), other)
        assert threads[3:] == [here, here]
        assert await archive.count_instances() == 5

    with_archive(body)
