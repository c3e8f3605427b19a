"""``minipacs import`` of an old minipacs data folder whose small instances are pack entries
(blobs/packs.py, core/importer.py): every live entry is imported as the Part 10 file it is; deleted
entries are not there to import; a damaged pack is reported where it is damaged, and the rest of it
is imported all the same."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.packs import HEADER_BYTES, PACKS_DIR, slot_of
from minipacs.bootstrap import open_archive, storage_dir
from minipacs.config import Settings
from minipacs.core import importer
from minipacs.core.archive import Archive
from minipacs.core.delete import delete_resource
from minipacs.core.importer import ImportSummary, import_tree
from tests.core.test_packs_ingest import _instances, _store
from tests.dicomgen import ExplicitVRLittleEndian, encode_dataset
from tests.peers import minipacs_cmd, run
from tests.stored_files import lose_pack_entry


async def _old_archive(data: Path, items: list[Any], files: list[Any] | None = None) -> dict[str, str]:
    """A data folder whose ``items`` are pack entries (all in one pack) and ``files`` files of their own;
    SOP Instance UID -> blob key."""
    archive = await open_archive(Settings(data_dir=data))
    try:
        keys = await _store(archive, items)
        keys |= await _store(archive, files or [], in_memory=False)
    finally:
        await archive.close()
    assert len({slot_of(keys[ds.SOPInstanceUID]).pack for ds in items}) == 1  # type: ignore[union-attr]
    return keys


def _pack_of(data: Path, keys: dict[str, str]) -> Path:
    (pack,) = {slot.pack for slot in (slot_of(key) for key in keys.values()) if slot is not None}
    return storage_dir(data) / PACKS_DIR / f"{pack}.pack"


async def _import(data: Path, source: Path) -> tuple[ImportSummary, dict[str, bytes]]:
    """Import ``source`` into a new archive at ``data``: the summary, and SOP Instance UID -> the dataset
    bytes of every instance stored."""
    archive = await open_archive(Settings(data_dir=data))
    try:
        summary = await import_tree(archive, source)
        return summary, await _datasets(archive)
    finally:
        await archive.close()


async def _datasets(archive: Archive) -> dict[str, bytes]:
    found = {}
    for key in sorted(archive.blobs.keys()):  # type: ignore[attr-defined]
        with archive.blobs.open(key) as fh:
            data = fh.read()
        found[str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)] = data
    assert len(found) == await archive.count_instances()
    return found


def _dataset(ds: Any) -> bytes:
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_a_data_folder_with_packs_is_imported_entry_by_entry(tmp_path: Path) -> None:
    items, loose = _instances(4), _instances(1)
    old = tmp_path / "old"

    async def main() -> None:
        keys = await _old_archive(old, items, loose)
        archive = await open_archive(Settings(data_dir=old))  # one entry deleted: its hole punched
        try:
            await delete_resource(archive, "instance", items[1].SOPInstanceUID)
        finally:
            await archive.close()
        kept = [items[0], items[2], items[3]]
        (storage_dir(old) / PACKS_DIR / "probe-123-0a0b0c0d.tmp").write_bytes(b"x" * 12288)  # left by a kill

        summary, stored = await _import(tmp_path / "new", old)
        assert not summary.rejections, "the index, the intake log and the lock are not images: not imported"
        assert (summary.stored, summary.duplicates, summary.rejected) == (4, 0, 0)
        assert (summary.pack_files, summary.pack_entries) == (1, 3)
        assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in [*kept, *loose])
        for ds in [*kept, *loose]:
            assert stored[ds.SOPInstanceUID].endswith(_dataset(ds)), "the entry's bytes, not its neighbours'"
        assert items[1].SOPInstanceUID not in stored, "a deleted entry is not brought back"

        # the storage folder alone, into the same archive: every instance is there already
        again, _ = await _import(tmp_path / "new", storage_dir(old))
        assert (again.stored, again.duplicates, again.rejected, again.pack_entries) == (0, 4, 0, 3)
        assert keys  # (the keys of the old archive are not the new one's: a new copy each)

    asyncio.run(main())


def test_a_truncated_pack_imports_the_entries_before_the_cut(tmp_path: Path) -> None:
    items = _instances(4)
    old = tmp_path / "old"

    async def main() -> None:
        keys = await _old_archive(old, items)
        pack = _pack_of(old, keys)
        third = slot_of(keys[items[2].SOPInstanceUID])
        assert third is not None
        os.truncate(pack, third.entry + HEADER_BYTES + third.length // 2)  # a copy cut short

        summary, stored = await _import(tmp_path / "new", old)
        assert (summary.stored, summary.rejected, summary.pack_entries) == (2, 1, 2)
        assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in items[:2])
        ((path, reason),) = summary.rejections
        assert path == pack
        assert reason.startswith(f"at byte {third.entry}: its header says {third.length} bytes, but the pack ends")

    asyncio.run(main())


def test_a_damaged_pack_is_reported_where_it_is_damaged_and_the_rest_imported(tmp_path: Path) -> None:
    """Bytes that are no entry header mid-pack, a header whose length runs past the end, an entry that is
    not DICOM: one rejection each, with its place; every other entry is imported."""
    items = _instances(6)
    old = tmp_path / "old"

    async def main() -> None:
        keys = await _old_archive(old, items)
        pack = _pack_of(old, keys)
        slots = [slot_of(keys[ds.SOPInstanceUID]) for ds in items]
        assert all(slot is not None for slot in slots)
        garbage, too_long, not_dicom = slots[1], slots[3], slots[4]
        _write_at(pack, garbage.entry, b"\x7fELF" + bytes(range(1, 13)))  # type: ignore[union-attr]
        _write_at(pack, too_long.entry + 4, struct.pack("<I", 1 << 31))  # type: ignore[union-attr]
        _write_at(pack, not_dicom.entry + HEADER_BYTES, b"this is not a DICOM file at all" * 20)  # type: ignore[union-attr]

        summary, stored = await _import(tmp_path / "new", old)
        assert (summary.stored, summary.rejected) == (3, 3), summary.rejections
        assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in (items[0], items[2], items[5]))
        for ds in (items[0], items[2], items[5]):
            assert stored[ds.SOPInstanceUID].endswith(_dataset(ds))
        reasons = [reason for path, reason in summary.rejections]
        assert all(path == pack for path, _ in summary.rejections)
        assert reasons[0].startswith(f"at byte {garbage.entry}: no entry header here (b'\\x7fELF'")  # type: ignore[union-attr]
        assert reasons[1].startswith(f"at byte {too_long.entry}: its header says {1 << 31} bytes")  # type: ignore[union-attr]
        assert reasons[2].startswith(f"entry at byte {not_dicom.entry} ({not_dicom.length} bytes): the entry is not")  # type: ignore[union-attr]
        assert "DICOM" in reasons[2]

    asyncio.run(main())


def test_import_prints_the_pack_entries_it_read(tmp_path: Path) -> None:
    items = _instances(3)
    old = tmp_path / "old"
    asyncio.run(_old_archive(old, items))
    res = run(minipacs_cmd("import", "--data", str(tmp_path / "new"), "--no-progress", str(old)))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 stored, 0 duplicate(s), 0 rejected; 3 of them entries of 1 pack file(s)" in res.stdout
    res = run(minipacs_cmd("import", "--data", str(tmp_path / "new"), "--json", str(storage_dir(old))))
    assert res.returncode == 0, res.stdout + res.stderr
    document = json.loads(res.stdout)
    assert (document["duplicates"], document["pack_files"], document["pack_entries"]) == (3, 1, 3)


def test_an_entry_deleted_while_the_import_runs_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _instances(2)
    old = tmp_path / "old"

    async def main() -> None:
        keys = await _old_archive(old, items)
        pack = _pack_of(old, keys)
        slot = slot_of(keys[items[0].SOPInstanceUID])
        assert slot is not None
        walked = list(importer.walk_items(old))
        _write_at(pack, slot.entry, bytes(HEADER_BYTES))  # gone after the walk, before its import
        monkeypatch.setattr(importer, "walk_items", lambda root: iter(walked))
        summary, stored = await _import(tmp_path / "new", old)
        assert (summary.stored, summary.rejected) == (1, 1)
        assert list(stored) == [items[1].SOPInstanceUID]
        assert summary.rejections == [
            (
                pack,
                f"entry at byte {slot.entry} ({slot.length} bytes): the entry is no longer in the pack "
                "(deleted since the import began)",
            )
        ]

    asyncio.run(main())


def test_a_data_folder_copied_before_its_checkpoint_is_flagged_and_complete_once_replayed(tmp_path: Path) -> None:
    """A data folder copied from a server that crashed (or lost power) may hold acknowledged instances only
    in its intake log (core/intake.py): their pack entries never reached its storage folder. The import
    cannot see them there; it says so, naming the folder and how many records wait, and that a start of
    a server on the folder replays them: after that, the same import is complete and says nothing."""
    items = _instances(3)

    async def main() -> None:
        source = tmp_path / "crashed"
        settings = Settings(data_dir=source, intake_checkpoint_seconds=3600, intake_checkpoint_bytes=1 << 30)
        archive = await open_archive(settings)
        try:
            keys = await _store(archive, items)
            # the copy a crash leaves: taken while the server runs, its last entry lost
            copy = tmp_path / "copy"
            await asyncio.to_thread(shutil.copytree, source, copy)
        finally:
            await archive.close()
        assert lose_pack_entry(FilesystemBlobStore(storage_dir(copy)), keys[items[-1].SOPInstanceUID])

        summary, stored = await _import(tmp_path / "first", copy)
        assert summary.not_replayed == [(copy, 3)]
        assert items[-1].SOPInstanceUID not in stored and len(stored) == 2
        cli = await asyncio.to_thread(
            run, minipacs_cmd("import", "--data", str(tmp_path / "by-cli"), "--no-progress", str(tmp_path))
        )
        assert cli.returncode == 1, cli.stdout + cli.stderr  # EXIT_PARTIAL: not everything could be imported
        assert f"{copy} is a data folder whose intake log holds 3 record(s)" in cli.stderr
        assert f"minipacs serve --data {copy}" in cli.stderr

        replayed = await open_archive(Settings(data_dir=copy))  # a server's start on the folder
        await replayed.close()
        summary, stored = await _import(tmp_path / "second", copy)
        assert summary.not_replayed == []
        assert set(stored) == {ds.SOPInstanceUID for ds in items}

    asyncio.run(main())
