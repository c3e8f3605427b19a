"""Patients without a Patient ID over HTTP (issue 12 item 5): QIDO-RS and REST answer each study's
own patient (PatientID empty), and the study list's patient link opens that patient's page, which
lists only that study. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.metadata import MetadataStore
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.index.pg import postgres_schema_url
from tests.web.test_ui import store

PATIENT_LINK = re.compile(r'<tr><td><a href="(/ui/patient\?[^"]*)">([^<]*)</a>')
DELETE = re.compile(r'\sdata-delete="([^"]*)"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with postgres_schema_url() as url:
            yield url


@pytest.fixture
def web_on(tmp_path: Path, index_url: str) -> Callable[..., Any]:
    """tests/web/conftest.py ``web``, on SQLite and PostgreSQL."""

    def run(body: Callable[[httpx.AsyncClient, Archive], Any]) -> Any:
        async def main() -> Any:
            config = Settings(data_dir=tmp_path / "data", index_url=index_url, fsync=False)
            archive = await open_archive(config)
            metadata = MetadataStore(archive)
            metadata.attach()
            transport = httpx.ASGITransport(
                app=create_app(AppContext(config, archive, metadata)), client=("127.0.0.1", 5555)
            )
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    return await body(client, archive)
            finally:
                await metadata.close()
                await archive.close()

        return asyncio.run(main())

    return run


def _name(model: dict[str, Any]) -> str:
    return str(model["00100010"]["Value"][0]["Alphabetic"])


def test_qido_and_rest_answer_each_study_its_own_patient(web_on: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        first = await store(client, patient_id="", patient_name="Anonymized", StudyDescription="FIRST")
        second = await store(client, patient_id="", patient_name="Roe^Jane", StudyDescription="SECOND")
        r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": second["study_uid"]})
        assert r.status_code == 200 and [_name(m) for m in r.json()] == ["Roe^Jane"]
        assert "Value" not in r.json()[0]["00100020"]  # PatientID: empty, never the internal key
        r = await client.get("/dicom-web/studies", params={"PatientName": "Roe^Jane"})
        assert [m["0020000D"]["Value"][0] for m in r.json()] == [second["study_uid"]]
        r = await client.get("/dicom-web/studies", params={"PatientName": "Anonymized"})
        assert [m["0020000D"]["Value"][0] for m in r.json()] == [first["study_uid"]]
        patients = (await client.get("/api/patients")).json()
        assert sorted((p["PatientName"], p["PatientID"], p["NumberOfPatientRelatedStudies"]) for p in patients) == [
            ("Anonymized", None, "1"),
            ("Roe^Jane", None, "1"),
        ]
        study = (await client.get(f"/api/studies/{second['study_uid']}")).json()
        assert (study["PatientName"], study["PatientID"]) == ("Roe^Jane", None)

    web_on(body)


def test_the_patient_link_of_a_study_without_patient_id_opens_its_own_page(web_on: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        first = await store(client, patient_id="", patient_name="Anonymized", StudyDescription="FIRST STUDY")
        second = await store(client, patient_id="", patient_name="Anonymized", StudyDescription="SECOND STUDY")
        other = await store(client, patient_id="P9", patient_name="Doe^John", StudyDescription="OTHER STUDY")
        listing = (await client.get("/ui/")).text
        links = {html.unescape(href): name for href, name in PATIENT_LINK.findall(listing)}
        assert len(links) == 3, links
        for uids, own, foreign in ((first, "FIRST STUDY", "SECOND STUDY"), (second, "SECOND STUDY", "FIRST STUDY")):
            link = next(href for href in links if uids["study_uid"] in href)
            page = await client.get(link)
            assert page.status_code == 200, (link, page.text[:300])
            assert "Anonymized" in page.text and own in page.text
            assert foreign not in page.text and "OTHER STUDY" not in page.text
            # the study page's patient link is the same page
            study_page = (await client.get(f"/ui/studies/{uids['study_uid']}")).text
            assert f'href="{html.escape(link)}">Patient</a>' in study_page
        # a study of a patient with an ID: its patient link is ?id= as before, ?study= leads there too
        assert "/ui/patient?id=P9" in links
        r = await client.get("/ui/patient", params={"study": other["study_uid"]})
        assert r.status_code == 307 and r.headers["location"] == "/ui/patient?id=P9"
        assert (await client.get("/ui/patient", params={"study": "1.2.3.999"})).status_code == 404
        assert (await client.get("/ui/patient", params={"study": "x y"})).status_code == 400
        assert (await client.get("/ui/patient", params={"id": ""})).status_code == 400
        # the page's Delete removes that patient (its study) and nothing else
        link = next(href for href in links if first["study_uid"] in href)
        deletes = [html.unescape(d) for d in DELETE.findall((await client.get(link)).text)]
        assert deletes == [f"/api/studies/{first['study_uid']}"]
        assert (await client.delete(deletes[0])).status_code == 200
        assert (await client.get(link)).status_code == 404
        names = sorted(p["PatientName"] for p in (await client.get("/api/patients")).json())
        assert names == ["Anonymized", "Doe^John"]
        # REST cannot name a patient by an empty Patient ID (it would be all of them)
        assert (await client.delete("/api/patients/%20")).status_code in (400, 404)

    web_on(body)
