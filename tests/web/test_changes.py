"""GET /api/changes (the changes journal, core/changes.py) and Study Status ID in QIDO-RS."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from tests.web.conftest import part10
from tests.web.test_completion import mark_complete, store

STATUS_ID = "0032000A"  # Study Status ID


def test_changes_pages_with_since_limit_last_and_done(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/api/changes")).json() == {"changes": [], "last": 0, "done": True, "first": 0}
        study, series = generate_uid(), generate_uid()
        sops = [generate_uid() for _ in range(3)]
        for sop in sops:
            with pydicom.config.disable_value_validation():
                data = part10(study_uid=study, series_uid=series, sop_uid=sop)
            assert (await client.post("/api/instances", content=data)).status_code == 200
        first = (await client.get("/api/changes?limit=2")).json()
        assert [c["type"] for c in first["changes"]] == ["NewPatient", "NewStudy"] and first["done"] is False
        assert first["last"] == first["changes"][-1]["seq"]
        assert first["first"] == first["changes"][0]["seq"]  # the lowest kept (core/journal_retention.py)
        assert set(first["changes"][0]) == {"seq", "type", "level", "uid", "study", "time", "reason", "node"}
        rest = (await client.get(f"/api/changes?since={first['last']}&limit=1000")).json()
        assert [(c["type"], c["uid"]) for c in rest["changes"]] == [("NewSeries", series)] + [
            ("NewInstance", sop) for sop in sops
        ]
        assert rest["done"] is True and all(c["study"] == study for c in rest["changes"])
        assert all(c["seq"] > first["last"] for c in rest["changes"])
        end = rest["last"]
        assert (await client.get(f"/api/changes?since={end}")).json() == {
            "changes": [],
            "last": end,
            "done": True,
            "first": first["first"],
        }

        assert (await client.delete(f"/api/studies/{study}")).status_code == 200
        gone = (await client.get(f"/api/changes?since={end}")).json()["changes"]
        assert sorted((c["type"], c["level"], c["uid"]) for c in gone) == sorted(
            [("Deleted", "instance", sop) for sop in sops]
            + [("Deleted", "series", series), ("Deleted", "study", study), ("Deleted", "patient", "P1")]
        )

    web(body)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "since=-1", "since=1.5", "limit=", "since=１"])
def test_bad_parameters_are_400(web: Callable[..., Any], query: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get(f"/api/changes?{query}")
        if query == "limit=":  # empty is the default, as elsewhere in the API
            assert r.status_code == 200
            return
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == f"invalid_{query.split('=')[0]}" and "whole number" in error["message"]

    web(body)


def test_a_viewer_reads_the_journal_and_it_is_in_the_openapi_document(web: Callable[..., Any]) -> None:
    viewer = {"Authorization": "Basic " + base64.b64encode(b"vic:v-pass").decode()}

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/api/changes")).status_code == 401
        assert (await client.get("/api/changes", headers=viewer)).status_code == 200
        openapi = (await client.get("/api/openapi.json")).json()
        assert openapi["paths"]["/api/changes"]["get"]["x-minipacs-permission"] == "read"

    web(body, users=(User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),))


def test_qido_answers_and_matches_study_status_id(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        done, open_ = await store(client, "Done"), await store(client, "Open")
        await mark_complete(archive, done)
        found = (await client.get("/dicom-web/studies?includefield=StudyStatusID")).json()
        status = {m["0020000D"]["Value"][0]: m[STATUS_ID].get("Value") for m in found}
        assert status == {done: ["COMPLETED"], open_: None}
        assert all(m[STATUS_ID]["vr"] == "CS" for m in found)
        only = (await client.get("/dicom-web/studies?StudyStatusID=COMPLETED")).json()
        assert [m["0020000D"]["Value"][0] for m in only] == [done]
        assert (await client.get(f"/dicom-web/studies?{STATUS_ID}=COMPL*")).json()[0][STATUS_ID]["Value"] == [
            "COMPLETED"
        ]
        assert (await client.get("/dicom-web/studies?StudyStatusID=SCHEDULED")).json() == []
        assert len((await client.get("/dicom-web/studies?StudyStatusID=*")).json()) == 2  # universal
        # the REST filter is the same SQL: complete=false is the negated EXISTS
        assert [s["StudyInstanceUID"] for s in (await client.get("/api/studies?complete=false")).json()] == [open_]
        assert [s["StudyInstanceUID"] for s in (await client.get("/api/studies?complete=true")).json()] == [done]

    web(body)
