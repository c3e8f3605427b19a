"""web/transfer.py: multipart/related bodies streamed in blocks, read off the event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.core.retrieve import StoredInstance
from minipacs.web.transfer import OutPart, file_response, multipart_related, multipart_response, split_multipart


async def _collect(stream: object) -> list[bytes]:
    return [bytes(block) async for block in stream]  # type: ignore[attr-defined]


def _files(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i + 1]) * size)
        paths.append(path)
    return paths


def test_multipart_body_is_well_formed_and_sent_in_bounded_blocks(tmp_path: Path) -> None:
    sizes = [0, 1, 1000, 70_000, 200_000, 5]
    paths = _files(tmp_path, sizes)
    parts = [OutPart(f"application/dicom; transfer-syntax=1.2.{i}", path=p) for i, p in enumerate(paths)]
    parts.insert(2, OutPart("application/dicom; transfer-syntax=9", produce=lambda: b"made on demand"))
    blocks = asyncio.run(_collect(multipart_related(parts, "BOUND", block=64 * 1024)))
    assert max(len(b) for b in blocks) <= 64 * 1024  # bounded: no piece bigger than a batch
    body = b"".join(blocks)
    got = split_multipart(body, "BOUND")
    assert [p.content_type for p in got] == [p.content_type for p in parts]
    expected = [p.read_bytes() for p in paths]
    expected.insert(2, b"made on demand")
    assert [p.body for p in got] == expected
    assert body.endswith(b"\r\n--BOUND--\r\n")


def test_unreadable_parts_are_left_out_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _files(tmp_path, [10, 20])

    def fail() -> bytes:
        raise ValueError("cannot transcode this one")

    parts = [
        OutPart("a", path=good[0]),
        OutPart("b", path=tmp_path / "gone.bin", label="1.2.3"),
        OutPart("c", produce=fail, label="4.5.6"),
        OutPart("d", path=good[1]),
    ]
    with caplog.at_level(logging.ERROR, logger="minipacs.web.transfer"):
        body = b"".join(asyncio.run(_collect(multipart_related(parts, "B"))))
    assert [p.content_type for p in split_multipart(body, "B")] == ["a", "d"]
    assert "1.2.3" in caplog.text and "4.5.6" in caplog.text and "cannot transcode" in caplog.text


def test_no_parts_is_just_the_closing_delimiter() -> None:
    assert b"".join(asyncio.run(_collect(multipart_related([], "B")))) == b"--B--\r\n"


def test_file_response_has_its_length(tmp_path: Path) -> None:
    path = _files(tmp_path, [300_001])[0]
    stored = StoredInstance("", "1.2.3", "", path.name, FilesystemBlobStore(tmp_path))
    response = file_response(stored, "application/dicom")
    assert response.headers["content-length"] == "300001"
    assert b"".join(asyncio.run(_collect(response.body_iterator))) == path.read_bytes()


def test_multipart_response_of_files_announces_its_exact_length(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _files(tmp_path, [3_000_000, 0, 100_000, 7])
    parts = [OutPart(f"application/dicom; n={i}", path=p, label=f"sop{i}") for i, p in enumerate(paths)]
    parts.insert(1, OutPart("application/dicom", path=tmp_path / "missing.dcm", label="sop-missing"))

    async def main() -> tuple[str, bytes]:
        response = await multipart_response(parts, "BB", "application/dicom")
        return response.headers["content-length"], b"".join([b async for b in response.body_iterator])

    length, body = asyncio.run(main())
    assert int(length) == len(body)
    assert [p.body for p in split_multipart(body, "BB")] == [p.read_bytes() for p in paths]
    assert "sop-missing" in caplog.text  # left out before the length was worked out


def test_multipart_response_with_produced_parts_is_chunked(tmp_path: Path) -> None:
    parts = [OutPart("a", produce=lambda: b"xyz"), OutPart("b", path=_files(tmp_path, [10])[0])]

    async def main() -> tuple[bool, bytes]:
        response = await multipart_response(parts, "BB", "application/dicom")
        return "content-length" in response.headers, b"".join([b async for b in response.body_iterator])

    has_length, body = asyncio.run(main())
    assert not has_length and [p.body for p in split_multipart(body, "BB")] == [b"xyz", b"\x01" * 10]


def test_a_client_leaving_early_closes_the_file(tmp_path: Path) -> None:
    path = _files(tmp_path, [1_000_000])[0]

    async def main() -> None:
        stream = multipart_related([OutPart("a", path=path)], "B", block=1000)
        first = await anext(stream)
        assert bytes(first).startswith(b"--B\r\n")
        await stream.aclose()  # what Starlette does when the client disconnects
        await asyncio.sleep(0.05)  # the read in flight finishes, then the file is closed

    asyncio.run(main())
    gc.collect()  # an unclosed file would warn (ResourceWarning is an error here)
