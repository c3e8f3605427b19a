"""Folder import: every file under a directory through the one ingest path.

A minipacs data folder (or its ``storage`` folder, a backup, a copy) keeps its small instances as
entries of pack files, ``storage/packs/<pack>.pack`` (blobs/packs.py): each live entry of each pack is
imported as the Part 10 file it is, and reported as a file is (counted; refused with the reason, the
pack's path and the entry's byte). A damaged pack is reported where it is damaged (bytes that are no
entry, an entry cut short) and its other entries are imported all the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from minipacs.blobs.packs import PACKS_DIR, PackDamage, PackSlot, is_pack_name, open_entry, walk
from minipacs.core.archive import INTAKE_DIR, RECOVERY_LOCK
from minipacs.core.backup import INDEX_NAME
from minipacs.core.errors import ArchiveError, NotFound, OutOfResources
from minipacs.core.intake import records_not_checkpointed
from minipacs.core.model import Origin, StagedPath, StoreOutcome, StoreStatus
from minipacs.core.staging import stage_stream

if TYPE_CHECKING:
    from minipacs.core.archive import Archive

#: Files imported concurrently, so group commit batches their fsyncs.
IMPORT_CONCURRENCY: Final = 8
#: PS3.10 §8.6: the media directory file, not an instance.
_SKIPPED_NAMES: Final = frozenset({"DICOMDIR"})
#: Skipped when a DICOMDIR is in the same folder (media written by `minipacs export`, core/media.py).
_DESCRIPTOR_NAMES: Final = frozenset({"README"})
#: A minipacs data folder (or a backup: core/backup.py) has its stored instances in this folder
#: (bootstrap.storage_dir), beside its index or its lock: only this folder of it is imported.
_STORAGE: Final = "storage"
_DATA_FOLDER_MARKS: Final = frozenset({INDEX_NAME, RECOVERY_LOCK})


@dataclass
class ImportSummary:
    """What an import did, with the reason for every rejected file."""

    stored: int = 0
    replaced: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: (file, reason), by file; a pack's entries and damage by their place in it, the reason saying where
    rejections: list[tuple[Path, str]] = field(default_factory=list)
    #: Pack files read (blobs/packs.py), and the entries found in them (each counted above as well).
    pack_files: int = 0
    pack_entries: int = 0
    #: Data folders under the root whose intake log holds records after its last checkpoint, and how many:
    #: instances acknowledged that their storage folder may lack until a server replays them (core/intake.py).
    not_replayed: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.stored + self.replaced + self.duplicates + self.rejected


# StoreStatus → the ImportSummary counter it increments.
_COUNTER_BY_STATUS: Final = {
    StoreStatus.STORED: "stored",
    StoreStatus.REPLACED: "replaced",
    StoreStatus.DUPLICATE_KEPT: "duplicates",
}


def _is_data_folder(subdirs: list[str], files: list[str]) -> bool:
    return _STORAGE in subdirs and not _DATA_FOLDER_MARKS.isdisjoint(files)


def data_folders(root: Path) -> Iterator[Path]:
    """The minipacs data folders at or under ``root`` (a storage folder beside an index or a lock)."""
    if root.is_file():
        return
    for directory, subdirs, files in os.walk(root):
        if _is_data_folder(subdirs, files):
            subdirs[:] = []
            yield Path(directory)


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root``, recursively, in sorted order; DICOMDIR skipped (and README beside it);
    of a minipacs data folder, only its ``storage`` folder (not its index, intake log, staging)."""
    if root.is_file():
        yield root
        return
    for directory, subdirs, files in os.walk(root):
        if _is_data_folder(subdirs, files):
            subdirs[:] = [_STORAGE]
            continue
        subdirs.sort()
        # PS3.10 §8.6: beside a DICOMDIR, README is the File-set Descriptor File (text, not DICOM)
        skipped = _SKIPPED_NAMES | _DESCRIPTOR_NAMES if any(n.upper() == "DICOMDIR" for n in files) else _SKIPPED_NAMES
        for name in sorted(files):
            if name.upper() not in skipped:
                path = Path(directory) / name
                if path.is_file():
                    yield path


@dataclass(frozen=True)
class PackItem:
    """What the walk of a pack found: an entry to import, or a place with none (damage, or the pack
    unreadable from there on)."""

    pack: Path
    found: PackSlot | PackDamage


def walk_items(root: Path) -> Iterator[Path | PackItem]:
    """:func:`walk_files`, each pack file (blobs/packs.py ``is_pack_name``) replaced by what is in it; the
    temporary files of a packs folder (a probe, an entry's copy, left by a process killed) skipped."""
    for path in walk_files(root):
        if path.parent.name == PACKS_DIR and path.suffix == ".tmp":
            continue
        if not is_pack_name(path.name):
            yield path
            continue
        offset = 0
        try:
            for found in walk(path):
                offset = found.offset if isinstance(found, PackDamage) else found.entry
                yield PackItem(path, found)
        except OSError as exc:
            yield PackItem(path, PackDamage(offset, f"cannot read the pack from here on: {exc.strerror or exc}"))


def _where(found: PackSlot | PackDamage) -> str:
    if isinstance(found, PackSlot):
        return f"entry at byte {found.entry} ({found.length} bytes)"
    return f"at byte {found.offset}"


def _stage_entry(archive: Archive, item: PackItem, slot: PackSlot) -> StagedPath:
    """An entry into staging, as ``Archive.import_file`` stages a file (core/staging.py)."""
    fp = open_entry(item.pack, slot)
    if fp is None:
        raise NotFound("the entry is no longer in the pack (deleted since the import began)")
    with fp:
        return stage_stream(archive.staging_dir, fp, "the entry", archive.settings.max_dataset_bytes)


async def import_tree(
    archive: Archive,
    root: Path,
    progress: Callable[[int], None] | None = None,
    origin: Origin | None = None,
) -> ImportSummary:
    """Import every file under ``root``, and every entry of each pack file; ``progress`` gets the count
    of files and entries done so far.

    A file or entry the archive refuses is counted as rejected with the reason, as is each damaged place
    of a pack; running out of resources stops the import (raised).
    """
    origin = origin or Origin(kind="import")
    summary = ImportSummary()
    done = 0
    limit = asyncio.Semaphore(IMPORT_CONCURRENCY)
    rejections: list[tuple[Path, int, str]] = []  # (file, place in it, reason): sorted by place

    async def store(item: Path | PackItem) -> StoreOutcome:
        if isinstance(item, Path):
            return await archive.import_file(item, origin)
        if isinstance(item.found, PackDamage):
            raise ArchiveError(item.found.reason)
        staged = await asyncio.to_thread(_stage_entry, archive, item, item.found)
        return await archive.ingest(staged, origin)

    async def one(item: Path | PackItem) -> None:
        nonlocal done
        async with limit:
            try:
                outcome: StoreOutcome = await store(item)
            except OutOfResources:
                raise
            except (ArchiveError, OSError) as exc:
                summary.rejected += 1
                if isinstance(item, Path):
                    rejections.append((item, -1, str(exc)))
                else:
                    place = item.found.offset if isinstance(item.found, PackDamage) else item.found.entry
                    rejections.append((item.pack, place, f"{_where(item.found)}: {exc}"))
            else:
                counter = _COUNTER_BY_STATUS[outcome.status]
                setattr(summary, counter, getattr(summary, counter) + 1)
            done += 1
            if progress is not None:
                progress(done)

    def not_replayed() -> list[tuple[Path, int]]:
        found = ((folder, records_not_checkpointed(folder / INTAKE_DIR)) for folder in data_folders(root))
        return [(folder, count) for folder, count in found if count]

    summary.not_replayed = await asyncio.to_thread(not_replayed)
    items = await asyncio.to_thread(lambda: list(walk_items(root)))
    summary.pack_files = len({item.pack for item in items if isinstance(item, PackItem)})
    summary.pack_entries = sum(1 for item in items if isinstance(item, PackItem) and isinstance(item.found, PackSlot))
    async with asyncio.TaskGroup() as group:
        for item in items:
            group.create_task(one(item))
    summary.rejections = [(path, reason) for path, _place, reason in sorted(rejections)]
    return summary


__all__ = ["IMPORT_CONCURRENCY", "ImportSummary", "PackItem", "data_folders", "import_tree", "walk_files", "walk_items"]
