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
study, series (Referenced Series Sequence) and SOP Instance UID (Referenced SOP Sequence).

**Before it is stored** (``Archive.before_ingest``, so before the C-STORE response or the STOW-RS
answer) the note is read and judged: a note that cannot be applied is refused with a failure and is
**not stored** -- the sender is told that its rejection did not happen, and no unapplied note lies in
the study to be queried, retrieved or routed to an archive downstream that would apply it. Refused:

- a note whose evidence lists no instance (or only itself) or holds an invalid UID (RejectionNoteError:
  C-STORE 0xC002), or lists more than MAX_REFERENCES instances or is larger than MAX_NOTE_BYTES
  (RejectionNoteTooLarge: 0xA700, send several smaller notes);
- a note its sender may not make (RejectionNotAllowed: 0xA775, the status dcm4chee-arc answers for a
  rejection its configuration does not allow): ``rejection_notes = off`` (RejectionNotesOff), or
  ``registered`` and the calling AE title is not a registered node (UnregisteredRejecter).

services/status.py and web/dicomweb.py (FailureReason) hold the statuses, each with an Error Comment
that says why. A note that is accepted is stored like any instance (so it is queried, retrieved and
routed on: downstream archives and viewers learn of it; dcm4chee-arc's default view shows such notes
too, and hides only those of 113039), and then, once it is durable, the instances it lists are
**deleted**, in one transaction with a record of each in ``rejected_instances`` (an instance it lists
that is not stored is recorded too: it may arrive later; ``GET /api/rejections`` lists them). A later
store of a recorded instance is refused (PreviouslyRejected: 0xA771, as dcm4chee answers it), unless
the reason was 113039: a retention deletion is not a verdict on the images, and storing them again is a
deliberate restore.

Who may reject (the ``rejection_notes`` setting): ``registered`` (the default) applies notes that come
from a registered node (its calling AE title is in the AE registry, whose access rules admitted the
association from that node's address) and from HTTP users allowed to store (they may delete studies
anyway); ``any`` also from unregistered peers the access rules let store; ``off`` refuses every note. A
refused note says why in the log and, when its sender may not reject, in the audit trail. A peer allowed
to store but not to delete could otherwise delete any study it can name.

Not done: hiding instead of deleting (dcm4chee keeps rejected instances hidden for a while and can
restore them), the IOCM "regular use" view and Instance Availability Notifications of rejections, a
rejection by REST (``DELETE`` does that job), notes stored by ``minipacs import`` beside a server (that
process applies none), and an apply that survives a crash between the note's store and its application
(send the note again: applying it twice is harmless). The deletion follows the answer: a Success says
the note was stored and will be applied, which a failure of the index afterwards can still prevent (the
log and the audit trail then say so).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import pydicom
from pydicom.dataset import Dataset

from minipacs.core.archive import Archive
from minipacs.core.audit import Action, ActorKind, Outcome
from minipacs.core.delete import delete_resources
from minipacs.core.errors import (
    RejectionNotAllowed,
    RejectionNoteError,
    RejectionNotesOff,
    RejectionNoteTooLarge,
    UnregisteredRejecter,
)
from minipacs.core.model import Origin, StagedPath, StoreOutcome, StoreStatus
from minipacs.core.structure import check_staged
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
#: At most this many instances in one note (a note is untrusted input); more: the note is refused.
MAX_REFERENCES: Final = 100_000
#: A rejection note larger than this is refused unread (a note lists UIDs: ~120 bytes per instance, so
#: MAX_REFERENCES of them take ~12 MB); a Key Object Selection this large with another title is stored.
MAX_NOTE_BYTES: Final = 64 * 1024 * 1024
#: (0008,0016) SOP Class UID and (0040,A043) Concept Name Code Sequence: all a title check reads.
_TITLE_TAGS: Final = [0x00080016, 0x0040A043]
#: Seconds between looks at whether another node recorded a rejection (``Archive.rejections_possible``).
REFRESH_SECONDS: Final = 5.0


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


def rejection_code(ds: Dataset) -> str | None:
    """The CID 7011 code of ``ds``'s title when it is a Key Object Selection titled as a rejection note."""
    if str(ds.get("SOPClassUID", "")).strip("\0 ") != KEY_OBJECT_SELECTION:
        return None
    title = ds.get("ConceptNameCodeSequence")
    if not title:
        return None
    code = str(title[0].get("CodeValue", "")).strip()
    if code not in REJECTION_CODES or str(title[0].get("CodingSchemeDesignator", "")).strip() != "DCM":
        return None
    return code


def read_note(ds: Dataset) -> RejectionNote | None:
    """The rejection ``ds`` is, or None when it is not a rejection note (another KOS, another class).
    RejectionNoteError when it is titled as one but its evidence cannot be used; RejectionNoteTooLarge
    past MAX_REFERENCES."""
    code = rejection_code(ds)
    if code is None:
        return None
    references: list[tuple[str, str, str]] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", None) or []:
        study_uid = _uid(study, 0x0020000D)
        for series in study.get("ReferencedSeriesSequence", None) or []:
            series_uid = _uid(series, 0x0020000E)
            for sop in series.get("ReferencedSOPSequence", None) or []:
                references.append((study_uid, series_uid, _uid(sop, 0x00081155)))
                if len(references) > MAX_REFERENCES:
                    raise RejectionNoteTooLarge(
                        f"the rejection note lists more than {MAX_REFERENCES} instances; send several notes"
                    )
    note_uid = _uid(ds, 0x00080018)
    unique = tuple(dict.fromkeys(r for r in references if r[2] != note_uid))
    if not unique:  # (0040,A375) is Type 1 in the Key Object Document Module (PS3.3 C.17.6.2)
        raise RejectionNoteError(
            "the rejection note lists no instance to reject in its Current Requested Procedure Evidence "
            "Sequence (0040,A375) but itself, if any"
            if references
            else "the rejection note lists no instance in its Current Requested Procedure Evidence Sequence"
        )
    return RejectionNote(note_uid, code, unique)


def read_staged(staged: StagedPath, max_depth: int) -> RejectionNote | None:
    """The rejection note a staged Key Object Selection is, or None; refusals as :func:`read_note`, and
    RejectionNoteTooLarge past MAX_NOTE_BYTES. Blocking. The dataset's structure is walked first
    (core/structure.py, within ``max_depth``: what the ingest would refuse as broken is refused here
    alike, before pydicom reads a hostile one)."""
    check_staged(staged.path, staged.dataset_offset, staged.transfer_syntax_uid, max_depth, staged.data)
    size = len(staged.data) if staged.data is not None else staged.path.stat().st_size

    def source() -> BinaryIO:
        return io.BytesIO(staged.data) if staged.data is not None else staged.path.open("rb")

    if size > MAX_NOTE_BYTES:  # only its title is read
        with source() as fh:
            if rejection_code(pydicom.dcmread(fh, specific_tags=_TITLE_TAGS)) is None:
                return None
        raise RejectionNoteTooLarge(f"the rejection note is larger than {MAX_NOTE_BYTES} bytes; send several notes")
    with source() as fh:
        return read_note(pydicom.dcmread(fh, stop_before_pixels=True))


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
    """Judges each rejection note before it is stored (``Archive.before_ingest``) and applies the ones
    stored (an ``on_stored`` listener); serve starts it."""

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
        self.archive.before_ingest[KEY_OBJECT_SELECTION] = self.check
        self.archive.on_stored.append(self.stored)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="minipacs-rejections")

    async def close(self) -> None:
        if self.archive.before_ingest.get(KEY_OBJECT_SELECTION) == self.check:
            del self.archive.before_ingest[KEY_OBJECT_SELECTION]
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

    async def check(self, staged: StagedPath, origin: Origin) -> None:
        """Refuse a rejection note that cannot be applied before it is stored (the module docstring):
        raises a RejectionRefused that says why; returns for any other Key Object Selection."""
        depth = self.archive.settings.max_sequence_depth
        try:
            note = await asyncio.to_thread(read_staged, staged, depth)
        except RejectionNoteError as exc:
            self.refused += 1
            log.warning("rejection note %s from %s refused: %s", staged.sop_instance_uid, _actor(origin)[1], exc)
            raise
        except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
            # pydicom cannot read what the structure walk let through: whether it is a note cannot be told;
            # the ingest stores it (or refuses it) as any other instance
            log.info("Key Object Selection %s not read as a rejection note: %s", staged.sop_instance_uid, exc)
            return
        if note is None:
            return
        refusal = await self._refusal(origin)
        if refusal is not None:
            self.refused += 1
            log.warning("rejection note %s (%s) refused: %s", note.note_uid, note.meaning, refusal)
            self._audit(note, origin, f"rejection note refused: {refusal}", failed=True)
            raise refusal

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
            if refusal is not None:
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

    async def _refusal(self, origin: Origin | None) -> RejectionNotAllowed | None:
        """Why a note from ``origin`` may not be applied, or None (the module docstring: who may reject)."""
        if self.mode == "off":
            return RejectionNotesOff(
                "this archive takes no rejection notes (rejection_notes = off); nothing was rejected or stored"
            )
        if origin is None or origin.kind != "dicom" or self.mode == "any":
            return None  # HTTP users who may store, the archive's own imports
        calling, host = origin.calling_aet.strip(), origin.peer_host

        def registered(conn: IndexConnection) -> bool:
            return bool(nodes_repo.nodes_titled(conn, calling))

        if await self.archive.read(registered):
            return None
        return UnregisteredRejecter(
            f"{calling!r} at {host} is not a registered node, and rejection_notes = registered takes notes "
            "only from registered nodes: register it, or set rejection_notes = any; nothing was rejected or stored"
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
    "RejectionNotAllowed",
    "RejectionNote",
    "RejectionNoteError",
    "RejectionNoteTooLarge",
    "Rejections",
    "read_note",
    "read_staged",
    "rejection_code",
]
