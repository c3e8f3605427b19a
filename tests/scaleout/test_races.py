"""Races between two nodes on one PostgreSQL index and one data folder (issue 11, "Concurrency done
right"): the same instances stored on both at once under each duplicate policy, and a study deleted
on one node while the other re-sends it. Each repeated; zero lost, zero spurious failures (a
failure here would have reached a peer as 0x0110). Two archives in one process (each with its own
writer and connections, as two nodes have): fast enough to repeat; tests/scaleout/test_haproxy.py
runs the same kind of race between two real `minipacs serve` processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.delete import delete_resource
from minipacs.core.errors import DuplicateInstance
from minipacs.core.model import DuplicatePolicy, StoreStatus
from minipacs.index import repository
from tests.core.test_two_writers import _ingest
from tests.dicomgen import generate_uid, make_ct
from tests.index.pg import postgres_schema_url
from tests.stored_files import instance_path

pytestmark = pytest.mark.postgres

ROUNDS = 3
INSTANCES = 12

#: Duplicate policy -> what the two concurrent stores of one instance answer, in some order.
EXPECTED: dict[DuplicatePolicy, list[Any]] = {
    DuplicatePolicy.KEEP: [StoreStatus.DUPLICATE_KEPT, StoreStatus.STORED],
    DuplicatePolicy.REPLACE: [StoreStatus.REPLACED, StoreStatus.STORED],
    DuplicatePolicy.REJECT: [DuplicateInstance, StoreStatus.STORED],
}


async def _two_nodes(data: Path, url: str, policy: DuplicatePolicy) -> tuple[Archive, Archive]:
    a = await open_archive(Settings(data_dir=data, index_url=url, node_id="node-a", duplicate_policy=policy))
    b = await open_archive(Settings(data_dir=data, index_url=url, node_id="node-b", duplicate_policy=policy))
    return a, b


def _answer(result: Any) -> Any:
    if isinstance(result, BaseException):
        if isinstance(result, DuplicateInstance):
            return DuplicateInstance
        raise result  # anything else is a spurious failure: show it
    return result.status


async def _all_readable(node: Archive, uids: list[str]) -> None:
    """Every instance is indexed and its file is there (NotFound names what is lost)."""
    for uid in uids:
        path = await instance_path(node, uid)
        assert path.stat().st_size > 0


@pytest.mark.parametrize("policy", list(EXPECTED), ids=lambda p: p.value)
def test_the_same_instances_on_two_nodes_at_once_answer_as_one_node_would(tmp_path: Path, policy: Any) -> None:
    async def main(url: str) -> None:
        a, b = await _two_nodes(tmp_path / "data", url, policy)
        try:
            for _round in range(ROUNDS):
                study, series = generate_uid(), generate_uid()
                items = [make_ct(study, series, generate_uid()) for _ in range(INSTANCES)]
                results = await asyncio.gather(
                    *(_ingest(node, ds) for ds in items for node in (a, b)), return_exceptions=True
                )
                answers = [_answer(r) for r in results]
                for n in range(INSTANCES):
                    pair = sorted(answers[2 * n : 2 * n + 2], key=lambda x: getattr(x, "__name__", str(x)))
                    expected = sorted(EXPECTED[policy], key=lambda x: getattr(x, "__name__", str(x)))
                    assert pair == expected, (policy, pair)
                await _all_readable(a, [str(ds.SOPInstanceUID) for ds in items])
            assert await b.count_instances() == ROUNDS * INSTANCES
        finally:
            await a.close()
            await b.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))


def test_a_study_deleted_on_one_node_while_the_other_resends_it_loses_nothing(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        a, b = await _two_nodes(tmp_path / "data", url, DuplicatePolicy.KEEP)
        try:
            for _round in range(ROUNDS):
                study, series = generate_uid(), generate_uid()
                items = [make_ct(study, series, generate_uid()) for _ in range(INSTANCES)]
                for ds in items:
                    assert (await _ingest(a, ds)).status is StoreStatus.STORED
                resent = asyncio.gather(*(_ingest(b, ds) for ds in items), return_exceptions=True)
                await delete_resource(a, "study", study)
                for result in await resent:
                    assert _answer(result) in (StoreStatus.STORED, StoreStatus.DUPLICATE_KEPT), result
                # whatever the order, every instance the index still holds has its file: the delete
                # removed only the blobs of the rows it deleted, never a copy stored again meanwhile
                uids = [str(ds.SOPInstanceUID) for ds in items]
                for uid in uids:
                    key = await a.read(lambda conn, uid=uid: repository.blob_key_of(conn, uid))
                    assert key is None or a.blobs.path_of(key).is_file(), f"{uid} is indexed, its file is lost"
                for ds in items:  # and a last resend completes the study
                    assert _answer(await _ingest(b, ds)) in (StoreStatus.STORED, StoreStatus.DUPLICATE_KEPT)
                await _all_readable(a, uids)
        finally:
            await a.close()
            await b.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))
