"""bootstrap.build_app: a failure after the archive opened closes it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minipacs import bootstrap
from minipacs.bootstrap import build_app
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.mpps import ProcedureSteps


def test_a_failed_start_closes_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Archive] = []
    real_open = bootstrap.open_archive

    async def spy_open(settings: Settings) -> Archive:
        archive = await real_open(settings)
        opened.append(archive)
        return archive

    async def broken_resume(self: ProcedureSteps) -> None:
        raise RuntimeError("completion check failed")

    monkeypatch.setattr(bootstrap, "open_archive", spy_open)
    monkeypatch.setattr(ProcedureSteps, "resume", broken_resume)
    settings = Settings(data_dir=tmp_path / "data", port=0, fsync=False)
    with pytest.raises(RuntimeError, match="completion check failed"):
        asyncio.run(build_app(settings))
    [archive] = opened
    with pytest.raises(Exception, match="closed"):
        asyncio.run(archive.write(lambda conn: None))


@pytest.mark.parametrize("check_calling_host", [False, True])
def test_start_up_says_when_any_host_can_retrieve_with_a_title(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, check_calling_host: bool
) -> None:
    """Issue 8 item 16: registered nodes with move/get rights and check_calling_host off."""
    from minipacs.bootstrap import open_registry
    from minipacs.core.nodes import Node

    settings = Settings(
        data_dir=tmp_path / "data",
        port=0,
        fsync=False,
        check_calling_host=check_calling_host,
        nodes=(Node("WS_7", "127.0.0.3", 104, permissions=frozenset({"find", "move"})),),
    )

    async def start() -> None:
        archive = await bootstrap.open_archive(settings)
        try:
            await open_registry(settings, archive)
        finally:
            await archive.close()

    caplog.set_level("INFO", logger="minipacs")
    asyncio.run(start())
    warned = [r for r in caplog.records if "may retrieve images (C-MOVE/C-GET): WS_7" in r.getMessage()]
    assert len(warned) == (0 if check_calling_host else 1)
    assert all(r.levelname == "WARNING" for r in warned)


def test_serving_freezes_what_startup_made(tmp_path: Path) -> None:
    """Issue 11: once the server is up, what startup allocated is out of the cyclic collector's
    way (gc.freeze): a full collection otherwise walks ~150,000 objects, a ~40 ms stall of whatever
    was being served."""
    import gc

    class Ready(Exception):
        pass

    seen: list[int] = []

    def on_ready(_app: object) -> None:
        seen.append(gc.get_freeze_count())
        raise Ready

    settings = Settings(data_dir=tmp_path / "data", port=0, http_port=0, fsync=False)
    gc.unfreeze()
    try:
        with pytest.raises(Ready):
            asyncio.run(bootstrap.serve(settings, on_ready=on_ready))
    finally:
        gc.unfreeze()  # the rest of the test run collects as before
    assert seen and seen[0] > 10_000
