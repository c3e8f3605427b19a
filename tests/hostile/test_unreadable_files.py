"""Issue 8 item 14: stored files that cannot be read (truncated, lying lengths, 10,000 levels deep).

Before: ``/tags``, WADO-RS ``/metadata`` and the UI tag page answered 404 "not in the archive" and
pydicom logged ~80 ERROR lines per request (deep nesting: a RecursionError). Now the instance is
reported as stored-but-unreadable -- HTTP 500, code ``unreadable_instance``, a sentence saying
what is wrong with the file (never its path) -- and the server log gets ONE line per request.
The files are placed in the archive directly, as a file broken before the ingest checks would be.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.errors import UnreadableInstance
from minipacs.core.inflate import DatasetLimits
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.core.stored import read_stored
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.dicomgen import (
    CT_IMAGE_STORAGE,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    encode_dataset,
    make_ct,
)

EXPLICIT = "1.2.840.10008.1.2.1"
Body = Callable[[httpx.AsyncClient, Archive, Path, Any], Awaitable[None]]


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _head(sop: str) -> bytes:
    uid = sop.encode() + (b"\x00" if len(sop) % 2 else b"")
    return _element(0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE.encode()) + _element(0x0008, 0x0018, b"UI", uid)


def nested(sop: str, depth: int, *, undefined: bool) -> bytes:
    """A dataset whose Content Sequence (0040,A730) nests ``depth`` levels deep (PS3.5 §7.5)."""
    leaf = _element(0x0010, 0x0020, b"LO", b"ID")
    if undefined:
        opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
            "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
        )
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return _head(sop) + opening * depth + leaf + closing * depth
    heads: list[bytes] = []
    inner = len(leaf)
    for _ in range(depth):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, inner)
        seq = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item) + inner)
        heads.append(seq + item)
        inner += len(item) + len(seq)
    return _head(sop) + b"".join(reversed(heads)) + leaf


def lying_length(sop: str) -> bytes:
    """Patient ID (0010,0020) claims 30,000 bytes; the dataset has a few hundred."""
    return (
        _head(sop)
        + struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 8)
        + b"Doe^John"
        + struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 30_000)
        + b"P1"
        + _element(0x0010, 0x0030, b"DA", b"19700101")
    )


def truncated(sop: str) -> bytes:
    ds = make_ct("1.2.3", "1.2.3.4", sop, rows=8, cols=8)
    data = encode_dataset(ds, EXPLICIT)
    return data[: data.index(b"Doe^John") + 3]  # cut inside PatientName


def run_web(tmp_path: Path, body: Body, **settings: Any) -> None:
    """A stored instance whose file is then replaced by ``broken``'s bytes; no background metadata worker."""

    async def main() -> None:
        config = Settings(data_dir=tmp_path / "data", fsync=False, **settings)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)  # not attached: requests compute on demand
        app = create_app(AppContext(config, archive, metadata))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            ds = make_ct(generate_uid(), generate_uid(), generate_uid(), rows=8, cols=8)
            staging = archive.open_staging(ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT)
            staging.write(encode_dataset(ds, EXPLICIT))
            outcome = await archive.ingest(staging.finish(), Origin("dicom"))
            path = archive.blobs.path_of(outcome.relative_path)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, archive, path, ds)
        finally:
            await archive.close()

    asyncio.run(main())


def replace_dataset(path: Path, dataset: bytes) -> None:
    raw = path.read_bytes()
    offset = 144 + int.from_bytes(raw[140:144], "little")
    path.write_bytes(raw[:offset] + dataset)


CASES = {
    "truncated": (truncated, "truncated"),
    "lying length": (lying_length, "(0010,0020) claims 30000 bytes, more than remain"),
    "10,000 levels, undefined lengths": (
        lambda sop: nested(sop, 10_000, undefined=True),
        "nested more than 64 levels deep (max_sequence_depth)",
    ),
    "10,000 levels, defined lengths": (
        lambda sop: nested(sop, 10_000, undefined=False),
        "nested more than 64 levels deep (max_sequence_depth)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tags_metadata_and_ui_say_the_file_is_unreadable_and_log_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make, reason = CASES[case]

    async def body(client: httpx.AsyncClient, archive: Archive, path: Path, ds: Any) -> None:
        replace_dataset(path, make(ds.SOPInstanceUID))
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        for url in (
            f"/api/instances/{sop}/tags",
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
            f"/ui/studies/{study}/series/{series}/instances/{sop}/tags",
        ):
            caplog.clear()
            r = await client.get(url)
            assert r.status_code == 500, (url, r.text)
            text = r.text if url.startswith("/ui/") else r.json()["error"]["message"]
            if not url.startswith("/ui/"):
                assert r.json()["error"]["code"] == "unreadable_instance"
            assert (
                f"{sop}&#39; is stored, but its file cannot be read" in text
                or f"{sop}' is stored, but its file cannot be read" in text
            ), text
            assert reason in text, text
            assert str(tmp_path) not in text
            lines = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
            assert len(lines) == 1, [rec.getMessage() for rec in lines]
            assert lines[0].name == "minipacs.core.metadata" and reason in lines[0].getMessage()
            assert path.name in lines[0].getMessage()  # the server log names the file (its blob key)

    caplog.set_level(logging.DEBUG)
    run_web(tmp_path, body)


def test_a_good_instance_still_answers(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive, path: Path, ds: Any) -> None:
        r = await client.get(f"/api/instances/{ds.SOPInstanceUID}/tags")
        assert r.status_code == 200 and r.json()["00100020"] == {"vr": "LO", "Value": ["P1"]}
        r = await client.get(f"/api/instances/{generate_uid()}/tags")
        assert r.status_code == 404 and r.json()["error"]["message"].endswith("is not in the archive")

    run_web(tmp_path, body)


# ---------------------------------------------------------------- the depth limit, at the limit


def _file(tmp_path: Path, dataset: bytes) -> Path:
    ds = make_ct("1.2.3", "1.2.3.4", "1.2.3.4.5", rows=8, cols=8)
    path = tmp_path / "f.dcm"
    ds.save_as(path, enforce_file_format=True)
    replace_dataset(path, dataset)
    return path


@pytest.mark.parametrize("undefined", [True, False])
def test_nesting_at_the_depth_limit(tmp_path: Path, undefined: bool) -> None:
    limits = DatasetLimits(max_sequence_depth=20)
    ok = read_stored(_file(tmp_path, nested("1.2.3.4.5", 20, undefined=undefined)), limits)
    ok.to_json_dict()
    with pytest.raises(UnreadableInstance, match="nested more than 20 levels"):
        read_stored(_file(tmp_path, nested("1.2.3.4.5", 21, undefined=undefined)), limits)


@pytest.mark.parametrize("syntax", [EXPLICIT, str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)])
def test_ordinary_files_walk_cleanly(tmp_path: Path, syntax: str) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = "T-A0100"
    with_sequence = make_ct(
        "1.2.3", "1.2.3.4", "1.2.3.4.5", rows=8, cols=8, transfer_syntax=syntax, AnatomicRegionSequence=[item, item]
    )
    path = tmp_path / "ok.dcm"
    with_sequence.save_as(path, enforce_file_format=True)
    ds = read_stored(path)
    assert ds.AnatomicRegionSequence[1].CodeValue == "T-A0100" and len(ds.PixelData) == 128
    with open(path, "ab") as fh:  # a few trailing bytes after the last element: ignored, as pydicom does
        fh.write(b"\x00\x00\x00")
    assert read_stored(path, stop_before_pixels=True).PatientID == "P1"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, read_stored(path))


def test_quiet_pydicom_keeps_only_this_threads_pydicom_lines_out(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from minipacs.core.stored import quiet_pydicom

    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("pydicom")
    with quiet_pydicom() as captured:
        logger.error("in the quiet thread")
        other = threading.Thread(target=lambda: logger.error("in another thread"))
        other.start()
        other.join()
    logger.error("after the block")
    assert captured == ["in the quiet thread"]
    assert [r.getMessage() for r in caplog.records if r.name == "pydicom"] == ["in another thread", "after the block"]


def test_quiet_pydicom_also_keeps_its_child_loggers_lines_out(caplog: pytest.LogCaptureFixture) -> None:
    """pydicom's decoders log each failed attempt with its traceback at ERROR on
    "pydicom.pixels.decoders.base": a filter on "pydicom" alone never sees those records."""
    from minipacs.core.stored import quiet_pydicom

    caplog.set_level(logging.DEBUG)
    child = logging.getLogger("pydicom.pixels.decoders.base")
    new_child = logging.getLogger("pydicom.minipacs_test_made_later")
    with quiet_pydicom() as captured:
        child.error("a decoder failed")
        new_child.error("a logger made after the first quiet block")
    child.error("after the block")
    assert captured == ["a decoder failed", "a logger made after the first quiet block"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == ["after the block"]
