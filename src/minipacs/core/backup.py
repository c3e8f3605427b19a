"""`minipacs backup DEST`: a copy of a running (or stopped) archive that is itself a data folder.

DEST gets ``index.sqlite3`` (the index as of one commit, by SQLite's online backup: ingest goes on
meanwhile) and ``storage/`` (every file that index names, under the same blob keys). So restoring is
pointing ``--data`` (or ``data_dir``) at DEST, or copying it back; ``minipacs check --data DEST``
verifies it.

The order keeps every backup usable, even one that is interrupted:

1. the files the live index names are copied first (the long part), each one only if DEST lacks it
   with the size its row gives: every stored copy has a blob key of its own and is never rewritten
   (core/paths.py), so a second backup into the same DEST copies only what arrived since;
2. the index is copied into ``index.sqlite3.partial``, and the files it names that arrived while
   step 1 ran are copied too. A file the copy names that is already gone was deleted after the copy
   was made: the index is copied again (at most ``ATTEMPTS`` times), so the backup never names a
   file it lacks, except one the archive itself lacks (missing for two copies in a row: ``minipacs
   check`` lists it), which the report names;
3. the filesystem of DEST is flushed (``syncfs``), then the copy replaces ``index.sqlite3`` in one
   rename: until then the previous backup's index and its files are untouched;
4. files in DEST's storage that the new index does not name (deleted or replaced since the last
   backup) are removed.

Only an archive on SQLite and files has a backup here: a PostgreSQL index is backed up with
``pg_dump`` (or the database's own tools), and S3 storage with the bucket's versioning or
replication (BackupRefused says so).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from minipacs.blobs.base import BlobStore
from minipacs.core.archive import Archive
from minipacs.core.intake import fsync_path, syncfs
from minipacs.core.jobs import JobContext, JobFailed, JobQueue, every
from minipacs.index import backup_repo

#: The job kind of a backup run by the server (``backup_dir``, ``POST /api/backup``).
KIND: Final = "backup"
#: Copies of the index made at most, when files it names were deleted before they could be copied.
ATTEMPTS: Final = 5
INDEX_NAME: Final = "index.sqlite3"
PARTIAL_SUFFIX: Final = ".partial"
LOCK_NAME: Final = ".minipacs-backup.lock"
COPY_CHUNK: Final = 1 << 20


class BackupRefused(Exception):
    """This archive, or this destination, cannot have a backup here; the message says why and what to do."""


class BackupFailed(Exception):
    """The backup could not be completed; the previous backup in the destination is untouched."""


@dataclass(frozen=True)
class BackupReport:
    dest: Path
    instances: int  # the instances the backup holds
    copied: int  # files copied by this run
    copied_bytes: int
    present: int  # files the destination had already
    removed: int  # files of the destination no longer stored, removed
    index_copies: int  # how many times the index was copied (more than 1: deletions during the backup)
    seconds: float
    lost: tuple[str, ...] = ()  # blob keys the index names whose files the archive itself lacks


async def backup(archive: Archive, dest: Path, dest_storage: Path) -> BackupReport:
    """Back ``archive`` up into ``dest``, its files into ``dest_storage`` (the storage folder of a data
    folder at ``dest``: bootstrap.py's layout). Raises BackupRefused or BackupFailed."""
    root = getattr(archive.blobs, "root", None)
    if not isinstance(root, Path):
        raise BackupRefused(
            "the storage is S3: back it up with the bucket's versioning or replication (and the index with "
            "pg_dump if it is on PostgreSQL); minipacs backup copies an archive on files and SQLite"
        )
    if archive.shared_index_engine is not None:
        raise BackupRefused(
            "the index is on PostgreSQL: back it up with pg_dump (or the database's own tools) and the "
            "storage folder with any file backup; minipacs backup copies an archive on files and SQLite"
        )
    dest = dest.resolve()
    data = archive.settings.data_dir.resolve()
    for inner, outer in ((dest, data), (data, dest), (dest, root), (root, dest)):
        if inner == outer or inner.is_relative_to(outer):
            raise BackupRefused(
                f"the backup folder {dest} and the archive ({data}, storage {root}) must not contain "
                "each other: choose a folder outside the data folder, best on another disk"
            )
    started = time.monotonic()
    live = await archive.read(backup_repo.blob_keys)
    return await asyncio.to_thread(_run, archive, dest, dest_storage.resolve(), live, started)


def _run(archive: Archive, dest: Path, storage: Path, live: set[str], started: float) -> BackupReport:
    blobs = archive.blobs
    storage.mkdir(parents=True, exist_ok=True)
    lock = os.open(dest / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupRefused(f"another minipacs backup is writing into {dest}") from None
        counts = _Counts()
        _copy(blobs, storage, {key: -1 for key in live}, counts)  # 1: most of the files, the index going on
        partial = dest / (INDEX_NAME + PARTIAL_SUFFIX)
        copies = 0
        gone_before: set[str] = set()
        while True:  # 2: the index, and what arrived meanwhile
            copies += 1
            partial.unlink(missing_ok=True)
            archive.snapshot_index(partial)
            named = backup_repo.blob_keys_of_copy(partial)
            gone = _copy(blobs, storage, named, counts)
            # missing for two copies of the index in a row: not deleted meanwhile, lost by the storage
            # (minipacs check lists them): the backup holds the instance as the archive does, without it
            lost = gone & gone_before
            if gone <= lost:
                break
            if copies >= ATTEMPTS:
                partial.unlink(missing_ok=True)
                raise BackupFailed(
                    f"{len(gone - lost)} file(s) the index named were deleted before they could be copied, "
                    f"{ATTEMPTS} times over: the archive is deleting faster than this backup copies; run it "
                    "again later"
                )
            gone_before = gone
        syncfs(dest)  # 3: every file copied is on the disk before the index that names them
        os.replace(partial, dest / INDEX_NAME)
        fsync_path(dest)
        removed = _prune(storage, named.keys() - lost)  # 4
        return BackupReport(
            dest,
            len(named),
            len(counts.copied),
            counts.copied_bytes,
            len(named.keys() - counts.copied),
            removed,
            copies,
            time.monotonic() - started,
            tuple(sorted(lost)),
        )
    finally:
        os.close(lock)


@dataclass
class _Counts:
    copied: set[str] = field(default_factory=set)
    copied_bytes: int = 0


def _copy(blobs: BlobStore, storage: Path, keys: dict[str, int], counts: _Counts) -> set[str]:
    """Copy each of ``keys`` (blob key -> size, -1 unknown) that ``storage`` lacks with that size from
    the archive's store; the keys whose blob is gone. Each becomes a file at its key's path, a pack
    entry too (blobs/packs.py: the store reads a pack key's file when it has no pack)."""
    gone: set[str] = set()
    for key in sorted(keys):
        target = storage / key
        size = keys[key]
        try:
            have = target.stat().st_size
        except FileNotFoundError:
            have = -1
        if have >= 0 and (have == size or (size < 0 and have == _size(blobs, key, have))):
            continue
        try:
            source = blobs.open(key)
        except FileNotFoundError:  # BlobNotFound
            target.unlink(missing_ok=True)
            gone.add(key)
            continue
        with source:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, COPY_CHUNK)
            except BaseException:
                target.unlink(missing_ok=True)  # no partial copy: the next backup copies it whole
                raise
        counts.copied.add(key)
        counts.copied_bytes += target.stat().st_size
    return gone


def _size(blobs: BlobStore, key: str, default: int) -> int:
    try:
        return blobs.size(key)
    except FileNotFoundError:
        return default  # gone: what the destination has is all there will be


def _prune(storage: Path, named: set[str]) -> int:
    """Remove the files under ``storage`` no key of ``named`` names, then the folders left empty."""
    removed = 0
    for folder, _dirs, files in os.walk(storage, topdown=False):
        base = Path(folder)
        for name in files:
            if (base / name).relative_to(storage).as_posix() not in named:
                (base / name).unlink()
                removed += 1
        if base != storage and not any(base.iterdir()):
            base.rmdir()
    return removed


def summary(report: BackupReport) -> str:
    """One sentence about a backup done (the job's summary, the CLI's line)."""
    said = (
        f"backup of {report.instances} instance(s) in {report.dest}: {report.copied} file(s) copied "
        f"({report.copied_bytes / 1e6:.1f} MB), {report.present} already there, {report.removed} removed "
        f"(no longer stored), in {report.seconds:.1f} s"
    )
    if report.lost:
        said += (
            f"; {len(report.lost)} instance(s) have no file in the archive's own storage (e.g. {report.lost[0]}): "
            "backed up as they are, without it (minipacs check lists them)"
        )
    return said


def details(report: BackupReport) -> dict[str, Any]:
    """A backup's figures as its job's details show them (the job and the command's record alike)."""
    return {
        "dest": str(report.dest),
        "instances": report.instances,
        "copied": report.copied,
        "copied_bytes": report.copied_bytes,
        "present": report.present,
        "removed": report.removed,
        "index_copies": report.index_copies,
        "lost": list(report.lost[:20]),
    }


def register_backup_job(queue: JobQueue, archive: Archive, dest: Path, dest_storage: Path) -> None:
    """The "backup" kind into ``dest`` (setting ``backup_dir``; its files into ``dest_storage``): run
    again after a restart (a backup is idempotent: what is there already is not copied again)."""

    async def handler(job: JobContext) -> str:
        try:
            report = await backup(archive, dest, dest_storage)
        except BackupRefused as exc:
            raise JobFailed(str(exc)) from exc
        job.details.update(details(report))
        return summary(report)

    queue.register(KIND, handler, on_restart="resume", max_attempts=2)


async def submit_backup(queue: JobQueue, dest: Path) -> Any:
    """Queue a backup into ``dest``."""
    return await queue.submit(KIND, f"backup into {dest}", {})


async def periodic(queue: JobQueue, interval: float, dest: Path) -> None:
    """Every ``interval`` seconds, queue a backup unless one is queued or running (on any node)."""
    await every(queue, interval, KIND, lambda: submit_backup(queue, dest))


__all__ = [
    "ATTEMPTS",
    "KIND",
    "BackupFailed",
    "BackupRefused",
    "BackupReport",
    "backup",
    "details",
    "periodic",
    "register_backup_job",
    "submit_backup",
    "summary",
]
