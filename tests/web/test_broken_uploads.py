"""Issue 10, "Never store a broken dataset", over HTTP: STOW-RS answers FailureReason 0xC000 "Error:
Cannot understand" (PS3.18 Table I.2-2) in the Failed SOP Sequence, with 202 when other parts were
stored and 409 when none was (PS3.18 §10.5.3); the REST and UI upload (`POST /api/instances`)
answers a per-file reason saying what is wrong and where. Nothing broken is stored."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from minipacs.core.archive import Archive
from minipacs.core.errors import BrokenDataset
from minipacs.web.dicomweb import failure_reason
from tests.broken_corpus import DEFLATED, EXPLICIT, IMPLICIT, case, part10
from tests.web.test_dicomweb import stow, stow_body


def test_stow_refuses_a_broken_part_with_failure_reason_0xc000(web: Callable[..., Any]) -> None:
    good, broken = case("ok", EXPLICIT), case("pixel-data-truncated", IMPLICIT)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, part10(good), part10(broken))
        assert r.status_code == 202, r.text
        doc = r.json()
        assert [item["00081155"]["Value"] for item in doc["00081199"]["Value"]] == [[good.sop]]
        (failed,) = doc["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xC000]
        assert failed["00081155"]["Value"] == [broken.sop]  # read from the part's header
        r = await stow(client, part10(case("item-past-sequence", DEFLATED)), part10(case("invalid-vr", EXPLICIT)))
        assert r.status_code == 409, r.text
        assert [item["00081197"]["Value"] for item in r.json()["00081198"]["Value"]] == [[0xC000], [0xC000]]
        assert await archive.count_instances() == 1

    web(body)


def test_the_failure_reason_of_a_broken_dataset_is_0xc000_with_or_without_its_class() -> None:
    assert failure_reason(BrokenDataset("x"), "1.2.840.10008.5.1.4.1.1.2") == 0xC000
    assert failure_reason(BrokenDataset("x"), "") == 0xC000


def test_upload_answers_what_is_wrong_and_where_per_file(web: Callable[..., Any]) -> None:
    good, broken = case("ok-undefined-lengths", IMPLICIT), case("garbage-short", EXPLICIT)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post("/api/instances", content=part10(broken), headers={"Content-Type": "application/dicom"})
        assert r.status_code == 400, r.text
        (result,) = r.json()["results"]
        assert result["status"] == "failed" and result["error"] == "BrokenDataset"
        assert re.fullmatch(r"5 bytes after the last element at \d+ are not an element", result["message"]), result
        content, headers = stow_body(part10(good), part10(broken))
        r = await client.post("/api/instances", content=content, headers=headers)
        assert r.status_code == 207, r.text
        assert [x["status"] for x in r.json()["results"]] == ["stored", "failed"]
        assert r.json()["results"][1]["message"].startswith("5 bytes after the last element at ")
        assert await archive.count_instances() == 1

    web(body)
