"""Study completion (table study_completion, core/mpps.py) in the REST JSON, its filter and the UI badge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pydicom
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.index import worklist_repo
from tests.web.conftest import part10

BADGE = '<span class="badge complete"'


async def store(client: httpx.AsyncClient, description: str) -> str:
    study = generate_uid()
    with pydicom.config.disable_value_validation():
        data = part10(study_uid=study, study_description=description)
    r = await client.post("/api/instances", content=data)
    assert r.status_code == 200, r.text
    return study


async def mark_complete(archive: Archive, study: str) -> None:
    """What core/mpps.py does once the COMPLETED step's instances have all arrived."""
    assert await archive.write(lambda conn: worklist_repo.mark_study_complete(conn, study, generate_uid()))


def test_complete_in_rest_json_filter_and_badge(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        done, open_ = await store(client, "Done study"), await store(client, "Open study")
        assert BADGE not in (await client.get("/ui/")).text
        studies = (await client.get("/api/studies")).json()
        assert {s["StudyInstanceUID"]: s["complete"] for s in studies} == {done: False, open_: False}
        await mark_complete(archive, done)

        studies = (await client.get("/api/studies")).json()
        assert {s["StudyInstanceUID"]: s["complete"] for s in studies} == {done: True, open_: False}
        assert (await client.get(f"/api/studies/{done}")).json()["complete"] is True
        assert (await client.get(f"/api/studies/{open_}")).json()["complete"] is False
        only = (await client.get("/api/studies?complete=true")).json()
        assert [s["StudyInstanceUID"] for s in only] == [done]
        only = (await client.get("/api/search?level=studies&complete=false")).json()
        assert [s["StudyInstanceUID"] for s in only] == [open_]
        assert (await client.get("/api/search?level=studies&complete=1&limit=1&offset=1")).json() == []
        r = await client.get("/api/studies?complete=maybe")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_complete"
        assert "complete" not in (await client.get("/api/series")).json()[0]

        page = (await client.get("/ui/")).text
        rows = [row for row in page.split("<tr>") if "/ui/studies/" in row]
        assert len(rows) == 2
        assert all((BADGE in row) == (done in row) for row in rows)

    web(body)


def test_filter_counts_offset_and_limit_after_filtering(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        studies = [await store(client, f"S{i}") for i in range(5)]
        for study in studies[1::2]:
            await mark_complete(archive, study)
        found = (await client.get("/api/studies?complete=true&limit=1&offset=1")).json()
        assert len(found) == 1 and found[0]["complete"] is True
        every = (await client.get("/api/studies?complete=false")).json()
        assert sorted(s["StudyInstanceUID"] for s in every) == sorted(studies[0::2])

    web(body)
