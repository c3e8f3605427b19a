"""The writer's fast path for an instance of a series it already knows (core/archive.py ``_apply``): one
INSERT that writes nothing when the SOP Instance UID is stored, the duplicate policy then deciding.
SQLite only; on PostgreSQL both archives take the general path (the comparison still holds).

It must leave the index exactly as the general path does (a SELECT for a stored copy, then the insert
or the policy's update): the same rows in every table, the same outcomes, the same refusals. Each test
sends one sequence of instances to two archives, one of them with the fast path unreachable, and
compares everything they stored.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.model import DuplicatePolicy
from minipacs.index import repository as repo
from minipacs.index.schema import Base
from tests.core.test_archive import DICOM, stage
from tests.dicomgen import generate_uid, make_ct
from tests.index.pg import postgres_schema_url

#: Columns whose values differ from run to run: clock readings, and a blob key's random copy token.
_CLOCKS = frozenset({"created_at", "updated_at", "received_at"})
#: What differs between two runs of the same ingests in a blob key: its copy token, or its pack's name
_TOKEN = re.compile(r"_[0-9a-f]{16}\.dcm$|(?<=^packs/)[0-9a-f]{8}-[0-9a-f]{8}(?=/)")


class _NoFastPath(dict[str, int]):
    """The writer's series-key cache as ``_apply`` sees it when it must take the general path: every
    lookup of the fast path misses (``_series_pk`` still finds the keys: its statements stay the same)."""

    def get(self, key: str, default: Any = None) -> Any:
        return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield "", ""
    else:
        with postgres_schema_url() as fast, postgres_schema_url() as general:
            yield fast, general


def _instances() -> list[Any]:
    """A sequence that meets every case of the fast path: new instances of known series, a
    duplicate, a changed copy of a stored instance, a stored SOP Instance UID sent in another
    (known) series, and new series and studies in between (the general path's first instances)."""
    study, other_study = generate_uid(), generate_uid()
    one, two, three = generate_uid(), generate_uid(), generate_uid()
    sop = [generate_uid() for _ in range(6)]
    return [
        make_ct(study, one, sop[0]),  # new series: general path in both
        make_ct(study, one, sop[1]),  # known series, new instance: the fast path
        make_ct(study, one, sop[2]),
        make_ct(study, one, sop[1]),  # a duplicate of a known series
        make_ct(study, two, sop[3]),  # a second series of the study
        make_ct(study, two, sop[4]),
        make_ct(study, one, sop[2], rows=32, InstanceNumber="99"),  # a changed copy
        make_ct(study, two, sop[0]),  # a stored instance, sent again in another known series
        make_ct(other_study, three, sop[5], patient_id="OTHER"),
        make_ct(study, one, sop[5]),  # the other study's instance, sent in this study's series
    ]


def _table_rows(archive: Archive) -> dict[str, list[dict[str, Any]]]:
    def read(conn: Any) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name in ("patients", "studies", "series", "instances", "changes", "storage_stats", "intake_state"):
            table: Table = Base.metadata.tables[name]
            order = list(table.primary_key.columns)
            found = []
            for row in conn.execute(select(table).order_by(*order)).mappings():
                kept = {key: value for key, value in row.items() if key not in _CLOCKS}
                if "blob_key" in kept:
                    kept["blob_key"] = _TOKEN.sub("", kept["blob_key"])
                found.append(kept)
            out[name] = found
        # PostgreSQL spreads the counters over slots (migration 0010): their sums are the counts
        slots = out.pop("storage_stats")
        out["storage_stats"] = [{key: sum(row[key] for row in slots) for key in slots[0] if key != "slot"}]
        return out

    return archive._index.read(read)


def _run(
    root: Path, url: str, policy: DuplicatePolicy, datasets: list[Any], fast: bool
) -> tuple[list[str], dict[str, list[dict[str, Any]]], int]:
    """(each ingest's status or refusal, every table's rows, find_instance calls) of one archive."""
    calls = 0
    find = repo.find_instance

    def counting(conn: Any, uid: str) -> Any:
        nonlocal calls
        calls += 1
        return find(conn, uid)

    async def main() -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
        archive = await open_archive(
            Settings(data_dir=root, index_url=url, duplicate_policy=policy, intake_checkpoint_seconds=3600)
        )
        if not fast:
            archive._keys.series = _NoFastPath()
        results = []
        try:
            for ds in datasets:
                try:
                    outcome = await archive.ingest(stage(archive, ds, in_memory=True), DICOM)
                except Exception as exc:  # noqa: BLE001 - a refusal is a result to compare
                    results.append(type(exc).__name__)
                else:
                    results.append(f"{outcome.status.value} {_TOKEN.sub('', outcome.relative_path)} {outcome.size}")
            return results, _table_rows(archive)
        finally:
            await archive.close()

    repo.find_instance = counting  # type: ignore[assignment]
    try:
        results, tables = asyncio.run(main())
    finally:
        repo.find_instance = find  # type: ignore[assignment]
    return results, tables, calls


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_the_fast_path_writes_what_the_general_path_writes(
    tmp_path: Path, index_urls: tuple[str, str], policy: DuplicatePolicy
) -> None:
    datasets = _instances()
    fast_url, general_url = index_urls
    fast = _run(tmp_path / "fast", fast_url, policy, datasets, fast=True)
    general = _run(tmp_path / "general", general_url, policy, datasets, fast=False)
    assert fast[0] == general[0]
    for table in general[1]:
        assert fast[1][table] == general[1][table], table
    assert len(general[1]["instances"]) == 6
    # the general path looks for a stored copy before every ingest; the fast path (SQLite) only before
    # the first instance of a series it does not know yet, and after its insert found a stored copy
    assert general[2] == len(datasets)
    assert fast[2] == (3 + 4 if not fast_url else len(datasets))  # three new series, four stored copies


def test_the_fast_path_refuses_what_the_general_path_refuses(tmp_path: Path) -> None:
    """A copy the policy refuses writes nothing on either path, the instance's journal row included."""
    datasets = _instances()[:4]
    fast = _run(tmp_path / "fast", "", DuplicatePolicy.REJECT, datasets, fast=True)
    general = _run(tmp_path / "general", "", DuplicatePolicy.REJECT, datasets, fast=False)
    assert fast[0][-1] == general[0][-1] == "DuplicateInstance"
    assert fast[1] == general[1]
    assert [row["change_type"] for row in fast[1]["changes"]].count("NewInstance") == 3
