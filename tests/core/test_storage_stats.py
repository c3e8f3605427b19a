"""The storage counters (migration 0010) stay exact through ingest, duplicates and deletion at
every level, on SQLite and PostgreSQL (see conftest.index_url). Issue 10."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from minipacs.core.archive import Archive
from minipacs.core.delete import delete_resource
from minipacs.core.errors import DuplicateInstance
from minipacs.core.model import DuplicatePolicy, Origin, StoreStatus
from minipacs.core.stats import recount, storage_figures
from minipacs.index.schema import Instance
from minipacs.index.stats_repo import StorageCounts, count_rows, read_counts
from tests.dicomgen import ExplicitVRLittleEndian, encode_dataset, make_ct, write_ct

ORIGIN = Origin("import", "", "", "", 0)
Run = Any


async def _check(archive: Archive, expected: tuple[int, int, int, int]) -> StorageCounts:
    """The counters equal the rows, the expected (patients, studies, series, instances), and the
    bytes equal the stored files' sizes."""
    counts = await archive.read(read_counts)
    assert counts == await archive.read(count_rows)
    assert counts[:4] == expected
    keys = await archive.read(lambda conn: conn.execute(select(Instance.blob_key)).scalars().all())
    assert counts.instance_bytes == sum(os.stat(archive.blobs.path_of(k)).st_size for k in keys)
    return counts


async def _store(archive: Archive, tmp: Path, study: str, series: str, sop: str = "", **kw: Any) -> Any:
    path = write_ct(
        tmp / f"{generate_uid()}.dcm", study_uid=study, series_uid=series, sop_uid=sop or generate_uid(), **kw
    )
    return await archive.import_file(path, ORIGIN)


def test_counters_follow_ingest_replace_and_delete_at_each_level(with_archive: Run, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await _check(archive, (0, 0, 0, 0))
        assert (await storage_figures(archive)).instance_bytes == 0
        a1 = await _store(archive, tmp_path, "1.9.1", "1.9.1.1", "1.9.1.1.1")
        await _store(archive, tmp_path, "1.9.1", "1.9.1.1")
        await _store(archive, tmp_path, "1.9.1", "1.9.1.2")
        await _store(archive, tmp_path, "1.9.2", "1.9.2.1")
        await _store(archive, tmp_path, "1.9.3", "1.9.3.1", patient_id="P2")
        await _store(archive, tmp_path, "1.9.3", "1.9.3.1", patient_id="P2")
        before = await _check(archive, (2, 3, 4, 6))

        # the same SOP Instance UID again, bigger: replaced, one instance, its new size counted
        bigger = await _store(archive, tmp_path, "1.9.1", "1.9.1.1", "1.9.1.1.1", rows=128, cols=128)
        assert bigger.status is StoreStatus.REPLACED and bigger.size > a1.size
        after = await _check(archive, (2, 3, 4, 6))
        assert after.instance_bytes == before.instance_bytes - a1.size + bigger.size

        figures = await storage_figures(archive)
        assert (figures.instances, figures.instance_bytes) == (6, after.instance_bytes) and figures.free_bytes > 0

        await delete_resource(archive, "instance", "1.9.1.1.1")
        await _check(archive, (2, 3, 4, 5))
        await delete_resource(archive, "series", "1.9.1.2")
        await _check(archive, (2, 3, 3, 4))
        await delete_resource(archive, "study", "1.9.2")  # P1 keeps study 1.9.1
        await _check(archive, (2, 2, 2, 3))
        await delete_resource(archive, "patient", "P2")
        await _check(archive, (1, 1, 1, 1))
        await delete_resource(archive, "study", "1.9.1")  # its patient goes with it
        await _check(archive, (0, 0, 0, 0))
        await _store(archive, tmp_path, "1.9.1", "1.9.1.1")
        counts = await _check(archive, (1, 1, 1, 1))
        assert await recount(archive) == (counts, counts)  # nothing to repair

    with_archive(body, duplicate_policy=DuplicatePolicy.REPLACE)


@pytest.mark.parametrize("policy", [DuplicatePolicy.KEEP, DuplicatePolicy.REJECT])
def test_a_duplicate_that_is_kept_or_refused_changes_no_counter(
    with_archive: Run, tmp_path: Path, policy: DuplicatePolicy
) -> None:
    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, "1.9.1", "1.9.1.1", "1.9.1.1.1")
        before = await _check(archive, (1, 1, 1, 1))
        try:
            again = await _store(archive, tmp_path, "1.9.1", "1.9.1.1", "1.9.1.1.1", rows=128, cols=128)
        except DuplicateInstance:
            assert policy is DuplicatePolicy.REJECT
        else:
            assert again.status is StoreStatus.DUPLICATE_KEPT
        assert await _check(archive, (1, 1, 1, 1)) == before

    with_archive(body, duplicate_policy=policy)


def test_a_batch_rolled_back_and_retried_job_by_job_counts_each_instance_once(
    with_archive: Run, tmp_path: Path
) -> None:
    """Concurrent ingests share index transactions (group commit). One failing after its rows were
    written (the rename into storage) rolls its batch back; the writer retries job by job: the
    counters see each stored instance once and the failed one not at all."""

    async def body(archive: Archive) -> None:
        staged = []
        for n in range(30):  # staged first, then handed to the writer at once: they share batches
            ds = make_ct("1.9.5", f"1.9.5.{n % 3}", f"1.9.5.9.{n}")
            staging = archive.open_staging(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
            staging.write(encode_dataset(ds, ExplicitVRLittleEndian))
            staged.append(staging.finish())
        real_put = archive.blobs.put_from_staging

        def put(path: Path, key: str) -> None:
            if "/1.9.5.9.7" in key:  # no other SOP Instance UID starts so
                raise OSError(28, "No space left on device")
            real_put(path, key)

        archive.blobs.put_from_staging = put  # type: ignore[method-assign]
        results = await asyncio.gather(*(archive.ingest(s, ORIGIN) for s in staged), return_exceptions=True)
        assert [n for n, r in enumerate(results) if isinstance(r, BaseException)] == [7]
        assert archive.stats.multi_job_batches >= 1
        await _check(archive, (1, 1, 3, 29))

    with_archive(body, fsync=False)
