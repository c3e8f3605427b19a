"""Folder import: every file under a directory through the one ingest path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from minipacs.core.errors import ArchiveError, OutOfResources
from minipacs.core.model import Origin, StoreOutcome, StoreStatus

if TYPE_CHECKING:
    from minipacs.core.archive import Archive

#: Files imported concurrently, so group commit batches their fsyncs.
IMPORT_CONCURRENCY: Final = 8
#: PS3.10 §8.6: the media directory file, not an instance.
_SKIPPED_NAMES: Final = frozenset({"DICOMDIR"})
#: Skipped when a DICOMDIR is in the same folder (media written by `minipacs export`, core/media.py).
_DESCRIPTOR_NAMES: Final = frozenset({"README"})


@dataclass
class ImportSummary:
    """What an import did, with the reason for every rejected file."""

    stored: int = 0
    replaced: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.stored + self.replaced + self.duplicates + self.rejected


# StoreStatus → the ImportSummary counter it increments.
_COUNTER_BY_STATUS: Final = {
    StoreStatus.STORED: "stored",
    StoreStatus.REPLACED: "replaced",
    StoreStatus.DUPLICATE_KEPT: "duplicates",
}


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root``, recursively, in sorted order; DICOMDIR skipped (and README beside it)."""
    if root.is_file():
        yield root
        return
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        # PS3.10 §8.6: beside a DICOMDIR, README is the File-set Descriptor File (text, not DICOM)
        skipped = _SKIPPED_NAMES | _DESCRIPTOR_NAMES if any(n.upper() == "DICOMDIR" for n in files) else _SKIPPED_NAMES
        for name in sorted(files):
            if name.upper() not in skipped:
                path = Path(directory) / name
                if path.is_file():
                    yield path


async def import_tree(
    archive: Archive,
    root: Path,
    progress: Callable[[int], None] | None = None,
    origin: Origin | None = None,
) -> ImportSummary:
    """Import every file under ``root``; ``progress`` gets the count of files done so far.

    A file the archive refuses is counted as rejected with the reason; running
    out of resources stops the import (raised).
    """
    origin = origin or Origin(kind="import")
    summary = ImportSummary()
    done = 0
    limit = asyncio.Semaphore(IMPORT_CONCURRENCY)

    async def one(path: Path) -> None:
        nonlocal done
        async with limit:
            try:
                outcome: StoreOutcome = await archive.import_file(path, origin)
            except OutOfResources:
                raise
            except (ArchiveError, OSError) as exc:
                summary.rejected += 1
                summary.rejections.append((path, str(exc)))
            else:
                counter = _COUNTER_BY_STATUS[outcome.status]
                setattr(summary, counter, getattr(summary, counter) + 1)
            done += 1
            if progress is not None:
                progress(done)

    paths = await asyncio.to_thread(lambda: list(walk_files(root)))
    async with asyncio.TaskGroup() as group:
        for path in paths:
            group.create_task(one(path))
    summary.rejections.sort()
    return summary


__all__ = ["IMPORT_CONCURRENCY", "ImportSummary", "import_tree", "walk_files"]
