"""Errors map to HTTP by exception class (web/errors.py); an unmapped class is loud, not guessed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from minipacs.core.archive import Archive
from minipacs.core.errors import (
    ArchiveError,
    DatasetTooLarge,
    DuplicateInstance,
    InstanceMismatch,
    InvalidIdentifier,
    NotFound,
    OutOfResources,
)
from minipacs.core.transcode import NoSuchFrame
from minipacs.web import rest_worklist
from minipacs.web.dicomweb import FAILURE_REASONS, PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED, failure_reason
from minipacs.web.errors import ERROR_TABLE
from minipacs.web.routing import Endpoint
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow


class Unlisted(ArchiveError):
    """An ArchiveError nobody gave a row in ERROR_TABLE."""


def raising(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """/api/boom raises ``exc``."""

    async def boom(request: Request) -> Response:
        raise exc

    real = rest_worklist.routes
    monkeypatch.setattr(rest_worklist, "routes", lambda: [Endpoint("/boom", boom, "GET", "read", "Raise"), *real()])


@pytest.mark.parametrize(
    "exc,status,code",
    [
        (NotFound("gone"), 404, "not_found"),
        (NoSuchFrame("frame 9"), 404, "not_found"),  # a NotFound: its base's row
        (InvalidIdentifier("bad uid"), 400, "invalid_identifier"),  # its own row before its base InvalidInstance's
        (InstanceMismatch("other study"), 400, "instance_mismatch"),
        (OutOfResources("disk full"), 507, "out_of_resources"),
    ],
)
def test_errors_map_by_class(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, exc: ArchiveError, status: int, code: str
) -> None:
    raising(monkeypatch, exc)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/api/boom")
        assert r.status_code == status and r.json() == {"error": {"code": code, "message": str(exc)}}

    web(body)


def test_an_unmapped_archive_error_is_a_logged_500(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not any(issubclass(Unlisted, kind) for kind in ERROR_TABLE)
    raising(monkeypatch, Unlisted("something new"))

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/api/boom")
        assert r.status_code == 500 and r.json()["error"]["code"] == "archive_error"

    with caplog.at_level(logging.ERROR, logger="minipacs.web.errors"):
        web(body)
    record = next(r for r in caplog.records if r.name == "minipacs.web.errors")
    assert "Unlisted has no row in web/errors.py ERROR_TABLE" in record.getMessage() and record.exc_info


def test_an_unknown_exception_is_not_mapped_at_all(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug is Starlette's 500 and reaches the server's log: no handler turns it into a JSON 4xx."""
    raising(monkeypatch, KeyError("bug"))

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        with pytest.raises(KeyError, match="bug"):  # the ASGI transport re-raises what the app did not handle
            await client.get("/api/boom")

    web(body)


def test_stow_failure_reasons_by_class() -> None:
    """PS3.18 Table 10.5.3-1 reasons, keyed by the classes themselves (a misspelt class cannot be imported)."""
    assert all(isinstance(kind, type) and issubclass(kind, ArchiveError) for kind in FAILURE_REASONS)
    assert failure_reason(OutOfResources("x"), "1.2") == 0xA700
    assert failure_reason(DatasetTooLarge("x"), "1.2") == 0xA700
    assert failure_reason(InstanceMismatch("x"), "1.2") == 0xA900
    assert failure_reason(DuplicateInstance("x"), "1.2") == 0x0111
    assert failure_reason(Unlisted("x"), "1.2") == PROCESSING_FAILURE
    assert failure_reason(InvalidIdentifier("x"), "") == SOP_CLASS_NOT_SUPPORTED


def test_stow_answers_the_reason_of_the_class_ingest_raised(web: Callable[..., Any]) -> None:
    """Through the real ingest path: a dataset over max_dataset_bytes is DatasetTooLarge -> 0xA700."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, part10(rows=128, cols=128))
        assert r.status_code == 409, r.text
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        assert await archive.count_instances() == 0

    web(body, max_dataset_bytes=8192)


@pytest.mark.parametrize(
    "method,url,allowed",
    [
        ("OPTIONS", "/dicom-web/studies", "GET, HEAD, POST"),  # QIDO-RS and STOW-RS on one path
        ("DELETE", "/dicom-web/studies/1.2.3", "GET, HEAD, POST"),
        ("PUT", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/bulkdata/7FE00010", "GET, HEAD"),
    ],
)
def test_405_lists_every_method_of_the_resource(web: Callable[..., Any], method: str, url: str, allowed: str) -> None:
    """RFC 9110 §15.5.6: a 405 carries Allow with the methods the target resource supports -- all of them,
    not only those of the first route on the path (OPTIONS is how a client asks, PS3.18 8.9 aside)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.request(method, url)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert r.headers["allow"] == allowed
        assert allowed in r.json()["error"]["message"]

    web(body)
