"""Issue 10, "the other ways in and out": STOW-RS and POST /api/instances bodies stream into staging
(web/intake.py) as they arrive, never whole in memory, never written on the event loop; a request
that breaks off stores nothing. In process (httpx's ASGI transport streams the body to the app
piece by piece); the memory figure of a real server is in test_stream_memory.py."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.core import staging as staging_module
from minipacs.core.archive import Archive
from minipacs.dicom.part10 import walk_file_meta
from minipacs.web import intake as intake_module
from tests.services.test_send_off_loop import LagProbe
from tests.stored_files import instance_path
from tests.web.conftest import part10

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary="b0und:ary"'
BOUNDARY = b"b0und:ary"


def part(data: bytes, content_type: str | None = "application/dicom") -> bytes:
    head = b"--" + BOUNDARY + b"\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + b"\r\n" + data + b"\r\n"


def closing() -> bytes:
    return b"--" + BOUNDARY + b"--\r\n"


async def pieces(body: bytes, size: int, stall: float = 0.0, stop_at: int | None = None) -> AsyncIterator[bytes]:
    """``body`` in ``size``-byte pieces (no Content-Length: chunked), optionally stopping or stalling."""
    end = len(body) if stop_at is None else stop_at
    for start in range(0, end, size):
        yield body[start : min(start + size, end)]
        await asyncio.sleep(0)
    if stall:
        await asyncio.sleep(stall)


def leftovers(archive: Archive) -> list[Path]:
    """Files of this request left in staging: the temporary copies in staging/, and staging files
    taken from the pool in ready/ (the pool's own spare files there are empty)."""
    ready = archive.settings.data_dir / staging_module.READY_DIR
    return [*archive.staging_dir.iterdir(), *(p for p in ready.iterdir() if p.stat().st_size)]


def dataset_of(data: bytes) -> bytes:
    """The dataset of a Part 10 file (after its File Meta Information, PS3.10 §7.1)."""
    return data[132 + walk_file_meta(data[132:])[0] :]


def test_two_parts_in_small_pieces_one_without_content_type(web: Callable[..., Any]) -> None:
    """Boundaries split across pieces (7 bytes each), a quoted boundary with a colon, a preamble and
    an epilogue, a part without Content-Type (PS3.18: application/dicom): both stored, bytes intact."""
    study = generate_uid()
    files = [part10(study_uid=study), part10(study_uid=study)]
    body = b"preamble\r\n" + part(files[0]) + part(files[1], None) + closing() + b"epilogue"

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            f"/dicom-web/studies/{study}", content=pieces(body, 7), headers={"Content-Type": STOW_TYPE}
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["00081199"]["Value"]) == 2
        got = await client.get(
            f"/dicom-web/studies/{study}", headers={"Accept": "multipart/related; type=application/dicom"}
        )
        assert got.status_code == 200
        for data in files:
            assert dataset_of(data) in got.content  # the dataset bytes, under our own File Meta
        assert leftovers(archive) == []

    web(run)


def test_a_big_part_is_staged_as_it_arrives_without_a_copy(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part larger than the head kept in memory (1 MiB) goes straight into a staging file opened
    with its own UIDs (no copy through ``stage_file``); stored dataset == sent dataset."""
    data = part10(rows=1024, cols=1536)  # 3 MiB of pixels
    assert len(data) > 2 * intake_module.HEAD_BYTES

    def no_copy(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the part went the copy way")

    monkeypatch.setattr(intake_module, "stage_file", no_copy)

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/dicom-web/studies", content=pieces(part(data) + closing(), 65536), headers={"Content-Type": STOW_TYPE}
        )
        assert r.status_code == 200, r.text
        uid = r.json()["00081199"]["Value"][0]["00081155"]["Value"][0]
        stored = (await instance_path(archive, uid)).read_bytes()
        assert dataset_of(stored) == dataset_of(data)

    web(run)


def test_a_header_longer_than_the_head_takes_the_copy_way(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the first bytes do not reach the SOP UIDs (here: a 64 KiB element before them, the head cut
    to 4 KiB) the part is copied to disk as it is and staged by ``stage_file``: still stored."""
    from tests.dicomgen import make_ct

    monkeypatch.setattr(intake_module, "HEAD_BYTES", 4096)
    copies: list[Path] = []
    real = intake_module.stage_file

    def counting(staging_dir: Path, path: Path, limit: int = 0) -> Any:
        copies.append(path)
        return real(staging_dir, path, limit)

    monkeypatch.setattr(intake_module, "stage_file", counting)
    ds = make_ct(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    ds.add_new(0x00080001, "OB", b"\x01" * 65536)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances", content=pieces(out.getvalue(), 5000), headers={"Content-Type": "application/dicom"}
        )
        assert r.status_code == 200, r.text
        assert len(copies) == 1 and not copies[0].exists()
        assert leftovers(archive) == []
        assert await archive.count_instances() == 1

    web(run)


@pytest.mark.parametrize("url", ["/dicom-web/studies", "/api/instances"])
def test_a_truncated_body_stores_nothing(web: Callable[..., Any], url: str) -> None:
    """The first part is complete, the second is cut off and the body ends: 400, and the complete
    part is not stored either (all or nothing per request; README "Uploads")."""
    body = part(part10()) + part(part10()) + closing()
    cut = len(body) - 3000

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(url, content=pieces(body, 4096, stop_at=cut), headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_multipart"
        assert "closing delimiter" in r.json()["error"]["message"]
        assert await archive.count_instances() == 0
        assert leftovers(archive) == []

    web(run)


def test_a_body_that_stalls_stores_nothing(web: Callable[..., Any]) -> None:
    body = part(part10()) + part(part10()) + closing()

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/dicom-web/studies",
            content=pieces(body, 4096, stall=2.0, stop_at=len(body) - 100),
            headers={"Content-Type": STOW_TYPE},
        )
        assert r.status_code == 408, r.text
        assert "http_body_timeout" in r.json()["error"]["message"]
        assert await archive.count_instances() == 0
        assert leftovers(archive) == []

    web(run, http_body_timeout=0.5)


@pytest.mark.parametrize("url", ["/dicom-web/studies", "/api/instances"])
def test_max_upload_bytes_while_streaming(web: Callable[..., Any], url: str) -> None:
    """Without a Content-Length the limit is met while reading: exactly at it the request is taken, one
    byte more is a 413 and nothing is stored, not even the parts that were complete."""
    first, second = part10(), part10()
    body = part(first) + part(second) + closing()

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        over = await client.post(url, content=pieces(body, 4096), headers={"Content-Type": STOW_TYPE})
        assert over.status_code == 413 and "max_upload_bytes" in over.json()["error"]["message"], over.text
        assert await archive.count_instances() == 0 and leftovers(archive) == []

    web(run, max_upload_bytes=len(body) - 1)

    async def at_limit(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(url, content=pieces(body, 4096), headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 200, r.text
        assert await archive.count_instances() == 2

    web(at_limit, max_upload_bytes=len(body))


def test_a_part_over_max_dataset_bytes_fails_alone(web: Callable[..., Any]) -> None:
    small, big = part10(), part10(rows=256, cols=256)  # ~9 kB and ~130 kB

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/dicom-web/studies",
            content=pieces(part(big) + part(small) + closing(), 8192),
            headers={"Content-Type": STOW_TYPE},
        )
        assert r.status_code == 202, r.text
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        assert len(r.json()["00081199"]["Value"]) == 1
        assert await archive.count_instances() == 1 and leftovers(archive) == []

    web(run, max_dataset_bytes=65536)


def test_a_part_of_another_study_is_not_staged(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = Archive.open_staging

    def counting(self: Archive, *args: Any, **kwargs: Any) -> Any:
        opened.append(args[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Archive, "open_staging", counting)
    target, other = generate_uid(), generate_uid()

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        body = part(part10(study_uid=other)) + part(b"not dicom", "text/plain") + closing()
        r = await client.post(f"/dicom-web/studies/{target}", content=body, headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 409, r.text
        reasons = [item["00081197"]["Value"][0] for item in r.json()["00081198"]["Value"]]
        assert reasons == [0xA900, 0xC000]
        assert opened == []

    web(run)


SLOW_WRITE = 2.0


@pytest.mark.parametrize(
    ("url", "ctype", "wrap"),
    [
        ("/dicom-web/studies", STOW_TYPE, True),
        ("/api/instances", "application/dicom", False),
    ],
)
def test_staging_writes_do_not_block_the_loop(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, url: str, ctype: str, wrap: bool
) -> None:
    """Each staging write sleeps SLOW_WRITE (a very slow disk): on the loop the probe would see it;
    in a worker thread the loop stays free (a few ms)."""
    real = staging_module.StagingFile.write
    threads: set[str] = set()
    writes: list[int] = []

    def slow_write(self: Any, data: Any) -> None:
        time.sleep(SLOW_WRITE)
        threads.add(threading.current_thread().name)
        writes.append(len(data))
        real(self, data)

    monkeypatch.setattr(staging_module.StagingFile, "write", slow_write)
    data = part10(rows=1024, cols=1024)  # 2 MiB: several batches
    body = part(data) + closing() if wrap else data

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        with LagProbe() as probe:
            r = await client.post(url, content=pieces(body, 65536), headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        assert len(threads) >= 1 and threading.main_thread().name not in threads
        assert len(writes) >= 2, writes
        # On the loop, each write would stall it for SLOW_WRITE; in a worker only a busy machine can
        # (0.49 s seen on a loaded CI machine), so the bound sits halfway.
        assert probe.worst < SLOW_WRITE / 2, f"the event loop stalled {probe.worst:.3f} s"

    web(run)


def test_a_zip_upload_is_spooled_and_leaves_nothing_behind(web: Callable[..., Any]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive_zip:
        archive_zip.writestr("a.dcm", part10())
        archive_zip.writestr("b/c.dcm", part10())

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(
            "/api/instances", content=pieces(buf.getvalue(), 1000), headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 200 and r.json()["stored"] == 2, r.text
        assert leftovers(archive) == []

    web(run)


def test_a_client_that_leaves_mid_body_stores_nothing(tmp_path: Path) -> None:
    """Over a real socket (uvicorn): the first part arrives whole, the client hangs up inside the second;
    nothing is stored and no staging file is left."""
    from minipacs.bootstrap import open_archive
    from minipacs.config import Settings
    from minipacs.web.server import start_http
    from tests.peers import free_port

    body = part(part10()) + part(part10(rows=512, cols=512)) + closing()

    async def main() -> None:
        config = Settings(data_dir=tmp_path / "data", fsync=False, http_port=free_port())
        archive = await open_archive(config)
        http = await start_http(config, archive, None)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
            head = (
                f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {STOW_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.5)  # the first part is staged by now
            writer.close()
            await writer.wait_closed()
            for _ in range(50):  # the handler notices, discards, and ends
                await asyncio.sleep(0.1)
                if not leftovers(archive):
                    break
            assert leftovers(archive) == []
            assert await archive.count_instances() == 0
        finally:
            await http.close()
            await archive.close()

    asyncio.run(main())
