"""GET /api/rejections: the instances rejection notes rejected (core/rejection.py), with why and by whom."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.core.rejection import Rejections, read_note
from tests.core.test_rejection import rejection_note


def test_the_rejected_instances_are_listed_with_the_note_and_its_sender(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/api/rejections")).json() == {"total": 0, "rejected": []}
        study, other, series = str(generate_uid()), str(generate_uid()), str(generate_uid())
        first = read_note(rejection_note(study, [(series, str(generate_uid())) for _ in range(3)]))
        second = read_note(rejection_note(other, [(series, str(generate_uid()))], code="113039"))
        assert first is not None and second is not None
        rejections = Rejections(archive)
        await rejections.apply(first, Origin("dicom", "CT_ROOM_1", "MINIPACS", "10.1.2.3", 104))
        await rejections.apply(second, Origin("stow", peer_host="127.0.0.1"))
        answer = (await client.get("/api/rejections")).json()
        assert answer["total"] == 4 and len(answer["rejected"]) == 4
        newest = answer["rejected"][0]
        assert newest["code"] == "113039" and newest["meaning"] == "Data Retention Policy Expired"
        assert newest["note_uid"] == second.note_uid and newest["actor"] == "stow 127.0.0.1"
        of_study = (await client.get(f"/api/rejections?study={study}&limit=2&offset=1")).json()
        assert of_study["total"] == 3 and len(of_study["rejected"]) == 2
        assert {r["actor"] for r in of_study["rejected"]} == {"CT_ROOM_1 10.1.2.3"}
        for bad in ("limit=0", "limit=1001", "offset=-1", "study=1.2.x", "limit=1e3"):
            assert (await client.get(f"/api/rejections?{bad}")).status_code == 400, bad

    web(body)
