"""DIMSE statuses as data, and the one place archive errors become statuses.

PS3.7 Annex C (general statuses) and PS3.4 Annex B.2.3 (Storage SCP statuses).
"""

from __future__ import annotations

from dataclasses import dataclass

from minipacs.core import commitment, errors, mpps


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
    Status(0xFE00, "Cancel", "Cancelled"),
)

# PS3.4 Table B.2-1: C-STORE response statuses
STORAGE = _table(
    Status(0xA700, "Failure", "Refused: Out of Resources"),
    Status(0xA900, "Failure", "Error: Data Set does not match SOP Class"),
    Status(0xC000, "Failure", "Error: Cannot understand"),
    Status(0xC001, "Failure", "Error: Cannot understand: SOP Instance UID differs from the command's"),
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

# Archive error -> C-STORE status. Most specific class first: the first match wins.
STORE_ERROR_STATUS: tuple[tuple[type[errors.ArchiveError], int], ...] = (
    (errors.DuplicateInstance, 0x0111),
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


# Archive error -> the C-STORE-RSP Error Comment (an LO: at most 64 characters, PS3.5 6.2), for the
# refusals whose full message (logged) is too long to send. Most specific class first.
STORE_ERROR_COMMENT: tuple[tuple[type[errors.ArchiveError], str], ...] = (
    (errors.InstanceUIDMismatch, "Dataset SOPInstanceUID differs from Affected SOP Instance UID"),
)


def store_error_comment(exc: BaseException) -> str:
    """The Error Comment for a C-STORE refused with ``exc`` (the full text goes to the log)."""
    for kind, text in STORE_ERROR_COMMENT:
        if isinstance(exc, kind):
            return text
    return comment(str(exc))


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


def comment(text: str) -> str:
    """An Error Comment (0000,0902) is LO: at most 64 characters."""
    return text if len(text) <= 64 else text[:61] + "..."


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
