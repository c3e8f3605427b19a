"""DIMSE statuses as data, and the one place archive errors become statuses.

PS3.7 Annex C (general statuses) and PS3.4 Annex B.2.3 (Storage SCP statuses).
"""

from __future__ import annotations

from dataclasses import dataclass

from minipacs.core import access, commitment, errors, mpps, retrieve, transcode
from minipacs.net.memory import DatasetTooLargeForMemory, MemoryBudgetExhausted


@dataclass(frozen=True)
class Status:
    code: int
    category: str  # Success, Warning, Failure, Cancel, Pending
    meaning: str


def _table(*rows: Status) -> dict[int, Status]:
    return {row.code: row for row in rows}


# PS3.7 Annex C: status codes that any service may return
GENERAL = _table(
    Status(0x0000, "Success", "Success"),
    Status(0x0110, "Failure", "Processing failure"),
    Status(0x0111, "Failure", "Duplicate SOP instance"),
    Status(0x0117, "Failure", "Invalid object instance"),
    Status(0x0122, "Failure", "SOP class not supported"),
    Status(0x0124, "Failure", "Not authorized"),
    Status(0x0211, "Failure", "Unrecognized operation"),
    Status(0x0213, "Failure", "Resource limitation"),
    Status(0xFE00, "Cancel", "Cancelled"),
)

# PS3.4 Table B.2-1: C-STORE response statuses
STORAGE = _table(
    Status(0xA700, "Failure", "Refused: Out of Resources"),
    # in the A7xx "Refused" family, as dcm4chee-arc answers them (its StoreService: 0xA771 Subsequent
    # occurrence of rejected object, 0xA775 a rejection its configuration does not allow); IHE IOCM,
    # core/rejection.py
    Status(0xA771, "Failure", "Refused: Subsequent occurrence of a rejected object"),
    Status(0xA775, "Failure", "Refused: Rejection not allowed"),
    Status(0xA900, "Failure", "Error: Data Set does not match SOP Class"),
    Status(0xC000, "Failure", "Error: Cannot understand"),
    Status(0xC001, "Failure", "Error: Cannot understand: SOP Instance UID differs from the command's"),
    Status(0xC002, "Failure", "Error: Cannot understand: the rejection note's evidence cannot be used"),
    Status(0xB000, "Warning", "Coercion of Data Elements"),
    Status(0xB007, "Warning", "Data Set does not match SOP Class"),
    Status(0xB006, "Warning", "Elements Discarded"),
)

# PS3.4 Table C.4-2: C-MOVE response statuses
MOVE = _table(
    Status(0xA701, "Failure", "Refused: Out of Resources - Unable to calculate number of matches"),
    Status(0xA702, "Failure", "Refused: Out of Resources - Unable to perform sub-operations"),
    Status(0xA801, "Failure", "Refused: Move Destination unknown"),
    Status(0xA900, "Failure", "Identifier does not match SOP Class"),
    Status(0xC000, "Failure", "Unable to process"),
    Status(0xFE00, "Cancel", "Sub-operations terminated due to Cancel Indication"),
    Status(0xB000, "Warning", "Sub-operations Complete - One or more Failures or Warnings"),
    Status(0x0000, "Success", "Sub-operations Complete - No Failures or Warnings"),
    Status(0xFF00, "Pending", "Sub-operations are continuing"),
)

# PS3.4 Table C.4-3: C-GET response statuses (C-MOVE's, less the destination)
GET = {code: row for code, row in MOVE.items() if code != 0xA801}

# PS3.4 Table C.4-1: C-FIND response statuses (Cxxx: ours, "Unable to process" with a reason)
FIND = _table(
    Status(0xA700, "Failure", "Refused: Out of Resources"),
    Status(0xA900, "Failure", "Identifier does not match SOP Class"),
    Status(0xC000, "Failure", "Unable to process"),
    Status(0xC001, "Failure", "Unable to process: a key value cannot be matched"),
    Status(0xFE00, "Cancel", "Matching terminated due to Cancel request"),
    Status(0x0000, "Success", "Matching is complete - No final Identifier is supplied"),
    Status(0xFF00, "Pending", "Matches are continuing - Current Match is supplied"),
    Status(0xFF01, "Pending", "Matches are continuing - Warning that one or more Optional Keys were not supported"),
)
FIND_PENDING = 0xFF00
FIND_PENDING_WARNING = 0xFF01
FIND_CANCELLED = 0xFE00
FIND_LIMIT_REACHED = 0xA700

# Archive error -> C-FIND status. Most specific class first: the first match wins.
FIND_ERROR_STATUS: tuple[tuple[type[errors.ArchiveError], int], ...] = (
    (errors.IdentifierMismatch, 0xA900),
    (errors.InvalidKeyValue, 0xC001),
    (errors.OutOfResources, 0xA700),
)


def status_for_find_error(exc: BaseException) -> int:
    for kind, code in FIND_ERROR_STATUS:
        if isinstance(exc, kind):
            return code
    return 0xC000


SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
#: PS3.7 C.4.2 / Annex C: Refused: Not authorized
NOT_AUTHORIZED = 0x0124
#: PS3.7 C.4.4: more responses follow
PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
PENDING = 0xFF00
CANCEL = 0xFE00
SUBOPS_SOME_FAILED = 0xB000
SUBOPS_ALL_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

#: PS3.4 B.2.3: the dataset's SOP Instance UID differs from the Affected SOP Instance UID of the
#: C-STORE-RQ. Not 0xA900 (that is for a dataset that does not match the SOP *class*): an error of
#: the Cxxx "Cannot understand" family, whose low bits PS3.4 Table B.2-1 leaves to the SCP.
STORE_INSTANCE_UID_MISMATCH = 0xC001
#: An instance a rejection note rejected, sent again (core/rejection.py).
STORE_PREVIOUSLY_REJECTED = 0xA771
#: A rejection note its sender may not make here (``rejection_notes``: off, or not a registered node): the
#: A7xx "Refused" family of PS3.4 Table B.2-1, with the code dcm4chee-arc answers for a rejection it does not
#: allow (0xA775). Not 0x0124 Not authorized: the peer may store; this one note is refused.
STORE_REJECTION_NOT_ALLOWED = 0xA775
#: A rejection note whose evidence cannot be used (no instance listed, an invalid UID): PS3.4 Table B.2-1
#: Cxxx "Error: Cannot understand", whose low bits the SCP chooses.
STORE_REJECTION_NOTE_UNUSABLE = 0xC002

# Archive error -> C-STORE status. Most specific class first: the first match wins.
STORE_ERROR_STATUS: tuple[tuple[type[errors.ArchiveError], int], ...] = (
    (errors.DuplicateInstance, 0x0111),
    (errors.PreviouslyRejected, STORE_PREVIOUSLY_REJECTED),
    (errors.RejectionNotAllowed, STORE_REJECTION_NOT_ALLOWED),
    (errors.RejectionNoteTooLarge, 0xA700),  # Refused: Out of Resources -- our limits; several notes will do
    (errors.RejectionNoteError, STORE_REJECTION_NOTE_UNUSABLE),
    (errors.InstanceUIDMismatch, STORE_INSTANCE_UID_MISMATCH),
    (errors.InstanceMismatch, 0xA900),
    (errors.InvalidIdentifier, 0xC000),
    (errors.InvalidInstance, 0xC000),
    (errors.DatasetTooLarge, 0xA700),
    (errors.OutOfResources, 0xA700),
)


def status_for_store_error(exc: BaseException) -> int:
    for kind, code in STORE_ERROR_STATUS:
        if isinstance(exc, kind):
            return code
    return PROCESSING_FAILURE


def describe(code: int, table: dict[int, Status] | None = None) -> str:
    """'0xA700 Failure: Refused: Out of Resources' for logs and the CLI."""
    for source in (table or {}, STORAGE, GENERAL):
        if code in source:
            row = source[code]
            return f"0x{code:04X} {row.category}: {row.meaning}"
    if 0xA700 <= code <= 0xA7FF:
        return f"0x{code:04X} Failure: Refused: Out of Resources"
    if 0xA900 <= code <= 0xA9FF:
        return f"0x{code:04X} Failure: Data Set does not match SOP Class"
    if 0xC000 <= code <= 0xCFFF:
        return f"0x{code:04X} Failure: Cannot understand"
    if code in (0xFF00, 0xFF01):
        return f"0x{code:04X} Pending"
    return f"0x{code:04X}"


def is_success(code: int) -> bool:
    return code == SUCCESS


def is_warning(code: int) -> bool:
    return code in (0x0001,) or 0xB000 <= code <= 0xBFFF


# PS3.4 Table F.7.2-2 (N-CREATE/N-SET of the MPPS SOP class) and PS3.7 C.5 / 10.1.3, 10.1.5
MPPS = _table(
    Status(0x0000, "Success", "Success"),
    Status(0x0105, "Failure", "No such attribute"),
    Status(0x0106, "Failure", "Invalid attribute value"),
    Status(0x0110, "Failure", "Processing failure"),
    Status(0x0111, "Failure", "Duplicate SOP instance"),
    Status(0x0112, "Failure", "No such SOP instance"),
    Status(0x0117, "Failure", "Invalid object instance"),
    Status(0x0120, "Failure", "Missing attribute"),
    Status(0x0121, "Failure", "Missing attribute value"),
    Status(0x0124, "Failure", "Refused: Not authorized"),
    Status(0x0211, "Failure", "Unrecognized operation"),
)
#: PS3.4 F.7.2.2: Error ID (0000,0903) sent with 0x0110 when the step is COMPLETED or DISCONTINUED.
MPPS_MAY_NO_LONGER_BE_UPDATED = 0xA710

# Step refusal (core/mpps.py) -> MPPS status. PS3.4 F.7.2.1.2 / F.7.2.2.2 and PS3.7 C.5.
MPPS_ERROR_STATUS: tuple[tuple[type[mpps.StepRefused], int], ...] = (
    (mpps.MissingAttributeValue, 0x0121),
    (mpps.MissingAttribute, 0x0120),
    (mpps.AttributeNotSettable, 0x0106),
    (mpps.InvalidAttributeValue, 0x0106),
    (mpps.DuplicateStep, 0x0111),
    (mpps.NoSuchStep, 0x0112),
    (mpps.StepClosed, 0x0110),
)


def status_for_mpps_error(exc: BaseException) -> int:
    for kind, code in MPPS_ERROR_STATUS:
        if isinstance(exc, kind):
            return code
    return PROCESSING_FAILURE


# PS3.7 10.1.4.1.10 N-ACTION statuses as PS3.4 J.3.2.1.2 uses them (Storage Commitment Push Model)
COMMITMENT = _table(
    Status(0x0000, "Success", "Success"),
    Status(0x0110, "Failure", "Processing failure"),
    Status(0x0112, "Failure", "No such SOP instance"),
    Status(0x0115, "Failure", "Invalid argument value"),
    Status(0x0123, "Failure", "No such action"),
    Status(0x0124, "Failure", "Refused: Not authorized"),
)

# PS3.4 J.3.3.1.1 (Table J.3-2 note): Failure Reason (0008,1197) values we report
FAILURE_REASONS: dict[commitment.Failure, int] = {
    commitment.Failure.NO_SUCH_OBJECT: 0x0112,  # No such object instance
    commitment.Failure.CLASS_INSTANCE_CONFLICT: 0x0119,  # Class / Instance conflict
    commitment.Failure.SOP_CLASS_NOT_SUPPORTED: 0x0122,  # Referenced SOP Class not supported
    commitment.Failure.PROCESSING_FAILURE: 0x0110,  # Processing failure (PS3.3 C.14.1.1)
}


# What a request is answered when its handler fails unexpectedly (an exception, or no response):
# the failure status its service defines for "the SCP could not process this".
# PS3.4 B.2.3 / PS3.7 C.4.2 (C-STORE: Processing failure, as for our other internal errors),
# PS3.4 C.4.1.1.4 (C-FIND, worklist included: Cxxx Unable to process),
# PS3.4 C.4.2.1.5 / C.4.3.1.4 (C-MOVE, C-GET: Cxxx Unable to process),
# PS3.7 C.4.2 and 10.1.x (C-ECHO and every DIMSE-N request: 0x0110 Processing failure).
HANDLER_FAILURE: dict[str, int] = {
    "C-ECHO-RQ": PROCESSING_FAILURE,
    "C-STORE-RQ": PROCESSING_FAILURE,
    "C-FIND-RQ": UNABLE_TO_PROCESS,
    "C-MOVE-RQ": UNABLE_TO_PROCESS,
    "C-GET-RQ": UNABLE_TO_PROCESS,
    "N-EVENT-REPORT-RQ": PROCESSING_FAILURE,
    "N-GET-RQ": PROCESSING_FAILURE,
    "N-SET-RQ": PROCESSING_FAILURE,
    "N-ACTION-RQ": PROCESSING_FAILURE,
    "N-CREATE-RQ": PROCESSING_FAILURE,
    "N-DELETE-RQ": PROCESSING_FAILURE,
    "default": PROCESSING_FAILURE,
}


#: PS3.7 C.5 (DIMSE-N, e.g. 10.1.4.1.10 N-ACTION, 10.1.5.1.6 N-CREATE): Resource limitation.
RESOURCE_LIMITATION = 0x0213

# What a request is answered when its data set could not be held in memory (net/memory.py:
# memory_dataset_max_bytes, memory_datasets_budget_bytes): each service's "out of resources".
# PS3.4 Table B.2-1 (C-STORE) and Table C.4-1 (C-FIND, worklist included): A700 Refused: Out of
# Resources; PS3.4 Tables C.4-2 / C.4-3 (C-MOVE, C-GET): A701 Out of Resources - Unable to calculate
# number of matches (nothing was matched: the identifier was not even read); PS3.7 C.5 (every
# DIMSE-N request): 0213 Resource limitation; PS3.7 9.1.5.1.4 (C-ECHO, no data set and no such
# status): 0110 Processing failure.
OUT_OF_MEMORY: dict[str, int] = {
    "C-ECHO-RQ": PROCESSING_FAILURE,
    "C-STORE-RQ": 0xA700,
    "C-FIND-RQ": 0xA700,
    "C-MOVE-RQ": 0xA701,
    "C-GET-RQ": 0xA701,
    "default": RESOURCE_LIMITATION,
}


#: PS3.7 C.4 / PS3.5 Table 6.2-1: the Error Comment (0000,0902) is an LO, at most 64 characters.
ERROR_COMMENT_MAX = 64

# Refusal kind -> its Error Comment: a sentence that fits the LO and says what to do, for when the
# full sentence (which the server log keeps) does not fit. Most specific class first.
ERROR_COMMENTS: tuple[tuple[type[BaseException], str], ...] = (
    (errors.InstanceUIDMismatch, "Dataset SOPInstanceUID differs from Affected SOP Instance UID"),
    (errors.InstanceMismatch, "Dataset SOPClassUID differs from Affected SOP Class UID"),
    (errors.InvalidIdentifier, "A UID in the dataset is malformed; correct it and send again"),
    (errors.BrokenDataset, "Dataset encoding broken (PS3.5 7.1); the server log says where"),
    (errors.InvalidInstance, "Dataset unreadable or without its UIDs; correct it, send again"),
    (errors.DuplicateInstance, "Instance already stored and duplicates are refused here"),
    (errors.InflateLimitExceeded, "Deflated dataset inflates past the limit; send it uncompressed"),
    (errors.DatasetTooLarge, "Dataset larger than this archive accepts (max_dataset_bytes)"),
    (errors.QueryTooBroad, "Query reads too many stored files; narrow it with indexed keys"),
    (errors.PreviouslyRejected, "A rejection note rejected this instance; it is not stored again"),
    (errors.RejectionNotesOff, "Rejection notes are not accepted here; nothing was rejected"),
    (errors.UnregisteredRejecter, "Only registered nodes may reject here; nothing was rejected"),
    (errors.RejectionNoteTooLarge, "Rejection note too large here; split it into several notes"),
    (errors.RejectionNoteError, "Rejection note evidence empty or invalid; nothing was rejected"),
    (errors.RejectionRefused, "Rejection note refused; the server log says why"),
    (errors.OutOfResources, "Archive out of resources (disk full?); try again later"),
    (errors.UnreadableInstance, "A stored instance cannot be read; the server log says which"),
    (errors.NotFound, "Nothing found with these UIDs; check them and ask again"),
    (errors.UnknownDestination, "Move destination unknown; register it as a node first"),
    (errors.AmbiguousDestination, "Move destination AE title is ambiguous; fix the node list"),
    (errors.AccessDenied, "Not authorized; ask the archive admin to allow this AE"),
    (errors.IdentifierMismatch, "Identifier does not fit the query model; check level and keys"),
    (errors.InvalidKeyValue, "A key value cannot be matched; correct it and ask again"),
    (retrieve.InvalidRetrieveIdentifier, "Identifier cannot select instances; check level and UIDs"),
    (transcode.TranscodeError, "An instance could not be converted; see the server log"),
    (mpps.MissingAttributeValue, "A required attribute is empty; give it a value, send again"),
    (mpps.MissingAttribute, "A required attribute is missing; add it and send again"),
    (mpps.AttributeNotSettable, "An attribute N-SET cannot change was sent; leave it out"),
    (mpps.InvalidAttributeValue, "An attribute value is invalid; correct it and send again"),
    (mpps.DuplicateStep, "The step exists already; update it with N-SET"),
    (mpps.NoSuchStep, "No such step; create it with N-CREATE first"),
    # PS3.4 Table F.7.2-2 gives this one's Error Comment word for word (with Error ID A710)
    (mpps.StepClosed, "Performed Procedure Step Object may no longer be updated"),
    (MemoryBudgetExhausted, "Server memory for data sets in use; try again later"),
    (DatasetTooLargeForMemory, "Data set larger than this server holds in memory"),
)

# Status -> its Error Comment when no refusal kind above applies and the full sentence does not fit.
STATUS_COMMENTS: dict[int, str] = {
    0x0105: "No such attribute; leave it out and send again",
    0x0106: "An attribute value is invalid; correct it and send again",
    0x0110: "Processing failed; the server log says why",
    0x0111: "Duplicate SOP instance; it is already here",
    0x0112: "No such SOP instance; check the UID",
    0x0115: "Invalid argument value; correct the request",
    0x0117: "Invalid object instance; correct it and send again",
    0x0119: "Class and instance conflict; check both UIDs",
    0x0120: "A required attribute is missing; add it and send again",
    0x0121: "A required attribute is empty; give it a value, send again",
    0x0122: "SOP class not supported here; use another",
    0x0123: "No such action; only action type 1 is defined",
    0x0124: "Not authorized; ask the archive admin to allow this AE",
    0x0211: "Unrecognized operation; this service does not offer it",
    0x0213: "Resource limitation; try again later",
    0xA700: "Out of resources; try again later or ask for fewer",
    0xA701: "Out of resources counting matches; narrow the request",
    0xA702: "Sub-operations could not be done; the server log says why",
    0xA801: "Move destination unknown; register it as a node first",
    0xA900: "Does not match the SOP class; check the request",
    0xB000: "Some sub-operations failed; the server log says why",
}
# Access-policy rule -> the Error Comment of a refused request (0x0124), for a calling AE title ``ae``
# (at most 16 characters, PS3.5 Table 6.2-1) and the access operation ``op`` (core/nodes.py OPERATIONS:
# echo, store, ...); core/access.py
# words the full sentence, which the server log keeps.
ACCESS_COMMENTS: dict[str, str] = {
    access.RULE_UNREGISTERED: "calling AE title {ae!r}: unknown; add it as a node",
    access.RULE_HOST: "calling AE title {ae!r}: wrong host; update the node",
    access.RULE_PERMISSIONS: "calling AE title {ae!r} may not {op}; grant it",
}


def access_comment(rule: str, ae: str, op: str, reason: str) -> str:
    """The Error Comment of a request refused by the access policy under ``rule``."""
    template = ACCESS_COMMENTS.get(rule)
    return error_comment(NOT_AUTHORIZED, template.format(ae=ae, op=op) if template else reason)


_CATEGORY_COMMENTS: tuple[tuple[range, str], ...] = (
    (range(0xA700, 0xA800), "Out of resources; try again later"),
    (range(0xA900, 0xAA00), "Does not match the SOP class; check the request"),
    (range(0xC000, 0xD000), "Cannot process the request; the server log says why"),
)
_DEFAULT_COMMENT = "Request failed; the server log says why"


def fits_error_comment(text: str) -> bool:
    """A whole sentence that fits the LO: at most 64 characters and not cut off ("...")."""
    stripped = text.rstrip()
    return len(text) <= ERROR_COMMENT_MAX and not stripped.endswith(("...", "\u2026"))


def _whole_clauses(text: str) -> str:
    """The longest run of leading "; "-separated clauses of ``text`` that fits the LO, or ""."""
    clauses = text.split("; ")
    for n in range(len(clauses) - 1, 0, -1):
        head = "; ".join(clauses[:n])
        if fits_error_comment(head):
            return head
    return ""


def error_comment(status: int, reason: BaseException | str) -> str:
    """The Error Comment (0000,0902) for a refusal, never a cut sentence (whoever refuses logs the
    full one): the reason's own sentence when it fits the LO's 64 characters, else the sentence of
    its kind (``ERROR_COMMENTS``), else its leading whole clauses, else the sentence of its status
    (``STATUS_COMMENTS``, then by category)."""
    text = str(reason)
    if fits_error_comment(text):
        return text
    if isinstance(reason, BaseException):
        for kind, short in ERROR_COMMENTS:
            if isinstance(reason, kind):
                return short
    head = _whole_clauses(text)
    if head:
        return head
    if status in STATUS_COMMENTS:
        return STATUS_COMMENTS[status]
    for codes, short in _CATEGORY_COMMENTS:
        if status in codes:
            return short
    return _DEFAULT_COMMENT
