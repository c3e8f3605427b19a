"""Delivery receipts when what they name is deleted (docs/ROUTING.md "A study deleted"): deleting an
instance forgets its receipts, deleting a study all of the study's (the study-level ones of a
prefetch too), other studies keep theirs; a study sent again afterwards has a clean study page and
deliveries API, and a rule routes it again (nothing says it was already given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.routing import receipt_row
from minipacs.index import routing_repo
from tests.web.conftest import part10


def test_deleting_forgets_the_receipts_and_a_re_sent_study_starts_clean(web: Any, tmp_path: Path) -> None:
    study, other, series = str(generate_uid()), str(generate_uid()), str(generate_uid())
    sops = [str(generate_uid()) for _ in range(3)]
    other_sop = str(generate_uid())
    files = {s: part10(study_uid=study, series_uid=series, sop_uid=s) for s in sops}

    async def receipts(client: httpx.AsyncClient, uid: str) -> list[str]:
        r = await client.get(f"/api/studies/{uid}/deliveries")
        assert r.status_code == 200, r.text
        return sorted(d["instance"] for d in r.json()["deliveries"])

    async def given(archive: Archive, sop: str) -> set[str]:
        found: set[str] = await archive.read(lambda c: routing_repo.already_routed(c, "r", "AI_NODE", [sop]))
        return found

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for data in [*files.values(), part10(study_uid=other, sop_uid=other_sop)]:
            r = await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
            assert r.status_code == 200, r.text
        rows = [
            *(receipt_row(1, "r", "C-STORE", "AI_NODE", study, series, s) for s in sops),
            receipt_row(2, "prior", "C-MOVE", "WS1", study),  # a prefetch's study-level receipt
            receipt_row(3, "r", "C-STORE", "AI_NODE", other, "1.2", other_sop),
        ]
        await archive.write(lambda c: routing_repo.insert_deliveries(c, rows))
        await archive.write(lambda c: routing_repo.set_job_deliveries(c, 1, "sent", "", rows[0]["created_at"]))
        assert await given(archive, sops[0]) == {sops[0]}

        assert (await client.delete(f"/api/instances/{sops[0]}")).status_code == 200
        assert await receipts(client, study) == sorted(["", *sops[1:]])  # that instance's receipt only
        assert await given(archive, sops[0]) == set()

        assert (await client.delete(f"/api/studies/{study}")).status_code == 200
        assert (await client.get(f"/api/studies/{study}/deliveries")).json()["deliveries"] == []
        assert await receipts(client, other) == [other_sop]  # another study keeps its receipts

        # sent again: a clean page and API, and nothing says the rule already gave it
        for data in files.values():
            assert (
                await client.post("/api/instances", content=data, headers={"Content-Type": "application/dicom"})
            ).status_code == 200
        assert await receipts(client, study) == []
        assert await given(archive, sops[1]) == set()
        page = await client.get(f"/ui/studies/{study}")
        assert page.status_code == 200 and "No routing rule sent this study anywhere." in page.text

    web(body)
