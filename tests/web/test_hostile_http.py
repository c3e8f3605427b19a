"""Issue 8 ("Hostile input"), the HTTP items: each limit at its edge, each fix with the input that broke it."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import logging
import os
import re
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core import staging as staging_module
from minipacs.core.archive import Archive
from minipacs.core.errors import OutOfResources
from minipacs.core.metadata import MetadataStore
from minipacs.core.users import Role, User, hash_password
from minipacs.web import dicomweb as dicomweb_module
from minipacs.web import render as render_module
from minipacs.web import transfer as transfer_module
from minipacs.web import unzip as unzip_module
from minipacs.web import wado_uri as wado_uri_module
from minipacs.web.app import create_app
from minipacs.web.throttle import LoginThrottle
from minipacs.web.types import AppContext
from tests.web.conftest import part10

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


# ------------------------------------------------------------------ item 12: boundary case, non-ASCII digits


def test_form_upload_keeps_the_boundary_case(web: Callable[..., Any]) -> None:
    """A browser's FormData boundary has upper-case letters (----WebKitFormBoundaryAbC...); lower-casing
    it made every browser form upload a 400."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        boundary = "----WebKitFormBoundaryAbCdEfGh"
        data = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)
        content = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n'
                f"Content-Type: application/dicom\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = await client.post(
            "/api/instances",
            content=content,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": "http://testserver"},
        )  # as the browser sends it
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 1 and await archive.count_instances() == 1

    web(body)


@pytest.mark.parametrize(
    "url",
    [
        "/dicom-web/studies?limit=\u0661\u0660",  # Arabic-Indic 10
        "/dicom-web/studies?offset=\u0661",
        "/dicom-web/studies?limit=\u00b2",  # superscript two: isdigit() but not a number
        "/api/studies?limit=\u0661\u0660",
        "/api/associations?limit=\u0661\u0660",
        "/ui/?size=\u0661\u0660",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/\u0661",
        f"/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}&frameNumber=\u0661",
    ],
)
def test_non_ascii_digits_are_not_numbers(web: Callable[..., Any], url: str) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        r = await client.get(url)
        assert r.status_code == 400, (url, r.status_code, r.text[:200])
        # the same parameter in ASCII digits is accepted
        ascii_url = url.replace("\u0661", "1").replace("\u0660", "0").replace("\u00b2", "2")
        assert (await client.get(ascii_url)).status_code != 400, ascii_url

    web(body)


# ------------------------------------------------------------------ item 5 and 11: ZIP uploads


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def corrupt_deflate(body: bytes, name: str) -> bytes:
    """``body`` with bytes in the middle of member ``name``'s deflate stream flipped (the CRC still says
    what it was)."""
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        info = z.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    broken = bytearray(body)
    for i in range(start + 2, start + min(40, info.compress_size - 2)):
        broken[i] ^= 0xFF
    return bytes(broken)


async def post_zip(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/api/instances", content=body, headers={"Content-Type": "application/zip"})


def test_zip_member_at_max_dataset_bytes(web: Callable[..., Any]) -> None:
    data = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)

    async def at_limit(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, zipped({"a.dcm": data}))
        assert r.status_code == 200, r.text

    async def beyond(client: httpx.AsyncClient, archive: Archive) -> None:
        before = await archive.count_instances()  # web() runs on the same data directory twice
        r = await post_zip(client, zipped({"a.dcm": data}))
        assert r.status_code == 413, r.text
        assert "max_dataset_bytes" in r.json()["error"]["message"] and await archive.count_instances() == before

    web(at_limit, max_dataset_bytes=len(data))
    web(beyond, max_dataset_bytes=len(data) - 1)


def test_zip_total_at_max_zip_inflated_bytes(web: Callable[..., Any]) -> None:
    files = {f"{n}.dcm": part10(study_uid=STUDY, series_uid=SERIES) for n in range(3)}
    total = sum(map(len, files.values()))

    async def at_limit(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, zipped(files))
        assert r.status_code == 200 and r.json()["stored"] == 3, r.text

    async def beyond(client: httpx.AsyncClient, archive: Archive) -> None:
        before = await archive.count_instances()
        r = await post_zip(client, zipped(files))
        assert r.status_code == 413, r.text
        assert "max_zip_inflated_bytes" in r.json()["error"]["message"] and await archive.count_instances() == before

    web(at_limit, max_zip_inflated_bytes=total)
    web(beyond, max_zip_inflated_bytes=total - 1)


def test_zip_inflation_ratio_at_max_zip_ratio(web: Callable[..., Any]) -> None:
    """Zeros: 4 MiB inflate from a few kB. At the ratio they are inflated (and refused as not DICOM, a
    400 per file); one below it the archive is refused before anything is inflated."""
    body = zipped({"zeros.bin": bytes(4 * 1024 * 1024)})
    total = 4 * 1024 * 1024
    ratio = -(-total // len(body))
    assert total > (ratio - 1) * len(body)

    async def at_limit(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, body)
        assert r.status_code == 400 and r.json()["results"][0]["status"] == "failed", r.text

    async def beyond(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, body)
        assert r.status_code == 413 and "max_zip_ratio" in r.json()["error"]["message"], r.text

    web(at_limit, max_zip_ratio=ratio)
    web(beyond, max_zip_ratio=ratio - 1)


def test_zip_bomb_is_refused_before_inflating(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: 1 MB of ZIP claiming about a gigabyte. Members share one deflate stream
    (overlapping entries), so the archive stays small; with the defaults it is refused with a 413
    and nothing is inflated."""
    kernel = zipped({"k": bytes(1024 * 1024 * 1024 // 1024)}, zipfile.ZIP_DEFLATED)  # 1 MiB of zeros
    # 1,000 central-directory entries pointing at the same local entry: 1,000 MiB declared
    with zipfile.ZipFile(io.BytesIO(kernel)) as z:
        info = z.infolist()[0]
    local_end = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size
    local = kernel[:local_end]
    central = b""
    for n in range(1000):
        entry = zipfile.ZipInfo(f"m{n:04d}.dcm", date_time=info.date_time)
        entry.compress_type, entry.CRC = info.compress_type, info.CRC
        entry.compress_size, entry.file_size, entry.header_offset = info.compress_size, info.file_size, 0
        entry.filename = "k"  # the local header's name: zipfile checks they agree
        central += _central_record(entry)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1000, 1000, len(central), len(local), 0)
    bomb = local + central + end
    assert len(bomb) < 1024 * 1024
    inflated: list[str] = []
    real = unzip_module.inflate
    monkeypatch.setattr(transfer_module, "inflate", lambda *a: inflated.append("x") or real(*a))

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, bomb)
        assert r.status_code == 413, r.text
        assert "max_zip" in r.json()["error"]["message"]
        assert inflated == [] and await archive.count_instances() == 0

    web(body)


def _central_record(info: zipfile.ZipInfo) -> bytes:
    """A central directory file header (APPNOTE 4.3.12) for ``info``."""
    name = info.filename.encode()
    dostime = info.date_time[3] << 11 | info.date_time[4] << 5 | info.date_time[5] // 2
    dosdate = (info.date_time[0] - 1980) << 9 | info.date_time[1] << 5 | info.date_time[2]
    return (
        struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            20,
            20,
            0,
            info.compress_type,
            dostime,
            dosdate,
            info.CRC,
            info.compress_size,
            info.file_size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            info.header_offset,
        )
        + name
    )


def test_zip_members_are_inflated_in_a_worker_thread(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = unzip_module.inflate

    def spy(*args: Any) -> int:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(transfer_module, "inflate", spy)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, zipped({"a.dcm": part10(), "b.dcm": part10()}))
        assert r.status_code == 200, r.text
        assert len(threads) == 2 and threading.main_thread().name not in threads

    web(body)


def test_zip_with_a_corrupt_deflate_stream_is_a_per_file_failure(web: Callable[..., Any]) -> None:
    """Was a 500 (zlib.error escaped). Now the broken member fails with a sentence; the others are stored."""
    good = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, corrupt_deflate(zipped({"bad.dcm": part10()}), "bad.dcm"))
        assert r.status_code == 400, r.text
        assert "cannot be inflated" in r.json()["results"][0]["message"]
        r = await post_zip(client, corrupt_deflate(zipped({"good.dcm": good, "bad.dcm": part10()}), "bad.dcm"))
        assert r.status_code == 207, r.text
        assert [x["status"] for x in r.json()["results"]] == ["stored", "failed"]
        assert await archive.count_instances() == 1

    web(body)


def test_zip_member_that_inflates_beyond_its_header_stops_there(web: Callable[..., Any]) -> None:
    """A local and central header that under-declare the inflated size: inflation stops at the
    declared size and the member fails its CRC check (it is not stored, and no more is inflated)."""
    data = part10()
    body = bytearray(zipped({"a.dcm": data}))
    with zipfile.ZipFile(io.BytesIO(bytes(body))) as z:
        info = z.getinfo("a.dcm")
    small = struct.pack("<L", 1000)
    body[info.header_offset + 22 : info.header_offset + 26] = small  # local header: uncompressed size
    central = bytes(body).rindex(b"PK\x01\x02")
    body[central + 24 : central + 28] = small  # central directory: uncompressed size

    async def run(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await post_zip(client, bytes(body))
        assert r.status_code == 400, r.text
        assert r.json()["results"][0]["status"] == "failed" and await archive.count_instances() == 0

    web(run)


# ------------------------------------------------------------------ item 11: a full disk is 507 with a sentence


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging files (the archive's, and the temporary copies of uploads) are opened on /dev/full:
    every write fails with ENOSPC, as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    def create(path: Path) -> Any:
        path.touch()
        return open("/dev/full", "wb", buffering=staging_module._WRITE_BUFFER)

    monkeypatch.setattr(transfer_module.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(staging_module, "_create", create)


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'


def stow_body(*files: bytes) -> bytes:
    return b"".join(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n" for f in files) + b"--XyZ--\r\n"


@pytest.mark.parametrize("kind", ["dicom", "zip", "multipart", "stow"])
def test_full_disk_is_507_with_a_sentence(web: Callable[..., Any], full_disk: None, kind: str) -> None:
    data = part10()
    url, content, ctype = {
        "dicom": ("/api/instances", data, "application/dicom"),
        "zip": ("/api/instances", zipped({"a.dcm": data}), "application/zip"),
        "multipart": ("/api/instances", stow_body(data), STOW_TYPE),
        "stow": ("/dicom-web/studies", stow_body(data), STOW_TYPE),
    }[kind]

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.post(url, content=content, headers={"Content-Type": ctype})
        assert r.status_code == 507, r.text
        message = r.json()["error"]["message"]
        assert "disk is full" in message and "Free disk space" in message, message
        assert str(archive.settings.data_dir) not in message
        assert await archive.count_instances() == 0

    web(body)


def test_archive_out_of_resources_stops_the_upload_with_507(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive's own OutOfResources (its storage filled while indexing) was one failed file per file;
    the second file fills nothing more: 507 saying the first was stored."""
    files = [part10(), part10(), part10()]

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        real = archive.ingest
        calls: list[int] = []

        async def ingest(staged: Any, origin: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                staged.path.unlink()
                raise OutOfResources("cannot write to storage: No space left on device")
            return await real(staged, origin)

        monkeypatch.setattr(archive, "ingest", ingest)
        r = await client.post("/dicom-web/studies", content=stow_body(*files), headers={"Content-Type": STOW_TYPE})
        assert r.status_code == 507, r.text
        assert "1 of the 3 file(s) before it were stored" in r.json()["error"]["message"]
        assert len(calls) == 2 and await archive.count_instances() == 1
        assert not any(archive.staging_dir.iterdir()), "the third part's staging file was left behind"

    web(body)


# ------------------------------------------------------------------ item 7: bounded renders and parts


@pytest.mark.parametrize(
    "url",
    [
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered",
        f"/dicom-web/studies/{STUDY}/thumbnail",
        f"/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}",
    ],
)
def test_renders_at_max_concurrent_renders_and_render_queue(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """One render runs, one waits (render_queue = 1); the third request is a 503 with Retry-After at once."""
    release, running, most = threading.Event(), [0], [0]
    lock = threading.Lock()

    def slow_render(*args: Any) -> bytes:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return b"\xff\xd8\xff\xd9"

    for module in (dicomweb_module, wado_uri_module):  # WADO-RS rendered, WADO-URI
        monkeypatch.setattr(module, "render", slow_render)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        first = [asyncio.create_task(client.get(url)) for _ in range(2)]
        await admitted(archive, client, 2)
        r = await client.get(url)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2" and "max_concurrent_renders" in r.json()["error"]["message"]
        release.set()
        assert [x.status_code for x in await asyncio.gather(*first)] == [200, 200]
        assert most[0] == 1
        assert (await client.get(url)).status_code == 200  # the pool is free again

    web(body, max_concurrent_renders=1, render_queue=1)


async def admitted(archive: Archive, client: httpx.AsyncClient, n: int) -> None:
    """Wait until the render pool has admitted ``n`` requests; fail, not hang, after 20 s."""
    deadline = time.monotonic() + 20
    while client_pool(archive, client).admitted < n:
        assert time.monotonic() < deadline, f"the render pool never admitted {n} requests"
        await asyncio.sleep(0.01)


def client_pool(archive: Archive, client: httpx.AsyncClient) -> Any:
    transport = client._transport
    return transport.app.state.ctx.renders  # type: ignore[attr-defined]


def test_transcoding_shares_the_render_pool(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_transcode(*args: Any) -> bytes:
        release.wait(10)
        return b""

    for module in (dicomweb_module, wado_uri_module):
        monkeypatch.setattr(module, "transcode_part10", slow_transcode)
    url = (
        f"/dicom-web/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}"
        "&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.1"
    )

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        implicit = part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP, transfer_syntax="1.2.840.10008.1.2")
        r = await client.post("/api/instances", content=implicit, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        first = asyncio.create_task(client.get(url))
        await admitted(archive, client, 1)
        r = await client.get(url)
        assert r.status_code == 503 and "transcoding" in r.json()["error"]["message"], r.text
        release.set()
        assert (await first).status_code == 200

    web(body, max_concurrent_renders=1, render_queue=0)


@pytest.mark.parametrize("kind", ["stow", "multipart", "zip"])
def test_parts_at_max_upload_parts(web: Callable[..., Any], kind: str) -> None:
    """Three parts are taken (empty ones fail one by one); four are refused whole, before any is read."""

    def request(n: int) -> tuple[str, bytes, str]:
        if kind == "zip":
            return "/api/instances", zipped({f"{i}.dcm": b"" for i in range(n)}), "application/zip"
        body = b"".join(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n\r\n" for _ in range(n)) + b"--XyZ--\r\n"
        return ("/dicom-web/studies" if kind == "stow" else "/api/instances"), body, STOW_TYPE

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        url, content, ctype = request(3)
        r = await client.post(url, content=content, headers={"Content-Type": ctype})
        assert r.status_code in (400, 409), r.text  # every part failed, one by one
        url, content, ctype = request(4)
        r = await client.post(url, content=content, headers={"Content-Type": ctype})
        assert r.status_code == 413 and "max_upload_parts" in r.json()["error"]["message"], r.text

    web(body, max_upload_parts=3)


# ------------------------------------------------------------------ item 10: information leaks, login throttling

FAST = {"n": 2**4}
USERS = (User("ada", hash_password("a-pass", **FAST), Role.ADMIN),)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_rest_errors_show_no_server_paths(web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload that is not DICOM named the staging file; a render whose read fails named the storage
    path (an OSError's message is its file name); so did the same error on a UI page."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        root = str(archive.settings.data_dir.resolve())
        r = await client.post("/api/instances", content=b"not dicom", headers={"Content-Type": "application/dicom"})
        message = r.json()["results"][0]["message"]
        assert r.status_code == 400 and "the uploaded file is not a DICOM file" in message and root not in message, (
            message
        )
        r = await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        assert r.status_code == 200

        def failing_read(path: Any, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EIO, "Input/output error", str(path))  # as a failing disk says it

        monkeypatch.setattr(render_module.pydicom, "dcmread", failing_read)
        r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered")
        message = r.json()["error"]["message"]
        assert r.status_code == 406 and root not in message, message
        assert re.search(f"Input/output error: '{re.escape(SOP)}_[0-9a-f]{{16}}\\.dcm'", message), message
        r = await client.get(f"/ui/studies/{STUDY}/series/{SERIES}/instances/{SOP}/tags")
        assert root not in r.text, r.text

    web(body)


def test_unknown_user_names_cost_one_scrypt_like_known_ones(
    web: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing told whether a user name exists (real user >= 43 ms, unknown 2 ms): count the scrypt calls."""
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("n", 0))
        return real(*args, **kwargs)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        monkeypatch.setattr(hashlib, "scrypt", counting)
        assert (await client.get("/api/studies", headers=basic("ada", "wrong"))).status_code == 401
        assert calls == [2**4]
        assert (await client.get("/api/studies", headers=basic("nobody", "wrong"))).status_code == 401
        assert calls == [2**4, 2**4]  # the dummy hash costs what the users' hashes cost

    web(body, users=USERS)


def test_failed_logins_lock_out_the_address_at_login_attempts(
    web: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        for n in range(2):
            assert (await client.get("/api/studies", headers=basic(f"guess{n}", "x"))).status_code == 401
        assert (await client.get("/api/studies", headers=basic("ada", "a-pass"))).status_code == 200  # 2 < 3
        # a success cleared the count: three more failures, the last one the third
        assert (await client.get("/api/studies", headers=basic("ada", "x"))).status_code == 401
        for n in range(2):
            assert (await client.get("/api/studies", headers=basic(f"guess{n}", "x"))).status_code == 401
        r = await client.get("/api/studies", headers=basic("ada", "a-pass"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) == 60, r.text
        assert "too many failed logins" in r.json()["error"]["message"]

    with caplog.at_level(logging.WARNING, logger="minipacs.web.auth"):
        web(body, users=USERS, login_attempts=3, login_lockout_seconds=60)
    lockouts = [r.getMessage() for r in caplog.records if "login lockout" in r.getMessage()]
    expected = (
        "login lockout: address 127.0.0.1 had 3 failed logins within 60 s; refused for 60 s "
        "(login_attempts, login_lockout_seconds)"
    )
    assert lockouts == [expected], lockouts


def test_failed_logins_lock_out_the_user_name_from_any_address(tmp_path: Path) -> None:
    async def main() -> None:
        config = Settings(
            data_dir=tmp_path / "data", fsync=False, users=USERS, login_attempts=2, login_lockout_seconds=60
        )
        archive = await open_archive(config)
        app = create_app(AppContext(config, archive, MetadataStore(archive)))
        try:
            for n, expected in enumerate((401, 401, 429)):
                transport = httpx.ASGITransport(app=app, client=(f"127.0.0.{n + 1}", 5555))
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    password = "a-pass" if expected == 429 else "wrong"
                    r = await client.get("/api/studies", headers=basic("ada", password))
                    assert r.status_code == expected, (n, r.text)
        finally:
            await archive.close()

    asyncio.run(main())


def test_lockout_ends_after_login_lockout_seconds() -> None:
    now = [1000.0]
    throttle = LoginThrottle(2, 30, clock=lambda: now[0])
    throttle.failed("10.0.0.1", "ada", "user 'ada'")
    assert throttle.locked("10.0.0.1", "ada") == 0
    throttle.failed("10.0.0.1", "ada", "user 'ada'")
    assert throttle.locked("10.0.0.1", "bob") == 30 and throttle.locked("10.0.0.2", "ada") == 30
    now[0] += 29.5
    assert throttle.locked("10.0.0.2", "ada") == 0.5
    now[0] += 0.5
    assert throttle.locked("10.0.0.1", "ada") == 0


def test_a_password_typed_as_the_user_name_is_not_logged(
    web: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.get("/api/studies", headers=basic("Tr0ub4dor&3", ""))).status_code == 401
        assert (await client.get("/api/studies", headers=basic("ada", "wrong"))).status_code == 401

    with caplog.at_level(logging.INFO):
        web(body, users=USERS)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Tr0ub4dor" not in text and "an unknown user name (#" in text and "user 'ada'" in text, text


# ------------------------------------------------------------------ item 9: security headers


@pytest.mark.parametrize(
    "url,no_store",
    [
        ("/ui/", True),
        (f"/ui/studies/{STUDY}", True),
        ("/api/studies", True),
        ("/dicom-web/studies", True),
        (f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered", True),
        (f"/api/instances/{SOP}/file", True),
        ("/api/nope", True),
        ("/ui/static/app.js", False),
    ],
)
def test_security_headers(web: Callable[..., Any], url: str, no_store: bool) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await client.post(
            "/api/instances",
            content=part10(study_uid=STUDY, series_uid=SERIES, sop_uid=SOP),
            headers={"Content-Type": "application/dicom"},
        )
        r = await client.get(url)
        assert r.status_code in (200, 404), r.text[:200]
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin" and r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert (r.headers.get("Cache-Control") == "no-store") == no_store, r.headers.get("Cache-Control")

    web(body)


def test_ohif_has_its_own_policy_and_no_framing(web: Callable[..., Any]) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await client.get("/ohif/")  # not installed here: the page saying so
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "'wasm-unsafe-eval'" in csp, csp

    web(body)


def test_no_page_has_inline_script() -> None:
    """The CSP forbids inline script: every <script> of every template is external or data."""
    import re

    from minipacs.web.pages import TEMPLATE_DIR

    for template in TEMPLATE_DIR.glob("*.html"):
        for tag in re.findall(r"<script[^>]*>", template.read_text()):
            assert "src=" in tag or 'type="application/json"' in tag, (template.name, tag)
        assert not re.search(r"\son[a-z]+=", template.read_text()), template.name
