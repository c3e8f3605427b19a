"""The archive core, storage half: ONE ingest path for every way an instance comes in.

Durability by group commit (datasette-style single writer): every ingest is a
job on one queue; the writer thread takes everything pending as one batch and
  1. parses each staged header (never the pixel data) and checks its UIDs,
     then fsyncs each staged file (settings.fsync),
  2. in ONE transaction on its persistent connection: the index rows of every
     job, then the renames of the staged files to their final paths (a failing
     rename moves the already-moved files back), then one fsync per touched
     directory, then the commit,
  3. only then resolves each job's future on its event loop.
If the batch fails, it is rolled back and its jobs are retried one by one, so a
bad job fails alone. Study and series keys are cached across batches: a series
arriving one instance at a time costs one SELECT and two INSERTs per instance (its
row and its changes-journal row, core/changes.py; journal rows of a batch go in
one executemany, in job order, before the commit).
A row never commits before its file is durable in place; a crash leaves at
worst an unindexed file in storage (harmless) and leftovers in staging, which
``Archive.start`` deletes (they were never acknowledged).

The archive builds neither its index nor its blob store: bootstrap.py opens both
(``bootstrap.open_archive``) and hands them to ``Archive.start`` with the
:class:`ArchiveSettings` it needs. The core never imports the configuration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from minipacs.blobs.base import BlobStore
from minipacs.core.changes import ChangeType, change_row
from minipacs.core.changes import record as record_changes
from minipacs.core.errors import (
    ArchiveError,
    DuplicateInstance,
    InstanceMismatch,
    InstanceUIDMismatch,
    InvalidInstance,
    NotFound,
    OutOfResources,
)
from minipacs.core.header import read_header
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits, check_deflated
from minipacs.core.model import AssociationRecord, DuplicatePolicy, Origin, StagedPath, StoreOutcome, StoreStatus
from minipacs.core.paths import instance_key
from minipacs.core.staging import READY_DIR, StagingFile, StagingPool, remove_leftovers, stage_file
from minipacs.core.structure import check_staged
from minipacs.dicom.header import InstanceHeader, dataset_encoding
from minipacs.index import repository as repo
from minipacs.index.database import IndexConnection, IndexDatabase

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most jobs one index transaction takes.
MAX_BATCH: Final = 512
#: Study/series primary keys the writer remembers between batches.
KEY_CACHE_SIZE: Final = 4096


@dataclass(frozen=True)
class ArchiveSettings:
    """What the archive core needs of the configuration (config.py keys of the same names)."""

    data_dir: Path  # staging/, ready/ and the recovery lock live here
    fsync: bool  # fsync each staged file before its index row commits
    max_dataset_bytes: int  # largest dataset one ingest accepts
    duplicate_policy: DuplicatePolicy  # what a second copy of a stored SOP Instance UID does
    max_inflate_ratio: int = 100  # most inflated bytes per deflated byte (PS3.5 A.5; 0: no limit)
    max_sequence_depth: int = 64  # deepest sequence nesting accepted at ingest and read from a stored file

    @property
    def dataset_limits(self) -> DatasetLimits:
        """What reading one dataset may cost: ingest checks, metadata, transcoding."""
        return DatasetLimits(self.max_dataset_bytes, self.max_inflate_ratio, self.max_sequence_depth)


@dataclass
class IngestStats:
    """Group commit counters, for tests and the status page."""

    batches: int = 0  # index transactions that carried at least one ingest
    ingested: int = 0  # ingest jobs that went through the writer (any outcome)
    largest_batch: int = 0  # most ingest jobs in one transaction
    multi_job_batches: int = 0  # transactions with more than one ingest job


@dataclass
class _Job(Generic[T]):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


@dataclass
class _IngestJob(_Job[StoreOutcome]):
    staged: StagedPath = field(kw_only=True)
    origin: Origin = field(kw_only=True)
    # set by the writer thread (prepare_ingest) before the transaction
    header: InstanceHeader | None = field(default=None, kw_only=True)
    key: str = field(default="", kw_only=True)
    size: int = field(default=0, kw_only=True)


@dataclass
class _CallJob(_Job[Any]):
    call: Callable[[IndexConnection], Any] = field(kw_only=True)
    #: The call may delete patients, studies or series: cached keys go stale.
    removes_entities: bool = field(default=False, kw_only=True)


@dataclass
class _KeyCache:
    """Primary keys of studies and series already in the index, kept across batches.

    Sequential C-STOREs of one series then cost one INSERT each. Cleared whenever
    a transaction fails or another writer job ran (it may have deleted rows).
    """

    studies: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.studies.clear()
        self.series.clear()

    def bound(self) -> None:
        if len(self.series) > KEY_CACHE_SIZE or len(self.studies) > KEY_CACHE_SIZE:
            self.clear()


def _resolve(job: _Job[Any], result: object) -> None:
    """Hand the result to the job's event loop; the waiter may be gone (cancelled)."""

    def settle() -> None:
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _clean(text: str) -> str:
    """Strings from peers go into the index without NULs (PostgreSQL refuses them)."""
    return text.replace("\x00", "")


#: Held (flock, exclusive) by the one process that may clean staging/ and ready/:
#: leftovers there are unacknowledged only if no other process is writing them.
RECOVERY_LOCK: Final = ".minipacs.lock"


def _take_recovery_lock(data_dir: Path) -> int | None:
    """The lock's file descriptor if this process got it, None if another holds it."""
    fd = os.open(data_dir / RECOVERY_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _as_failure(exc: BaseException) -> Exception:
    """What a job that failed in the writer reports: always an ArchiveError. Its message reaches peers
    (a DIMSE Error Comment, an HTTP body), so an OSError's file name is left out of it and logged."""
    if isinstance(exc, ArchiveError):
        return exc
    if isinstance(exc, OSError):
        log.error("storing failed: %s", exc)  # the server log keeps the path
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OutOfResources(f"the storage filesystem is full ({reason}); nothing was stored")
        return ArchiveError(f"storing failed ({reason}); nothing was acknowledged; see the server log")
    return ArchiveError(f"storing failed ({exc}); nothing was acknowledged")


def _moved_into_storage(result: object) -> bool:
    """Whether an ingest job's result means its staged file was renamed into storage."""
    return isinstance(result, StoreOutcome) and result.status is not StoreStatus.DUPLICATE_KEPT


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_ingest(
    staged: StagedPath, max_sequence_depth: int = DEFAULT_LIMITS.max_sequence_depth
) -> tuple[InstanceHeader, str, int]:
    """Header, blob key and file size of a staged file, after every check.

    Raises BrokenDataset (the whole dataset's element structure is walked first: core/structure.py;
    a deflated one was walked by check_deflated), InvalidInstance (malformed header), InstanceMismatch
    (dataset UIDs differ from the announced ones) or InvalidIdentifier (a UID unfit for a path).
    """
    check_staged(staged.path, staged.dataset_offset, staged.transfer_syntax_uid, max_sequence_depth)
    header = read_header(staged.path, staged.dataset_offset, staged.transfer_syntax_uid)
    for keyword, announced in (
        ("SOPInstanceUID", staged.sop_instance_uid),
        ("SOPClassUID", staged.sop_class_uid),
    ):
        found = header.get(keyword)
        if not found:
            raise InvalidInstance(f"the dataset has no {keyword}; it cannot be stored")
        if found != announced:
            mismatch = InstanceUIDMismatch if keyword == "SOPInstanceUID" else InstanceMismatch
            raise mismatch(
                f"the dataset's {keyword} {found[:70]!r} differs from the announced "
                f"{announced[:70]!r}; the sender must send matching values"
            )
    key = instance_key(header.get("StudyInstanceUID"), header.get("SeriesInstanceUID"), header.get("SOPInstanceUID"))
    return header, key, os.stat(staged.path).st_size


class Archive:
    """The storage half of the archive core. Start it with ``await Archive.start(settings, index, blobs)``
    (bootstrap.open_archive builds the index and blob store from the configuration)."""

    def __init__(self, settings: ArchiveSettings, index: IndexDatabase, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs
        self.staging_dir = settings.data_dir / "staging"
        self._index = index
        self._index_writer = index.writer()
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._run_writer, name="minipacs-index-writer", daemon=True)
        self._keys = _KeyCache()
        self._stats = IngestStats()
        self._closed = False
        self._staging_pool = StagingPool(settings.data_dir / READY_DIR)
        self._recovery_lock: int | None = None
        #: After-ingest listeners (web/: PS3.18 metadata), called on the event loop once an
        #: ingest is durable, after its result is known; they must be quick and must not raise.
        self.on_stored: list[Callable[[StoreOutcome], None]] = []
        #: After-deletion listeners (core/mpps.py): called on the event loop with the Study
        #: Instance UIDs whose completion a deletion withdrew; quick, must not raise.
        self.on_uncompleted: list[Callable[[set[str]], None]] = []

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, settings: ArchiveSettings, index: IndexDatabase, blobs: BlobStore) -> Archive:
        """Create staging/, delete what an earlier process left there unacknowledged (unless
        another process uses this data directory), start the writer. ``index`` is migrated."""
        data_dir = settings.data_dir.resolve()
        staging_dir = data_dir / "staging"

        def prepare() -> int | None:
            staging_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / READY_DIR).mkdir(exist_ok=True)
            lock = _take_recovery_lock(data_dir)
            if lock is not None:
                removed = remove_leftovers(staging_dir) + remove_leftovers(data_dir / READY_DIR)
                if removed:
                    log.info("removed %d unacknowledged file(s) left in %s", removed, staging_dir)
            else:
                log.info("another minipacs process is using %s; leaving staging/ to it", data_dir)
            return lock

        lock = await asyncio.to_thread(prepare)
        archive = cls(replace(settings, data_dir=data_dir), index, blobs)
        archive._recovery_lock = lock
        archive._writer.start()
        return archive

    async def close(self) -> None:
        """Finish every queued job, stop the writer thread, dispose of the index."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._staging_pool.close)
        if self._recovery_lock is not None:
            os.close(self._recovery_lock)  # releases the flock
            self._recovery_lock = None
        self._index.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise ArchiveError("the archive is closed; nothing more can be stored")

    @property
    def stats(self) -> IngestStats:
        return replace(self._stats)

    # ------------------------------------------------------------------ ingest

    def open_staging(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str = ""
    ) -> StagingFile:
        """A new staging file with our File Meta Information already written."""
        self._check_open()
        return StagingFile(
            self.staging_dir,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            source_aet,
            max_dataset_bytes=self.settings.max_dataset_bytes,
            pool=self._staging_pool,
        )

    async def ingest(self, staged: StagedPath, origin: Origin) -> StoreOutcome:
        """Store a staged file; returns once file and index row are durable.

        A deflated dataset is inflated first within ``settings.dataset_limits`` (core/inflate.py):
        past them InflateLimitExceeded, a broken stream InvalidInstance; nothing is stored.
        The staged file is consumed: moved into storage or deleted, whatever happens.
        """
        loop = asyncio.get_running_loop()
        try:
            self._check_open()
        except BaseException:
            staged.path.unlink(missing_ok=True)
            raise
        if dataset_encoding(staged.transfer_syntax_uid).deflated:
            # PS3.5 A.5: inflate it all once, counting, in a worker thread, before the writer sees it
            try:
                await asyncio.to_thread(
                    check_deflated, staged.path, staged.dataset_offset, self.settings.dataset_limits
                )
            except BaseException:
                staged.path.unlink(missing_ok=True)
                raise
        future: asyncio.Future[StoreOutcome] = loop.create_future()
        # One hop: the writer parses the header too (0.1 ms; another thread
        # would only add a hand-over under the GIL).
        self._queue.put(_IngestJob(loop, future, staged=staged, origin=origin))
        outcome = await future
        for listener in self.on_stored:  # empty on a plain DICOM archive: ~0 cost
            try:
                listener(outcome)
            except Exception:
                log.exception("after-ingest listener %r failed", listener)
        return outcome

    async def import_file(self, path: Path, origin: Origin) -> StoreOutcome:
        """Store a Part 10 file (or a raw implicit VR LE dataset) from disk, with OUR file meta."""
        self._check_open()
        limit = self.settings.max_dataset_bytes
        staged = await asyncio.to_thread(stage_file, self.staging_dir, path, limit)
        return await self.ingest(staged, origin)

    async def write(self, call: Callable[[IndexConnection], T], *, removes_entities: bool = False) -> T:
        """Run ``call`` in the writer's transaction: ALL index writes go through here.

        Pass ``removes_entities=True`` when the call may delete patient, study or
        series rows, so the writer forgets the keys it cached for them.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_CallJob(loop, future, call=call, removes_entities=removes_entities))
        return await future

    async def read(self, call: Callable[[IndexConnection], T]) -> T:
        """Run a read-only ``call`` on a pooled connection, off the event loop."""
        return await asyncio.to_thread(self._index.read, call)

    # ------------------------------------------------------------------ other index access

    async def record_association(self, rec: AssociationRecord) -> int:
        """Insert (``rec.id`` None) or update the record; returns its id."""
        values = {name: getattr(rec, name) for name in repo.ASSOCIATION_FIELDS}
        return await self.write(lambda conn: repo.save_association(conn, values, rec.id))

    async def list_associations(self, limit: int = 100) -> list[AssociationRecord]:
        """The latest associations, newest first."""
        rows = await self.read(lambda conn: repo.load_associations(conn, limit))
        return [AssociationRecord(**row) for row in rows]

    async def count_instances(self) -> int:
        return await self.read(repo.count_instances)

    async def get_instance_path(self, sop_instance_uid: str) -> Path:
        """Local path of a stored instance; raises NotFound."""
        key = await self.read(lambda conn: repo.blob_key_of(conn, sop_instance_uid))
        if key is None:
            raise NotFound(f"SOP Instance {sop_instance_uid[:70]!r} is not in the archive")
        path = self.blobs.path_of(key)
        if not path.is_file():
            raise NotFound(f"SOP Instance {sop_instance_uid} is indexed but its file {key} is missing")
        return path

    # ------------------------------------------------------------------ the writer thread

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch: list[_Job[Any]] = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            try:
                results = self._commit_batch(batch)
            except Exception as exc:  # the writer must survive anything
                log.exception("index writer batch of %d job(s) failed", len(batch))
                results = [ArchiveError(f"the index writer failed: {exc}")] * len(batch)
            for job, result in zip(batch, results, strict=True):
                _resolve(job, result)
        self._index_writer.close()

    def _commit_batch(self, batch: list[_Job[Any]]) -> list[object]:
        """Steps 1-4 of the module docstring; one result (value or exception) per job."""
        ingests = [job for job in batch if isinstance(job, _IngestJob)]
        results: list[object] = [None] * len(batch)
        for index, job in enumerate(batch):
            if isinstance(job, _IngestJob):
                try:
                    job.header, job.key, job.size = prepare_ingest(job.staged, self.settings.max_sequence_depth)
                    if self.settings.fsync:
                        _fsync_file(job.staged.path)
                except ArchiveError as exc:
                    results[index] = exc
                except OSError as exc:
                    log.error("cannot read or fsync the staged file %s: %s", job.staged.path, exc)
                    kind = OutOfResources if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ArchiveError
                    results[index] = kind(
                        f"cannot read or fsync the staged dataset ({exc.strerror}); "
                        "nothing was stored; see the server log"
                    )
            elif isinstance(job, _CallJob) and job.removes_entities:
                self._keys.clear()  # a deletion may have removed cached studies or series
        pending = [i for i, r in enumerate(results) if r is None]
        stale_keys: list[str] = []
        try:
            self._transaction(batch, pending, results, stale_keys)
        except Exception as exc:  # noqa: BLE001 - one job spoiled the batch: retry each on its own
            self._keys.clear()
            if len(pending) > 1:
                log.info("index batch of %d failed (%s); retrying job by job", len(pending), exc)
                for index in pending:
                    try:
                        self._transaction(batch, [index], results, stale_keys)
                    except Exception as single:  # noqa: BLE001 - this job's own failure
                        self._keys.clear()
                        results[index] = _as_failure(single)
            else:
                for index in pending:
                    results[index] = _as_failure(exc)
        for index, job in enumerate(batch):
            # A committed STORED/REPLACED file was renamed into storage; any other is still in staging.
            if isinstance(job, _IngestJob) and not _moved_into_storage(results[index]):
                job.staged.path.unlink(missing_ok=True)
        for key in stale_keys:
            self.blobs.delete(key)
        self._keys.bound()
        if ingests:
            self._stats.batches += 1
            self._stats.ingested += len(ingests)
            self._stats.largest_batch = max(self._stats.largest_batch, len(ingests))
            self._stats.multi_job_batches += len(ingests) > 1
        return results

    def _transaction(
        self, batch: list[_Job[Any]], indexes: list[int], results: list[object], stale_keys: list[str]
    ) -> None:
        """Apply the jobs at ``indexes`` in ONE transaction; files move in before the commit."""
        if not indexes:
            return
        now = dt.datetime.now(dt.UTC)
        done: dict[int, object] = {}
        stale: list[str] = []
        moves: list[tuple[Path, str]] = []
        journal: list[dict[str, Any]] = []  # changes-journal rows of the ingests, in job order
        with self._index_writer.transaction() as conn:  # a failure rolls back and drops the connection
            for index in indexes:
                job = batch[index]
                if isinstance(job, _CallJob) and journal:  # keep the journal in job order
                    record_changes(conn, journal)
                    journal.clear()
                mark = len(journal)
                try:
                    done[index] = self._apply(conn, job, now, stale, moves, journal)
                except ArchiveError as exc:  # refused by policy: no rows written for it
                    del journal[mark:]
                    done[index] = exc
            record_changes(conn, journal)
            self._move_into_storage(moves)  # after every statement, before the commit
            self.blobs.sync()
        for index, result in done.items():
            results[index] = result
        stale_keys.extend(stale)

    def _move_into_storage(self, moves: list[tuple[Path, str]]) -> None:
        """Rename staged files to their keys; on failure put the moved ones back in
        staging, so the rolled-back jobs can be retried one by one."""
        moved: list[tuple[Path, str]] = []
        try:
            for staged_path, key in moves:
                self.blobs.put_from_staging(staged_path, key)
                moved.append((staged_path, key))
        except BaseException:
            for staged_path, key in reversed(moved):
                try:
                    os.replace(self.blobs.path_of(key), staged_path)
                except OSError as exc:
                    log.error("could not return %s to staging after a failed batch: %s", key, exc)
            raise

    def _apply(
        self,
        conn: IndexConnection,
        job: _Job[Any],
        now: dt.datetime,
        stale_keys: list[str],
        moves: list[tuple[Path, str]],
        journal: list[dict[str, Any]],
    ) -> object:
        if isinstance(job, _CallJob):
            return job.call(conn)
        if not isinstance(job, _IngestJob):  # pragma: no cover - the queue holds only these
            raise TypeError(f"unknown writer job {job!r}")
        header = job.header
        if header is None:  # pragma: no cover - prepare_ingest ran or the job failed before
            raise ArchiveError("internal error: ingest job without a parsed header")
        uid = header.get("SOPInstanceUID")
        outcome = StoreOutcome(
            sop_instance_uid=uid,
            status=StoreStatus.STORED,
            relative_path=job.key,
            size=job.size,
            study_instance_uid=header.get("StudyInstanceUID"),
            series_instance_uid=header.get("SeriesInstanceUID"),
        )
        existing = repo.find_instance(conn, uid)
        replace_pk: int | None = None
        if existing is not None:
            policy = self.settings.duplicate_policy
            if policy is DuplicatePolicy.REJECT:
                raise DuplicateInstance(
                    f"SOP Instance {uid} is already stored and the duplicate policy is 'reject'; "
                    "the stored copy was kept"
                )
            if policy is DuplicatePolicy.KEEP:
                return replace(outcome, status=StoreStatus.DUPLICATE_KEPT, relative_path=existing[1], size=existing[2])
            replace_pk = existing[0]
            outcome = replace(outcome, status=StoreStatus.REPLACED)
        study_uid = outcome.study_instance_uid
        series_pk = self._series_pk(conn, header, now, journal)
        values = {
            **repo.row_values(header, repo.INSTANCE_COLUMNS),
            "series_pk": series_pk,
            "transfer_syntax_uid": job.staged.transfer_syntax_uid,
            "blob_key": job.key,
            "size": job.size,
            "received_at": now,
            "origin_kind": _clean(job.origin.kind),
            "calling_aet": _clean(job.origin.calling_aet),
            "called_aet": _clean(job.origin.called_aet),
            "peer_host": _clean(job.origin.peer_host),
        }
        repo.write_instance(conn, values, replace_pk)
        journal.append(change_row(ChangeType.NEW_INSTANCE, uid, study_uid, now))
        moves.append((job.staged.path, job.key))
        if existing is not None and existing[1] != job.key:
            stale_keys.append(existing[1])
        return outcome

    def _series_pk(
        self, conn: IndexConnection, header: InstanceHeader, now: dt.datetime, journal: list[dict[str, Any]]
    ) -> int:
        """The series' primary key (cached); patient, study and series rows this inserts are journalled."""
        cache = self._keys
        series_uid = header.get("SeriesInstanceUID")
        if series_uid in cache.series:
            return cache.series[series_uid]
        study_uid = header.get("StudyInstanceUID")
        study_pk = cache.studies.get(study_uid)
        if study_pk is None:
            patient_pk, new_patient = repo.ensure_patient(conn, header, now)
            if new_patient:
                journal.append(change_row(ChangeType.NEW_PATIENT, header.get("PatientID"), study_uid, now))
            study_pk, new_study = repo.ensure_study(conn, header, patient_pk, now)
            cache.studies[study_uid] = study_pk
            if new_study:
                journal.append(change_row(ChangeType.NEW_STUDY, study_uid, study_uid, now))
        series_pk, new_series = repo.ensure_series(conn, header, study_pk, now)
        cache.series[series_uid] = series_pk
        if new_series:
            journal.append(change_row(ChangeType.NEW_SERIES, series_uid, study_uid, now))
        return series_pk


__all__ = ["Archive", "ArchiveSettings", "IngestStats", "MAX_BATCH", "prepare_ingest"]
