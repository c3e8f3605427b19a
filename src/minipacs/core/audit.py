"""The audit trail: who did what to which patient and study (docs/AUDIT.md).

``AuditLog.record(...)`` is the one call every feature makes: it is synchronous, takes
no lock the event loop could wait on for long and does no I/O; the event waits in
memory and a background task (``run``, started by bootstrap) writes the waiting events
in ONE index transaction every ``flush_seconds`` (and whenever ``batch`` are waiting),
then prunes rows older than ``retention_days`` once an hour.
Whoever deletes or moves studies calls ``before_removal`` first (see docs/AUDIT.md). So an audited request
costs a list append, never an index write of its own.

Granularity (what one row stands for):
- HTTP: one row per request that reads or changes a study (a WADO-RS frame request is
  one "viewed" row, folded: the same actor viewing the same study again within
  ``fold_seconds`` adds no row).
- DICOM: one row per C-MOVE / C-GET request and study ("retrieved"), one per C-FIND
  that names a patient ("queried"); C-STORE is not audited per instance: the association
  log (``minipacs log``) already records each association with its counts, and an
  audit row per instance would be an index write per C-STORE.
- Events whose row names a study but not the patient get the Patient ID from the index
  when the batch is written.

If the index cannot take a batch it is kept and retried at the next flush; more than
``max_pending`` waiting events and the oldest are dropped (counted, logged).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import getpass
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from minipacs.index import audit_repo
from minipacs.index.database import IndexConnection

log = logging.getLogger("minipacs.audit")


def login_name() -> str:
    """The login name of the user running this process (a command, or the server), for the audit
    trail and the corrections log; "?" when the system cannot say: a container started with a
    numeric user that /etc/passwd does not know makes ``getpass.getuser`` raise (KeyError), and that
    must not stop an export, a correction or the server's start."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


class Action(enum.Enum):
    """What was done (issue 14): the verbs a row may carry."""

    VIEWED = "viewed"  # WADO, the UI's study page
    DOWNLOADED = "downloaded"  # REST /file, /archive
    SENT = "sent"  # a send to another node was asked for
    RETRIEVED = "retrieved"  # C-MOVE, C-GET (by a peer), or a retrieve we asked for
    QUERIED = "queried"  # a query that names a patient
    DELETED = "deleted"
    MODIFIED = "modified"
    MERGED = "merged"
    ANONYMIZED = "anonymized"
    EXPORTED = "exported"  # DICOM media (REST /media, CLI export)
    STORED = "stored"  # reserved: per association, not per instance (see the module docstring)
    LOGIN = "login"  # a UI login, accepted (outcome 0) or refused (outcome 4)
    LOGOUT = "logout"  # a UI logout
    APP_START = "app_start"  # `minipacs serve` is ready
    APP_STOP = "app_stop"  # `minipacs serve` stops cleanly
    AUDIT_READ = "audit_read"  # the audit trail itself was read (GET /api/audit, /ui/audit, `minipacs audit`)
    NETWORK_CONFIG = "network_config"  # the DICOM nodes were changed (REST /api/nodes, `minipacs nodes`)
    SOFTWARE_CONFIG = "software_config"  # the auto-routing rules were changed (REST /api/rules)


class Outcome(enum.IntEnum):
    """How the event ended: the PS3.15 A.5 EventOutcomeIndicator, stored as it is (column ``outcome``)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # a refused login
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ActorKind(enum.Enum):
    """Who acted."""

    USER = "user"  # an HTTP user (Basic or UI session)
    TOKEN = "token"  # an HTTP API token
    HTTP = "http"  # an HTTP caller while no users are configured (loopback only)
    DICOM = "dicom"  # a DICOM peer: actor is its AE title
    HL7 = "hl7"  # an HL7 sender: actor is its sending application^facility
    RULE = "rule"  # an automatic rule: actor is the rule's name
    CLI = "cli"  # the command line on the server
    SYSTEM = "system"


#: Actions folded within ``fold_seconds`` (a viewer asks for hundreds of frames of one study).
FOLDED: Final = frozenset({Action.VIEWED, Action.QUERIED, Action.AUDIT_READ})

#: Most rows one query returns.
MAX_LIMIT: Final = 1000


@dataclass(frozen=True)
class AuditSettings:
    retention_days: int = 365  # 0: keep for ever
    flush_seconds: float = 1.0
    batch: int = 500
    max_pending: int = 100_000
    fold_seconds: float = 60.0
    prune_seconds: float = 3600.0


Writer = Callable[[Callable[[IndexConnection], Any]], Awaitable[Any]]


class AuditLog:
    """Buffered audit rows; ``write``/``read`` run a call in the index writer / on a reader."""

    def __init__(self, write: Writer, read: Writer, node: str = "", settings: AuditSettings | None = None) -> None:
        self._write = write
        self._read = read
        self.node = node
        self.settings = settings or AuditSettings()
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # record() may be called from worker threads too
        self._folded: dict[tuple[str, ...], float] = {}
        self._flushing: asyncio.Lock | None = None
        self.dropped = 0
        #: Called on the event loop with each batch once it is in the index (services/audit_syslog.py
        #: sends them on as DICOM Audit Messages); quick, must not raise.
        self.forward: list[Callable[[list[dict[str, Any]]], None]] = []

    def record(
        self,
        action: Action | str,
        *,
        actor_kind: ActorKind | str = ActorKind.SYSTEM,
        actor: str = "",
        address: str = "",
        patient_id: str = "",
        study_uid: str = "",
        detail: str = "",
        outcome: Outcome | int = Outcome.SUCCESS,
    ) -> None:
        """Note one event; written with the next batch. Values too long are cut to fit; an action, actor
        kind or outcome that is not one of :class:`Action` / :class:`ActorKind` / :class:`Outcome` is a
        ValueError (a programming error)."""
        verb = Action(action).value
        kind = ActorKind(actor_kind).value
        ended = int(Outcome(outcome))
        row = {
            "time": dt.datetime.now(dt.UTC),
            "actor_kind": kind,
            "actor": actor[:128],
            "address": address[:64],
            "action": verb,
            "patient_id": patient_id[:64],
            "study_uid": study_uid[:64],
            "detail": detail[:2000],
            "node": self.node,
            "outcome": ended,
        }
        now = time.monotonic()
        with self._lock:
            if Action(verb) in FOLDED and self.settings.fold_seconds > 0:
                key = (kind, actor[:128], address[:64], verb, patient_id[:64], study_uid[:64], detail[:2000])
                seen = self._folded.get(key)
                if seen is not None and now - seen < self.settings.fold_seconds:
                    return
                self._folded[key] = now
                if len(self._folded) > 10_000:
                    horizon = now - self.settings.fold_seconds
                    self._folded = {k: t for k, t in self._folded.items() if t >= horizon}
            self._pending.append(row)
            while len(self._pending) > self.settings.max_pending:
                self._pending.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.error(
                        "audit: %d event(s) dropped: the index has not taken them (see earlier errors)", self.dropped
                    )

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write every waiting event (one transaction per ``batch``); how many were written."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        written = 0
        async with self._flushing:
            while True:
                with self._lock:
                    rows = [self._pending.popleft() for _ in range(min(self.settings.batch, len(self._pending)))]
                if not rows:
                    return written
                # Shielded: a stop that cancels ``run`` while a batch is in the writer (the periodic flush
                # took the Application Stop row a moment before) must not drop the batch's forwarding:
                # the writer commits it anyway, so wait for it, forward it, and only then stop
                write = asyncio.ensure_future(self._write(partial(audit_repo.insert_audit, rows=rows)))
                try:
                    written_rows: list[dict[str, Any]] = await asyncio.shield(write)
                except asyncio.CancelledError:
                    await asyncio.wait([write])  # bounded by one index transaction
                    if not write.cancelled() and write.exception() is None:
                        self._forward(write.result())
                    else:
                        with self._lock:
                            self._pending.extendleft(reversed(rows))
                    raise
                except Exception:
                    with self._lock:
                        self._pending.extendleft(reversed(rows))
                    raise
                written += len(rows)
                self._forward(written_rows)

    def _forward(self, written_rows: list[dict[str, Any]]) -> None:
        for listener in self.forward:
            try:
                listener(written_rows)
            except Exception:  # a listener's bug must not lose the trail
                log.exception("audit: a forwarder failed")

    async def before_removal(self, study_uids: list[str]) -> dict[str, str]:
        """Call before studies are deleted or moved: writes the waiting events (their Patient ID is
        still in the index) and answers Study Instance UID -> Patient ID for the rows about to be recorded."""
        await self.flush()
        found: dict[str, str] = await self._read(lambda conn: audit_repo.patients_of(conn, study_uids))
        return found

    async def prune(self, now: dt.datetime | None = None) -> int:
        """Delete rows older than ``retention_days`` (none when it is 0); how many."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        before = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
        removed: int = await self._write(lambda conn: audit_repo.prune_audit(conn, before))
        if removed:
            log.info("audit: %d row(s) older than %d day(s) pruned", removed, days)
        return removed

    async def run(self) -> None:
        """Flush every ``flush_seconds``, prune every ``prune_seconds``, until cancelled (then flush)."""
        last_prune = -float("inf")
        try:
            while True:
                try:
                    await self.flush()
                    if time.monotonic() - last_prune >= self.settings.prune_seconds:
                        await self.prune()
                        last_prune = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("audit: could not write %d event(s) to the index: %s", self.pending, exc)
                await asyncio.sleep(self.settings.flush_seconds)
        finally:
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - closing: say what is lost
                log.error("audit: %d event(s) not written at shutdown: %s", self.pending, exc)

    async def query(
        self,
        *,
        patient_id: str = "",
        study_uid: str = "",
        actor: str = "",
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Rows matching every filter given, newest first (waiting events written first)."""
        await self.flush()
        limit = max(1, min(limit, MAX_LIMIT))
        rows: list[dict[str, Any]] = await self._read(
            lambda conn: audit_repo.audit_rows(
                conn, patient_id=patient_id, study_uid=study_uid, actor=actor, since=since, until=until, limit=limit
            )
        )
        return rows


#: Query keys that name a patient: a query with one of them set (not universal) is audited as "queried".
PATIENT_KEYS: Final = ("PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDsSequence")


#: What the detail says of a PATIENT-level query that names nobody (it lists patients).
EVERY_PATIENT: Final = "no patient key: a list of patients"


def patient_query(keys: Mapping[str, str], level: str = "") -> tuple[str, str] | None:
    """(Patient ID or "", what was asked) when query ``keys`` (keyword -> text) look for a patient, else None.

    A key that matches everything ("" or "*") names nobody; a wildcard Patient ID is a search for
    patients and is recorded with the pattern as detail, not as the Patient ID. A query at ``level``
    PATIENT is always a patient-level query (its answers are patients' names and IDs): without a
    patient key it is recorded too, with :data:`EVERY_PATIENT` as what was asked."""
    named = {k: v for k, v in keys.items() if k in PATIENT_KEYS and v.strip() not in ("", "*")}
    if not named:
        return ("", EVERY_PATIENT) if level.upper() == "PATIENT" else None
    pid = named.get("PatientID", "")
    exact = pid if pid and not any(c in pid for c in "*?\\") else ""
    return exact, ", ".join(f"{k}={v[:64]}" for k, v in sorted(named.items()))


def row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One audit row as JSON (time in ISO 8601, UTC)."""
    return {**row, "time": row["time"].isoformat()}


__all__ = [
    "EVERY_PATIENT",
    "MAX_LIMIT",
    "PATIENT_KEYS",
    "patient_query",
    "Action",
    "ActorKind",
    "AuditLog",
    "AuditSettings",
    "Outcome",
    "login_name",
    "row_json",
]
