"""Study labels (core/labels.py): REST, the study JSON, the labels= filter in REST and QIDO-RS, the UI,
who may change them, and that they go with the study."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core import labels
from minipacs.core.archive import Archive
from minipacs.core.delete import delete_resource
from minipacs.core.users import Role, User, hash_password
from tests.web.conftest import part10


async def store(client: httpx.AsyncClient, description: str = "A study", **kw: Any) -> str:
    study = generate_uid()
    r = await client.post("/api/instances", content=part10(study_uid=study, study_description=description, **kw))
    assert r.status_code == 200, r.text
    return study


def test_put_list_filter_and_delete(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        a, b = await store(client, "Alpha"), await store(client, "Beta")
        assert (await client.get(f"/api/studies/{a}/labels")).json() == []
        r = await client.put(f"/api/studies/{a}/labels/keep")
        assert r.status_code == 200 and r.json() == {"study": a, "label": "keep", "added": True}
        assert (await client.put(f"/api/studies/{a}/labels/keep")).json()["added"] is False
        await client.put(f"/api/studies/{a}/labels/teaching-2026")
        await client.put(f"/api/studies/{b}/labels/teaching-2026")
        assert (await client.get(f"/api/studies/{a}/labels")).json() == ["keep", "teaching-2026"]
        assert (await client.get(f"/api/studies/{a}")).json()["labels"] == ["keep", "teaching-2026"]
        listed = {s["StudyInstanceUID"]: s["labels"] for s in (await client.get("/api/studies")).json()}
        assert listed == {a: ["keep", "teaching-2026"], b: ["teaching-2026"]}
        # labels=: studies carrying every one, in the REST search and in QIDO-RS
        only = (await client.get("/api/search", params={"level": "studies", "labels": "keep,teaching-2026"})).json()
        assert [s["StudyInstanceUID"] for s in only] == [a]
        both = (await client.get("/api/studies", params={"labels": "teaching-2026"})).json()
        assert sorted(s["StudyInstanceUID"] for s in both) == sorted([a, b])
        qido = (await client.get("/dicom-web/studies", params={"labels": "keep"})).json()
        assert [s["0020000D"]["Value"][0] for s in qido] == [a]
        assert (await client.get("/dicom-web/studies", params={"labels": "nobody"})).json() == []
        r = await client.get("/api/series", params={"labels": "keep"})
        assert r.status_code == 400 and "study level" in r.json()["error"]["message"]
        assert await labels.study_has_label(archive, a, "keep")
        assert not await labels.study_has_label(archive, b, "keep")
        assert not await labels.study_has_label(archive, a, "Keep")  # case matters
        assert (await client.get("/api/labels")).json() == [
            {"label": "keep", "studies": 1},
            {"label": "teaching-2026", "studies": 2},
        ]
        r = await client.delete(f"/api/studies/{a}/labels/keep")
        assert r.status_code == 200 and r.json()["removed"] is True
        assert (await client.delete(f"/api/studies/{a}/labels/keep")).json()["removed"] is False
        assert (await client.get(f"/api/studies/{a}/labels")).json() == ["teaching-2026"]

    web(body)


@pytest.mark.parametrize(
    ("label", "ok"),
    [("a" * 64, True), ("a" * 65, False), ("A-z_09", True), ("has space", False), ("é", False), ("x.y", False)],
)
def test_label_rule(label: str, ok: bool) -> None:
    """Orthanc 1.12's rule: 1 to 64 of A-Z a-z 0-9 _ -."""
    if ok:
        assert labels.validate_label(label) == label
    else:
        with pytest.raises(labels.InvalidLabel):
            labels.validate_label(label)


def test_invalid_label_missing_study_and_too_many(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        a = await store(client)
        r = await client.put(f"/api/studies/{a}/labels/" + "x" * 65)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_label"
        r = await client.put(f"/api/studies/{a}/labels/no%20space")
        assert r.status_code == 400
        r = await client.put(f"/api/studies/{generate_uid()}/labels/keep")
        assert r.status_code == 404
        many = ",".join(f"l{i}" for i in range(labels.MAX_QUERY_LABELS + 1))
        assert (await client.get("/api/studies", params={"labels": many})).status_code == 400
        at_limit = ",".join(f"l{i}" for i in range(labels.MAX_QUERY_LABELS))
        assert (await client.get("/api/studies", params={"labels": at_limit})).json() == []

    web(body)


def test_labels_go_with_the_study(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        a = await store(client)
        await client.put(f"/api/studies/{a}/labels/keep")
        await delete_resource(archive, "study", a)
        assert await labels.all_labels(archive) == []
        series = generate_uid()
        r = await client.post("/api/instances", content=part10(study_uid=a, series_uid=series))
        assert r.status_code == 200
        assert (await client.get(f"/api/studies/{a}/labels")).json() == []  # re-sent: a new study, no labels

    web(body)


def test_who_may_change_labels_and_the_ui(web: Callable[..., Any]) -> None:
    users = (
        User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),
        User("oli", hash_password("o-pass", n=2**4), Role.OPERATOR),
    )

    def basic(name: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        oli, vic = basic("oli", "o-pass"), basic("vic", "v-pass")
        study = generate_uid()
        r = await client.post("/api/instances", content=part10(study_uid=study), headers=oli)
        assert r.status_code == 200
        assert (await client.put(f"/api/studies/{study}/labels/keep", headers=vic)).status_code == 403
        assert (await client.put(f"/api/studies/{study}/labels/keep", headers=oli)).status_code == 200
        assert (await client.get(f"/api/studies/{study}/labels", headers=vic)).json() == ["keep"]
        assert (await client.delete(f"/api/studies/{study}/labels/keep", headers=vic)).status_code == 403
        page = (await client.get(f"/ui/studies/{study}", headers=oli)).text
        assert 'class="badge label">keep' in page and "data-label-remove" in page and "add-label" in page
        assert "data-label-remove" not in (await client.get(f"/ui/studies/{study}", headers=vic)).text
        listing = (await client.get("/ui/", params={"labels": "keep"}, headers=vic)).text
        assert "?labels=keep" in listing and study in listing
        assert study not in (await client.get("/ui/", params={"labels": "other"}, headers=vic)).text

    web(body, users=users)
