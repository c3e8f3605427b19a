"""The association log page (issue 12 item 22): hex statuses with their meaning, filters, paging."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import httpx

from minipacs.core.archive import Archive
from minipacs.core.model import AssociationRecord

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def record(n: int, **kw: Any) -> AssociationRecord:
    base: dict[str, Any] = {
        "started_at": T0 + dt.timedelta(minutes=n),
        "role": "acceptor",
        "calling_aet": f"MOD{n}",
        "called_aet": "MINIPACS",
        "peer_host": f"10.0.0.{n}",
        "peer_port": 4000 + n,
        "accepted": True,
        "end_reason": "released",
        "operations": [{"op": "C-ECHO", "status": 0, "outcome": "success"}],
    }
    return AssociationRecord(**{**base, **kw})


def rows(page: str) -> list[str]:
    return re.findall(r"<tr class=\"\w+\"><td>[^<]+</td><td>\w+</td><td>([^<]+)</td>", page)


def test_statuses_in_hex_with_meaning_filters_and_paging(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(1, 31):
            await archive.record_association(record(n))
        await archive.record_association(
            record(
                40,
                calling_aet="ORTHANC",
                operations=[
                    {"op": "C-STORE", "status": 0xA700, "outcome": "failed", "sop_instance_uid": "1.2.3"},
                    {"op": "C-MOVE", "status": 0xB000, "destination_ae": "WS1", "completed": 29, "failed": 1},
                ],
            )
        )
        await archive.record_association(record(41, calling_aet="BADPEER", accepted=False, reject_reason="unknown AE"))

        page = (await client.get("/ui/log")).text
        assert "status 0xA700 Failure: Refused: Out of Resources" in page, page
        assert "status 0xB000 Warning" in page and "status=" not in page and "43009" not in page
        assert "associations 1–25 of 32" in page and 'rel="next"' in page
        assert rows(page)[:2] == ["BADPEER", "ORTHANC"]  # newest first
        older = (await client.get("/ui/log", params={"offset": "25"})).text
        assert "associations 26–32 of 32" in older and len(rows(older)) == 7 and 'rel="prev"' in older

        async def callers(**params: str) -> list[str]:
            r = await client.get("/ui/log", params=params)
            assert r.status_code == 200, r.text
            return rows(r.text)

        assert await callers(ae="orth") == ["ORTHANC"]
        assert await callers(ae="minipacs", size="100") == rows((await client.get("/ui/log?size=100")).text)
        assert await callers(address="10.0.0.7:") == ["MOD7"]
        assert await callers(status="failure") == ["ORTHANC"]
        assert await callers(status="rejected") == ["BADPEER"]
        assert await callers(status="success", size="50") == [f"MOD{n}" for n in range(30, 0, -1)]
        assert await callers(**{"from": "2026-03-01T12:05", "to": "2026-03-01T12:07"}) == ["MOD7", "MOD6", "MOD5"]
        assert "No association matches." in (await client.get("/ui/log", params={"ae": "nobody"})).text
        assert (await client.get("/ui/log", params={"status": "maybe"})).status_code == 400
        assert (await client.get("/ui/log", params={"from": "yesterday"})).status_code == 400

    web(body)


def test_the_log_looks_at_ui_log_window_associations(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(1, 4):
            await archive.record_association(record(n))
        page = (await client.get("/ui/log")).text
        assert rows(page) == ["MOD3", "MOD2"] and "Only the latest 2 associations" in page

    web(body, ui_log_window=2)
