"""`minipacs backup` (core/backup.py): a copy of the archive that is itself a data folder, taken while
the archive works, again into the same folder copying only what changed; every way it can go wrong
leaves the previous backup usable and says why."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive, storage_dir
from minipacs.config import Settings
from minipacs.core import backup as backup_module
from minipacs.core.archive import Archive
from minipacs.core.backup import BackupFailed, BackupRefused, backup
from minipacs.core.delete import delete_resource
from minipacs.core.model import Origin
from minipacs.core.storage_check import check_storage
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url

ORIGIN = Origin("import")


async def _store(archive: Archive, folder: Path, study: str, count: int) -> list[str]:
    series = str(generate_uid())
    sops = []
    for i in range(count):
        sop = str(generate_uid())
        await archive.import_file(
            write_ct(folder / f"{sop}.dcm", study_uid=study, series_uid=series, sop_uid=sop, InstanceNumber=i + 1),
            ORIGIN,
        )
        sops.append(sop)
    return sops


async def _restored(dest: Path) -> tuple[set[str], bool]:
    """The SOP Instance UIDs the backup holds, opened as a data folder, and whether its check is clean."""
    archive = await open_archive(Settings(data_dir=dest, fsync=False))
    try:
        found = await check_storage(archive)
        sops = await archive.read(
            lambda c: {row[0] for row in c.exec_driver_sql("SELECT sop_instance_uid FROM instances").all()}
        )
        return sops, found.consistent
    finally:
        await archive.close()


def test_a_backup_is_a_data_folder_and_the_next_one_copies_only_what_changed(tmp_path: Path) -> None:
    dest = tmp_path / "backup"

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            first, second = str(generate_uid()), str(generate_uid())
            kept = await _store(archive, tmp_path / "in", first, 3)
            gone = await _store(archive, tmp_path / "in", second, 2)
            report = await backup(archive, dest, storage_dir(dest))
            assert (report.instances, report.copied, report.present, report.removed) == (5, 5, 0, 0)
            assert report.index_copies == 1 and report.copied_bytes > 0 and not report.lost
            assert sorted(os.listdir(dest)) == [".minipacs-backup.lock", "index.sqlite3", "storage"]
            again = await backup(archive, dest, storage_dir(dest))  # nothing changed: nothing copied
            assert (again.instances, again.copied, again.present, again.removed) == (5, 0, 5, 0)
            await delete_resource(archive, "study", second)
            added = await _store(archive, tmp_path / "in", first, 2)
            third = await backup(archive, dest, storage_dir(dest))
            assert (third.instances, third.copied, third.present, third.removed) == (5, 2, 3, 2)
        finally:
            await archive.close()
        sops, consistent = await _restored(dest)
        assert sops == set(kept + added) and not sops & set(gone)
        assert consistent

    asyncio.run(main())


def test_the_copy_is_byte_for_byte_and_the_index_is_a_file_of_its_own(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            await _store(archive, tmp_path / "in", str(generate_uid()), 2)
            await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
        finally:
            await archive.close()

    asyncio.run(main())
    source, copy = tmp_path / "data" / "storage", tmp_path / "backup" / "storage"
    files = sorted(p.relative_to(source) for p in source.rglob("*.dcm"))
    assert files == sorted(p.relative_to(copy) for p in copy.rglob("*.dcm")) and len(files) == 2
    assert all((source / f).read_bytes() == (copy / f).read_bytes() for f in files)
    conn = sqlite3.connect(tmp_path / "backup" / "index.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no -wal beside it
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_study_deleted_after_the_index_was_copied_makes_it_copy_the_index_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the order is for: the index copy names a study whose files a deletion removes before
    they are copied (they arrived after step 1). The backup copies the index again, without them."""

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        loop = asyncio.get_running_loop()
        try:
            kept = await _store(archive, tmp_path / "in", str(generate_uid()), 2)
            late = str(generate_uid())
            real = archive.snapshot_index
            calls: list[Path] = []

            def snapshot(dest: Path) -> None:
                if not calls:  # between step 1 and the index copy: a study arrives...
                    asyncio.run_coroutine_threadsafe(_store(archive, tmp_path / "in", late, 2), loop).result()
                real(dest)
                if not calls:  # ... and is deleted once the copy names it
                    asyncio.run_coroutine_threadsafe(delete_resource(archive, "study", late), loop).result()
                calls.append(dest)

            monkeypatch.setattr(archive, "snapshot_index", snapshot)
            report = await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
            assert report.index_copies == 2 and report.instances == 2 and not report.lost
        finally:
            await archive.close()
        sops, consistent = await _restored(tmp_path / "backup")
        assert sops == set(kept) and consistent

    asyncio.run(main())


def test_a_file_the_archive_itself_lost_is_named_and_the_rest_backed_up(tmp_path: Path) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            await _store(archive, tmp_path / "in", str(generate_uid()), 3)
            key = await archive.read(lambda c: c.exec_driver_sql("SELECT blob_key FROM instances LIMIT 1").scalar_one())
            archive.blobs.path_of(key).unlink()  # the storage lost it
            report = await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
            assert report.lost == (key,) and report.instances == 3 and report.copied == 2
            assert report.index_copies == 2  # missing from two copies of the index in a row: lost, not deleted
        finally:
            await archive.close()

    asyncio.run(main())


def test_deletions_that_never_stop_fail_the_backup_and_leave_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        loop = asyncio.get_running_loop()
        try:
            first = await _store(archive, tmp_path / "in", str(generate_uid()), 2)
            await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
            real = archive.snapshot_index

            def snapshot(dest: Path) -> None:  # before each copy a new study arrives, after it it is deleted
                study = str(generate_uid())
                asyncio.run_coroutine_threadsafe(_store(archive, tmp_path / "in", study, 1), loop).result()
                real(dest)
                asyncio.run_coroutine_threadsafe(delete_resource(archive, "study", study), loop).result()

            monkeypatch.setattr(archive, "snapshot_index", snapshot)
            with pytest.raises(BackupFailed, match="deleted before they could be copied, 5 times over"):
                await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
        finally:
            await archive.close()
        assert not (tmp_path / "backup" / "index.sqlite3.partial").exists()
        sops, consistent = await _restored(tmp_path / "backup")
        assert sops == set(first) and consistent

    asyncio.run(main())


def test_an_interrupted_copy_leaves_the_previous_backup_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            first = await _store(archive, tmp_path / "in", str(generate_uid()), 2)
            await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
            await _store(archive, tmp_path / "in", str(generate_uid()), 3)
            copied: list[Any] = []

            real_copy = shutil.copyfileobj

            def failing_copy(src: Any, dst: Any, length: int = 0) -> Any:
                copied.append(Path(dst.name))
                if len(copied) > 1:
                    raise OSError(28, "No space left on device")
                return real_copy(src, dst, length)

            monkeypatch.setattr(backup_module.shutil, "copyfileobj", failing_copy)
            with pytest.raises(OSError, match="No space left"):
                await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
        finally:
            await archive.close()
        restored = await open_archive(Settings(data_dir=tmp_path / "backup", fsync=False))
        try:
            found = await check_storage(restored)
            sops = await restored.read(
                lambda c: {row[0] for row in c.exec_driver_sql("SELECT sop_instance_uid FROM instances").all()}
            )
        finally:
            await restored.close()
        assert sops == set(first) and not found.missing  # the previous backup, whole
        # the one file copied before the failure is no row's (the next backup names or prunes it); the
        # one whose copy failed is not left half-written
        assert len(copied) == 2 and copied[0].is_file() and not copied[1].exists()
        storage = storage_dir(tmp_path / "backup")
        assert found.unindexed == [copied[0].relative_to(storage).as_posix()]

    asyncio.run(main())


@pytest.mark.parametrize("where", ["inside", "around", "same"])
def test_a_backup_folder_that_overlaps_the_archive_is_refused(tmp_path: Path, where: str) -> None:
    data = tmp_path / "data"
    dest = {"inside": data / "backup", "around": tmp_path, "same": data}[where]

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            with pytest.raises(BackupRefused, match="must not contain each other"):
                await backup(archive, dest, storage_dir(dest))
        finally:
            await archive.close()

    asyncio.run(main())


def test_two_backups_into_one_folder_at_once_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    dest.mkdir()
    held = os.open(dest / ".minipacs-backup.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            with pytest.raises(BackupRefused, match="another minipacs backup is writing into"):
                await backup(archive, dest, storage_dir(dest))
        finally:
            await archive.close()

    try:
        asyncio.run(main())
    finally:
        os.close(held)


@pytest.mark.postgres
def test_an_index_on_postgresql_is_refused_with_what_to_do(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", index_url=url, fsync=False))
        try:
            with pytest.raises(BackupRefused, match="the index is on PostgreSQL: back it up with pg_dump"):
                await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
        finally:
            await archive.close()

    with postgres_schema_url() as url:
        asyncio.run(main(url))


def test_s3_storage_is_refused_with_what_to_do(tmp_path: Path, s3_server: Any) -> None:
    bucket = s3_server.new_bucket()

    async def main() -> None:
        settings = Settings(
            data_dir=tmp_path / "data",
            fsync=False,
            storage=f"s3://{bucket}/archive",
            s3_endpoint=s3_server.endpoint,
            s3_region="us-east-1",
        )
        archive = await open_archive(settings)
        try:
            with pytest.raises(BackupRefused, match="the storage is S3: back it up with the bucket's versioning"):
                await backup(archive, tmp_path / "backup", storage_dir(tmp_path / "backup"))
        finally:
            await archive.close()

    asyncio.run(main())
