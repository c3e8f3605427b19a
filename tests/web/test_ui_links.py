"""Every link of the web UI round-trips a Patient ID that holds URL and HTML syntax (&, /, ", <, ...).

The pages are crawled from the study list as a browser would: every href, src and
data-after is HTML-unescaped and fetched, and must answer 200; the patient's
Delete button's data-delete is then sent as DELETE and must delete that patient.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from markupsafe import escape
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from tests.web.test_ui import store

#: one of each character that means something in a URL path, a query or HTML, then all of them at once
#: ("?" and "*" are C-FIND wildcards, which the patient page and REST refuse in a Patient ID: 400)
PATIENT_IDS = ["A&B", "A/B", 'A"B', "A<B>", "A#B", "A%2FB", "A B+C", "A'B", "x/&\"<y>#%=;'/z"]
LINK = re.compile(r'\s(?:href|src|data-after)="([^"]*)"')
DELETE = re.compile(r'\sdata-delete="([^"]*)"')


def links(page: str) -> set[str]:
    return {html.unescape(found) for found in LINK.findall(page)}


@pytest.mark.parametrize("pid", PATIENT_IDS)
def test_a_patient_id_round_trips_through_every_ui_link_and_page(web: Callable[..., Any], pid: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        uids = await store(client, patient_id=pid, patient_name="Link^Test", StudyDescription="LINKS")
        other = await store(client, patient_id="OTHER", StudyDescription="OTHER STUDY")
        shown = str(escape(pid))
        todo, seen, pages = ["/ui/"], set(), {}
        while todo:
            url = todo.pop()
            if url in seen or url.startswith("/ohif/"):  # OHIF is not installed in these tests
                continue
            seen.add(url)
            r = await client.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:300])
            if "text/html" in r.headers["content-type"]:
                pages[url] = r.text
                found = links(r.text)
                assert all(not urlsplit(link).netloc for link in found), found  # root-relative links only
                # stay with the patient under test: the other study's pages are not followed
                todo.extend(link for link in found if other["study_uid"] not in link and "id=OTHER" not in link)
        patient_pages = [u for u in pages if u.startswith("/ui/patient?")]
        assert len(patient_pages) == 1, sorted(pages)
        patient_page = pages[patient_pages[0]]
        assert f"<dd>{shown}</dd>" in patient_page and "LINKS" in patient_page and "OTHER" not in patient_page
        study, series, sop = uids["study_uid"], uids["series_uid"], uids["sop_uid"]
        for must in (
            f"/ui/studies/{study}",
            f"/ui/studies/{study}/series/{series}",
            f"/ui/studies/{study}/series/{series}/instances/{sop}",
            f"/ui/studies/{study}/series/{series}/instances/{sop}/tags",
            f"/ui/viewer/{study}/{series}",
            f"/api/studies/{study}/archive",
            f"/api/series/{series}/archive",
            f"/api/instances/{sop}/file",
        ):
            assert must in seen, (must, sorted(seen))
        assert f"<dd>{shown}</dd>" in pages[f"/ui/studies/{study}"]
        assert f"(<bdi>{shown}</bdi>)</p>" in pages[f"/ui/viewer/{study}/{series}"]
        assert f"<td>{shown}</td>" in pages["/ui/"]
        # the REST URL of the patient, as the page wrote it, names exactly this patient
        deletes = [html.unescape(d) for d in DELETE.findall(patient_page)]
        assert deletes == [f"/api/patients/{quote(pid, safe='')}"]
        r = await client.get(deletes[0])
        assert r.status_code == 200 and r.json()["PatientID"] == pid
        r = await client.delete(deletes[0])
        assert r.status_code == 200 and r.json()["deleted_instances"] == 1, r.text
        assert await archive.count_instances() == 1  # the other patient's study is still there
        assert (await client.get(patient_pages[0])).status_code == 404

    web(body)


def test_a_patient_id_ending_like_a_sub_resource_is_still_deleted(web: Callable[..., Any]) -> None:
    """DELETE has one route, so a Patient ID that looks like ``x/archive`` still names the patient."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await store(client, patient_id="x/archive", study_uid=generate_uid())
        r = await client.delete("/api/patients/" + quote("x/archive", safe=""))
        assert r.status_code == 200 and r.json()["deleted_instances"] == 1, r.text

    web(body)


def test_a_uid_with_a_slash_is_no_url(web: Callable[..., Any]) -> None:
    """Only a Patient ID may hold "/": for the other levels such a URL names nothing (404, as before)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/api/studies/1.2/3")
        assert r.status_code == 404 and r.json()["error"]["message"] == "there is nothing at this URL"

    web(body)
