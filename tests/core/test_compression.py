"""Lossless compression of stored instances (core/compression.py, core/compression_jobs.py).

- The encoder: 8-bit, 16-bit unsigned and signed, multi-frame and RGB images, in each of the three
  syntaxes, decode back to the original pixels under the original SOP Instance UID; each reason
  to leave an instance as it is (a table) is said in words.
- The switch of a stored copy (SQLite and PostgreSQL): the row names a new blob key with the new
  transfer syntax and sizes, the PS3.18 metadata follows, the old file stays for the grace period;
  a copy re-sent or a study deleted while compression runs wins; the disk saved is reported.
- The job kind and the scheduler: a job compresses a study; an ingest policy compresses an instance
  shortly after it was stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from minipacs.core.archive import Archive
from minipacs.core.compression import (
    SYNTAXES,
    CompressionPolicy,
    CompressionSettings,
    Compressor,
    InvalidPolicy,
    Skip,
    encode,
    policy_from_mapping,
)
from minipacs.core.compression_jobs import (
    COMPRESS,
    CompressionScheduler,
    SchedulerSettings,
    job_params,
    register_compression_jobs,
)
from minipacs.core.delete import delete_resource
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import DuplicatePolicy, Origin, StoreStatus
from minipacs.core.retrieve import select_instances
from minipacs.index import blob_removal_repo, compression_repo
from tests.dicomgen import make_ct
from tests.stored_files import instance_path

RNG = np.random.default_rng(13)


def image(kind: str, study: str = "", series: str = "", sop: str = "") -> tuple[pydicom.Dataset, np.ndarray]:
    """A CT-like instance of ``kind`` with smooth-ish random pixels (compressible), and its array."""
    ds = make_ct(study or generate_uid(), series or generate_uid(), sop or generate_uid(), rows=32, cols=40)
    frames, samples, bits, signed, stored = 1, 1, 16, False, 12
    if kind == "8bit":
        bits, stored = 8, 8
    elif kind == "16signed":
        signed = True
    elif kind == "16full":
        stored = 16
    elif kind == "multiframe":
        frames = 3
    elif kind == "rgb":
        bits, stored, samples = 8, 8, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, int(signed)
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    if frames > 1:
        ds.NumberOfFrames = frames
    shape = ((frames,) if frames > 1 else ()) + (32, 40) + ((3,) if samples == 3 else ())
    low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    ramp = np.add.outer(np.arange(32) // 4, np.arange(40) // 8) * ((high - low) // 16)  # flat blocks: runs for RLE
    ramp = np.broadcast_to(ramp[..., None] if samples == 3 else ramp, shape[-3:] if samples == 3 else shape[-2:])
    base = np.broadcast_to(ramp, shape) + low // 2
    noise = RNG.integers(-2, 3, size=shape) * (RNG.random(shape) < 0.05)  # sparse, so each pixel is tested
    dtype = {8: np.uint8, 16: np.int16 if signed else np.uint16}[bits]
    arr = np.clip(base // 64 * 64 + noise, low, high).astype(dtype)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds, arr


def save(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


KINDS = ["8bit", "16unsigned", "16signed", "16full", "multiframe", "rgb"]


@pytest.mark.parametrize("syntax", list(SYNTAXES))
@pytest.mark.parametrize("kind", KINDS)
def test_encode_is_pixel_identical(tmp_path: Path, kind: str, syntax: str) -> None:
    ds, arr = image(kind)
    data = encode(save(ds, tmp_path / "in.dcm"), SYNTAXES[syntax])
    (tmp_path / "out.dcm").write_bytes(data)
    back = pydicom.dcmread(tmp_path / "out.dcm")
    assert back.file_meta.TransferSyntaxUID == SYNTAXES[syntax].uid
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(back.pixel_array, arr)
    assert len(back.PixelData) < len(ds.PixelData)


def _no_pixels(ds: pydicom.Dataset) -> None:
    del ds.PixelData


def _bits_32(ds: pydicom.Dataset) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = bytes(32 * 40 * 4)


def _ybr(ds: pydicom.Dataset) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(32 * 40 * 3)


def _overflow(ds: pydicom.Dataset) -> None:
    values = np.full((32, 40), 0xF00F, dtype=np.uint16)  # bits 12-15 set, Bits Stored 12
    ds.PixelData = values.tobytes()


def _noise(ds: pydicom.Dataset) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = RNG.integers(0, 256, size=(32, 40), dtype=np.uint8).tobytes()


def _already(ds: pydicom.Dataset) -> None:
    ds.compress(SYNTAXES["rle"].uid, generate_instance_uid=False)


# why an instance is left as it is -> the words the reason must contain
SKIPS: dict[str, tuple[Callable[[pydicom.Dataset], None], str]] = {
    "no pixel data": (_no_pixels, "no Pixel Data"),
    "32-bit": (_bits_32, "Bits Allocated is 32"),
    "YBR_FULL": (_ybr, "Photometric Interpretation YBR_FULL"),
    "bits beyond Bits Stored": (_overflow, "bits beyond Bits Stored"),
    "incompressible noise": (_noise, "does not make it smaller"),
    "already compressed": (_already, "already compressed (RLE Lossless)"),
}


@pytest.mark.parametrize("case", list(SKIPS))
def test_what_is_not_compressed_is_said(tmp_path: Path, case: str) -> None:
    ds, _ = image("16unsigned")
    change, words = SKIPS[case]
    change(ds)
    with pytest.raises(Skip, match=words.replace("(", r"\(").replace(")", r"\)")):
        encode(save(ds, tmp_path / "in.dcm"), SYNTAXES["jpeg-ls-lossless"])


def test_policy_tables_are_checked() -> None:
    policy = policy_from_mapping({"name": "ct", "syntax": "rle", "match": {"Modality": ["CT", "MR"]}, "when": "ingest"})
    assert policy.match == {"Modality": "CT\\MR"} and policy.target.uid == "1.2.840.10008.1.2.5"
    for bad, words in (
        ({"name": "x", "syntax": "jpeg-lossy"}, "syntax"),
        ({"name": "x", "syntax": "rle", "when": "nightly"}, "when"),
        ({"name": "x", "syntax": "rle", "older_than_days": -1}, "older_than_days"),
        ({"name": "x", "syntax": "rle", "colour": "blue"}, "unknown key 'colour'"),
        ({"syntax": "rle"}, "name"),
    ):
        with pytest.raises(InvalidPolicy, match=words):
            policy_from_mapping(bad)


# ------------------------------------------------------------------ in the archive


async def _store(archive: Archive, tmp: Path, ds: pydicom.Dataset, name: str) -> None:
    outcome = await archive.import_file(save(ds, tmp / f"{name}.dcm"), Origin("test"))
    assert outcome.status in (StoreStatus.STORED, StoreStatus.REPLACED)


async def _stored_row(archive: Archive, uid: str) -> dict[str, Any]:
    from sqlalchemy import select

    from minipacs.index.schema import Instance

    def read(conn: Any) -> dict[str, Any]:
        row = conn.execute(select(Instance).where(Instance.sop_instance_uid == uid)).mappings().one()
        return dict(row)

    return await archive.read(read)


def test_a_stored_copy_is_switched_safely(with_archive: Any, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    ds, arr = image("16unsigned", study, series)
    sop = str(ds.SOPInstanceUID)
    syntax = SYNTAXES["jpeg-ls-lossless"]

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ds, "a")
        metadata = MetadataStore(archive)
        assert json.loads((await metadata.get([sop]))[0])["7FE00010"]["vr"] == "OW"
        before = await _stored_row(archive, sop)
        chosen = await select_instances(archive, "STUDY", {"StudyInstanceUID": study})  # a retrieve, just before
        compressor = Compressor(archive, CompressionSettings(keep_replaced_seconds=300, fsync=False))
        outcomes = [await compressor.compress(c, syntax) async for page in compressor.candidates() for c in page]
        assert [o.status for o in outcomes] == ["compressed"]
        after = await _stored_row(archive, sop)
        assert after["blob_key"] != before["blob_key"] and after["transfer_syntax_uid"] == syntax.uid
        assert after["original_size"] == before["size"] and after["size"] == outcomes[0].after < before["size"]
        assert after["compression"] == syntax.name
        stored = pydicom.dcmread(archive.blobs.path_of(after["blob_key"]))
        assert stored.SOPInstanceUID == sop and np.array_equal(stored.pixel_array, arr)
        assert json.loads((await metadata.get([sop]))[0])["7FE00010"]["vr"] == "OB"  # kept metadata follows
        # the retrieve that chose the old copy still reads it during the grace period
        with chosen[0].open() as fh:
            assert fh.read(132)[128:132] == b"DICM"
        assert await compressor.remove_replaced() == 0
        saved = await compressor.savings(study)
        assert saved["saved_bytes"] == before["size"] - after["size"] > 0 and saved["compressed"] == 1
        assert (await compressor.savings())["replaced_copies_pending_removal"] == 1
        # nothing is compressed twice
        assert [c async for c in compressor.candidates()] == []
        # once the grace period is over, the old copy goes (and only it)
        quick = Compressor(archive, CompressionSettings(keep_replaced_seconds=0, fsync=False))

        def due(conn: Any) -> None:
            from sqlalchemy import update

            from minipacs.index.schema import BlobRemoval

            conn.execute(update(BlobRemoval).values(remove_after=before["received_at"]))

        await archive.write(due)
        assert await quick.remove_replaced() == 1
        assert not archive.blobs.exists(chosen[0].blob_key) and archive.blobs.path_of(after["blob_key"]).is_file()
        assert (await quick.savings())["replaced_copies_pending_removal"] == 0

    with_archive(body, fsync=False)


def test_a_copy_re_sent_while_compressing_wins(with_archive: Any, tmp_path: Path) -> None:
    ds, arr = image("16signed")
    sop = str(ds.SOPInstanceUID)

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ds, "a")
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        pages = [page async for page in compressor.candidates()]
        ds.InstanceNumber = 99  # the re-sent copy differs: which one is kept shows
        await _store(archive, tmp_path, ds, "b")  # duplicate_policy replace: a new copy, a new key
        outcome = await compressor.compress(pages[0][0], SYNTAXES["rle"])
        assert outcome.status == "changed"
        row = await _stored_row(archive, sop)
        assert row["transfer_syntax_uid"] == ExplicitVRLittleEndian and row["compression"] == ""
        kept = pydicom.dcmread(archive.blobs.path_of(row["blob_key"]))
        assert kept.InstanceNumber == 99 and np.array_equal(kept.pixel_array, arr)
        files = {k for k in archive.blobs.keys() if k.endswith(".dcm")}
        # no compressed copy left behind; the replaced first copy waits out its grace period, queued
        assert files == {row["blob_key"]} | await archive.read(blob_removal_repo.pending_keys)
        assert len(files) == 2
        assert not list(archive.staging_dir.glob("compress-*"))
        # the re-sent copy is compressed in its turn
        again = [await compressor.compress(c, SYNTAXES["rle"]) async for page in compressor.candidates() for c in page]
        assert [o.status for o in again] == ["compressed"]
        # a copy re-sent after compression starts afresh: sizes and mark reset, the study saves nothing
        await _store(archive, tmp_path, ds, "c")
        row = await _stored_row(archive, sop)
        assert (row["original_size"], row["compression"], row["transfer_syntax_uid"]) == (
            None,
            "",
            ExplicitVRLittleEndian,
        )
        assert (await compressor.savings(str(ds.StudyInstanceUID)))["saved_bytes"] == 0

    with_archive(body, fsync=False, duplicate_policy=DuplicatePolicy.REPLACE)


def test_a_deletion_while_compressing_wins(with_archive: Any, tmp_path: Path) -> None:
    study = generate_uid()
    ds, _ = image("8bit", study)

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ds, "a")
        loop = asyncio.get_running_loop()

        class Racing(Compressor):
            def _stage(self, staged: Path, data: bytes, candidate: Any) -> str:
                deleted = asyncio.run_coroutine_threadsafe(delete_resource(archive, "study", study), loop)
                deleted.result(timeout=60)  # the study goes between the encoding and the switch
                return super()._stage(staged, data, candidate)

        compressor = Racing(archive, CompressionSettings(fsync=False))
        outcomes = [
            await compressor.compress(c, SYNTAXES["jpeg2000-lossless"])
            async for p in compressor.candidates()
            for c in p
        ]
        assert [o.status for o in outcomes] == ["changed"]
        assert [k for k in archive.blobs.keys() if k.endswith(".dcm")] == []
        assert (await compressor.savings())["instances"] == 0

    with_archive(body, fsync=False)


def test_skipped_instances_are_recorded_once(with_archive: Any, tmp_path: Path) -> None:
    study = generate_uid()
    ds, _ = image("16unsigned", study)
    _no_pixels(ds)

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ds, "a")
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        dry = [
            await compressor.compress(c, SYNTAXES["rle"], dry_run=True)
            async for p in compressor.candidates()
            for c in p
        ]
        assert [o.status for o in dry] == ["skipped"]
        assert len([c async for c in compressor.candidates()]) == 1  # a dry run records nothing
        done = [await compressor.compress(c, SYNTAXES["rle"]) async for p in compressor.candidates() for c in p]
        assert [o.reason for o in done] == ["it has no Pixel Data (7FE0,0010)"]
        assert [c async for c in compressor.candidates()] == []
        reasons = await archive.read(lambda conn: compression_repo.skip_reasons(conn, study))
        assert reasons == [(str(ds.SOPInstanceUID), "skipped: it has no Pixel Data (7FE0,0010)")]
        assert (await compressor.savings(study))["skipped"] == 1

    with_archive(body, fsync=False)


def test_a_policy_matches_through_the_query_engine(with_archive: Any, tmp_path: Path) -> None:
    study = generate_uid()
    ct, _ = image("16unsigned", study, generate_uid())
    mr, _ = image("16unsigned", study, generate_uid())
    mr.Modality = "MR"

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ct, "ct")
        await _store(archive, tmp_path, mr, "mr")
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        for match, expected in (({"Modality": "CT"}, [ct]), ({"Modality": "C*"}, [ct]), ({"Modality": "PT"}, [])):
            found = [c.sop_instance_uid async for p in compressor.candidates(match=match) for c in p]
            assert found == [str(d.SOPInstanceUID) for d in expected], match
        within = [c async for p in compressor.candidates(match={"Modality": "MR"}, study_uids=[study]) for c in p]
        assert [c.sop_instance_uid for c in within] == [str(mr.SOPInstanceUID)]
        assert [c async for c in compressor.candidates(older_than_days=1)] == []  # both arrived just now

    with_archive(body, fsync=False)


# ------------------------------------------------------------------ jobs and the scheduler

FAST = JobSettings(poll_seconds=0.05, progress_seconds=0.05, stale_seconds=5)


def test_a_compress_job_compresses_a_study(with_archive: Any, tmp_path: Path) -> None:
    study = generate_uid()
    images = [image(kind, study) for kind in ("8bit", "multiframe", "rgb")]
    bare, _ = image("16unsigned", study)
    _no_pixels(bare)

    async def body(archive: Archive) -> None:
        for n, (ds, _) in enumerate(images):
            await _store(archive, tmp_path, ds, str(n))
        await _store(archive, tmp_path, bare, "bare")
        queue = JobQueue(archive, FAST)
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        register_compression_jobs(queue, compressor)
        await queue.start()
        try:
            dry = await queue.submit(COMPRESS, "dry", job_params("jpeg-ls-lossless", study_uids=[study], dry_run=True))
            dry_done = await queue.wait(dry.id, timeout=120)
            assert dry_done.state is JobState.DONE and dry_done.details["compressed"] == 3
            assert len(dry_done.details["would_compress"]) == 3 and dry_done.details["saved_bytes"] > 0
            job = await queue.submit(COMPRESS, "now", job_params("jpeg-ls-lossless", study_uids=[study]))
            done = await queue.wait(job.id, timeout=120)
        finally:
            await queue.close()
        assert done.state is JobState.DONE, done.message
        assert (done.details["compressed"], done.details["skipped"], done.done) == (3, 1, 4)
        assert done.details["skipped_instances"][0]["uid"] == str(bare.SOPInstanceUID)
        saved = await compressor.savings(study)
        assert saved["saved_bytes"] == done.details["saved_bytes"] == dry_done.details["saved_bytes"]
        for ds, arr in images:
            path = await instance_path(archive, str(ds.SOPInstanceUID))
            assert np.array_equal(pydicom.dcmread(path).pixel_array, arr)

    with_archive(body, fsync=False)


def test_an_ingest_policy_compresses_shortly_after_storing(with_archive: Any, tmp_path: Path) -> None:
    ds, arr = image("16signed")
    sop = str(ds.SOPInstanceUID)
    policy = CompressionPolicy("ct", "jpeg2000-lossless", {"Modality": "CT"}, when="ingest")

    async def body(archive: Archive) -> None:
        queue = JobQueue(archive, FAST)
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        register_compression_jobs(queue, compressor)
        scheduler = CompressionScheduler(archive, queue, compressor, [policy], SchedulerSettings(0.1, 3600))
        await queue.start()
        scheduler.attach()
        try:
            await _store(archive, tmp_path, ds, "a")
            for _ in range(600):
                row = await _stored_row(archive, sop)
                if row["compression"]:
                    break
                await asyncio.sleep(0.1)
            jobs = await queue.list(kinds=(COMPRESS,))
        finally:
            await scheduler.close()
            await queue.close()
        assert row["transfer_syntax_uid"] == SYNTAXES["jpeg2000-lossless"].uid, row["compression"]
        assert np.array_equal(pydicom.dcmread(archive.blobs.path_of(row["blob_key"])).pixel_array, arr)
        assert jobs and jobs[-1].params["series_uids"] == [str(ds.SeriesInstanceUID)]

    with_archive(body, fsync=False)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("compression_ingest_delay_seconds", 3600, 3600.001),
        ("compression_ingest_delay_seconds", 0.001, 0),
        ("compression_sweep_seconds", 604800, 604801),
        ("compression_sweep_seconds", 1, 0.999),
        ("compression_keep_replaced_seconds", 86400, 86401),
        ("compression_keep_replaced_seconds", 0, -1),
        ("keep_replaced_seconds", 86400, 86401),
        ("keep_replaced_seconds", 0, -1),
        ("compression_max_instance_bytes", 1024, 1023),
    ],
)
def test_compression_settings_limits(key: str, good: Any, bad: Any) -> None:
    from minipacs.config import ConfigError, Settings

    Settings(**{key: good}).validate()
    with pytest.raises(ConfigError, match=key):
        Settings(**{key: bad}).validate()


def test_keep_replaced_seconds_and_its_older_compression_name(tmp_path: Path) -> None:
    """keep_replaced_seconds covers every replaced copy now; compression_keep_replaced_seconds, the
    documented older name, still sets it; both set and different is refused, naming both."""
    from minipacs.config import ConfigError, Settings, load_settings

    assert Settings().resolved_keep_replaced_seconds == 300.0
    assert Settings(keep_replaced_seconds=30).resolved_keep_replaced_seconds == 30.0
    config = tmp_path / "minipacs.toml"
    config.write_text("compression_keep_replaced_seconds = 45\n")
    assert load_settings(config, env={}).resolved_keep_replaced_seconds == 45.0
    assert load_settings(env={"MINIPACS_KEEP_REPLACED_SECONDS": "12.5"}).resolved_keep_replaced_seconds == 12.5
    assert Settings(keep_replaced_seconds=45, compression_keep_replaced_seconds=45).validate()
    with pytest.raises(ConfigError, match="keep_replaced_seconds .* compression_keep_replaced_seconds"):
        Settings(keep_replaced_seconds=30, compression_keep_replaced_seconds=45).validate()


def test_a_sweep_submits_one_job_per_policy_at_a_time(with_archive: Any, tmp_path: Path) -> None:
    old = CompressionPolicy("old-ct", "rle", {"Modality": "CT"}, older_than_days=30)
    every = CompressionPolicy("all", "jpeg-ls-lossless")

    async def body(archive: Archive) -> None:
        queue = JobQueue(archive, FAST)  # not started: the jobs stay queued
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        register_compression_jobs(queue, compressor)
        scheduler = CompressionScheduler(archive, queue, compressor, [old, every])
        assert await scheduler.sweep() == 2
        assert await scheduler.sweep() == 0  # each policy's job is still queued
        jobs = {j.params["policy"]: j for j in await queue.list(kinds=(COMPRESS,))}
        assert jobs["old-ct"].params["older_than_days"] == 30 and jobs["old-ct"].params["syntax"] == "rle"
        assert jobs["all"].description == "compress (policy all)"
        assert await scheduler.submit_noted() == 0  # nothing stored, and no ingest policy

    with_archive(body, fsync=False)


def test_a_compress_job_stopped_by_a_shutdown_resumes(with_archive: Any, tmp_path: Path) -> None:
    study = generate_uid()
    images = [image("16unsigned", study) for _ in range(3)]

    async def body(archive: Archive) -> None:
        for n, (ds, _) in enumerate(images):
            await _store(archive, tmp_path, ds, str(n))
        first_done = asyncio.Event()
        never = asyncio.Event()

        class Stalling(Compressor):
            async def compress(self, candidate: Any, syntax: Any, *, dry_run: bool = False) -> Any:
                if first_done.is_set():
                    await never.wait()  # the second instance hangs until the server stops
                outcome = await super().compress(candidate, syntax, dry_run=dry_run)
                first_done.set()
                return outcome

        queue = JobQueue(archive, FAST)
        register_compression_jobs(queue, Stalling(archive, CompressionSettings(fsync=False)))
        await queue.start()
        job = await queue.submit(COMPRESS, "stalls", job_params("rle", study_uids=[study]))
        await asyncio.wait_for(first_done.wait(), 60)
        await queue.close()  # a clean stop: the running job goes back to the queue, its attempt not charged
        stopped = await queue.get(job.id)
        assert stopped is not None and stopped.state is JobState.QUEUED and stopped.attempts == 0
        again = JobQueue(archive, FAST)
        register_compression_jobs(again, Compressor(archive, CompressionSettings(fsync=False)))
        await again.start()
        try:
            done = await again.wait(job.id, timeout=120)
        finally:
            await again.close()
        assert done.state is JobState.DONE and done.details["compressed"] == 2, done.message  # the rest only
        saved = await Compressor(archive).savings(study)
        assert saved["compressed"] == 3 and saved["skipped"] == 0

    with_archive(body, fsync=False)


def test_instances_above_the_size_limit_are_skipped(with_archive: Any, tmp_path: Path) -> None:
    small, _ = image("8bit")
    large, _ = image("8bit")

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, small, "small")
        await _store(archive, tmp_path, large, "large")
        pages = [c async for page in Compressor(archive).candidates() for c in page]
        assert len(pages) == 2
        # each against a limit of its own size (random UIDs may differ in length by a byte or two)
        over, at = pages
        below = Compressor(archive, CompressionSettings(fsync=False, max_instance_bytes=over.size - 1))
        at_limit = Compressor(archive, CompressionSettings(fsync=False, max_instance_bytes=at.size))
        first = await below.compress(over, SYNTAXES["rle"])
        assert first.status == "skipped" and first.reason == (
            f"it is {over.size} bytes, more than compression_max_instance_bytes ({over.size - 1})"
        )
        assert (await at_limit.compress(at, SYNTAXES["rle"])).status == "compressed"

    with_archive(body, fsync=False)


def test_metadata_computed_from_a_replaced_copy_is_not_kept(with_archive: Any, tmp_path: Path) -> None:
    """The metadata worker read the old copy; compression switched meanwhile: its text is dropped."""
    from minipacs.index import metadata_repo

    ds, _ = image("16unsigned")
    sop = str(ds.SOPInstanceUID)

    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, ds, "a")
        old_key = (await _stored_row(archive, sop))["blob_key"]
        compressor = Compressor(archive, CompressionSettings(fsync=False))
        [await compressor.compress(c, SYNTAXES["rle"]) async for page in compressor.candidates() for c in page]
        await archive.write(lambda conn: metadata_repo.store(conn, [(sop, '{"stale":1}')], {sop: old_key}))
        kept = await archive.read(lambda conn: metadata_repo.texts(conn, [sop]))
        assert json.loads(kept[sop])["7FE00010"]["vr"] == "OB"  # what compression stored, not the stale text
        new_key = (await _stored_row(archive, sop))["blob_key"]
        await archive.write(lambda conn: metadata_repo.store(conn, [(sop, '{"fresh":1}')], {sop: new_key}))
        assert await archive.read(lambda conn: metadata_repo.texts(conn, [sop])) == {sop: '{"fresh":1}'}

    with_archive(body, fsync=False)


ODD_SIZE_CHECK = """
import sys
from pathlib import Path
import numpy as np, pydicom
from minipacs.core.compression import SYNTAXES, Skip, encode
source = Path(sys.argv[1])
for name, syntax in SYNTAXES.items():
    try:
        data = encode(source, syntax)
    except Skip:  # an encoder refusing the image is a reason given, the job goes on
        print(name, "skipped")
        continue
    out = Path(sys.argv[2]) / (name + ".dcm")
    out.write_bytes(data)
    assert np.array_equal(pydicom.dcmread(out).pixel_array, pydicom.dcmread(source).pixel_array), name
    print(name, "ok")
"""


@pytest.mark.parametrize(("rows", "columns", "samples"), [(31, 41, 3), (33, 47, 1)])
def test_an_odd_sized_image_is_encoded_without_taking_the_process_down(
    tmp_path: Path, rows: int, columns: int, samples: int
) -> None:
    """An image of an odd number of pixels (pydicom's SC_rgb_small_odd.dcm is one): GDCM's RLE encoder,
    which pydicom picks first, aborts the process on it (std::terminate, "image_len % MaxNumSegments");
    each syntax names its encoder. Run in a child process, so an abort is this test failing, not the
    test run ending."""
    import subprocess
    import sys

    ds = make_ct(generate_uid(), generate_uid(), generate_uid())
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if samples == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    arr = np.zeros((rows, columns, samples) if samples == 3 else (rows, columns), dtype=np.uint8)
    arr[::2] = 200  # stripes: runs for RLE, smaller for every syntax
    raw = arr.tobytes()
    ds.PixelData = raw + b"\0" * (len(raw) % 2)
    ds["PixelData"].VR = "OB"
    source = save(ds, tmp_path / "odd.dcm")
    done = subprocess.run(
        [sys.executable, "-c", ODD_SIZE_CHECK, str(source), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    said = dict(line.split() for line in done.stdout.splitlines())
    assert set(said) == set(SYNTAXES) and said["rle"] == "ok", said  # another may find it not smaller
