"""Shared state of several nodes on one index (issue 11, "Shared state in the index"): each node's own
figures (ingests, index transactions, free disk) in ``node_stats``, readable from every node, and the
node of every change in the changes journal. Two archives on one index, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import ConfigError, Settings
from minipacs.core.changes import read_changes
from minipacs.core.delete import delete_resource
from minipacs.core.stats import NodeStatsPublisher, node_figures
from tests.core.test_two_writers import _ingest
from tests.dicomgen import generate_uid, make_ct
from tests.index.pg import postgres_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    else:
        with postgres_schema_url() as url:
            yield url


def test_each_node_writes_its_figures_and_every_node_reads_them_all(tmp_path: Path, shared_url: str) -> None:
    study, series = generate_uid(), generate_uid()

    async def main() -> None:
        a = await open_archive(Settings(data_dir=tmp_path / "a", index_url=shared_url, node_id="node-a"))
        b = await open_archive(Settings(data_dir=tmp_path / "b", index_url=shared_url, node_id="node-b"))
        try:
            pa, pb = NodeStatsPublisher(a, "node-a", 10.0), NodeStatsPublisher(b, "node-b", 10.0)
            await pa.publish()
            await pb.publish()
            for n in range(3):
                await _ingest(a, make_ct(study, series, generate_uid(), InstanceNumber=n + 1))
            assert [f.ingested for f in await node_figures(b)] == [0, 0]  # not written yet
            await pa.publish()
            seen = {f.node_id: f for f in await node_figures(b)}
            assert set(seen) == {"node-a", "node-b"}
            assert (seen["node-a"].ingested, seen["node-b"].ingested) == (3, 0)
            assert seen["node-a"].index_batches >= 1 and seen["node-a"].free_bytes > 0
            assert seen["node-a"].running and seen["node-a"].started_at == pa.started_at
            await pb.publish(running=False)  # a clean stop
            again = {f.node_id: f for f in await node_figures(a)}
            assert not again["node-b"].running and again["node-a"].running
            assert again["node-b"].updated_at >= seen["node-b"].updated_at
            # the journal names the node of each change: ingests on a, the delete on b
            await delete_resource(b, "study", study)
            changes, _last, _done = await a.read(lambda conn: read_changes(conn, 0, 100))
            nodes = {(c.type, c.node) for c in changes}
            assert ("NewInstance", "node-a") in nodes and ("Deleted", "node-b") in nodes, nodes
            assert {c.node for c in changes} == {"node-a", "node-b"}
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


@pytest.mark.parametrize(("good", "bad"), [(0.001, 0), (3600, 3600.5)])
def test_node_stats_seconds_limits(good: float, bad: float) -> None:
    Settings(node_stats_seconds=good).validate()
    with pytest.raises(ConfigError, match="node_stats_seconds"):
        Settings(node_stats_seconds=bad).validate()
