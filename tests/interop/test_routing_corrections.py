"""Corrections re-forward (docs/ROUTING.md "Corrections"): real DCMTK storescp destinations.

The archive runs in-process (bootstrap.build_app, its job runner and router started); corrections go
through the REST endpoint a user (and the UI) calls, ``POST /api/patients/{id}/modify``.

- A patient name corrected after routing delivered the study: the destination of a rule with the
  default ``on_correction = "resend"`` receives the corrected instances (same SOP Instance UIDs, the new
  Patient's Name); the destination of an ``on_correction = "ignore"`` rule receives nothing more; a
  destination whose delivery failed is not sent anything either.
- A correction of instances no rule forwarded queues nothing.
- A series moved to a new study (a split): the destination receives it under the new Study Instance UID.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import App
from minipacs.core.jobs import Job
from minipacs.core.metadata import MetadataStore
from minipacs.core.routing import ROUTE, study_receipts
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.interop.test_routing_interop import ct, node, receive, received, running, storescp, until
from tests.peers import free_port

pytestmark = [pytest.mark.interop]

RULES = [
    {"name": "to-a", "when": "instance", "match": {"Modality": "CT"}, "send_to": ["DEST_A"]},
    {"name": "to-b", "when": "instance", "match": {"Modality": "CT"}, "send_to": ["DEST_B"], "on_correction": "ignore"},
    {"name": "to-down", "when": "instance", "match": {"Modality": "CT"}, "send_to": ["DOWN"]},
]


async def _post(app: App, url: str, body: dict[str, Any]) -> httpx.Response:
    """A POST to the app's REST API, as a browser or script would make it."""
    metadata = MetadataStore(app.archive)
    web = create_app(AppContext(app.settings, app.archive, metadata, app.nodes, jobs=app.jobs))
    transport = httpx.ASGITransport(app=web, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(url, json=body)


def _names(out: Path) -> dict[str, str]:
    """SOP Instance UID -> Patient's Name of what storescp wrote (one file per SOP: a re-send overwrites)."""
    found = {}
    for path in received(out):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(ds.SOPInstanceUID)] = str(ds.PatientName)
    return found


async def _route_jobs(app: App) -> list[Job]:
    return await app.jobs.list(kinds=(ROUTE,))


async def _settled(app: App) -> bool:
    return all(j.state.value in ("done", "failed", "cancelled") for j in await _route_jobs(app))


def _sent(receipts: list[dict[str, Any]], destination: str) -> list[dict[str, Any]]:
    return [r for r in receipts if r["destination"] == destination and r["status"] == "sent"]


def test_a_patient_name_correction_reaches_the_destinations_that_had_the_instances(tmp_path: Path) -> None:
    port_a, port_b, closed = free_port(), free_port(), free_port()
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    study, series = str(generate_uid()), str(generate_uid())
    mr_study = str(generate_uid())

    async def body(app: App) -> None:
        for n in range(2):
            await receive(app, ct(tmp_path, study, series, n + 1, patient_id="PAT-1", patient_name="WRONG^NAME"))
        # never forwarded: no rule matches an MR
        await receive(app, ct(tmp_path, mr_study, str(generate_uid()), 1, patient_id="PAT-2", Modality="MR"))

        async def first_round() -> bool:
            receipts = await study_receipts(app.archive, study)
            failed = [r for r in receipts if r["destination"] == "DOWN" and r["status"] == "failed"]
            return len(_sent(receipts, "DEST_A")) == 2 and len(_sent(receipts, "DEST_B")) == 2 and len(failed) == 2

        await until(first_round, "2 instances sent to DEST_A and DEST_B, and failed to DOWN")
        assert set(_names(out_a).values()) == {"WRONG^NAME"} and set(_names(out_b).values()) == {"WRONG^NAME"}
        jobs_before = {j.id for j in await _route_jobs(app)}
        b_files = {p.name: p.stat().st_mtime_ns for p in received(out_b)}

        r = await _post(app, "/api/patients/PAT-1/modify", {"changes": {"PatientName": "RIGHT^NAME"}})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["instances"] == 2 and len(answer["resend_jobs"]) == 1, answer

        async def corrected_at_a() -> dict[str, str]:
            names = _names(out_a)
            return names if len(names) == 2 and set(names.values()) == {"RIGHT^NAME"} else {}

        names = await until(corrected_at_a, "DEST_A holding the corrected Patient's Name")
        assert len(received(out_a)) == 2  # the same two SOP Instances, replaced, not two more
        await until(lambda: _settled(app), "every route job finished")
        resends = [j for j in await _route_jobs(app) if "correction" in j.params]
        assert [j.id for j in resends] == answer["resend_jobs"]
        (job,) = resends
        assert job.params["destination"] == "DEST_A" and job.params["correction"] > 0
        assert "again: corrected by correction" in job.description
        receipts = await study_receipts(app.archive, study)
        again = [r for r in _sent(receipts, "DEST_A") if r["job"] == job.id]
        assert sorted(r["instance"] for r in again) == sorted(names)
        assert all("sent again: correction" in r["reason"] for r in again), again
        # "ignore": DEST_B keeps what it had, untouched
        assert {p.name: p.stat().st_mtime_ns for p in received(out_b)} == b_files
        assert set(_names(out_b).values()) == {"WRONG^NAME"}
        assert len(_sent(receipts, "DEST_B")) == 2
        assert not [r for r in receipts if r["destination"] == "DEST_B" and r["job"] not in jobs_before]

        # DOWN never had them: no re-send; the rewritten copies pass through the router as arrivals do,
        # and to-down delivers them as any instance it has not given yet (docs/ROUTING.md): a new attempt
        async def down_again() -> list[Job]:
            found = [j for j in await _route_jobs(app) if j.id not in jobs_before and j.id != job.id]
            return found if found and await _settled(app) else []

        later = await until(down_again, "the router's new attempt to DOWN, finished")
        assert all(j.params["destination"] == "DOWN" and "correction" not in j.params for j in later), later

        # a correction of instances no rule forwarded queues nothing
        before = {j.id for j in await _route_jobs(app)}
        r = await _post(app, "/api/patients/PAT-2/modify", {"changes": {"PatientName": "OTHER^NAME"}})
        assert r.status_code == 200 and r.json()["resend_jobs"] == [], r.text
        await asyncio.sleep(0.5)  # the router's passes (every 0.1 s) see the rewritten copy too
        assert {j.id for j in await _route_jobs(app)} == before
        assert await study_receipts(app.archive, mr_study) == []

    with storescp(port_a, out_a, "DEST_A"), storescp(port_b, out_b, "DEST_B"):
        nodes = (node("DEST_A", port_a), node("DEST_B", port_b), node("DOWN", closed))
        running(tmp_path, RULES, nodes, job_max_attempts=2)(body)


def test_a_split_series_reaches_the_destination_under_its_new_study(tmp_path: Path) -> None:
    """``POST /api/series/{uid}/move`` ``{}``: the series gets a new Study Instance UID; the destination
    receives its instances again under it (the copies under the old study stay there: docs/ROUTING.md)."""
    port, out = free_port(), tmp_path / "a"
    study, series = str(generate_uid()), str(generate_uid())
    rules = [RULES[0]]

    async def body(app: App) -> None:
        await receive(app, ct(tmp_path, study, series, 1))
        await until(lambda: _all_sent_to(app, study, "DEST_A", 1), "the instance sent to DEST_A under its first study")
        r = await _post(app, f"/api/series/{series}/move", {})
        assert r.status_code == 200, r.text
        new_study = r.json()["new_values"]["StudyInstanceUID"]
        assert new_study != study and len(r.json()["resend_jobs"]) == 1

        async def moved_at_a() -> bool:
            files = received(out)
            return len(files) == 1 and pydicom.dcmread(files[0]).StudyInstanceUID == new_study

        await until(moved_at_a, "DEST_A holding the instance under the new Study Instance UID")
        await until(lambda: _all_sent_to(app, new_study, "DEST_A", 1), "the re-send's receipt under the new study")

    with storescp(port, out, "DEST_A"):
        running(tmp_path, rules, (node("DEST_A", port),))(body)


async def _all_sent_to(app: App, study: str, destination: str, n: int) -> bool:
    return len(_sent(await study_receipts(app.archive, study), destination)) == n
