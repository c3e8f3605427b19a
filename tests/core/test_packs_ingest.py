"""Small instances stored as pack entries (blobs/packs.py) through the archive: which instances are
packed, the intake log's replay of entries a power cut lost, deletions, backups, the storage check,
and the jobs that read stored copies and write new ones (compression, corrections, anonymization)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from minipacs.blobs import packs as packs_module
from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.packs import slot_of
from minipacs.bootstrap import open_archive, storage_dir
from minipacs.config import Settings
from minipacs.core import archive as archive_module
from minipacs.core import blob_removals
from minipacs.core.anonymize import Anonymizer, AnonymizeRequest
from minipacs.core.archive import INTAKE_DIR, Archive
from minipacs.core.backup import backup
from minipacs.core.compression import SYNTAXES, CompressionSettings, Compressor
from minipacs.core.corrections import Corrections
from minipacs.core.delete import delete_resource
from minipacs.core.model import Origin, StoreStatus
from minipacs.core.retrieve import select_instances
from minipacs.core.storage_check import check_storage, remove_unindexed
from minipacs.index import repository as repo
from minipacs.index.schema import BlobRemoval
from tests.core.test_archive import stage
from tests.core.test_compression import image
from tests.dicomgen import ExplicitVRLittleEndian, encode_dataset, make_ct
from tests.stored_files import lose_pack_entry

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
DICOM = Origin(kind="dicom", calling_aet="MODALITY", called_aet="MINIPACS", peer_host="127.0.0.1", peer_port=4242)


def _instances(count: int, study: str | None = None) -> list[Any]:
    study = study or str(generate_uid())
    series = str(generate_uid())
    return [make_ct(study, series, str(generate_uid()), InstanceNumber=n + 1) for n in range(count)]


async def _store(
    archive: Archive, items: list[Any], in_memory: bool = True, packed: bool | None = None
) -> dict[str, str]:
    """SOP Instance UID -> blob key of each instance stored, each a pack entry if ``packed`` (by default:
    if received into memory), else a file of its own."""
    keys = {}
    for ds in items:
        outcome = await archive.ingest(stage(archive, ds, in_memory=in_memory), DICOM)
        assert outcome.status is StoreStatus.STORED
        keys[ds.SOPInstanceUID] = outcome.relative_path
        assert (slot_of(outcome.relative_path) is not None) == (in_memory if packed is None else packed)
    return keys


def _read(archive: Archive, key: str) -> bytes:
    with archive.blobs.open(key) as fh:
        return fh.read()


def _store_of(archive: Archive) -> FilesystemBlobStore:
    assert isinstance(archive.blobs, FilesystemBlobStore)
    return archive.blobs


def test_an_instance_received_into_memory_is_a_pack_entry_a_staged_one_a_file(tmp_path: Path) -> None:
    packed, staged = _instances(2)

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            in_pack = (await _store(archive, [packed]))[packed.SOPInstanceUID]
            in_file = (await _store(archive, [staged], in_memory=False))[staged.SOPInstanceUID]
            slot = slot_of(in_pack)
            assert slot is not None and in_pack.startswith("packs/")
            assert slot_of(in_file) is None and in_file.startswith(f"{staged.StudyInstanceUID}/")
            assert _read(archive, in_pack).endswith(encode_dataset(packed, ExplicitVRLittleEndian))
            assert _read(archive, in_file).endswith(encode_dataset(staged, ExplicitVRLittleEndian))
            assert _store_of(archive).packs.path(slot.pack).is_file()
            assert not _store_of(archive).path_of(in_pack).exists(), "no file of its own"
            assert await archive.count_instances() == 2
            assert (await check_storage(archive)).consistent
        finally:
            await archive.close()

    asyncio.run(main())


def test_no_packs_with_pack_bytes_0_or_without_the_intake_log(tmp_path: Path) -> None:
    async def main() -> None:
        for name, settings in (("zero", {"pack_bytes": 0}), ("no-log", {"fsync": False})):
            archive = await open_archive(Settings(data_dir=tmp_path / name, **settings))
            try:
                (key,) = (await _store(archive, _instances(1), packed=False)).values()
                assert _store_of(archive).path_of(key).is_file()
            finally:
                await archive.close()

    asyncio.run(main())


def test_a_pack_a_power_cut_lost_is_rebuilt_by_the_replay(tmp_path: Path) -> None:
    """The pack was made after the last checkpoint, so every entry in it is in the intake log: the
    replay writes each entry a row names back at its place, in a new file of the same name."""
    items = _instances(12)
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=data))
        keys = await _store(archive, items)
        await archive.close(checkpoint=False)  # the process dies: no checkpoint
        packs = {slot.pack for slot in (slot_of(key) for key in keys.values()) if slot is not None}
        assert len(packs) == 1
        pack = _store_of(archive).packs.path(packs.pop())
        pack.unlink()  # its directory entry never reached the disk

        again = await open_archive(Settings(data_dir=data))
        try:
            for ds in items:
                assert _read(again, keys[ds.SOPInstanceUID]).endswith(encode_dataset(ds, ExplicitVRLittleEndian))
            assert sorted(_store_of(again).keys()) == sorted(keys.values())
            assert pack.is_file(), "written back into the pack"
            assert not any(_store_of(again).path_of(key).exists() for key in keys.values()), "not as files"
            assert (await check_storage(again)).consistent
        finally:
            await again.close()

    asyncio.run(main())


def test_an_entry_whose_bytes_a_power_cut_lost_is_rewritten(tmp_path: Path) -> None:
    items = _instances(3)
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=data))
        keys = await _store(archive, items)
        await archive.close(checkpoint=False)
        assert lose_pack_entry(_store_of(archive), keys[items[1].SOPInstanceUID])
        again = await open_archive(Settings(data_dir=data))
        try:
            assert _read(again, keys[items[1].SOPInstanceUID]).endswith(
                encode_dataset(items[1], ExplicitVRLittleEndian)
            )
        finally:
            await again.close()

    asyncio.run(main())


def test_deleting_a_study_frees_its_entries_and_the_replay_does_not_bring_them_back(tmp_path: Path) -> None:
    kept, gone = _instances(3), _instances(4)
    data = tmp_path / "data"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=data))
        kept_keys = await _store(archive, kept)
        gone_keys = await _store(archive, gone)
        slot = slot_of(next(iter(gone_keys.values())))
        assert slot is not None
        pack = _store_of(archive).packs.path(slot.pack)
        os.sync()  # the blocks allocated, so that freeing them shows
        before = pack.stat().st_blocks
        await delete_resource(archive, "study", gone[0].StudyInstanceUID)
        assert not any(archive.blobs.exists(key) for key in gone_keys.values())
        assert before - pack.stat().st_blocks >= 4 * 4096 // 512, "each entry's blocks given back"
        await archive.close(checkpoint=False)  # their records are still in the log
        again = await open_archive(Settings(data_dir=data))
        try:
            assert sorted(_store_of(again).keys()) == sorted(kept_keys.values())
            assert await again.count_instances() == 3
        finally:
            await again.close()

    asyncio.run(main())


def test_a_backup_copies_entries_to_files_and_is_a_data_folder(tmp_path: Path) -> None:
    items = _instances(4)
    dest = tmp_path / "backup"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            keys = await _store(archive, items)
            report = await backup(archive, dest, storage_dir(dest))
            assert (report.instances, report.copied, report.present) == (4, 4, 0)
            again = await backup(archive, dest, storage_dir(dest))
            assert (again.copied, again.present) == (0, 4), "the next backup copies only what changed"
        finally:
            await archive.close()
        for ds in items:  # each entry became a file at its key's path
            assert (
                (storage_dir(dest) / keys[ds.SOPInstanceUID])
                .read_bytes()
                .endswith(encode_dataset(ds, ExplicitVRLittleEndian))
            )
        restored = await open_archive(Settings(data_dir=dest))
        try:
            assert (await check_storage(restored)).consistent
            for ds in items:
                assert _read(restored, keys[ds.SOPInstanceUID]).endswith(encode_dataset(ds, ExplicitVRLittleEndian))
            new = await _store(restored, _instances(1))  # the restored archive makes packs of its own
            assert all(slot_of(key) is not None for key in new.values())
            await delete_resource(restored, "instance", items[0].SOPInstanceUID)
            assert not (storage_dir(dest) / keys[items[0].SOPInstanceUID]).exists()
        finally:
            await restored.close()

    asyncio.run(main())


def test_the_storage_check_finds_an_entry_no_row_names_and_removes_it(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            keys = await _store(archive, _instances(2))
            store = _store_of(archive)
            stray = store.pack_key(100)  # an entry written without a row: no ingest leaves one, a bug would
            assert stray is not None
            store.put_bytes(b"s" * 100, stray)
            found = await check_storage(archive)
            assert found.unindexed == [stray] and not found.missing and found.files == 3
            assert await remove_unindexed(archive, [stray]) == [stray]
            assert not store.exists(stray)
            assert (await check_storage(archive)).consistent
            assert all(store.exists(key) for key in keys.values())
        finally:
            await archive.close()

    asyncio.run(main())


def test_when_no_new_pack_can_be_made_the_instance_gets_a_file(tmp_path: Path, monkeypatch: Any) -> None:
    def full(self: Any) -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            monkeypatch.setattr(packs_module.Packs, "_start_pack", full)
            (key,) = (await _store(archive, _instances(1), packed=False)).values()
            assert _store_of(archive).path_of(key).is_file()
        finally:
            await archive.close()

    asyncio.run(main())


def test_the_checkpointer_removes_old_emptied_packs_after_the_start(tmp_path: Path, monkeypatch: Any) -> None:
    async def main() -> None:
        real = packs_module.time.time
        archive = await open_archive(Settings(data_dir=tmp_path / "data", intake_checkpoint_seconds=0.05))
        try:
            # made 30 s short of retirement: a busy machine may take seconds before the deletions below
            monkeypatch.setattr(packs_module.time, "time", lambda: real() - packs_module.RETIRE_SECONDS + 30)
            keys = await _store(archive, _instances(2))
            monkeypatch.setattr(packs_module.time, "time", real)
            pack = _store_of(archive).packs.path(slot_of(next(iter(keys.values()))).pack)  # type: ignore[union-attr]
            await _store(archive, _instances(1))  # into a new pack: the first is too old to write into
            for key in keys.values():
                await asyncio.to_thread(archive.blobs.delete, key)
            assert pack.exists(), "emptied while (just) young"
        finally:
            await archive.close()
        monkeypatch.setattr(packs_module.time, "time", lambda: real() + 60)
        again = await open_archive(Settings(data_dir=tmp_path / "data", intake_checkpoint_seconds=0.05))
        try:
            for _ in range(100):
                if not pack.exists():
                    break
                await asyncio.sleep(0.05)
            assert not pack.exists(), "the checkpointer's first turn after the start removed it"
        finally:
            await again.close()

    asyncio.run(main())


class _Clock:
    """``time`` as core/archive.py sees it, its monotonic clock ``ahead`` seconds ahead."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


async def _until_gone(path: Path, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if not path.exists():
            return True
        await asyncio.sleep(0.05)
    return not path.exists()


def _emptied_young_pack(store: FilesystemBlobStore, monkeypatch: Any) -> Path:
    """A pack a minute short of retirement whose only entry was deleted (kept: young), and a newer one
    the store now writes into."""
    real = time.time
    monkeypatch.setattr(packs_module.time, "time", lambda: real() - packs_module.RETIRE_SECONDS + 60)
    key = store.pack_key(100)
    assert key is not None
    store.put_bytes(b"e" * 100, key)
    monkeypatch.setattr(packs_module.time, "time", real)
    current = store.pack_key(100)  # a new pack: the other is too old to write into
    assert current is not None
    store.put_bytes(b"c" * 100, current)
    store.delete(key)
    pack = store.packs.path(slot_of(key).pack)  # type: ignore[union-attr]
    assert pack.exists() and pack != store.packs.path(slot_of(current).pack)  # type: ignore[union-attr]
    return pack


@pytest.mark.parametrize("log_left", [True, False], ids=["log-replayed", "no-log-folder"])
def test_without_the_intake_log_the_replaced_copies_watch_removes_old_emptied_packs(
    tmp_path: Path, monkeypatch: Any, log_left: bool
) -> None:
    """``fsync = false``: no intake log, so no checkpointer; the watch every node runs (core/blob_removals.py)
    looks for emptied packs at the start, then once an hour. The intake log of the earlier runs is replayed
    first, when it is there; a data folder copied without it has none to replay."""
    data = tmp_path / "data"
    clock = _Clock()
    monkeypatch.setattr(archive_module, "time", clock)

    async def main() -> None:
        real = time.time
        archive = await open_archive(Settings(data_dir=data))  # with the log: packs
        try:
            first = _emptied_young_pack(_store_of(archive), monkeypatch)
        finally:
            await archive.close()
        if not log_left:
            shutil.rmtree(data / INTAKE_DIR)
        monkeypatch.setattr(packs_module.time, "time", lambda: real() + 120)  # now old enough
        again = await open_archive(Settings(data_dir=data, fsync=False))
        watch = asyncio.ensure_future(blob_removals.watch(again, 1.0))  # a pass every 0.5 s
        try:
            assert again._checkpointer is None
            assert await _until_gone(first), "the watch's first pass after the start removed it"
            monkeypatch.setattr(packs_module.time, "time", real)
            second = _emptied_young_pack(_store_of(again), monkeypatch)
            monkeypatch.setattr(packs_module.time, "time", lambda: real() + 120)
            await asyncio.sleep(1.2)  # two more passes
            assert second.exists(), "not looked for again within the hour"
            clock.ahead = archive_module.PACK_SWEEP_SECONDS + 1
            assert await _until_gone(second), "looked for again an hour later"
        finally:
            watch.cancel()
            await again.close()

    asyncio.run(main())


def test_a_process_that_does_not_own_the_data_folder_does_not_sweep(tmp_path: Path) -> None:
    async def main() -> None:
        owner = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            assert owner.pack_sweep_due
            other = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
            try:
                assert not other.pack_sweep_due, "the owner sweeps"
            finally:
                await other.close()
        finally:
            await owner.close()

    asyncio.run(main())


def test_a_packed_instance_is_compressed_and_its_entry_freed_after_the_grace_period(tmp_path: Path) -> None:
    """Compression reads a pack entry through ``local_file`` (a temporary copy) and writes the new copy
    as a file of its own; the entry stays readable for retrieves that chose it, then is punched."""
    ds, pixels = image("16unsigned")

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            (old,) = (await _store(archive, [ds])).values()
            chosen = await select_instances(archive, "STUDY", {"StudyInstanceUID": ds.StudyInstanceUID})
            compressor = Compressor(archive, CompressionSettings(keep_replaced_seconds=300, fsync=True))
            outcomes = [
                await compressor.compress(c, SYNTAXES["jpeg-ls-lossless"])
                async for page in compressor.candidates()
                for c in page
            ]
            assert [o.status for o in outcomes] == ["compressed"]
            new = await archive.read(_key_of(ds.SOPInstanceUID))
            assert new != old and slot_of(new) is None
            with archive.blobs.open(new) as fh:
                stored = pydicom.dcmread(fh)
            assert np.array_equal(stored.pixel_array, pixels)
            with chosen[0].open() as fh:  # the retrieve that chose the packed copy still reads it
                assert fh.read(132)[128:132] == b"DICM"
            assert list((_store_of(archive).packs.directory).glob("*.tmp")) == [], "local_file's copy removed"
            await archive.write(lambda conn: conn.execute(update(BlobRemoval).values(remove_after=LONG_AGO)))
            assert await compressor.remove_replaced() == 1
            assert not archive.blobs.exists(old) and archive.blobs.exists(new)
        finally:
            await archive.close()

    asyncio.run(main())


def _key_of(sop_instance_uid: str) -> Any:
    return lambda conn: repo.blob_key_of(conn, sop_instance_uid)


def test_a_correction_rewrites_packed_instances(tmp_path: Path) -> None:
    """A correction reads each pack entry through ``local_file`` and stores the rewritten copy."""

    items = _instances(2)
    for ds in items:
        ds.PatientID = "WRONG"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            before = await _store(archive, items)
            result = await Corrections(archive).modify("patient", "WRONG", {"PatientID": "RIGHT"}, "alice")
            assert result.instances == 2
            for ds in items:
                key = await archive.read(_key_of(ds.SOPInstanceUID))
                assert key != before[ds.SOPInstanceUID]
                stored = pydicom.dcmread(io.BytesIO(_read(archive, key)))
                assert stored.PatientID == "RIGHT" and stored.SOPInstanceUID == ds.SOPInstanceUID
            assert list(_store_of(archive).packs.directory.glob("*.tmp")) == []
        finally:
            await archive.close()

    asyncio.run(main())


def test_a_packed_study_is_anonymized_into_the_archive(tmp_path: Path) -> None:

    items = _instances(3)
    for ds in items:
        ds.PatientName = "Identifiable^Person"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data"))
        try:
            await _store(archive, items)  # pack entries (asserted)
            result = await Anonymizer(archive, b"packs-anonymize-key-0123456789").run(
                AnonymizeRequest("study", items[0].StudyInstanceUID)
            )
            assert result.instances == 3 and not result.failures
            new = await select_instances(archive, "STUDY", {"StudyInstanceUID": result.studies[0]})
            assert len(new) == 3
            for instance in new:
                with instance.open() as fh:
                    ds = pydicom.dcmread(io.BytesIO(fh.read()))
                assert ds.PatientIdentityRemoved == "YES" and "Identifiable" not in str(ds.PatientName)
        finally:
            await archive.close()

    asyncio.run(main())
