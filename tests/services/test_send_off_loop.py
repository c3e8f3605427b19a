"""Issue 10, "the other ways in and out": stored files go out over DICOM (C-GET, C-MOVE sub-operations)
read in a worker thread, block by block, so neither a slow disk nor a big file stalls the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from minipacs.net import association as association_module
from minipacs.net.association import SEND_BLOCK
from minipacs.services.retrieve_scu import FolderStorage
from tests.peers import dataset_bytes
from tests.services.test_move_get import _get, archive_env, received, study_key

#: How long each block read takes in these tests: a disk that is very slow.
#: Each read's delay: long enough that one read on the loop stands far above a loaded VM's
#: scheduling hiccups (0.34 s was seen once in CI with every read in a worker thread).
SLOW = 1.0


class LagProbe:
    """Wakes every 10 ms and records how late it woke: what any other task on the loop would wait."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - before - 0.01)

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def test_c_get_reads_files_off_the_loop_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block read sleeps SLOW (blocking): on the loop the probe would see SLOW; in a worker
    thread it sees a few ms. The reads ask for at most one block each, and the bytes arrive intact."""
    real = association_module._BlockReader.read
    sizes: list[int] = []
    threads: set[str] = set()

    def slow_read(self: Any, size: int) -> bytes:
        time.sleep(SLOW)
        sizes.append(size)
        threads.add(threading.current_thread().name)
        return real(self, size)

    monkeypatch.setattr(association_module._BlockReader, "read", slow_read)

    async def main() -> None:
        async with archive_env(tmp_path, count=2, series=1) as env:
            sink = FolderStorage(tmp_path / "got")
            with LagProbe() as probe:
                result = await _get(env, sink, study_key(env))
            assert (result.status, result.completed, result.failed) == (0, 2, 0)
            got = received(sink.folder)
            for sop, src in env.files.items():
                assert dataset_bytes(got[sop]) == dataset_bytes(src)
            assert len(sizes) >= 2, "the stored files were not read through _BlockReader"
            assert threading.main_thread().name not in threads
            assert probe.worst < SLOW / 2, f"the event loop stalled {probe.worst:.3f} s while files were read"

    asyncio.run(main())


def test_a_big_file_is_sent_in_blocks_with_one_read_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MB instance goes out in reads of at most a PDU-rounded block (~1 MiB with our 1 MiB PDUs),
    never whole; at most one read is in flight while a block is on the wire."""
    real = association_module._BlockReader.read
    sizes: list[int] = []
    in_flight = [0, 0]  # now, most
    lock = threading.Lock()

    def counting_read(self: Any, size: int) -> bytes:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            data = real(self, size)
            sizes.append(len(data))
            return data
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(association_module._BlockReader, "read", counting_read)

    async def main() -> None:
        from minipacs.core.model import Origin
        from tests.dicomgen import write_ct

        async with archive_env(tmp_path, count=1, series=1) as env:
            big = write_ct(tmp_path / "big.dcm", study_uid=env.study_uid, rows=1024, cols=2048)  # 4 MiB of pixels
            await env.archive.import_file(big, Origin("import"))
            sink = FolderStorage(tmp_path / "got")
            result = await _get(env, sink, study_key(env))
            assert (result.status, result.completed) == (0, 2)
            assert any(dataset_bytes(p) == dataset_bytes(big) for p in received(sink.folder).values())
        assert sum(sizes) > 4 * 1024 * 1024 and len(sizes) >= 4
        assert max(sizes) <= max(SEND_BLOCK, 1024 * 1024), sizes
        assert in_flight[1] == 1

    asyncio.run(main())
