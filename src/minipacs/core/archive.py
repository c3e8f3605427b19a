"""The archive core, storage half: ONE ingest path for every way an instance comes in.

Durability by group commit (datasette-style single writer): every ingest is a
job on one queue; the writer thread takes everything pending as one batch and
  0. writes the intake records of its small instances and starts their one flush, which
     runs while the steps below do (core/intake.py; the commit of step 2 waits for it),
  1. walks each staged dataset's structure and parses its header (never the pixel data)
     and checks its UIDs, then fsyncs each staged file not in the log (settings.fsync),
  2. in ONE transaction on its persistent connection: the index rows of every
     job, then the renames of the staged files to their final paths (a failing
     rename moves the already-moved files back), then one fsync per touched
     directory, then the commit,
  3. only then resolves each job's future on its event loop.
The usual C-STORE of a small instance skips the queue: on SQLite, when the writer is idle, nothing
is queued and the instance was received into memory with the intake log on, the event loop runs
steps 0-2 itself, as a batch of one, under the lock the writer takes for each batch
(``Archive._ingest_here``): a requestor that waits for each response no longer waits for the two
thread hand-offs (queue to writer, writer back to the loop; 1.11-1.28x the rate, session 15).
The loop then waits for the flush itself; cycles slower than ``loop_ingest_max_ms`` on average (a
slow disk) send every ingest through the writer again for ``loop_ingest_pause_seconds`` (config.py),
so the loop is not held long while the disk is slow; ``loop_ingest_max_ms = 0`` turns the path off.
If the batch fails, it is rolled back and its jobs are retried one by one, so a
bad job fails alone. Study and series keys are cached across batches: a series
arriving one instance at a time costs two INSERTs per instance (its row, on SQLite by an
insert that writes nothing when the SOP Instance UID is already stored, the duplicate
policy then deciding; on PostgreSQL after a SELECT for a stored copy; and its
changes-journal row, core/changes.py; journal rows of a batch go in one executemany,
in job order, before the commit).
A row never commits before its file is durable in place; a crash leaves at
worst an unindexed file in storage (harmless) and leftovers in staging, which
``Archive.start`` deletes (they were never acknowledged).
Every stored copy gets a blob key of its own (``core/paths.py`` instance_key: the
UIDs and a random copy token), so no two rows ever name one file: a replacing copy
(duplicate_policy "replace", or a corrected copy) lands beside the copy it replaces,
whose blob key is queued in ``blob_removals`` in the same transaction and removed
``keep_replaced_seconds`` later (core/blob_removals.py: a retrieve that chose the old
copy still reads it); a deletion (core/delete.py) removes exactly the keys of the rows
it deleted, right after its commit, never the file of a copy stored after it.

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
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from minipacs.blobs.base import BlobError, BlobStore, WritesBytes
from minipacs.blobs.packs import slot_of
from minipacs.core.audit import AuditLog
from minipacs.core.changes import ChangeType, change_row
from minipacs.core.changes import record as record_changes
from minipacs.core.errors import (
    ArchiveError,
    CorrectionConflict,
    DuplicateInstance,
    InstanceMismatch,
    InstanceUIDMismatch,
    InvalidInstance,
    NotFound,
    OutOfResources,
    PreviouslyRejected,
)
from minipacs.core.header import read_header, read_header_bytes
from minipacs.core.inflate import DEFAULT_LIMITS, DatasetLimits, check_deflated
from minipacs.core.intake import Flush, IntakeLog, IntakeLogError, IntakeRecord, fsync_path, syncfs
from minipacs.core.metrics import Metrics
from minipacs.core.model import (
    AssociationRecord,
    DuplicatePolicy,
    Origin,
    StagedPath,
    StoreOutcome,
    StoreStatus,
)
from minipacs.core.paths import instance_key, new_copy_token, strip_uid_padding, validate_instance_uids
from minipacs.core.staging import (
    READY_DIR,
    STAGING_SUFFIX,
    StagingFile,
    StagingPool,
    remove_leftovers,
    stage_file,
)
from minipacs.core.structure import check_staged
from minipacs.dicom.header import InstanceHeader, dataset_encoding
from minipacs.index import blob_removal_repo, intake_repo, metadata_repo, rejection_repo
from minipacs.index import repository as repo
from minipacs.index.database import IndexConnection, IndexDatabase, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most jobs one index transaction takes.
MAX_BATCH: Final = 512
#: Study/series primary keys the writer remembers between batches.
KEY_CACHE_SIZE: Final = 4096
#: Tries of one writer transaction that PostgreSQL aborts as a deadlock or a serialization failure
#: (another node on the same index took the same rows in another order), and the first wait between
#: two tries, doubling, with jitter: at most ~0.3 s of waiting before the failure is reported.
TRANSIENT_TRIES: Final = 6
TRANSIENT_FIRST_WAIT: Final = 0.01
#: Ingests run on the event loop (``Archive._ingest_here``) that take longer than
#: ``ArchiveSettings.loop_ingest_max_seconds`` on average (the flush of a slow disk, a busy machine) send
#: ingests through the writer thread for ``loop_ingest_pause_seconds`` (config.py ``loop_ingest_max_ms``,
#: ``loop_ingest_pause_seconds``): the loop serves every association and HTTP request and must not wait
#: for a slow disk over and over. The average is exponential, weight HERE_WEIGHT for the latest: a single
#: slow cycle (the first of a new series creates its patient, study and series rows: 18 ms once; a flush
#: beside the checkpoint's syncfs: 20 ms about once a second) does not stop the path; with the default
#: 5 ms, a disk whose every flush takes 8 ms stops it within ten instances.
HERE_WEIGHT: Final = 0.1
#: Ingests from another sender (peer address and port: another association) within this many seconds
#: mean several are sending at once: theirs go through the writer, whose batches share one flush
#: among them (on the loop each would pay its own: 0.88x the rate with 4 associations, session 15).
HERE_ALONE_SECONDS: Final = 0.1
#: Every this many seconds old packs that deletions emptied are removed (blobs/packs.py;
#: Archive.sweep_packs_if_due).
PACK_SWEEP_SECONDS: Final = 3600.0


@dataclass
class _HereGuard:
    """The average time of the ingests run on the event loop; says when they are too slow to go on."""

    max_seconds: float
    average: float = 0.0

    def too_slow(self, took: float) -> bool:
        """Note one cycle of ``took`` seconds; True (and the average starts again) when the average is over
        ``max_seconds``."""
        self.average += HERE_WEIGHT * (took - self.average)
        if self.average > self.max_seconds:
            self.average = 0.0
            return True
        return False


@dataclass(frozen=True)
class ArchiveSettings:
    """What the archive core needs of the configuration (config.py keys of the same names)."""

    data_dir: Path  # staging/, ready/ and the recovery lock live here
    fsync: bool  # fsync each staged file before its index row commits
    max_dataset_bytes: int  # largest dataset one ingest accepts
    duplicate_policy: DuplicatePolicy  # what a second copy of a stored SOP Instance UID does
    max_inflate_ratio: int = 100  # most inflated bytes per deflated byte (PS3.5 A.5; 0: no limit)
    max_sequence_depth: int = 64  # deepest sequence nesting accepted at ingest and read from a stored file
    #: Stored files up to this size go through the intake log (core/intake.py); 0: never (3 fsyncs each).
    intake_inline_max_bytes: int = 1 << 20
    #: A C-STORE up to this size (and to intake_inline_max_bytes) is received into memory (core/staging.py).
    receive_in_memory_max_bytes: int = 1 << 20
    intake_segment_bytes: int = 16 << 20  # size of one intake-log segment file
    intake_checkpoint_seconds: float = 1.0  # most time between checkpoints while instances arrive
    intake_checkpoint_bytes: int = 64 << 20  # a checkpoint starts after this many logged bytes
    node_id: str = ""  # this node in the association log and staging folder names (config.py node_id)
    #: A replaced copy's file is removed this long after the switch (core/blob_removals.py).
    keep_replaced_seconds: float = 300.0
    #: Most stored files one query reads to match or answer keys the index does not hold (core/query.py;
    #: config.py query_max_file_reads); 0: no limit.
    query_max_file_reads: int = 10_000
    #: Ingests on the event loop slower than this on average go through the writer thread for
    #: ``loop_ingest_pause_seconds`` (:class:`_HereGuard`); 0: never on the loop.
    loop_ingest_max_seconds: float = 0.005
    loop_ingest_pause_seconds: float = 10.0

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
    transient_retries: int = 0  # transactions tried again after a deadlock or serialization failure


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
    #: Made durable by the intake log rather than its own fsyncs (set by the writer).
    logged: bool = field(default=False, kw_only=True)
    #: Its intake record's LSN and the copy token of its blob key, chosen when the record is written,
    #: before the checks: the replay finds the key from the token and the record's own header.
    lsn: int = field(default=0, kw_only=True)
    token: str | None = field(default=None, kw_only=True)
    #: Instead of a copy token: the key of its pack entry (blobs/packs.py), for an instance received
    #: into memory, named in its intake record.
    pack_key: str | None = field(default=None, kw_only=True)
    #: The whole staged file when it is small enough for the intake log (read once by the writer).
    data: bytes | None = field(default=None, kw_only=True, repr=False)
    #: A correction's rewrite (core/corrections.py): replace exactly the stored copy with this blob key,
    #: whatever the duplicate policy, keeping the row's origin; refused if that copy is gone or replaced.
    replace_key: str | None = field(default=None, kw_only=True)


@dataclass
class _CallJob(_Job[Any]):
    call: Callable[[IndexConnection], Any] = field(kw_only=True)
    #: The call may delete patients, studies or series: cached keys go stale.
    removes_entities: bool = field(default=False, kw_only=True)


@dataclass
class _Barrier:
    """A checkpoint's request to the writer: one durable commit after everything queued before it."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


WriterJob = _Job[Any] | _Barrier


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


def _resolve_all(loop: asyncio.AbstractEventLoop, settled: list[tuple[_Job[Any], object]]) -> None:
    """Hand a batch's results to their event loop in one wake-up (one self-pipe write, not one
    per job), in job order; a waiter may be gone (cancelled)."""

    def settle() -> None:
        for job, result in settled:
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _clean(text: str) -> str:
    """Strings from peers go into the index without NULs (PostgreSQL refuses them)."""
    return text.replace("\x00", "")


#: The intake log's folder under the data directory (core/intake.py).
INTAKE_DIR: Final = "intake"

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


#: A process that does not hold RECOVERY_LOCK (a second node on one data folder, `minipacs import`
#: next to a server) stages in staging/<this>/ and ready/<this>/, flocking staging/<this>/PRIVATE_LOCK;
#: the lock holder's start removes only such folders whose lock it can take (their process is gone).
PRIVATE_PREFIX: Final = "node-"
PRIVATE_LOCK: Final = ".lock"


def _make_private_folders(data_dir: Path, node_id: str = "") -> tuple[Path, Path, int]:
    """staging/node-<node_id>.<pid>-<random>/ (and its ready/ twin), locked: the node id says whose
    they are to a person; the lock, not the name, says whether their process is alive."""
    owner = f"{node_id}.{os.getpid()}" if node_id else str(os.getpid())
    name = f"{PRIVATE_PREFIX}{owner}-{os.urandom(4).hex()}"
    staging, ready = data_dir / "staging" / name, data_dir / READY_DIR / name
    building = data_dir / "staging" / f".{name}"  # not yet a name the cleaner looks at
    building.mkdir()
    fd = os.open(building / PRIVATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: never contended
    ready.mkdir()
    os.rename(building, staging)  # locked before the cleaner can see it
    return staging, ready, fd


def _remove_private_folders(staging: Path, ready: Path) -> int:
    removed = 0
    for folder in (staging, ready):
        for entry in folder.iterdir() if folder.is_dir() else ():
            entry.unlink(missing_ok=True)
            removed += entry.name != PRIVATE_LOCK
        folder.rmdir()
    return removed


def _remove_dead_private_folders(data_dir: Path) -> int:
    """Remove the private staging folders of processes that are gone; return the files removed."""
    removed = 0
    for staging in (data_dir / "staging").glob(PRIVATE_PREFIX + "*"):
        try:
            fd = os.open(staging / PRIVATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive: its transfers are its own
            removed += _remove_private_folders(staging, data_dir / READY_DIR / staging.name)
        finally:
            os.close(fd)
    for ready in (data_dir / READY_DIR).glob(PRIVATE_PREFIX + "*"):  # its staging half already gone
        if not (data_dir / "staging" / ready.name).exists():
            for entry in ready.iterdir():
                entry.unlink(missing_ok=True)
            ready.rmdir()
    return removed


def _as_failure(exc: BaseException) -> Exception:
    """What a job that failed in the writer reports: always an ArchiveError. Its message reaches peers
    (a DIMSE Error Comment, an HTTP body), so an OSError's file name is left out of it and logged."""
    if isinstance(exc, ArchiveError):
        return exc
    if isinstance(exc, IntakeLogError):
        return _log_failure(exc)
    if isinstance(exc, BlobError) and not isinstance(exc, FileNotFoundError):  # e.g. an S3 upload refused
        log.error("storing failed: %s", exc)
        return ArchiveError(
            "storing failed: the blob store did not take the file; nothing was acknowledged; see the server log"
        )
    if isinstance(exc, OSError):
        log.error("storing failed: %s", exc)  # the server log keeps the path
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OutOfResources(f"the storage filesystem is full ({reason}); nothing was stored")
        return ArchiveError(f"storing failed ({reason}); nothing was acknowledged; see the server log")
    # A database error's text carries SQL and values: it goes to the server log, not to the peer.
    log.error("storing failed: %s", exc)
    return ArchiveError(f"storing failed (internal error: {type(exc).__name__}); see the server log")


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error and its one-line meaning, for the log."""
    orig = getattr(exc, "orig", exc)
    first = str(orig).splitlines()[0][:120] if str(orig) else type(orig).__name__
    return f"SQLSTATE {getattr(orig, 'sqlstate', '?')}: {first}"


def _moved_into_storage(result: object) -> bool:
    """Whether an ingest job's result means its staged file was renamed into storage."""
    return isinstance(result, StoreOutcome) and result.status is not StoreStatus.DUPLICATE_KEPT


def _staged_failure(job: _IngestJob, exc: OSError) -> ArchiveError:
    log.error("cannot read or fsync the staged file %s: %s", job.staged.path, exc)
    kind = OutOfResources if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ArchiveError
    return kind(f"cannot read or fsync the staged dataset ({exc.strerror}); nothing was stored; see the server log")


def _log_failure(exc: IntakeLogError) -> ArchiveError:
    """What an ingest whose intake record could not be made durable reports (nothing was stored)."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfResources("the data filesystem is full (the intake log cannot be written); nothing was stored")
    return ArchiveError("storing failed: the intake log cannot be written; nothing was stored; see the server log")


#: Rejection codes after which the same instance may be stored again (core/rejection.py): Data Retention
#: Policy Expired removes by policy; a later store is a deliberate restore.
STORABLE_AFTER_REJECTION: Final = frozenset({"113039"})


@dataclass
class _BatchFlush:
    """The flush of a batch's intake records (IntakeLog.start_flush), waited for once, before the first
    commit that needs it; its failure fails every later transaction of the batch that needs it too."""

    intake: IntakeLog
    flush: Flush | None
    waited: bool = False
    error: IntakeLogError | None = None

    def wait(self) -> None:
        self.settle()
        if self.error is not None:
            raise IntakeLogError(str(self.error)) from self.error.__cause__

    def settle(self) -> None:
        if not self.waited:
            self.waited = True
            try:
                self.intake.finish_flush(self.flush)
            except IntakeLogError as exc:
                log.error("%s", exc)
                self.error = exc


def prepare_ingest(
    staged: StagedPath,
    max_sequence_depth: int = DEFAULT_LIMITS.max_sequence_depth,
    data: bytes | None = None,
    copy_token: str | None = None,
    pack_key: str | None = None,
) -> tuple[InstanceHeader, str, int]:
    """Header, blob key and file size of a staged file, after every check.

    ``data``: the whole staged file, when the caller has read it (a small one, for the intake log):
    walked and parsed from memory, the file is not opened again. ``pack_key``: the key to store it
    under, a pack entry (blobs/packs.py), rather than one made from its UIDs (which are checked alike).
    Raises BrokenDataset (the whole dataset's element structure is walked first: core/structure.py;
    a deflated one was walked by check_deflated), InvalidInstance (malformed header), InstanceMismatch
    (dataset UIDs differ from the announced ones) or InvalidIdentifier (a UID unfit for a path).
    """
    check_staged(staged.path, staged.dataset_offset, staged.transfer_syntax_uid, max_sequence_depth, data)
    if data is None:
        header = read_header(staged.path, staged.dataset_offset, staged.transfer_syntax_uid)
    else:
        header = read_header_bytes(data, staged.dataset_offset, staged.transfer_syntax_uid)
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
    study, series, sop = header.get("StudyInstanceUID"), header.get("SeriesInstanceUID"), header.get("SOPInstanceUID")
    if pack_key is None:
        key = instance_key(study, series, sop, copy_token)
    else:  # the UIDs are checked alike, though they name no file
        validate_instance_uids(study, series, sop)
        key = pack_key
    return header, key, os.stat(staged.path).st_size if data is None else len(data)


class Archive:
    """The storage half of the archive core. Start it with ``await Archive.start(settings, index, blobs)``
    (bootstrap.open_archive builds the index and blob store from the configuration)."""

    def __init__(
        self,
        settings: ArchiveSettings,
        index: IndexDatabase,
        blobs: BlobStore,
        *,
        private: tuple[Path, Path, int] | None = None,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        #: (staging, ready, lock fd) of a process that does not own the data folder (see start()).
        self._private = private
        self.staging_dir = private[0] if private is not None else settings.data_dir / "staging"
        self._index = index
        self._index_writer = index.writer(node=settings.node_id)
        self._queue: queue.SimpleQueue[WriterJob | None] = queue.SimpleQueue()
        #: Held while a batch is applied: by the writer thread, or by an event loop running an ingest
        #: itself (:meth:`_ingest_here`); the writer's state (connection, key cache, flush) is theirs.
        self._commit_lock = threading.Lock()
        #: time.monotonic() until which ingests go through the writer (a slow ingest on the loop)
        self._here_paused_until = 0.0
        self._here_guard = _HereGuard(settings.loop_ingest_max_seconds)
        self._here_possible = index.is_sqlite and settings.loop_ingest_max_seconds > 0
        #: (peer host, port) of the last ingest and when it came (time.monotonic()): one sender, or several
        self._last_sender: tuple[str, int] = ("", 0)
        self._last_sender_at = -float("inf")
        self._writer = threading.Thread(target=self._run_writer, name="minipacs-index-writer", daemon=True)
        self._keys = _KeyCache()
        self._stats = IngestStats()
        self._closed = False
        #: The blob store, when it can also write a blob from memory (core/staging.py's memory mode).
        self._bytes_store = blobs if isinstance(blobs, WritesBytes) else None
        self._staging_pool = StagingPool(private[1] if private is not None else settings.data_dir / READY_DIR)
        self._recovery_lock: int | None = None
        self._intake: IntakeLog | None = None  # set by start() when this process owns the data folder
        self._committed_lsn = 0  # the last intake record whose rows are committed (writer thread)
        self._batch_flush: _BatchFlush | None = None  # the flush of the batch the writer is applying
        self._bytes_at_request = 0  # intake bytes appended when a checkpoint was last asked for
        self._checkpoint_wanted = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_lock = threading.Lock()
        #: time.monotonic() of the next look for emptied packs (set by start(): never in a process that
        #: does not own the data folder); under _pack_sweep_lock (sweep_packs_if_due)
        self._next_pack_sweep = float("inf")
        self._pack_sweep_lock = threading.Lock()
        self._stopping = False
        #: After-ingest listeners (web/: PS3.18 metadata), called on the event loop once an
        #: ingest is durable, after its result is known; they must be quick and must not raise.
        self.on_stored: list[Callable[[StoreOutcome], None]] = []
        #: Before-ingest checks by the SOP Class UID announced (core/rejection.py: a rejection note its
        #: sender may not make): awaited on the event loop before anything is stored, each may raise an
        #: ArchiveError to refuse the instance, so the sender is told rather than answered Success. One
        #: dict look-up per ingest; not for a correction (``replace_key``: the instance is stored already).
        self.before_ingest: dict[str, Callable[[StagedPath, Origin], Awaitable[None]]] = {}
        #: Prometheus figures (core/metrics.py), set by bootstrap; None: nothing is counted.
        self.metrics: Metrics | None = None
        #: Whether any instance may have been rejected by a rejection note (core/rejection.py): only then
        #: does an ingest look its SOP Instance UID up in ``rejected_instances``. Read at start, set before
        #: a rejection is written, and looked at again every few seconds (another node's rejections).
        self.rejections_possible = False
        #: After-deletion listeners (core/mpps.py): called on the event loop with the Study
        #: Instance UIDs whose completion a deletion withdrew; quick, must not raise.
        self.on_uncompleted: list[Callable[[set[str]], None]] = []
        #: The audit trail (core/audit.py): ``archive.audit.record(...)`` from any layer above.
        self.audit = AuditLog(self.write, self.read, settings.node_id)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, settings: ArchiveSettings, index: IndexDatabase, blobs: BlobStore) -> Archive:
        """Create staging/, delete what an earlier process left there unacknowledged (unless
        another process uses this data directory), start the writer. ``index`` is migrated."""
        data_dir = settings.data_dir.resolve()
        staging_dir = data_dir / "staging"

        use_log = settings.fsync and settings.intake_inline_max_bytes > 0

        def prepare() -> tuple[int | None, IntakeLog | None, list[IntakeRecord], tuple[Path, Path, int] | None]:
            staging_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / READY_DIR).mkdir(exist_ok=True)
            lock = _take_recovery_lock(data_dir)
            intake: IntakeLog | None = None
            pending: list[IntakeRecord] = []
            private: tuple[Path, Path, int] | None = None
            if lock is not None:
                removed = remove_leftovers(staging_dir) + remove_leftovers(data_dir / READY_DIR)
                removed += _remove_dead_private_folders(data_dir)
                if removed:
                    log.info("removed %d unacknowledged file(s) left in %s", removed, staging_dir)
                # The log is replayed even when it is now turned off: it may hold acknowledged instances.
                if use_log or (data_dir / INTAKE_DIR).is_dir():
                    intake, pending = IntakeLog.open(data_dir / INTAKE_DIR, settings.intake_segment_bytes)
            else:
                private = _make_private_folders(data_dir, settings.node_id)
                log.info(
                    "another minipacs process is using %s; staging in %s, and flushing each instance on "
                    "its own (no intake log)",
                    data_dir,
                    private[0].name,
                )
            return lock, intake, pending, private

        lock, intake, pending, private = await asyncio.to_thread(prepare)
        archive = cls(replace(settings, data_dir=data_dir), index, blobs, private=private)
        archive._recovery_lock = lock
        archive._intake = intake
        if intake is not None:
            intake.on_new_segment = archive._checkpoint_wanted.set
            archive._index_writer.autocheckpoint = not use_log  # the checkpointer copies the WAL
        archive._writer.start()
        archive.rejections_possible = await archive.read(rejection_repo.any_rejected)
        if intake is not None:
            archive._checkpointer = threading.Thread(
                target=archive._run_checkpointer, name="minipacs-intake-checkpoint", daemon=True
            )
            archive._checkpointer.start()
            if pending:
                await archive._replay(pending)
            archive._next_pack_sweep = time.monotonic()  # after the replay: it may write into old packs
            if not use_log:  # replayed: from now on each instance is flushed on its own
                await asyncio.to_thread(archive._stop_checkpointer)
                intake.close()
                archive._intake = None
        elif lock is not None:  # no checkpointer (fsync = false): the replaced-copies watch sweeps packs
            archive._next_pack_sweep = time.monotonic()
        return archive

    async def close(self, *, checkpoint: bool = True) -> None:
        """Finish every queued job, stop the writer thread, dispose of the index.

        ``checkpoint=False`` leaves the intake log as a crash would (for tests of the replay)."""
        if self._closed:
            return
        try:
            await self.audit.flush()  # the audit events still waiting (core/audit.py)
        except Exception as exc:  # noqa: BLE001 - closing anyway; say what is lost
            log.error("audit: %d event(s) not written at close: %s", self.audit.pending, exc)
        self._closed = True
        if self._intake is not None:
            await asyncio.to_thread(self._stop_checkpointer, checkpoint=checkpoint)
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        if self._intake is not None:
            self._intake.close()
        await asyncio.to_thread(self._staging_pool.close)
        if self._private is not None:
            staging, ready, fd = self._private
            self._private = None
            await asyncio.to_thread(_remove_private_folders, staging, ready)
            os.close(fd)
        if self._recovery_lock is not None:
            os.close(self._recovery_lock)  # releases the flock
            self._recovery_lock = None
        await asyncio.to_thread(self.blobs.close)
        await asyncio.to_thread(self._index.dispose)  # waits for reads whose callers were cancelled

    # ------------------------------------------------------------------ the intake log

    def _run_checkpointer(self) -> None:
        interval = self.settings.intake_checkpoint_seconds
        while not self._stopping:
            self._checkpoint_wanted.wait(timeout=interval)
            self._checkpoint_wanted.clear()
            if self._stopping:
                break
            try:
                self._checkpoint()
            except Exception:
                log.exception("intake-log checkpoint failed; the log keeps the instances until the next one")
            self._checkpoint_wal()
            self.sweep_packs_if_due()
            intake = self._intake
            if intake is not None and intake.wants_spare and not self._stopping:
                try:
                    intake.make_spare()
                except OSError as exc:  # the writer falls back to fallocate
                    log.warning("cannot prepare the next intake-log segment: %s", exc)

    @property
    def pack_sweep_due(self) -> bool:
        """Whether :meth:`sweep_packs_if_due` would sweep now (a look without a thread hop)."""
        return self._bytes_store is not None and time.monotonic() >= self._next_pack_sweep

    def sweep_packs_if_due(self) -> None:
        """Once an hour, and first at the start (after the replay: it may write into old packs): remove old
        packs deletions emptied (blobs/packs.py). The checkpointer calls it, and the replaced-copies watch
        (core/blob_removals.py), which runs with ``fsync = false`` too: whichever comes first. Not on the
        event loop (a folder listed, a file opened per old pack)."""
        store = self._bytes_store
        with self._pack_sweep_lock:
            now = time.monotonic()
            if store is None or now < self._next_pack_sweep:
                return
            self._next_pack_sweep = now + PACK_SWEEP_SECONDS
        try:
            removed = store.remove_empty_packs()
        except OSError as exc:
            log.warning("cannot look for emptied packs: %s", exc)
            return
        if removed:
            log.info("removed %d pack file(s) that deletions had emptied", removed)

    def _checkpoint_wal(self) -> None:
        """The index's WAL into its database file (SQLite; the writer's commits do not do it while the
        intake log is on: IndexWriter.autocheckpoint). Any writes count, not only ingests."""
        try:
            self._index.checkpoint_wal()
        except Exception as exc:  # noqa: BLE001 - the next turn tries again; the WAL only grows meanwhile
            log.warning("index WAL checkpoint failed: %s", exc)

    def _stop_checkpointer(self, *, checkpoint: bool = True) -> None:
        self._stopping = True
        self._checkpoint_wanted.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        if checkpoint:
            try:
                self._checkpoint()
            except Exception:
                log.exception("final intake-log checkpoint failed; the next start replays the log")

    def _checkpoint(self) -> None:
        """Make everything the log holds up to the last committed record durable without it, then say so
        in the log (core/intake.py). Any thread but the writer's."""
        intake = self._intake
        if intake is None:
            return
        with self._checkpoint_lock:
            lsn = self._committed_lsn
            if lsn <= intake.checkpoint_lsn:
                return
            barrier = _Barrier()
            self._queue.put(barrier)  # a durable commit after every commit up to lsn
            barrier.done.wait()
            if barrier.error is not None:
                raise barrier.error
            seen: set[int] = set()
            for path in (self.settings.data_dir, getattr(self.blobs, "root", self.settings.data_dir)):
                device = os.stat(path).st_dev
                if device not in seen:
                    seen.add(device)
                    syncfs(path)
            intake.checkpoint(lsn)

    async def _replay(self, records: list[IntakeRecord]) -> None:
        """Start-up: bring the index and storage up to the log (core/intake.py, "replayed")."""
        committed = await self.read(intake_repo.committed_lsn)
        self._committed_lsn = committed
        restored = ingested = 0
        for record in records:
            if record.lsn <= committed:
                restored += await asyncio.to_thread(self._restore_file, record)
            else:
                await self._ingest_again(record)
                ingested += 1
        await asyncio.to_thread(self._checkpoint)
        log.info(
            "intake log replayed: %d record(s) after the last checkpoint; %d file(s) rewritten, "
            "%d instance(s) whose index commit was lost stored again",
            len(records),
            restored,
            ingested,
        )

    def _staged_copy(self, record: IntakeRecord) -> Path:
        path = self.staging_dir / f"replay-{record.lsn}{STAGING_SUFFIX}"
        with open(path, "wb") as fh:
            fh.write(record.data)
        return path

    @staticmethod
    def _record_key(record: IntakeRecord) -> str | None:
        """The blob key a record's instance was stored under: named in it (records before session 11), or
        made from its copy token and its own header, as the writer made it; None when the header is
        unusable (its ingest was refused: nothing was stored under any key)."""
        meta = record.meta
        if "key" in meta:
            return str(meta["key"])
        try:
            header = read_header_bytes(record.data, int(meta["offset"]), str(meta["ts"]))
            return instance_key(
                header.get("StudyInstanceUID"),
                header.get("SeriesInstanceUID"),
                header.get("SOPInstanceUID"),
                str(meta["token"]),
            )
        except (ArchiveError, ValueError, KeyError):
            return None

    def _restore_file(self, record: IntakeRecord) -> int:
        """A committed record: rewrite its file if a row still names it. Returns 1 if rewritten."""
        key = self._record_key(record)
        if key is None or not self._index.read(lambda conn: intake_repo.blob_key_in_use(conn, key)):
            return 0  # refused, or deleted or replaced since
        if self._bytes_store is not None:  # at its key: a file, or its pack entry's place
            self._bytes_store.put_bytes(record.data, key)
        else:
            self.blobs.put_from_staging(self._staged_copy(record), key)
        self.blobs.sync(durable=False)  # the put completed (the replay's checkpoint makes it durable)
        return 1

    async def _ingest_again(self, record: IntakeRecord) -> None:
        """A record whose commit was lost: store it again (its file may sit in storage unindexed)."""
        meta = record.meta
        key = self._record_key(record)
        if key is not None and not await self.read(lambda conn: intake_repo.blob_key_in_use(conn, key)):
            await asyncio.to_thread(self.blobs.delete, key)
        kind, calling, called, host = meta["origin"]
        staged = StagedPath(
            path=await asyncio.to_thread(self._staged_copy, record),
            dataset_offset=int(meta["offset"]),
            transfer_syntax_uid=str(meta["ts"]),
            sop_class_uid=str(meta["class"]),
            sop_instance_uid=str(meta["sop"]),
        )
        try:
            replacing = meta.get("replace")
            await self.ingest(
                staged, Origin(kind, calling, called, host), replace_key=str(replacing) if replacing else None
            )
        except ArchiveError as exc:  # refused now as it would have been then: nothing was acknowledged
            log.warning("intake-log record %d could not be stored again: %s", record.lsn, exc)

    @staticmethod
    def _record_meta(job: _IngestJob) -> dict[str, Any]:
        staged, origin = job.staged, job.origin
        return {
            # the key of its pack entry, or the copy token of its blob key (_record_key): the record is
            # written before the header is read
            **({"key": job.pack_key} if job.pack_key is not None else {"token": job.token}),
            "offset": staged.dataset_offset,
            "ts": staged.transfer_syntax_uid,
            "class": staged.sop_class_uid,
            "sop": staged.sop_instance_uid,
            "origin": [origin.kind, origin.calling_aet, origin.called_aet, origin.peer_host],
            # a correction's rewrite (core/corrections.py) replays as one: it replaces exactly that copy
            **({"replace": job.replace_key} if job.replace_key is not None else {}),
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ArchiveError("the archive is closed; nothing more can be stored")

    @property
    def owns_data_dir(self) -> bool:
        """Whether this process holds the data directory's recovery lock (no other minipacs
        process writes there): only then is an unindexed file in staging or storage no one's."""
        return self._recovery_lock is not None

    @property
    def shared_index_engine(self) -> Any:
        """The index's SQLAlchemy engine when other nodes may share it (PostgreSQL), else None."""
        engine = self._index.engine
        return None if engine.dialect.name == "sqlite" else engine

    @property
    def stats(self) -> IngestStats:
        return replace(self._stats)

    def snapshot_index(self, dest: Path) -> None:
        """A consistent copy of a SQLite index at ``dest``, as of one commit, the writer going on
        meanwhile (core/backup.py). Blocking. ValueError when the index is not SQLite."""
        self._index.snapshot(dest)

    # ------------------------------------------------------------------ ingest

    def open_staging(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_aet: str = "",
        *,
        in_memory: bool = False,
    ) -> StagingFile:
        """A new staging file with our File Meta Information already written.

        ``in_memory``: the caller ingests it as soon as it is complete (a C-STORE), so a small one
        may be held in memory (see memory_staging_bytes). Not for a caller that stages many before
        ingesting any (a STOW-RS request): their memory would add up."""
        self._check_open()
        return StagingFile(
            self.staging_dir,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            source_aet,
            max_dataset_bytes=self.settings.max_dataset_bytes,
            pool=self._staging_pool,
            memory_max_bytes=self.memory_staging_bytes(transfer_syntax_uid) if in_memory else 0,
        )

    def memory_staging_bytes(self, transfer_syntax_uid: str) -> int:
        """How big an instance may be to be received into memory: ``receive_in_memory_max_bytes``
        within what the intake log takes inline, when the log is on and the blob store writes files
        (core/staging.py); 0: on disk at once.
        A deflated dataset is inflated from its staged file (core/inflate.py), so it goes to disk."""
        if self._intake is None or self._bytes_store is None:
            return 0
        if dataset_encoding(strip_uid_padding(transfer_syntax_uid)).deflated:
            return 0
        return min(self.settings.receive_in_memory_max_bytes, self.settings.intake_inline_max_bytes)

    async def ingest(self, staged: StagedPath, origin: Origin, *, replace_key: str | None = None) -> StoreOutcome:
        """Store a staged file; returns once file and index row are durable.

        ``replace_key`` (corrections, core/corrections.py): the staged file replaces exactly the stored
        copy with that blob key, keeping its row's origin and reception time; CorrectionConflict when
        the instance is no longer stored under that key (deleted, or replaced by a newer copy).

        A deflated dataset is inflated first within ``settings.dataset_limits`` (core/inflate.py):
        past them InflateLimitExceeded, a broken stream InvalidInstance; nothing is stored. Then the
        ``before_ingest`` check of its SOP class, if any, may refuse it (core/rejection.py).
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
        started = time.perf_counter()
        metrics = self.metrics
        check = self.before_ingest.get(staged.sop_class_uid) if replace_key is None else None
        try:
            if check is not None:
                try:
                    await check(staged, origin)
                except BaseException:
                    staged.path.unlink(missing_ok=True)
                    raise
            if self._may_ingest_here(staged, replace_key, origin):
                outcome = self._ingest_here(loop, staged, origin)  # releases the lock
            else:
                future: asyncio.Future[StoreOutcome] = loop.create_future()
                # One hop: the writer parses the header too (0.1 ms; another thread
                # would only add a hand-over under the GIL).
                self._queue.put(_IngestJob(loop, future, staged=staged, origin=origin, replace_key=replace_key))
                outcome = await future
        except ArchiveError as exc:
            if metrics is not None:
                metrics.ingest_failed(origin.kind, exc)
            raise
        if metrics is not None:
            metrics.ingested(origin.kind, outcome.status.value, outcome.size, time.perf_counter() - started)
        for listener in self.on_stored:  # empty on a plain DICOM archive: ~0 cost
            try:
                listener(outcome)
            except Exception:
                log.exception("after-ingest listener %r failed", listener)
        return outcome

    def _may_ingest_here(self, staged: StagedPath, replace_key: str | None, origin: Origin) -> bool:
        """Whether this event loop may run the ingest itself; if so, the commit lock is now held by it.

        Only an instance received into memory whose durability is the intake log's one flush (no file of
        its own to fsync, no blob store upload), on a SQLite index (its statements are work of this
        process; PostgreSQL's are round trips the loop would sit through), when the writer is idle and
        nothing waits in its queue (an ingest that comes while the writer is busy queues behind it, as
        before), no other process holds the index's write lock, no other sender stored anything in the
        last HERE_ALONE_SECONDS (several at once share the writer's batches and their flush), and not
        within a pause after slow ones."""
        now = time.monotonic()
        sender = (origin.peer_host, origin.peer_port)
        alone = sender == self._last_sender or now - self._last_sender_at > HERE_ALONE_SECONDS
        self._last_sender, self._last_sender_at = sender, now
        if (
            not alone
            or not self._here_possible
            or staged.data is None
            or replace_key is not None
            or self._intake is None
            or self._closed
            or not self._queue.empty()
            or now < self._here_paused_until
        ):
            return False
        if not self._commit_lock.acquire(blocking=False):
            return False
        try:
            # another process writing the index (``minipacs import`` beside the server, a command): its
            # transaction would be waited for here, on the loop, up to SQLite's busy timeout; the
            # writer thread waits for it instead. Free: the ingest's transaction is begun now.
            if self._index_writer.begin_if_free():
                return True
        except Exception:  # the writer's transaction finds and reports what is wrong
            log.debug("could not look at the index's write lock", exc_info=True)
        self._commit_lock.release()
        return False

    def _ingest_here(self, loop: asyncio.AbstractEventLoop, staged: StagedPath, origin: Origin) -> StoreOutcome:
        """Steps 0-2 of the module docstring for one ingest, on the calling thread, which holds the commit
        lock (:meth:`_may_ingest_here`); releases it. The outcome, or its ArchiveError raised."""
        try:
            job = _IngestJob(loop, loop.create_future(), staged=staged, origin=origin)
            begun = time.monotonic()
            try:
                result = self._commit_batch([job])[0]
            except Exception as exc:  # as in the writer: anything else is the index's failure
                log.exception("index writer batch of 1 job (on the event loop) failed")
                result = ArchiveError(f"the index writer failed ({type(exc).__name__}); see the server log")
            took = time.monotonic() - begun
            if self._here_guard.too_slow(took):
                pause = self.settings.loop_ingest_pause_seconds
                self._here_paused_until = time.monotonic() + pause
                log.info(
                    "ingests on the event loop took over %.1f ms on average (the last %.1f ms; "
                    "loop_ingest_max_ms): through the index writer for %.0f s (loop_ingest_pause_seconds)",
                    self.settings.loop_ingest_max_seconds * 1e3,
                    took * 1e3,
                    pause,
                )
            self._request_checkpoint_if_due()
        finally:
            try:
                self._index_writer.end_begun()  # no transaction continued it (the instance was refused)
            except Exception:  # the writer's next transaction finds what is wrong
                log.debug("could not roll back the transaction begun for an ingest", exc_info=True)
                self._index_writer.close()
            self._commit_lock.release()
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, StoreOutcome)
        return result

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
        values["node"] = rec.node or self.settings.node_id
        return await self.write(lambda conn: repo.save_association(conn, values, rec.id))

    async def list_associations(self, limit: int = 100) -> list[AssociationRecord]:
        """The latest associations, newest first."""
        rows = await self.read(lambda conn: repo.load_associations(conn, limit))
        return [AssociationRecord(**row) for row in rows]

    async def count_instances(self) -> int:
        return await self.read(repo.count_instances)

    async def get_instance_bytes(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, read through the blob store; raises NotFound."""
        key = await self.read(lambda conn: repo.blob_key_of(conn, sop_instance_uid))
        if key is None:
            raise NotFound(f"SOP Instance {sop_instance_uid[:70]!r} is not in the archive")

        def read() -> bytes:
            with self.blobs.open(key) as fh:
                return fh.read()

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:  # BlobNotFound too
            raise NotFound(f"SOP Instance {sop_instance_uid} is indexed but its file {key} is missing") from None

    # ------------------------------------------------------------------ the writer thread

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch: list[WriterJob] = [first]
            pending = self._queue
            # this thread is the queue's only consumer: a job empty() saw is still there for get_nowait()
            while len(batch) < MAX_BATCH and not pending.empty():
                job = pending.get_nowait()
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            with self._commit_lock:
                try:
                    results = self._commit_batch(batch)
                except Exception as exc:  # the writer must survive anything
                    log.exception("index writer batch of %d job(s) failed", len(batch))
                    failure = ArchiveError(f"the index writer failed ({type(exc).__name__}); see the server log")
                    results = [failure] * len(batch)
                self._request_checkpoint_if_due()
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job[Any], object]]] = {}
            for job, result in zip(batch, results, strict=True):
                if isinstance(job, _Barrier):
                    job.error = result if isinstance(result, BaseException) else None
                    job.done.set()
                else:
                    by_loop.setdefault(job.loop, []).append((job, result))
            for loop, settled in by_loop.items():
                _resolve_all(loop, settled)
        self._index_writer.close()

    def _request_checkpoint_if_due(self) -> None:
        """After a batch (commit lock held): wake the checkpointer once enough was logged since it last ran."""
        intake = self._intake
        if intake is not None and intake.bytes_appended - self._bytes_at_request >= (
            self.settings.intake_checkpoint_bytes
        ):
            self._bytes_at_request = intake.bytes_appended
            self._checkpoint_wanted.set()

    def _commit_batch(self, batch: list[WriterJob]) -> list[object]:
        """Steps 1-4 of the module docstring; one result (value or exception) per job."""
        ingests = [job for job in batch if isinstance(job, _IngestJob)]
        results: list[object] = [None] * len(batch)
        for index, job in enumerate(batch):
            if isinstance(job, _IngestJob):
                try:
                    if job.staged.data is not None:  # received into memory (StagingFile)
                        job.data = job.staged.data
                    elif self._intake is not None:
                        # A small file goes into the intake log: read it once, here, for the record, the
                        # walk and the header alike
                        if os.stat(job.staged.path).st_size <= self.settings.intake_inline_max_bytes:
                            job.data = job.staged.path.read_bytes()
                except OSError as exc:
                    results[index] = _staged_failure(job, exc)
        self._batch_flush = self._log_batch(batch, results)
        try:
            return self._check_and_apply(batch, results, ingests)
        finally:
            if self._batch_flush is not None:  # a transaction failed before its wait: none may overlap a flush
                self._batch_flush.settle()
                self._batch_flush = None

    def _log_batch(self, batch: list[WriterJob], results: list[object]) -> _BatchFlush | None:
        """Write the intake records of the batch's small ingests and start their flush, before the checks:
        the flush (~0.1-0.4 ms) then runs in the C library's thread while this one walks the datasets,
        runs the statements and moves the files; each transaction waits for it before its commit
        (core/intake.py). A record of a dataset the checks or the duplicate policy then refuse is
        harmless: no row ever names its blob key, so the replay restores nothing for it, or ingests
        it again and refuses it again."""
        intake = self._intake
        if intake is None:
            return None
        logged = [
            job
            for index, job in enumerate(batch)
            if isinstance(job, _IngestJob) and results[index] is None and job.data is not None
        ]
        if not logged:
            return None
        packs = self._bytes_store
        for job in logged:
            job.logged = True
            if packs is not None and job.staged.data is not None:
                try:
                    job.pack_key = packs.pack_key(len(job.staged.data))
                except OSError as exc:  # a new pack cannot be made (the disk is full): a file of its own
                    log.error("cannot start a new pack of small instances: %s", exc)
            if job.pack_key is None:
                job.token = new_copy_token()
        try:
            lsns = intake.write([(self._record_meta(job), job.data or b"") for job in logged])
            flush = intake.start_flush(lsns)
        except IntakeLogError as exc:
            log.error("%s", exc)
            for index, other in enumerate(batch):
                if isinstance(other, _IngestJob) and other.logged:
                    results[index] = _log_failure(exc)
            return None
        for job, lsn in zip(logged, lsns, strict=True):
            job.lsn = lsn
        return _BatchFlush(intake, flush)

    def _check_and_apply(
        self, batch: list[WriterJob], results: list[object], ingests: list[_IngestJob]
    ) -> list[object]:
        """Steps 1-2 of the module docstring for every job not yet failed; one result per job."""
        for index, job in enumerate(batch):
            if isinstance(job, _IngestJob):
                if results[index] is not None:
                    continue
                try:
                    job.header, job.key, job.size = prepare_ingest(
                        job.staged, self.settings.max_sequence_depth, job.data, job.token, job.pack_key
                    )
                    if self.settings.fsync and not job.logged:
                        fsync_path(job.staged.path)
                except ArchiveError as exc:
                    results[index] = exc
                except OSError as exc:
                    results[index] = _staged_failure(job, exc)
            elif isinstance(job, _CallJob) and job.removes_entities:
                self._keys.clear()  # a deletion may have removed cached studies or series
        pending = [i for i, r in enumerate(results) if r is None]
        try:
            self._transaction_retried(batch, pending, results)
        except Exception as exc:  # noqa: BLE001 - one job spoiled the batch: retry each on its own
            # Each job is tried again on its own, with the cached study/series keys forgotten: a job
            # may have spoiled the batch, or another process on the same index (a second node on one
            # PostgreSQL) may have inserted the same instance, study or series between our read and
            # our insert (a unique violation), or deleted a series whose key we cached (a foreign-key
            # violation); the next try sees its commit and applies the duplicate policy.
            self._keys.clear()
            if len(pending) > 1:
                log.info("index batch of %d failed (%s); retrying job by job", len(pending), exc)
            alone = len(pending) == 1  # the batch's failure was already this job's first try
            for index in pending:
                failure: Exception | None = exc if alone else None
                for _ in range(1 if alone else 2):
                    if isinstance(failure, OSError):
                        break  # a disk error: trying again will not help
                    try:
                        self._transaction_retried(batch, [index], results)
                    except Exception as single:  # noqa: BLE001 - this job's own failure
                        self._keys.clear()
                        failure = single
                    else:
                        failure = None
                        break
                if failure is not None:
                    results[index] = _as_failure(failure)
        for index, job in enumerate(batch):
            # A committed STORED/REPLACED file was renamed into storage; any other is still in staging.
            if isinstance(job, _IngestJob) and not _moved_into_storage(results[index]):
                job.staged.path.unlink(missing_ok=True)
        self._keys.bound()
        if ingests:
            self._stats.batches += 1
            self._stats.ingested += len(ingests)
            self._stats.largest_batch = max(self._stats.largest_batch, len(ingests))
            self._stats.multi_job_batches += len(ingests) > 1
        return results

    def _transaction_retried(self, batch: list[WriterJob], indexes: list[int], results: list[object]) -> None:
        """``_transaction``, tried again after a deadlock or a serialization failure (issue 11: they
        must never reach a peer as 0x0110 or a client as HTTP 500), with a bounded, jittered back-off
        so that the two nodes do not meet again in step. Nothing of an aborted try was committed;
        the study/series keys it cached are forgotten."""
        wait = TRANSIENT_FIRST_WAIT
        for attempt in range(1, TRANSIENT_TRIES + 1):
            try:
                self._transaction(batch, indexes, results)
                return
            except Exception as exc:
                if attempt == TRANSIENT_TRIES or not is_transient(exc):
                    raise
                self._keys.clear()
                self._stats.transient_retries += 1
                log.info(
                    "index transaction of %d job(s) aborted (%s); try %d", len(indexes), _sqlstate(exc), attempt + 1
                )
                time.sleep(wait * random.uniform(0.5, 1.5))  # jitter, not secrecy
                wait *= 2

    def _transaction(self, batch: list[WriterJob], indexes: list[int], results: list[object]) -> None:
        """Apply the jobs at ``indexes`` in ONE transaction; files move in before the commit; the
        blobs of the rows it replaced are queued for removal in it (core/blob_removals.py).

        A transaction of logged ingests only commits without waiting for the disk: their intake
        records keep them (core/intake.py). The batch's records were written, and their flush started,
        before the checks (:meth:`_log_batch`); the commit waits for the flush, so a row never commits
        before its record is durable. Any other job commits durably."""
        if not indexes:
            return
        now = dt.datetime.now(dt.UTC)
        done: dict[int, object] = {}
        stale: list[blob_removal_repo.Replaced] = []
        moves: list[tuple[StagedPath, str]] = []
        journal: list[dict[str, Any]] = []  # changes-journal rows of the ingests, in job order
        durable = not all(isinstance(batch[i], _IngestJob) and batch[i].logged for i in indexes)  # type: ignore[union-attr]
        lsns = [job.lsn for index in indexes if isinstance(job := batch[index], _IngestJob) and job.lsn]
        last_lsn = 0
        moved: list[tuple[StagedPath, str]] = []
        committing = False
        try:
            with self._index_writer.transaction(durable=durable) as conn:  # a failure rolls back, drops the connection
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
                if stale:  # the replaced copies' files stay for retrieves that chose them
                    remove_after = now + dt.timedelta(seconds=self.settings.keep_replaced_seconds)
                    blob_removal_repo.queue(conn, stale, remove_after)
                if lsns:  # in this transaction: it commits only once the records are durable (below)
                    last_lsn = max(lsns)
                    intake_repo.set_committed_lsn(conn, last_lsn)
                moved = self._move_into_storage(moves)  # after every statement, before the commit
                self.blobs.sync(durable=durable)
                if lsns:
                    assert self._batch_flush is not None
                    self._batch_flush.wait()  # the records are durable (IntakeLogError if they may not be)
                committing = True  # a failing commit may still have committed (a lost connection):
                # its files stay, as they did before the flush thread
        except BaseException:
            if not committing:  # the retry, job by job, puts them again
                self._take_back(moved)
            raise
        if last_lsn:
            self._committed_lsn = last_lsn
        for index, result in done.items():
            results[index] = result

    def _move_into_storage(self, moves: list[tuple[StagedPath, str]]) -> list[tuple[StagedPath, str]]:
        """Rename staged files to their keys (or write those received into memory); returns what was
        put. On failure the puts made are undone (:meth:`_take_back`) so the rolled-back jobs can be
        retried one by one."""
        moved: list[tuple[StagedPath, str]] = []
        try:
            for staged, key in moves:
                if staged.data is not None and self._bytes_store is not None:
                    self._put_from_memory(staged.data, key)
                else:
                    self.blobs.put_from_staging(staged.path, key)
                moved.append((staged, key))
        except BaseException:
            self._take_back(moved)
            raise
        return moved

    def _take_back(self, moved: list[tuple[StagedPath, str]]) -> None:
        """Undo puts of a transaction that will not commit: staged files go back to staging; written
        ones are removed (their bytes are still in memory)."""
        for staged, key in reversed(moved):
            try:
                if staged.data is not None and self._bytes_store is not None:
                    self.blobs.delete(key)
                else:
                    self.blobs.take_back(key, staged.path)
            except (OSError, BlobError) as exc:
                log.error("could not return %s to staging after a failed batch: %s", key, exc)

    def _put_from_memory(self, data: bytes, key: str) -> None:
        """Write an instance received into memory at ``key``, through an empty file the staging pool
        created ahead of time (core/staging.py StagingPool) and a rename: creating a file is the
        kernel's costliest step here (an inode found and initialised: 20 us on a quiet ext4, 0.5-1 ms
        on one without a journal that deleted thousands of files in the last minutes), and the pool's
        thread pays it off this critical path. Not flushed: the intake log holds the bytes until a
        checkpoint. When the pool has no file ready, ``put_bytes`` creates it at the key."""
        assert self._bytes_store is not None
        if slot_of(key) is not None:  # a pack entry: no file of its own
            self._bytes_store.put_bytes(data, key)
            return
        ready = self._staging_pool.take_ready()
        if ready is None:
            self._bytes_store.put_bytes(data, key)
            return
        path, fh = ready
        try:
            fh.write(data)
            fh.close()
            self.blobs.put_from_staging(path, key)
        except BaseException:
            fh.close()
            path.unlink(missing_ok=True)
            raise

    def _apply(
        self,
        conn: IndexConnection,
        job: WriterJob,
        now: dt.datetime,
        stale: list[blob_removal_repo.Replaced],
        moves: list[tuple[StagedPath, str]],
        journal: list[dict[str, Any]],
    ) -> object:
        if isinstance(job, _CallJob):
            # A call that refuses part way (an ArchiveError after some of its writes) is recorded as
            # refused while the rest of the batch commits: its own writes go back to this savepoint, or
            # they would be committed half done (an HL7 message's first orders, a correction's first rows)
            with conn.begin_nested():
                result = job.call(conn)
            if job.removes_entities:
                # an ingest later in this transaction (or a retry job by job) must not reuse
                # the key of a series or study this call deleted (a FOREIGN KEY failure)
                self._keys.clear()
            return result
        if isinstance(job, _Barrier):
            intake_repo.touch(conn)
            return None
        if not isinstance(job, _IngestJob):  # pragma: no cover - the queue holds only these
            raise TypeError(f"unknown writer job {job!r}")
        header = job.header
        if header is None:  # pragma: no cover - prepare_ingest ran or the job failed before
            raise ArchiveError("internal error: ingest job without a parsed header")
        uid = header.get("SOPInstanceUID")
        if self.rejections_possible and job.replace_key is None:
            code = rejection_repo.code_of(conn, uid)
            if code is not None and code not in STORABLE_AFTER_REJECTION:
                raise PreviouslyRejected(
                    f"SOP Instance {uid} was rejected by a rejection note ({code}, DCM); it is not stored again"
                )
        outcome = StoreOutcome(
            sop_instance_uid=uid,
            status=StoreStatus.STORED,
            relative_path=job.key,
            size=job.size,
            study_instance_uid=header.get("StudyInstanceUID"),
            series_instance_uid=header.get("SeriesInstanceUID"),
            sop_class_uid=header.get("SOPClassUID"),
            origin=job.origin,
        )
        if job.replace_key is None and repo.inserts_new_instance(conn):
            cached_series_pk = self._keys.series.get(outcome.series_instance_uid)
            if cached_series_pk is not None:
                # The usual C-STORE: a series already known, an instance not yet stored. One statement
                # inserts its row unless its SOP Instance UID is stored, then writes nothing, and the
                # duplicate policy decides below, as for any instance (tests/core/test_ingest_fast_path.py).
                # SQLite: PostgreSQL takes the two statements (index/repository.py insert_new_instance).
                values = self._instance_values(job, header, cached_series_pk, now)
                if repo.insert_new_instance(conn, values) is not None:
                    journal.append(change_row(ChangeType.NEW_INSTANCE, uid, outcome.study_instance_uid, now))
                    moves.append((job.staged, job.key))
                    return outcome
        existing = repo.find_instance(conn, uid)
        replace_pk: int | None = None
        if job.replace_key is not None:
            if existing is None or existing[1] != job.replace_key:
                raise CorrectionConflict(
                    f"SOP Instance {uid} was deleted or stored again while it was being corrected; "
                    "the new copy was kept as it is (run the correction again to correct it)"
                )
            replace_pk = existing[0]
            outcome = replace(outcome, status=StoreStatus.REPLACED)
        elif existing is not None:
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
        values = self._instance_values(job, header, series_pk, now)
        if job.replace_key is not None:  # a corrected copy: still the instance that was received then, in the
            # transfer syntax it had (compressed or not: core/corrections.py rewrites it as it is stored)
            for kept in ("received_at", "origin_kind", "calling_aet", "called_aet", "peer_host"):
                del values[kept]
        elif replace_pk is not None:  # a new copy as it arrived: what compression knew of the old one goes
            values.update(original_size=None, compression="")
        if replace_pk is not None:  # the PS3.18 metadata kept for the replaced copy is computed again
            metadata_repo.forget(conn, [uid])
        repo.write_instance(conn, values, replace_pk)
        journal.append(change_row(ChangeType.NEW_INSTANCE, uid, study_uid, now))
        moves.append((job.staged, job.key))
        if existing is not None and existing[1] != job.key:  # never equal: each copy has its own key
            # the replaced row's blob, queued in this transaction, removed after the grace period
            reason = "corrected" if job.replace_key is not None else "replaced"
            stale.append(blob_removal_repo.Replaced(existing[1], existing[2], reason))
        return outcome

    @staticmethod
    def _instance_values(job: _IngestJob, header: InstanceHeader, series_pk: int, now: dt.datetime) -> dict[str, Any]:
        """The instance row of an ingest, as received (a replacement or a correction adjusts it)."""
        origin = job.origin
        return {
            **repo.row_values(header, repo.INSTANCE_COLUMNS),
            "series_pk": series_pk,
            "transfer_syntax_uid": job.staged.transfer_syntax_uid,
            "blob_key": job.key,
            "size": job.size,
            "received_at": now,
            "origin_kind": _clean(origin.kind),
            "calling_aet": _clean(origin.calling_aet),
            "called_aet": _clean(origin.called_aet),
            "peer_host": _clean(origin.peer_host),
        }

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
