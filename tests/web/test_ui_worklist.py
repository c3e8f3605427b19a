"""The Worklist page (/ui/worklist): listing, the add form's REST body, delete, escaping, roles."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from minipacs.core.worklist import Worklist
from tests.worklist_data import entry

FAST = {"n": 2**4}
USERS = (
    User("ada", hash_password("a-pass", **FAST), Role.ADMIN),
    User("vic", hash_password("v-pass", **FAST), Role.VIEWER),
)
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
APP_JS = Path(__file__).parents[2] / "src" / "minipacs" / "web" / "static" / "app.js"


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def form_body(
    patient_id: str, name: str, accession: str, modality: str, day: str, time: str, station: str, procedure: str
) -> dict[str, Any]:
    """What app.js's worklistDataset() posts for the add form (kept in step with it)."""
    sps = {
        "00400001": {"vr": "AE", "Value": [station]},
        "00400002": {"vr": "DA", "Value": [day.replace("-", "")]},
        "00400003": {"vr": "TM", "Value": [time.replace(":", "")]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "00400007": {"vr": "LO", "Value": [procedure]},
    }
    return {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00080050": {"vr": "SH", "Value": [accession]},
        "00321060": {"vr": "LO", "Value": [procedure]},
        "00400100": {"vr": "SQ", "Value": [sps]},
    }


def test_script_builds_the_tested_body() -> None:
    script = APP_JS.read_text()
    for tag in (
        "00400001",
        "00400002",
        "00400003",
        "00080060",
        "00400007",
        "00080005",
        "00100020",
        "00100010",
        "00080050",
        "00321060",
        "00400100",
    ):
        assert f'"{tag}"' in script
    assert 'api("POST", "/api/worklist"' in script and '"/api/worklist/" + encodeURIComponent' in script
    assert 'window.confirm("Delete worklist entry' in script


def test_page_lists_entries_and_links_from_nav(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/ui/worklist")
        assert r.status_code == 200 and "The worklist is empty." in r.text
        assert 'href="/ui/worklist"' in (await client.get("/ui/")).text
        await Worklist(archive).add(entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000"))
        r = await client.get("/ui/worklist")
        assert r.status_code == 200
        row = re.search(r"<tbody>(.*)</tbody>", r.text, re.DOTALL)
        assert row is not None
        for shown in ("Doe John", "123456", "ACC1", "CT", "2024-01-05 08:30", "CT01", "CT exam", "SCHEDULED"):
            assert shown in row.group(1)
        assert 'id="add-worklist"' in r.text and 'class="danger remove-worklist"' in r.text

    web(body)


def test_add_through_rest_then_delete(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/worklist", json=form_body("P-7", "Roe^Jane", "A77", "MR", "2024-03-04", "14:15", "MR01", "MR head")
        )
        assert r.status_code == 201, r.text
        pk = r.json()["id"]
        assert r.json()["summary"]["start"] == "20240304 1415" and r.json()["summary"]["station"] == "MR01"
        page = (await client.get("/ui/worklist")).text
        assert "Roe Jane" in page and "A77" in page and "2024-03-04 14:15" in page and "MR head" in page
        assert f'data-id="{pk}"' in page
        assert (await client.delete(f"/api/worklist/{pk}")).status_code == 200
        page = (await client.get("/ui/worklist")).text
        assert "A77" not in page and "The worklist is empty." in page

    web(body)


def test_archive_text_is_escaped(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/worklist", json=form_body("P-8", HOSTILE, "A8", "CT", "2024-03-04", "14:15", "CT01", HOSTILE)
        )
        assert r.status_code == 201, r.text
        page = (await client.get("/ui/worklist")).text
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page

    web(body)


def test_viewer_sees_no_add_or_delete_and_is_refused(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        admin, viewer = basic("ada", "a-pass"), basic("vic", "v-pass")
        assert (await client.get("/ui/worklist")).status_code == 401
        created = await client.post(
            "/api/worklist",
            headers=admin,
            json=form_body("P-9", "Doe^Jo", "A9", "US", "2024-03-04", "09:00", "US1", "US"),
        )
        assert created.status_code == 201
        page = await client.get("/ui/worklist", headers=viewer)
        assert page.status_code == 200 and "A9" in page.text and 'href="/ui/worklist"' in page.text
        assert "add-worklist" not in page.text and "remove-worklist" not in page.text
        r = await client.post(
            "/api/worklist",
            headers=viewer,
            json=form_body("P-10", "X^Y", "A10", "US", "2024-03-04", "09:00", "US1", "US"),
        )
        assert r.status_code == 403
        r = await client.delete(f"/api/worklist/{created.json()['id']}", headers=viewer)
        assert r.status_code == 403
        assert len(await Worklist(archive).list()) == 1
        assert "add-worklist" in (await client.get("/ui/worklist", headers=admin)).text

    web(body, users=USERS)
