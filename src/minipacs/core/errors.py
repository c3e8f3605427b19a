"""Errors the archive core raises.

The core never speaks DIMSE or HTTP: ``services/`` maps these to DIMSE statuses
and ``web/`` to HTTP responses. Every message is a sentence a person can act on.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of everything the archive refuses or fails at."""


class InvalidInstance(ArchiveError):
    """The dataset cannot be parsed, or lacks what the archive needs (UIDs)."""


class BrokenDataset(InvalidInstance):
    """The dataset's element structure is broken (PS3.5 §7.1, §7.5): a length runs past the end or past
    what contains it, bytes after the last element, an invalid explicit VR, a missing delimiter. The
    message (at most 64 characters: it is also the DIMSE Error Comment) says what and where."""


class InvalidIdentifier(InvalidInstance):
    """A UID or other identifier is malformed or hostile (e.g. ``../``)."""


class InstanceMismatch(InvalidInstance):
    """The dataset contradicts what the sender announced (SOP class/instance UID)."""


class InstanceUIDMismatch(InstanceMismatch):
    """The dataset's SOP Instance UID differs from the announced Affected SOP Instance UID
    (not a SOP class mismatch: the class may well be right)."""


class DuplicateInstance(ArchiveError):
    """The SOP Instance UID is already stored and the policy says reject."""


class PreviouslyRejected(ArchiveError):
    """A store of an instance that a rejection note rejected (IHE IOCM, core/rejection.py): refused; the
    services give it their status (services/status.py, web/dicomweb.py), as dcm4chee answers it."""


class RejectionRefused(ArchiveError):
    """A rejection note (IHE IOCM, core/rejection.py) refused before it is stored: the sender is told, and
    nothing is stored or rejected. The subclasses say why; the services give each its status."""


class RejectionNoteError(RejectionRefused):
    """A note titled as a rejection whose evidence cannot be used: no instance listed, an invalid UID."""


class RejectionNoteTooLarge(RejectionNoteError):
    """A rejection note past the archive's limits (instances listed, bytes): split it into several."""


class RejectionNotAllowed(RejectionRefused):
    """The sender may not reject here (the ``rejection_notes`` setting)."""


class RejectionNotesOff(RejectionNotAllowed):
    """``rejection_notes = off``: no rejection note is taken, from anyone."""


class UnregisteredRejecter(RejectionNotAllowed):
    """``rejection_notes = registered`` and the calling AE title is not a registered node."""


class DatasetTooLarge(ArchiveError):
    """The dataset exceeds the configured maximum size."""


class InflateLimitExceeded(DatasetTooLarge):
    """A deflated dataset (PS3.5 A.5) inflates past max_dataset_bytes or max_inflate_ratio."""


class OutOfResources(ArchiveError):
    """Disk full or another resource exhausted; nothing was stored."""


class QueryTooBroad(OutOfResources):
    """A query would read more stored files than ``query_max_file_reads`` to match or answer keys the
    index does not hold (core/query.py); what it found before is still answered."""


class UnreadableInstance(ArchiveError):
    """The instance is stored, but its file cannot be read: broken, or beyond the reading limits."""


class NotFound(ArchiveError):
    """A requested resource is not in the archive."""


class UnknownDestination(ArchiveError):
    """A C-MOVE destination AE title is not in the AE registry."""


class AmbiguousDestination(ArchiveError):
    """A C-MOVE destination AE title belongs to several nodes and none is the requester's host."""


class AccessDenied(ArchiveError):
    """The access policy refuses what a peer asked for; the message names the rule."""


class InvalidQuery(ArchiveError):
    """A query identifier the query engine cannot answer."""


class IdentifierMismatch(InvalidQuery):
    """The identifier does not fit the information model: level, unique keys (PS3.4 C.4.1.2.2)."""


class InvalidKeyValue(InvalidQuery):
    """A key's value cannot be matched: a bad range, a value far too long, a binary key (PS3.4 C.2.2.2)."""


class InvalidCorrection(ArchiveError, ValueError):
    """A modify, merge or series move that cannot be done as asked (core/corrections.py): an attribute that
    may not be changed at that level, a value its VR cannot hold, a merge of a patient with itself."""


class CorrectionConflict(ArchiveError):
    """A correction would collide with what the archive holds (a new Patient ID that another patient already
    has: merge them instead), or a stored copy changed while it was being rewritten."""
