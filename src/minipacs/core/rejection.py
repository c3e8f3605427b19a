"""Rejection notes (IHE RAD TF-1 IOCM, "Imaging Object Change Management"; RAD-66 Rejection Note Stored).

A modality or a workstation that finds images bad (a wrong patient, a failed acquisition, a wrong
worklist entry) sends a **rejection note**: a Key Object Selection Document (SOP Class
1.2.840.10008.5.1.4.1.1.88.59, PS3.3 A.35.4) whose Concept Name Code Sequence, the document's title, is
one of CID 7011 (PS3.16):

- (113001, DCM, "Rejected for Quality Reasons")
- (113037, DCM, "Rejected for Patient Safety Reasons")
- (113038, DCM, "Incorrect Modality Worklist Entry")
- (113039, DCM, "Data Retention Policy Expired")

and whose Current Requested Procedure Evidence Sequence (0040,A375) lists the rejected instances by
study, series (Referenced Series Sequence) and SOP Instance UID (Referenced SOP Sequence). The note is
stored like any instance (so it is queried, retrieved and routed on: downstream archives learn of it),
and then, once it is durable, the instances it lists are **deleted**, in one transaction with a record
of each in ``rejected_instances`` (an instance it lists that is not stored is recorded too: it may
arrive later). A later store of a recorded instance is refused (PreviouslyRejected: the services answer
it as dcm4chee does, services/status.py and web/dicomweb.py), unless the reason was 113039: a retention
deletion is not
a verdict on the images, and storing them again is a deliberate restore.

Who may reject (the ``rejection_notes`` setting): ``registered`` (the default) applies notes that come
from a registered node (its calling AE title is in the AE registry, whose access rules admitted the
association from that node's address) and from HTTP
users allowed to store (they may delete studies anyway); ``any`` also from unregistered peers the access
rules let store; ``off`` stores notes as any other instance and rejects nothing. A note that is not
applied says why in the log and in the audit trail. A peer allowed to store but not to delete could
otherwise delete any study it can name.

Not done: hiding instead of deleting (dcm4chee keeps rejected instances hidden for a while and can
restore them), the IOCM "regular use" view and Instance Availability Notifications of rejections, a
rejection by REST (``DELETE`` does that job), and an apply that survives a crash between the note's
store and its application (send the note again: applying it twice is harmless).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Final

import pydicom
from pydicom.dataset import Dataset

from minipacs.core.archive import Archive
from minipacs.core.audit import Action, ActorKind, Outcome
from minipacs.core.delete import delete_resources
from minipacs.core.errors import ArchiveError
from minipacs.core.model import Origin, StoreOutcome, StoreStatus
from minipacs.dicom.uids import KEY_OBJECT_SELECTION_STORAGE
from minipacs.index import nodes_repo, rejection_repo
from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)

#: Key Object Selection Document Storage (PS3.4 B.5).
KEY_OBJECT_SELECTION: Final = KEY_OBJECT_SELECTION_STORAGE
#: PS3.16 CID 7011 Rejected for Quality Reasons and its siblings: code value -> meaning (scheme DCM).
REJECTION_CODES: Final[dict[str, str]] = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
#: The values of the ``rejection_notes`` setting.
MODES: Final = ("registered", "any", "off")
#: At most this many instances in one note (a note is untrusted input); more: the note is not applied.
MAX_REFERENCES: Final = 100_000
#: A stored note larger than this is not read (a rejection note lists UIDs: a few kB per thousand).
MAX_NOTE_BYTES: Final = 64 * 1024 * 1024
#: Seconds between looks at whether another node recorded a rejection (``Archive.rejections_possible``).
REFRESH_SECONDS: Final = 5.0


class RejectionNoteError(ArchiveError):
    """A note with a rejection title that cannot be applied as it is (the message says why)."""


@dataclass(frozen=True)
class RejectionNote:
    note_uid: str
    code: str
    #: (Study, Series, SOP Instance UID) of each rejected instance.
    references: tuple[tuple[str, str, str], ...]

    @property
    def meaning(self) -> str:
        return REJECTION_CODES[self.code]


def _uid(item: Dataset, tag: int) -> str:
    """A UID of the note, looked at raw: pydicom's own check would only warn of a hostile value."""
    element = item.get_item(tag)
    value = None if element is None else element.value
    raw = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
    text = raw.strip("\0 ")
    if not text or len(text) > 64 or not all(c.isdigit() or c == "." for c in text):
        raise RejectionNoteError(f"the rejection note holds an invalid UID {text[:70]!r}")
    return text


def read_note(ds: Dataset) -> RejectionNote | None:
    """The rejection ``ds`` is, or None when it is not a rejection note (another KOS, another class).
    RejectionNoteError when it is titled as one but its evidence cannot be read."""
    if str(ds.get("SOPClassUID", "")) != KEY_OBJECT_SELECTION:
        return None
    title = ds.get("ConceptNameCodeSequence")
    if not title:
        return None
    code = str(title[0].get("CodeValue", "")).strip()
    if code not in REJECTION_CODES or str(title[0].get("CodingSchemeDesignator", "")).strip() != "DCM":
        return None
    references: list[tuple[str, str, str]] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", None) or []:
        study_uid = _uid(study, 0x0020000D)
        for series in study.get("ReferencedSeriesSequence", None) or []:
            series_uid = _uid(series, 0x0020000E)
            for sop in series.get("ReferencedSOPSequence", None) or []:
                references.append((study_uid, series_uid, _uid(sop, 0x00081155)))
                if len(references) > MAX_REFERENCES:
                    raise RejectionNoteError(f"the rejection note lists more than {MAX_REFERENCES} instances")
    if not references:
        raise RejectionNoteError("the rejection note lists no instance (Current Requested Procedure Evidence)")
    note_uid = _uid(ds, 0x00080018)
    return RejectionNote(note_uid, code, tuple(dict.fromkeys(r for r in references if r[2] != note_uid)))


def _actor(origin: Origin | None) -> tuple[ActorKind, str, str]:
    """Who sent the note, as the audit trail names actors."""
    if origin is None:
        return ActorKind.SYSTEM, "unknown", ""
    if origin.kind == "dicom":
        return ActorKind.DICOM, origin.calling_aet.strip(), origin.peer_host
    if origin.kind in ("stow", "rest"):
        return ActorKind.HTTP, origin.kind, origin.peer_host
    return ActorKind.SYSTEM, origin.kind, origin.peer_host


class Rejections:
    """Applies the rejection notes the archive stores (registered as an ``on_stored`` listener by serve)."""

    def __init__(self, archive: Archive, mode: str = "registered") -> None:
        if mode not in MODES:
            raise ValueError(f"rejection_notes must be one of {', '.join(MODES)}")
        self.archive, self.mode = archive, mode
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        #: Notes applied and notes refused since start (for tests and the curious).
        self.applied = 0
        self.refused = 0

    def start(self) -> None:
        self.archive.on_stored.append(self.stored)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="minipacs-rejections")

    async def close(self) -> None:
        if self.stored in self.archive.on_stored:
            self.archive.on_stored.remove(self.stored)
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.gather(*self._tasks, *([self._refresher] if self._refresher else []), return_exceptions=True)

    async def settled(self) -> None:
        """Wait until every note stored so far has been considered (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _refresh(self) -> None:
        """Another node on the same index may record rejections: look every REFRESH_SECONDS."""
        while not self.archive.rejections_possible:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.archive.rejections_possible = await self.archive.read(rejection_repo.any_rejected)
            except Exception:  # the index is away for a moment: look again later
                log.debug("cannot look for rejected instances", exc_info=True)

    def stored(self, outcome: StoreOutcome) -> None:
        """The after-ingest listener: quick; a Key Object Selection document is looked at in a task."""
        if outcome.sop_class_uid != KEY_OBJECT_SELECTION or self.mode == "off":
            return
        if outcome.status not in (StoreStatus.STORED, StoreStatus.REPLACED):
            return
        task = asyncio.get_running_loop().create_task(self.consider(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def consider(self, outcome: StoreOutcome) -> RejectionNote | None:
        """Read the stored note and apply it if it is a rejection its sender may make; never raises."""
        try:
            note = await asyncio.to_thread(self._read, outcome.relative_path)
        except (RejectionNoteError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            self.refused += 1
            log.warning("rejection note %s not applied: %s", outcome.sop_instance_uid, exc)
            return None
        if note is None:
            return None
        try:
            refusal = await self._refusal(outcome.origin)
            if refusal:
                self.refused += 1
                log.warning("rejection note %s (%s) not applied: %s", note.note_uid, note.meaning, refusal)
                self._audit(note, outcome.origin, f"rejection note not applied: {refusal}", failed=True)
                return None
            await self.apply(note, outcome.origin)
        except Exception:
            self.refused += 1
            log.exception("rejection note %s could not be applied", note.note_uid)
            return None
        return note

    def _read(self, key: str) -> RejectionNote | None:
        if self.archive.blobs.size(key) > MAX_NOTE_BYTES:
            raise RejectionNoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
        with self.archive.blobs.open(key) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        return read_note(ds)

    async def _refusal(self, origin: Origin | None) -> str:
        """Why a note from ``origin`` is not applied, or "" (the module docstring: who may reject)."""
        if origin is None or origin.kind != "dicom" or self.mode == "any":
            return ""  # HTTP users who may store, the archive's own imports
        calling, host = origin.calling_aet.strip(), origin.peer_host

        def registered(conn: IndexConnection) -> bool:
            return bool(nodes_repo.nodes_titled(conn, calling))

        if await self.archive.read(registered):
            return ""
        return (
            f"{calling!r} at {host} is not a registered node (rejection_notes = registered): register it, or "
            "set rejection_notes = any"
        )

    async def apply(self, note: RejectionNote, origin: Origin | None) -> list[str]:
        """Record the note's instances and delete those stored, in one transaction; the UIDs it named
        that were not stored (recorded all the same)."""
        _, actor, address = _actor(origin)
        now = dt.datetime.now(dt.UTC)
        self.archive.rejections_possible = True  # before the commit: an ingest after it must look

        def first(conn: IndexConnection) -> None:
            rejection_repo.record(conn, note.references, note.code, note.note_uid, f"{actor} {address}".strip(), now)

        reason = f"rejected: {note.meaning} (rejection note {note.note_uid})"
        deleted, missing = await delete_resources(
            self.archive, "instance", [sop for _, _, sop in note.references], reason=reason, first=first
        )
        self.applied += 1
        log.info(
            "rejection note %s from %s: %s; %d instance(s) deleted, %d not stored (recorded: refused if sent)",
            note.note_uid,
            actor,
            note.meaning,
            deleted.instances,
            len(missing),
        )
        self._audit(note, origin, f"{reason}: {deleted.instances} instance(s) deleted", failed=False)
        return missing

    def _audit(self, note: RejectionNote, origin: Origin | None, detail: str, *, failed: bool) -> None:
        kind, actor, address = _actor(origin)
        for study in sorted({study for study, _, _ in note.references}):
            self.archive.audit.record(
                Action.DELETED,
                actor_kind=kind,
                actor=actor,
                address=address,
                study_uid=study,
                detail=detail,
                outcome=Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS,
            )


__all__ = [
    "KEY_OBJECT_SELECTION",
    "MODES",
    "REJECTION_CODES",
    "RejectionNote",
    "RejectionNoteError",
    "Rejections",
    "read_note",
]
