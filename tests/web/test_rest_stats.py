"""GET /api/stats answers from the counters the index keeps, never from the storage folder (issue 10)."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.blob_removals import remove_due
from tests.web.conftest import part10


def test_stats_never_look_at_the_storage_folder(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the handler walked storage/ on the event loop (5.5 s at 300,000 files, C-ECHO stalled
    meanwhile) and counted any file there. Now listing a folder fails the request, and an unrelated
    file in storage/ is not counted: the figures are those of the indexed instances."""
    files = [part10(study_uid="1.2.3", patient_id="P1"), part10(study_uid="1.2.3"), part10(patient_id="P2")]

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for data in files:
            r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code == 200, r.text
        storage = archive.settings.data_dir / "storage"
        (storage / "unrelated").mkdir()
        (storage / "unrelated" / "big.bin").write_bytes(b"x" * 300_000)

        def forbidden(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"GET /api/stats listed a folder: {args[:1]}")

        with monkeypatch.context() as m:
            for module, name in [
                (os, "scandir"),
                (os, "listdir"),
                (os, "walk"),
                (os, "fwalk"),
                (pathlib.Path, "rglob"),
                (pathlib.Path, "glob"),
                (pathlib.Path, "iterdir"),
                (pathlib.Path, "walk"),
            ]:
                if hasattr(module, name):
                    m.setattr(module, name, forbidden)
            r = await client.get("/api/stats")
        assert r.status_code == 200, r.text
        stats = r.json()
        assert {k: stats[k] for k in ("patients", "studies", "series", "instances")} == {
            "patients": 2,
            "studies": 2,
            "series": 3,
            "instances": 3,
        }
        stored = list(storage.rglob("*.dcm"))
        assert len(stored) == 3 and stats["disk_bytes"] == sum(p.stat().st_size for p in stored)
        assert 0 < stats["free_bytes"] <= shutil.disk_usage(archive.settings.data_dir).total
        assert stats["ingested_since_start"] == 3 and stats["metadata_pending"] >= 0 and stats["index_batches"] >= 1

        r = await client.delete("/api/studies/1.2.3")
        assert r.status_code == 200
        stats = (await client.get("/api/stats")).json()
        assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 1)
        assert stats["disk_bytes"] == sum(p.stat().st_size for p in storage.rglob("*.dcm"))

    web(body)


def test_stats_count_the_replaced_copies_waiting_for_removal(web: Callable[..., Any]) -> None:
    """A re-sent copy under duplicate_policy "replace": disk_bytes counts the stored copy only; the
    replaced one's file is still on disk for keep_replaced_seconds, and said apart."""
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    first = part10(sop_uid=sop, study_uid=study, series_uid=series)
    second = part10(sop_uid=sop, study_uid=study, series_uid=series, InstanceNumber=9, SeriesDescription="AGAIN")

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for data in (first, second):
            r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code == 200, r.text
        stats = (await client.get("/api/stats")).json()
        storage = archive.settings.data_dir / "storage"
        on_disk = sorted(p.stat().st_size for p in storage.rglob("*.dcm"))
        assert len(on_disk) == 2 and stats["instances"] == 1
        assert stats["replaced_copies_pending_removal"] == 1
        assert stats["replaced_bytes_pending_removal"] > 0
        assert stats["disk_bytes"] + stats["replaced_bytes_pending_removal"] == sum(on_disk)
        assert await remove_due(archive, dt.datetime.now(dt.UTC) + dt.timedelta(days=2)) == 1
        stats = (await client.get("/api/stats")).json()
        assert (stats["replaced_copies_pending_removal"], stats["replaced_bytes_pending_removal"]) == (0, 0)
        assert stats["disk_bytes"] == sum(p.stat().st_size for p in storage.rglob("*.dcm"))

    web(body, duplicate_policy="replace")
