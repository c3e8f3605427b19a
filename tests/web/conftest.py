"""In-process web tests: a real Archive in tmp, the Starlette app behind httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.metadata import MetadataStore
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.dicomgen import make_ct

Body = Callable[[httpx.AsyncClient, Archive], Awaitable[Any]]


def part10(**kw: Any) -> bytes:
    kw.setdefault("study_uid", generate_uid())
    kw.setdefault("series_uid", generate_uid())
    kw.setdefault("sop_uid", generate_uid())
    out = io.BytesIO()
    make_ct(**kw).save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def web(tmp_path: Path) -> Callable[..., Any]:
    """``web(body, **settings)`` runs ``await body(client, archive)`` against a fresh archive."""

    def run(body: Body, **settings: Any) -> Any:
        async def main() -> Any:
            config = Settings(data_dir=tmp_path / "data", fsync=False, **settings)
            archive = await open_archive(config)
            metadata = MetadataStore(archive)
            metadata.attach()
            app = create_app(AppContext(config, archive, metadata))
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    return await body(client, archive)
            finally:
                await metadata.close()
                await archive.close()

        return asyncio.run(main())

    return run
