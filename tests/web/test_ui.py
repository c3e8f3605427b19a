"""The web UI in-process: pages render, archive text is escaped, paging, roles."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from minipacs.web.pages import TagRow, json_tag_rows, templates
from tests.web.conftest import part10

HOSTILE = "<script>alert(1)</script>^Evil"
HOSTILE_DESCRIPTION = '"><img src=x onerror=alert(2)>'
FAST = {"n": 2**4}
USERS = (
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def store(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **kw: Any) -> dict[str, str]:
    uids = {
        "study_uid": kw.pop("study_uid", generate_uid()),
        "series_uid": kw.pop("series_uid", generate_uid()),
        "sop_uid": kw.pop("sop_uid", generate_uid()),
    }
    with pydicom.config.disable_value_validation():
        data = part10(**uids, **kw)
    r = await client.post("/api/instances", content=data, headers=headers or {})
    assert r.status_code == 200, r.text
    return uids


def test_templates_escape_and_tag_rows() -> None:
    """Autoescaping is on for every template; an absent value is empty; tojson data cannot close its element."""
    value = templates.env.from_string("{{ v }}")
    assert value.render(v='<a href="x">\'&') == "&lt;a href=&#34;x&#34;&gt;&#39;&amp;"
    assert value.render(v=None) == ""
    script = templates.env.from_string('<script type="application/json">{{ d|tojson }}</script>').render(
        d={"x": "</script><script>alert(1)</script>"}
    )
    assert script.count("</script>") == 1 and "\\u003c/script\\u003e" in script
    rows = json_tag_rows(
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "<b>"}]},
            "00081115": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2"]}}]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "x"},
        },
        lambda tag: "K",
    )
    assert TagRow(0, "(0010,0010)", "K", "PN", "<b>") in rows
    assert any(row.value == "(bulk data)" for row in rows)
    assert TagRow(1, "(0008,1150)", "K", "UI", "1.2") in rows


def test_pages_render(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        uids = await store(client, StudyDescription="CT CHEST", patient_id="PID7")
        study, series, sop = uids["study_uid"], uids["series_uid"], uids["sop_uid"]
        r = await client.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/overview"
        r = await client.get("/ui/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "CT CHEST" in r.text and "PID7" in r.text and f"/ui/studies/{study}" in r.text
        assert "Doe John" in r.text and "2024-01-31" in r.text
        r = await client.get(f"/ui/studies/{study}")
        assert r.status_code == 200 and "AXIAL" in r.text and f"/ui/viewer/{study}/{series}" in r.text
        assert 'data-delete="/api/studies/' in r.text
        assert f'<a class="ohif" href="/ohif/viewer?StudyInstanceUIDs={study}">Open in OHIF</a>' in r.text
        r = await client.get(f"/ui/studies/{study}/series/{series}")
        assert r.status_code == 200 and sop in r.text
        r = await client.get(f"/ui/studies/{study}/series/{series}/instances/{sop}")
        assert r.status_code == 200 and "/thumbnail" in r.text
        r = await client.get(f"/ui/studies/{study}/series/{series}/instances/{sop}/tags")
        assert r.status_code == 200 and "PatientName" in r.text and "(0010,0020)" in r.text and "PID7" in r.text
        assert "(bulk data)" in r.text or "(binary" in r.text
        r = await client.get(f"/ui/viewer/{study}/{series}")
        assert r.status_code == 200 and 'id="viewer-data"' in r.text and sop in r.text and "CT lung" in r.text
        r = await client.get("/ui/patient", params={"id": "PID7"})
        assert r.status_code == 200 and "CT CHEST" in r.text
        for path in ("/ui/upload", "/ui/log", "/ui/nodes"):
            assert (await client.get(path)).status_code == 200, path
        assert "drop" in (await client.get("/ui/upload")).text.lower()
        js = await client.get("/ui/static/app.js")
        assert js.status_code == 200 and "XMLHttpRequest" in js.text
        assert (await client.get("/ui/static/app.css")).status_code == 200

    web(body)


def test_search_filters(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await store(
            client,
            StudyDescription="BRAIN MR",
            Modality="MR",
            StudyDate="20230105",
            AccessionNumber="A9",
            patient_name="Smith^Anna",
            patient_id="S1",
        )
        await store(
            client, StudyDescription="CT ABDOMEN", StudyDate="20240610", patient_name="Jones^Bob", patient_id="J1"
        )

        async def found(**params: str) -> set[str]:
            r = await client.get("/ui/", params=params)
            assert r.status_code == 200, r.text
            return set(re.findall(r'class="study" href="[^"]+">([^<]+)<', r.text))

        assert await found() == {"BRAIN MR", "CT ABDOMEN"}
        assert await found(name="Smith") == {"BRAIN MR"}
        assert await found(pid="J1") == {"CT ABDOMEN"}
        assert await found(modality="MR") == {"BRAIN MR"}
        assert await found(accession="A9") == {"BRAIN MR"}
        assert await found(description="ABDO") == {"CT ABDOMEN"}
        assert await found(**{"from": "2024-01-01"}) == {"CT ABDOMEN"}
        assert await found(**{"from": "2023-01-01", "to": "2023-12-31"}) == {"BRAIN MR"}
        r = await client.get("/ui/", params={"from": "yesterday"})
        assert r.status_code == 400 and "YYYY-MM-DD" in r.text and "text/html" in r.headers["content-type"]
        assert (await client.get("/ui/", params={"size": "7"})).status_code == 400

    web(body)


def test_search_is_alike_on_every_field_with_total_and_sort(web: Callable[..., Any]) -> None:
    """Issue 12 item 23: every field case-insensitive substring (or wildcards), a total, sortable columns."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await store(client, StudyDescription="MR Brain", Modality="MR", AccessionNumber="ACC-77", patient_id="Pa1")
        await store(client, StudyDescription="BRAIN CT", StudyDate="20220101", patient_name="Zed^Al", patient_id="pb2")
        await store(client, StudyDescription="brain perfusion", Modality="CT", StudyDate="20250101", patient_id="X3")
        await store(client, StudyDescription="Chest", StudyDate="20240601", patient_name="Alpha^Bo", patient_id="x4")

        async def found(**params: str) -> list[str]:
            r = await client.get("/ui/", params=params)
            assert r.status_code == 200, r.text
            return re.findall(r'class="study" href="[^"]+">([^<]+)<', r.text)

        assert sorted(await found(description="brain")) == ["BRAIN CT", "MR Brain", "brain perfusion"]
        assert sorted(await found(modality="ct")) == ["BRAIN CT", "Chest", "brain perfusion"]
        assert await found(accession="acc-7") == ["MR Brain"]
        assert sorted(await found(pid="x")) == ["Chest", "brain perfusion"]
        assert await found(description="br*ct") == ["BRAIN CT"]
        assert sorted(await found(description="b?ain*")) == ["BRAIN CT", "brain perfusion"]

        r = await client.get("/ui/", params={"description": "brain"})
        assert "3 studies found" in r.text and "studies 1–3 of 3" in r.text
        r = await client.get("/ui/", params={"description": "nothing like it"})
        assert "No study matches." in r.text and "no studies" in r.text and "studies none" not in r.text

        by_date = ["BRAIN CT", "MR Brain", "Chest", "brain perfusion"]
        assert await found(sort="date", dir="asc") == by_date
        assert await found() == await found(sort="date", dir="desc") == by_date[::-1]  # newest first by default
        assert await found(sort="description") == ["BRAIN CT", "brain perfusion", "Chest", "MR Brain"]
        assert await found(sort="description", dir="desc") == ["MR Brain", "Chest", "brain perfusion", "BRAIN CT"]
        assert (await found(sort="patient", dir="asc"))[0] == "Chest"  # Alpha^Bo
        assert (await found(sort="patient", dir="desc"))[0] == "BRAIN CT"  # Zed^Al
        r = await client.get("/ui/", params={"sort": "description"})
        assert 'aria-sort="ascending"' in r.text and "dir=desc" in r.text
        assert (await client.get("/ui/", params={"sort": "size"})).status_code == 400
        assert (await client.get("/ui/", params={"dir": "up"})).status_code == 400

    web(body)


def test_search_says_when_it_stops_at_ui_search_max_studies(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(3):
            await store(client, StudyDescription=f"STUDY {n}")
        r = await client.get("/ui/", params={"description": "study"})
        assert "2 studies found among the first 2 (the most one search looks at)" in r.text
        assert "studies 1–2 of 2" in r.text

    web(body, ui_search_max_studies=2)


def test_search_at_ui_search_max_studies_is_not_capped(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(2):
            await store(client, StudyDescription=f"STUDY {n}")
        r = await client.get("/ui/", params={"description": "study"})
        assert "2 studies found." in r.text and "among the first" not in r.text

    web(body, ui_search_max_studies=2)


def test_paging(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(12):
            await store(client, StudyDescription=f"STUDY {n:02d}")
        first = await client.get("/ui/", params={"size": "10"})
        rows = re.findall(r'class="study" href', first.text)
        assert len(rows) == 10 and 'rel="next"' in first.text and 'rel="prev"' not in first.text
        assert "studies 1–10 of 12" in first.text
        second = await client.get("/ui/", params={"size": "10", "offset": "10"})
        assert len(re.findall(r'class="study" href', second.text)) == 2
        assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
        shown = set(re.findall(r">STUDY (\d\d)<", first.text)) | set(re.findall(r">STUDY (\d\d)<", second.text))
        assert len(shown) == 12

    web(body)


def test_hostile_text_is_escaped(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        uids = await store(
            client,
            patient_name=HOSTILE,
            patient_id="<i>P</i>",
            StudyDescription=HOSTILE_DESCRIPTION,
            SeriesDescription="<script>x()</script>",
        )
        study, series, sop = uids["study_uid"], uids["series_uid"], uids["sop_uid"]
        pages = [
            "/ui/",
            f"/ui/studies/{study}",
            f"/ui/studies/{study}/series/{series}",
            f"/ui/studies/{study}/series/{series}/instances/{sop}/tags",
            f"/ui/viewer/{study}/{series}",
            "/ui/patient?id=%3Ci%3EP%3C%2Fi%3E",
        ]
        for path in pages:
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "<script>alert" not in r.text and "<script>x()" not in r.text, path
            assert "<img src=x" not in r.text and "<i>P</i>" not in r.text, path
            assert r.text.count("<script") == r.text.count('<script src="/ui/static/app.js">') + r.text.count(
                '<script type="application/json"'
            ), path
        listing = (await client.get("/ui/")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
        assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in listing

    web(body)


def test_not_found_and_invalid_pages(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/ui/studies/1.2.3.4")
        assert r.status_code == 404 and "not in the archive" in r.text and "text/html" in r.headers["content-type"]
        r = await client.get("/ui/studies/1.2.abc")
        assert r.status_code == 400
        assert (await client.get("/ui/patient")).status_code == 400
        assert (await client.get("/ui/nothing-here")).status_code == 404

    web(body)


def test_viewer_role_sees_no_write_buttons_and_is_refused(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        admin, viewer = basic("ada", "a-pass"), basic("vic", "v-pass")
        assert (await client.get("/ui/")).status_code == 401
        uids = await store(client, admin)
        study = uids["study_uid"]
        page = await client.get(f"/ui/studies/{study}", headers=admin)
        assert "data-delete=" in page.text and 'href="/ui/upload"' in page.text
        page = await client.get(f"/ui/studies/{study}", headers=viewer)
        assert page.status_code == 200 and 'data-role="viewer"' in page.text
        assert "data-delete=" not in page.text and 'href="/ui/upload"' not in page.text
        assert 'form class="send"' not in page.text
        assert (await client.get("/ui/upload", headers=viewer)).status_code == 403
        r = await client.delete(f"/api/studies/{study}", headers=viewer)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert await archive.count_instances() == 1
        assert (await client.delete(f"/api/studies/{study}", headers=admin)).status_code == 200
        assert await archive.count_instances() == 0

    web(body, users=USERS)


@pytest.mark.parametrize("path", ["/ui/static/../ui.py", "/ui/static/%2e%2e/ui.py"])
def test_static_does_not_leave_its_folder(web: Callable[..., Any], path: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get(path)
        assert r.status_code == 404 and "Final" not in r.text

    web(body)


def test_deletions_name_the_user(web: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 24: a deletion was attributed to nobody; the response and the server log name the user."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        admin = basic("ada", "a-pass")
        uids = await store(client, headers=admin)
        with caplog.at_level("INFO", logger="minipacs.web.audit"):
            r = await client.delete(f"/api/studies/{uids['study_uid']}", headers=admin)
        assert r.status_code == 200 and r.json()["deleted_by"] == "ada (admin) from 127.0.0.1"
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "minipacs.web.audit"]
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf"deleted studies {uids['study_uid']} by ada \(admin\) from 127.0.0.1: 1 instance\(s\), \d+ bytes",
            lines[0],
        )

    web(body, users=USERS)


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1,023 B"),
        (1024, "1.0 KiB"),
        (9728, "9.5 KiB"),
        (4_823_449, "4.6 MiB"),
        (1024**3 - 1, "1,024.0 MiB"),
        (1024**3, "1.0 GiB"),
        (81_711_325_593, "76.1 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5000 * 1024**4, "5,000.0 TiB"),
        (None, "0 B"),
    ],
)
def test_size_filter_picks_the_unit_by_magnitude(count: int | None, shown: str) -> None:
    """The overview said '0.0 GiB' for 4.6 MiB stored (and 4.6 MiB in the table above it)."""
    from minipacs.web.pages import size

    assert size(count) == shown


def test_plural_filter() -> None:
    from minipacs.web.pages import plural

    assert [plural(n, "study", "studies") for n in (0, 1, 2, 1500)] == [
        "0 studies",
        "1 study",
        "2 studies",
        "1,500 studies",
    ]
