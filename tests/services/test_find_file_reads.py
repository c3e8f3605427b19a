"""query_max_file_reads: a query whose keys the index does not hold reads one stored file per candidate
entity; past the limit C-FIND ends with 0xA700 after what it found (as past max_results), QIDO-RS answers
what it found with a Warning (PS3.18 8.3.4.4), the REST search refuses with 422. Tested at the limit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.config import ConfigError, Settings
from minipacs.core.archive import Archive
from minipacs.core.errors import QueryTooBroad
from minipacs.core.query import FIRST_PAGE, FileReads
from minipacs.dicom.uids import STUDY_ROOT_FIND
from minipacs.services.find_scu import find_all
from minipacs.services.server import DicomServer
from tests.services.test_find import N_STUDIES, associate, files, ident, run  # noqa: F401 - files: a fixture
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow


def _limit(archive: Archive, reads: int) -> None:
    archive.settings = replace(archive.settings, query_max_file_reads=reads)


@pytest.mark.parametrize(
    ("reads", "status", "matches"),
    [
        (N_STUDIES, 0x0000, N_STUDIES),  # exactly one file per study: at the limit
        (N_STUDIES - 1, 0xA700, FIRST_PAGE),  # one more than allowed: the first page, then the refusal
        (0, 0x0000, N_STUDIES),  # no limit
    ],
)
def test_c_find_stops_at_the_file_read_limit(
    tmp_path: Path, files: Path, reads: int, status: int, matches: int
) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        _limit(archive, reads)
        assoc = await associate(server.port)
        # InstitutionName is not in the index: answered from each study's stored file
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber=None, InstitutionName=None))
        await assoc.release()
        assert (result.status, len(result.matches)) == (status, matches)
        if status == 0xA700:
            assert result.error_comment == "Query reads too many stored files; narrow it with indexed keys"

    run(tmp_path, files, body)


def test_indexed_keys_read_no_file(tmp_path: Path, files: Path) -> None:
    async def body(server: DicomServer, archive: Archive) -> None:
        _limit(archive, 1)
        assoc = await associate(server.port)
        result = await find_all(assoc, STUDY_ROOT_FIND, ident("STUDY", AccessionNumber=None, PatientID="PID3"))
        await assoc.release()
        assert (result.status, len(result.matches)) == (0x0000, N_STUDIES // 10)

    run(tmp_path, files, body)


def test_the_budget_counts_and_refuses_a_whole_page() -> None:
    budget = FileReads(10)
    budget.take(10, [])
    with pytest.raises(QueryTooBroad, match=r"more than 10 stored files"):
        budget.take(1, [])
    assert budget.used == 10  # a refused page reads nothing
    unlimited = FileReads(0)
    unlimited.take(10**9, [])
    assert unlimited.used == 10**9


@pytest.mark.parametrize(
    ("value", "ok"), [(0, True), (1, True), (100_000_000, True), (-1, False), (100_000_001, False)]
)
def test_the_setting_at_its_limits(value: int, ok: bool) -> None:
    settings = Settings(query_max_file_reads=value)
    if ok:
        settings.validate()
    else:
        with pytest.raises(ConfigError, match="query_max_file_reads"):
            settings.validate()


def test_qido_answers_what_it_found_with_a_warning_and_rest_refuses(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, *(part10(InstitutionName="Hospital") for _ in range(3)))
        assert r.status_code == 200, r.text
        params = {"InstitutionName": "Hospital", "includefield": "InstitutionName"}
        r = await client.get("/dicom-web/studies", params=params)
        assert r.status_code == 200 and len(r.json()) == 3 and "warning" not in r.headers  # 3 reads of 3
        _limit(archive, 2)
        r = await client.get("/dicom-web/studies", params=params)
        assert r.status_code == 200
        assert r.json() == []  # the one page of 3 candidates was refused whole
        assert "The number of results exceeded the maximum supported by the server" in r.headers["warning"]
        assert "query_max_file_reads" in r.headers["warning"]
        r = await client.get("/api/studies", params={"InstitutionName": "Hospital"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "query_too_broad"
        r = await client.get("/dicom-web/studies", params={"PatientID": "*"})  # indexed: no file read
        assert r.status_code == 200 and len(r.json()) == 3 and "warning" not in r.headers

    web(body)


from tests.web.conftest import web  # noqa: E402, F401 - the fixture
