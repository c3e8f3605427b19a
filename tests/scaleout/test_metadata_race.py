"""Issue 11 item 7: WADO-RS metadata served by node B while node A ingests the study (and A's
background worker keeps the same rows): B computes the missing rows on demand and stores them while
A stores them too, several requests at once (study and series level). Two archives in one process on
one PostgreSQL schema (each with its own writer, as two nodes have); repeated. Any exception other
than the instance not being listed yet would have reached a client as HTTP 500."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.core.metadata import MetadataStore
from minipacs.index import metadata_repo
from tests.core.test_two_writers import _ingest
from tests.dicomgen import generate_uid, make_ct
from tests.index.pg import postgres_schema_url

pytestmark = pytest.mark.postgres

ROUNDS = int(os.environ.get("MINIPACS_METADATA_RACE_ROUNDS", "20"))
SERIES = 2
PER_SERIES = 4
READERS = 4


async def _round(a: Archive, b: Archive, store_a: MetadataStore, store_b: MetadataStore) -> list[BaseException]:
    study = generate_uid()
    series = [generate_uid() for _ in range(SERIES)]
    items = [make_ct(study, s, generate_uid()) for s in series for _ in range(PER_SERIES)]
    by_series = {s: [str(ds.SOPInstanceUID) for ds in items if ds.SeriesInstanceUID == s] for s in series}
    everything = [uid for s in series for uid in by_series[s]]
    failures: list[BaseException] = []
    ingested: list[str] = []
    done = asyncio.Event()

    async def on_a(uids: list[str]) -> None:
        """A's own computation (its background worker, without the quiet wait)."""
        try:
            await store_a.compute_and_store(uids)
        except Exception as exc:  # noqa: BLE001 - the worker would log it and leave the rows missing
            failures.append(exc)

    async def ingest() -> None:
        computing: list[asyncio.Task[None]] = []
        for ds in items:  # A acknowledges one by one; its worker stores the metadata behind it
            await _ingest(a, ds)
            ingested.append(str(ds.SOPInstanceUID))
            computing.append(asyncio.create_task(on_a(list(reversed(ingested)))))
        await asyncio.gather(*computing)
        done.set()

    async def reader(n: int) -> None:
        turn = 0
        while not done.is_set() or turn < 2:
            turn += 1
            listed = set(ingested)
            if n % 2 == 0:  # study level: what is listed so far, in listing order
                uids = [uid for uid in everything if uid in listed]
            else:  # series level, a different series each time
                uids = [uid for uid in by_series[series[(n + turn) % SERIES]] if uid in listed]
            if not uids:
                await asyncio.sleep(0.001)
                continue
            try:
                await store_b.get(uids)
            except Exception as exc:  # noqa: BLE001 - the HTTP layer would answer 500
                failures.append(exc)
        # the rows are there, each once
        texts = await b.read(lambda conn: metadata_repo.texts(conn, everything))
        assert set(texts) == set(everything)

    await asyncio.gather(ingest(), *(reader(n) for n in range(READERS)))
    return failures


def test_metadata_on_one_node_while_the_other_ingests_never_fails(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        data = tmp_path / "data"
        a = await open_archive(Settings(data_dir=data, index_url=url, node_id="node-a"))
        b = await open_archive(Settings(data_dir=data, index_url=url, node_id="node-b"))
        store_a, store_b = MetadataStore(a), MetadataStore(b)
        store_a.attach()
        store_b.attach()
        failures: list[BaseException] = []
        failed_rounds = 0
        try:
            for _ in range(ROUNDS):
                these = await _round(a, b, store_a, store_b)
                failed_rounds += bool(these)
                failures += these
        finally:
            await store_a.close()
            await store_b.close()
            await a.close()
            await b.close()
        said = [repr(f) for f in failures[:5]]
        assert not failures, f"{len(failures)} request(s) failed in {failed_rounds} of {ROUNDS} rounds: {said}"

    with postgres_schema_url() as url:
        asyncio.run(main(url))


@pytest.mark.parametrize("error", [psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure])
def test_a_deadlocked_write_is_tried_again_and_succeeds(tmp_path: Path, error: type[Exception]) -> None:
    """The writer tries a transaction PostgreSQL aborted as a deadlock or a serialization failure
    again, with back-off: three aborts in a row still end in the write's own result."""
    aborted = 0

    def write(conn: Any) -> str:
        nonlocal aborted
        if aborted < 3:
            aborted += 1
            raise OperationalError("INSERT ...", {}, error("aborted to let another transaction go on"))
        return "written"

    def unique_violation(conn: Any) -> str:
        raise IntegrityError("INSERT ...", {}, psycopg.errors.UniqueViolation("duplicate key"))

    async def main(url: str) -> None:
        a = await open_archive(Settings(data_dir=tmp_path / "data", index_url=url, node_id="node-a"))
        try:
            assert await a.write(write) == "written"
            assert aborted == 3
            assert a.stats.transient_retries >= 3
            before = a.stats.transient_retries
            with pytest.raises(ArchiveError):  # any other database error is not tried again and again
                await a.write(unique_violation)
            assert a.stats.transient_retries == before
        finally:
            await a.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))
