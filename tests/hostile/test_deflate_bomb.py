"""Issue 8 item 5: decompression bombs (Deflated Explicit VR Little Endian, PS3.5 A.5).

A 0.5 MB deflated dataset stored over C-STORE drove the metadata worker to 1.15 GB and a WADO-RS
transcode to 2.19 GB: pydicom inflates a deflated dataset in one ``zlib.decompress`` call. Now
ingest inflates it as a stream, counting, within ``max_dataset_bytes`` and ``max_inflate_ratio``
(refused: 0xA700, nothing stored), and every later read (metadata, transcode, frames, STOW's
look at a part) goes through the same bounded inflater -- also for files stored before the fix.
The tests count inflated bytes; they never measure RSS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom.filereader
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import build_app, open_archive
from minipacs.config import Settings
from minipacs.core import inflate as inflate_module
from minipacs.core.archive import Archive
from minipacs.core.errors import InflateLimitExceeded, InvalidInstance, UnreadableInstance
from minipacs.core.inflate import DatasetLimits, inflate
from minipacs.core.metadata import MetadataStore, compute
from minipacs.core.model import Origin, StoreStatus
from minipacs.core.stored import read_part10_bytes
from minipacs.core.transcode import TranscodeError, pixel_frames, transcode, transcode_part10
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from tests.dicomgen import CT_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian, encode_dataset, make_ct

DEFLATED = str(DeflatedExplicitVRLittleEndian)
EXPLICIT = "1.2.840.10008.1.2.1"
DICOM = Origin("dicom", "MODALITY", "MINIPACS", "127.0.0.1", 104)


def bomb(rows: int = 512, cols: int = 512) -> tuple[Any, bytes, int]:
    """(dataset, its deflated encoding, its inflated size): blank pixels deflate ~1000:1."""
    uid = generate_uid()
    ds = make_ct(generate_uid(), generate_uid(), uid, rows=rows, cols=cols, transfer_syntax=DEFLATED)
    plain = encode_dataset(ds, EXPLICIT)
    deflated = encode_dataset(ds, DEFLATED)
    assert zlib.decompress(deflated, -zlib.MAX_WBITS) == plain
    return ds, deflated, len(plain)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Inflated bytes per zlib call of core/inflate.py; pydicom's own one-shot inflate is forbidden."""
    sizes: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args: Any) -> None:
            self._inner = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inner.decompress(data, max_length)
            sizes.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    def forbidden(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("pydicom inflated a whole deflated dataset in memory")

    monkeypatch.setattr(
        inflate_module, "zlib", SimpleNamespace(decompressobj=Counting, MAX_WBITS=zlib.MAX_WBITS, error=zlib.error)
    )
    monkeypatch.setattr(pydicom.filereader, "zlib", SimpleNamespace(decompress=forbidden, MAX_WBITS=zlib.MAX_WBITS))
    yield sizes


# ---------------------------------------------------------------- the inflater, at its limits


def test_max_dataset_bytes_bounds_the_inflated_size_at_the_limit() -> None:
    _ds, deflated, size = bomb(64, 64)
    assert inflate(io.BytesIO(deflated), len(deflated), DatasetLimits(size, 0)) == size
    with pytest.raises(InflateLimitExceeded, match=f"exceeds {size - 1} bytes .max_dataset_bytes."):
        inflate(io.BytesIO(deflated), len(deflated), DatasetLimits(size - 1, 0))


def test_ratio_limit_just_under_and_just_over() -> None:
    _ds, deflated, size = bomb(64, 64)
    ratio = -(-size // len(deflated))  # the smallest whole ratio that lets it through
    assert inflate(io.BytesIO(deflated), len(deflated), DatasetLimits(0, ratio)) == size
    with pytest.raises(InflateLimitExceeded, match=f"inflates over {ratio - 1}:1 .max_inflate_ratio.") as caught:
        inflate(io.BytesIO(deflated), len(deflated), DatasetLimits(0, ratio - 1))
    assert len(str(caught.value)) <= 64  # what a DIMSE Error Comment (LO) can carry


def test_a_bomb_is_stopped_with_at_most_one_chunk_inflated_past_the_limit(counted: list[int]) -> None:
    deflated = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflated.compress(bytes(64 * 1024 * 1024)) + deflated.flush()  # 64 MiB in ~64 KB
    handed: list[int] = []
    limits = DatasetLimits(max_dataset_bytes=4096 * 1024 * 1024, max_inflate_ratio=100)
    with pytest.raises(InflateLimitExceeded):
        inflate(io.BytesIO(stream), len(stream), limits, lambda chunk: handed.append(len(chunk)))
    allowed = 100 * len(stream)
    assert sum(handed) <= allowed
    assert sum(counted) <= allowed + max(counted) and max(counted) <= 256 * 1024


def test_truncated_and_corrupt_streams_are_invalid() -> None:
    _ds, deflated, _size = bomb(16, 16)
    with pytest.raises(InvalidInstance, match="truncated"):
        inflate(io.BytesIO(deflated[:-10]), len(deflated) - 10, DatasetLimits())
    with pytest.raises(InvalidInstance, match="cannot be inflated"):
        inflate(io.BytesIO(b"\xff" * 64), 64, DatasetLimits())
    # PS3.5 A.5: an odd-length stream is padded with one byte, which is not part of it
    assert inflate(io.BytesIO(deflated + b"\x00"), len(deflated) + 1, DatasetLimits()) > 0


# ---------------------------------------------------------------- ingest


def _run(tmp_path: Path, body: Any, **settings: Any) -> Any:
    async def main() -> Any:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False, **settings))
        try:
            return await body(archive)
        finally:
            await archive.close()

    return asyncio.run(main())


async def _ingest(archive: Archive, ds: Any, data: bytes) -> Any:
    staging = archive.open_staging(ds.SOPClassUID, ds.SOPInstanceUID, DEFLATED, "MODALITY")
    staging.write(data)
    return await archive.ingest(staging.finish(), DICOM)


@pytest.mark.parametrize("over", [False, True])
def test_ingest_ratio_at_the_limit(tmp_path: Path, over: bool) -> None:
    ds, deflated, size = bomb(256, 256)
    ratio = -(-size // len(deflated)) - (1 if over else 0)

    async def body(archive: Archive) -> None:
        if over:
            with pytest.raises(InflateLimitExceeded, match="max_inflate_ratio"):
                await _ingest(archive, ds, deflated)
            assert await archive.count_instances() == 0
            assert list((archive.settings.data_dir / "staging").iterdir()) == []
        else:
            assert (await _ingest(archive, ds, deflated)).status is StoreStatus.STORED

    _run(tmp_path, body, max_inflate_ratio=ratio)


@pytest.mark.parametrize("over", [False, True])
def test_ingest_max_dataset_bytes_applies_to_the_inflated_size(tmp_path: Path, over: bool) -> None:
    ds, deflated, size = bomb(64, 64)
    assert len(deflated) < size - 1  # only the inflated size can reach the limit

    async def body(archive: Archive) -> None:
        if over:
            with pytest.raises(InflateLimitExceeded, match="max_dataset_bytes"):
                await _ingest(archive, ds, deflated)
            assert await archive.count_instances() == 0
        else:
            assert (await _ingest(archive, ds, deflated)).status is StoreStatus.STORED

    _run(tmp_path, body, max_dataset_bytes=size - 1 if over else size, max_inflate_ratio=0)


def test_import_of_a_bomb_file_is_refused(tmp_path: Path) -> None:
    ds, _deflated, _size = bomb(512, 512)
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)

    async def body(archive: Archive) -> None:
        with pytest.raises(InflateLimitExceeded):
            await archive.import_file(path, Origin("import"))
        assert await archive.count_instances() == 0

    _run(tmp_path, body)


@pytest.mark.interop
def test_c_store_of_a_bomb_answers_a700_with_the_reason_and_stores_nothing(tmp_path: Path) -> None:
    ds, deflated, _size = bomb(1024, 1024)  # 2 MiB in ~2 KB: ratio ~1000
    good, good_data, _ = bomb(16, 16)

    async def main() -> list[tuple[int, str]]:
        settings = Settings(data_dir=tmp_path / "data", host="127.0.0.1", port=0, fsync=False, http_port=0)
        app = await build_app(settings)
        await app.dicom.start()
        try:
            scu = AssociationSettings(ae_title="BOMBER")
            rq = build_rq("BOMBER", "MINIPACS", [(CT_IMAGE_STORAGE, [DEFLATED])], scu)
            assoc = await connect("127.0.0.1", app.dicom.port, rq, scu)
            ctx = assoc.context_for(CT_IMAGE_STORAGE, DEFLATED)
            assert ctx is not None
            results = []
            for item, data in ((ds, deflated), (good, good_data)):
                cmd = Command.make(
                    "C-STORE-RQ",
                    has_dataset=True,
                    MessageID=assoc.next_message_id(),
                    Priority=0,
                    AffectedSOPClassUID=CT_IMAGE_STORAGE,
                    AffectedSOPInstanceUID=item.SOPInstanceUID,
                )
                async for rsp in assoc.request(ctx.context_id, cmd, data):
                    results.append((int(rsp.command["Status"]), str(rsp.command.get("ErrorComment", ""))))
            await assoc.release()
            assert await app.archive.count_instances() == 1
            return results
        finally:
            await app.close(grace=1.0)

    (status, comment), good_result = asyncio.run(main())
    assert status == 0xA700
    assert comment == "deflated dataset inflates over 100:1 (max_inflate_ratio)"
    assert good_result == (0x0000, "")


# ---------------------------------------------------------------- reads of a bomb stored before the fix


def _stored_before_the_fix(tmp_path: Path, body: Any) -> Any:
    """Store a bomb with no ratio limit (as before the fix), then run ``body`` under the default 100:1."""
    ds, deflated, size = bomb(1024, 1024)

    async def wrapped(archive: Archive) -> Any:
        outcome = await _ingest(archive, ds, deflated)
        archive.settings = dataclasses.replace(archive.settings, max_inflate_ratio=100)
        path = archive.blobs.path_of(outcome.relative_path)
        return await body(archive, path, ds, len(deflated))

    return _run(tmp_path, wrapped, max_inflate_ratio=0)


def test_metadata_worker_does_not_inflate_a_stored_bomb(
    tmp_path: Path, counted: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    async def body(archive: Archive, path: Path, ds: Any, deflated_size: int) -> None:
        counted.clear()
        store = MetadataStore(archive)
        assert await store.compute_and_store([ds.SOPInstanceUID]) == {}
        assert 0 < sum(counted) <= 100 * deflated_size + 256 * 1024
        assert "inflates over 100:1" in caplog.text
        with pytest.raises(UnreadableInstance, match="max_inflate_ratio"):
            compute(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, archive.settings.dataset_limits)

    _stored_before_the_fix(tmp_path, body)


def test_transcode_and_frames_of_a_stored_bomb_are_bounded(tmp_path: Path, counted: list[int]) -> None:
    async def body(archive: Archive, path: Path, ds: Any, deflated_size: int) -> None:
        limits = archive.settings.dataset_limits
        calls: list[Callable[[], bytes]] = [
            lambda: transcode_part10(path, EXPLICIT, limits),
            lambda: transcode(path, EXPLICIT),
        ]
        for call in calls:
            counted.clear()
            with pytest.raises(TranscodeError, match="max_inflate_ratio"):
                call()
            assert sum(counted) <= 100 * deflated_size + 256 * 1024
        with pytest.raises(UnreadableInstance, match="max_inflate_ratio"):
            pixel_frames(path, [1], decode=True, limits=limits)

    _stored_before_the_fix(tmp_path, body)


def test_a_deflated_instance_within_the_limits_still_reads(tmp_path: Path, counted: list[int]) -> None:
    ds, deflated, size = bomb(64, 64)

    async def body(archive: Archive) -> None:
        outcome = await _ingest(archive, ds, deflated)
        path = archive.blobs.path_of(outcome.relative_path)
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        text = compute(path, *uids, archive.settings.dataset_limits)
        assert '"00100020":{"vr":"LO","Value":["P1"]}' in text
        assert len(pixel_frames(path, [1], decode=False, limits=archive.settings.dataset_limits)[0]) == 64 * 64 * 2
        assert pydicom.dcmread(io.BytesIO(transcode_part10(path, EXPLICIT))).PatientID == "P1"

    _run(tmp_path, body, max_inflate_ratio=0)


def test_stow_look_at_a_part_is_bounded(counted: list[int]) -> None:
    ds, _deflated, _size = bomb(1024, 1024)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(UnreadableInstance, match="max_inflate_ratio"):
        read_part10_bytes(buf.getvalue(), DatasetLimits(), stop_before_pixels=True)
    small, _d, _s = bomb(16, 16)
    buf = io.BytesIO()
    small.save_as(buf, enforce_file_format=True)
    assert (
        read_part10_bytes(buf.getvalue(), DatasetLimits(), specific_tags=["SOPInstanceUID"]).SOPInstanceUID
        == small.SOPInstanceUID
    )


def test_config_keys_reach_the_archive_and_are_validated() -> None:
    from minipacs.bootstrap import archive_settings
    from minipacs.config import ConfigError, load_settings

    s = load_settings(None, env={"MINIPACS_MAX_INFLATE_RATIO": "7", "MINIPACS_MAX_SEQUENCE_DEPTH": "128"})
    assert archive_settings(s).dataset_limits == DatasetLimits(s.max_dataset_bytes, 7, 128)
    assert load_settings(None, env={"MINIPACS_MAX_INFLATE_RATIO": "0"}).max_inflate_ratio == 0
    with pytest.raises(ConfigError, match="max_inflate_ratio"):
        load_settings(None, env={"MINIPACS_MAX_INFLATE_RATIO": "-1"})
    with pytest.raises(ConfigError, match="max_sequence_depth"):
        load_settings(None, env={"MINIPACS_MAX_SEQUENCE_DEPTH": "129"})
    with pytest.raises(ConfigError, match="max_sequence_depth"):
        load_settings(None, env={"MINIPACS_MAX_SEQUENCE_DEPTH": "0"})
