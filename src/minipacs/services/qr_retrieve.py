"""What C-MOVE and C-GET SCPs share: the models, the identifier, the sub-operation loop.

PS3.4 C.4.2.3 / C.4.3.3: the SCP runs one C-STORE sub-operation per instance,
optionally sends Pending responses with the Remaining / Completed / Failed /
Warning counts, stops after the current sub-operation on C-CANCEL (status
Cancel), and ends with Success, Warning (some failed or warned) or Failure (all
failed), the Failed SOP Instance UID List (0008,0058) in the final identifier
whenever something failed.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from minipacs.core.audit import Action, ActorKind
from minipacs.core.retrieve import StoredInstance, locate
from minipacs.core.transcode import TranscodeError
from minipacs.dicom.identifier import dataset_charset
from minipacs.dicom.levels import RETRIEVE_MODELS
from minipacs.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    transfer_syntax,
)
from minipacs.dicom.values import codecs_for, decode_text
from minipacs.dicom.vr import STRING_VRS
from minipacs.net.association import Association, AssociationError, Message
from minipacs.net.memory import BytesSink
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.services.dispatch import Response
from minipacs.services.status import (
    CANCEL,
    PENDING,
    SUBOPS_ALL_FAILED,
    SUBOPS_SOME_FAILED,
    SUCCESS,
    describe,
    error_comment,
    is_success,
    is_warning,
)

log = logging.getLogger("minipacs.retrieve")

#: SOP class -> information model name used by ``core.retrieve``.
MOVE_MODELS: Final[dict[str, str]] = {model.move_sop_class: name for name, model in RETRIEVE_MODELS.items()}
GET_MODELS: Final[dict[str, str]] = {model.get_sop_class: name for name, model in RETRIEVE_MODELS.items()}

#: Transfer syntaxes for the identifiers of Q/R contexts.
IDENTIFIER_SYNTAXES: Final = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

#: Pending responses are optional (PS3.4 C.4.2.3.1, C.4.3.3.1): by default one goes out after
#: every this many sub-operations, or when this many seconds passed since the last one.
DEFAULT_PENDING_EVERY: Final = 100
DEFAULT_PENDING_INTERVAL: Final = 0.2


def relational_retrieve_replies(
    proposed: Sequence[SOPClassExtendedNegotiation], models: Mapping[str, str]
) -> list[SOPClassExtendedNegotiation]:
    """Our answers to SOP Class Extended Negotiation for the MOVE or GET classes ``models`` (PS3.4 C.5.2.1,
    C.5.3.1; byte 1: relational-retrieve): yes when asked. core/retrieve.py takes the unique keys above
    the retrieve level when given and never needs them (C.4.2.2.2.1), so every retrieve it serves is
    relational; saying so lets a requester that asks know it may leave them out."""
    return [
        SOPClassExtendedNegotiation(item.sop_class_uid, b"\x01" if item.info[:1] == b"\x01" else b"\x00")
        for item in proposed
        if item.sop_class_uid in models and item.info
    ]


class IdentifierError(ValueError):
    """The identifier dataset cannot be decoded."""


class NoContext(LookupError):
    """No accepted presentation context can carry a sub-operation; ``comment`` is the Error Comment
    (at most 64 characters) that names the fix."""

    def __init__(self, why: str, comment: str) -> None:
        super().__init__(why)
        self.comment = comment


def audit_retrieve(archive: Any, assoc: Association, instances: list[StoredInstance], what: str) -> None:
    """One "retrieved" audit row per study of a C-MOVE/C-GET request (core/audit.py), the peer as actor."""
    per_study: dict[str, int] = {}
    for item in instances:
        per_study[item.study_instance_uid] = per_study.get(item.study_instance_uid, 0) + 1
    for study_uid, count in sorted(per_study.items()):
        archive.audit.record(
            Action.RETRIEVED,
            actor_kind=ActorKind.DICOM,
            actor=assoc.calling_ae,
            address=assoc.peer_host,
            study_uid=study_uid,
            detail=f"{what}: {count} instance(s)",
        )


def decode_identifier(message: Message) -> tuple[str, dict[str, object]]:
    """(QueryRetrieveLevel, keyword -> value) of a C-MOVE/C-GET identifier.

    Values are taken from the raw element bytes (no pydicom value validation:
    a hostile or malformed value must reach ``core.retrieve`` to be refused
    with a sentence, not break the decoding), text decoded in the identifier's
    Specific Character Set (PS3.4 C.4.2.1.4.1: it is there when the Patient ID is not
    in the default repertoire). Sequences are skipped.
    """
    from pydicom.datadict import dictionary_VR, keyword_for_tag
    from pydicom.dataelem import RawDataElement
    from pydicom.filereader import read_dataset

    sink = message.dataset
    if message.dataset_error is not None:
        raise IdentifierError(f"the identifier could not be received: {message.dataset_error}")
    if not isinstance(sink, BytesSink):
        raise IdentifierError("the request carries no identifier")
    ts = transfer_syntax(message.context.transfer_syntax)
    if ts is None or ts.encapsulated or ts.deflated:
        raise IdentifierError(f"identifier in unsupported transfer syntax {message.context.transfer_syntax}")
    keys: dict[str, object] = {}
    try:
        ds = read_dataset(io.BytesIO(sink.getvalue()), ts.implicit_vr, ts.little_endian)
        codecs = codecs_for(dataset_charset(ds))
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)
            keyword = keyword_for_tag(tag)
            if not keyword or not isinstance(raw, RawDataElement) or raw.value is None:
                continue
            vr = raw.VR or dictionary_VR(tag)
            if vr == "SQ" or vr not in STRING_VRS:  # the keys a retrieve uses are all text
                continue
            text = decode_text(bytes(raw.value), vr, codecs).strip(" \x00")
            values = [v.strip(" \x00") for v in text.split("\\")]
            keys[keyword] = values if len(values) > 1 else text
    except Exception as exc:
        raise IdentifierError(f"the identifier cannot be decoded: {type(exc).__name__}: {exc}") from exc
    level = keys.get("QueryRetrieveLevel", "")
    return (level if isinstance(level, str) else ""), keys


#: PS3.7 Table 9.3-1: Priority (0000,0700) values.
PRIORITIES: Final = frozenset({0x0000, 0x0001, 0x0002})  # MEDIUM, HIGH, LOW


def suboperation_priority(message: Message) -> int:
    """The Priority of a retrieve's C-STORE sub-operations: the C-MOVE's or C-GET's own (PS3.4
    C.4.2.1.2, C.4.3.1.2: "The same priority shall be used for all C-STORE sub-operations"); MEDIUM
    for a value PS3.7 does not define."""
    priority = message.command.get("Priority", 0)
    return priority if isinstance(priority, int) and priority in PRIORITIES else 0


def encode_failed_list(uids: list[str], transfer_syntax_uid: str) -> bytes:
    """An identifier holding the Failed SOP Instance UID List (0008,0058)."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ts = transfer_syntax(transfer_syntax_uid)
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = uids if len(uids) != 1 else uids[0]
    buf = DicomBytesIO()
    buf.is_little_endian = ts.little_endian if ts is not None else True
    buf.is_implicit_VR = ts.implicit_vr if ts is not None else True
    write_dataset(buf, ds)
    return bytes(buf.getvalue())


@dataclass
class Progress:
    """Counts of a retrieve's sub-operations (PS3.7 Table 9.3-10 / 9.3-6 fields)."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    cancelled: bool = False
    errors: list[str] = field(default_factory=list)
    #: The Error Comment for the final response (<= 64 characters), from the first failure that has one.
    comment: str = ""

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def fail(self, instance: StoredInstance, why: str, short: str = "") -> None:
        """Count a failed sub-operation; ``why`` is logged, ``short`` (if any) may become the Error Comment."""
        self.failed += 1
        if short and not self.comment:
            self.comment = short
        self.failed_uids.append(instance.sop_instance_uid)
        if len(self.errors) < 20:
            self.errors.append(why)
        log.info("sub-operation for %s failed: %s", instance.sop_instance_uid, why)

    def final_status(self) -> int:
        """PS3.4 C.4.2.1.5: Success, Warning if any failed or warned, Failure if all failed."""
        if self.cancelled:
            return CANCEL
        if self.failed == 0 and self.warning == 0:
            return SUCCESS
        if self.completed == 0 and self.warning == 0:
            return SUBOPS_ALL_FAILED
        return SUBOPS_SOME_FAILED


SendOne = Callable[[StoredInstance], Awaitable[tuple[int, str]]]


def progress_response(
    status: int, progress: Progress | None = None, *, error: str = "", dataset: bytes | None = None
) -> Response:
    """A C-MOVE-RSP / C-GET-RSP with the sub-operation counts (PS3.7 Tables 9.3-6, 9.3-10):
    Remaining only while Pending or on Cancel."""
    fields: dict[str, Any] = {}
    if progress is not None:
        if status in (PENDING, CANCEL):
            fields["NumberOfRemainingSuboperations"] = progress.remaining
        fields["NumberOfCompletedSuboperations"] = progress.completed
        fields["NumberOfFailedSuboperations"] = progress.failed
        fields["NumberOfWarningSuboperations"] = progress.warning
    return Response(status, error=error, dataset=dataset, fields=fields)


def final_response(message: Message, progress: Progress, error: str = "") -> Response:
    """The last response: the status of PS3.4 C.4.2.1.5, the Failed SOP Instance UID List when some failed."""
    status = progress.final_status()
    dataset = None
    if progress.failed_uids:
        dataset = encode_failed_list(progress.failed_uids, message.context.transfer_syntax)
    if not error and progress.errors and status != SUCCESS:
        error = progress.comment or error_comment(status, progress.errors[0])
    return progress_response(status, progress, error=error, dataset=dataset)


async def run_suboperations(
    assoc: Association,
    message: Message,
    instances: list[StoredInstance],
    progress: Progress,
    send_one: SendOne,
    pending_every: int = DEFAULT_PENDING_EVERY,
    pending_interval: float = DEFAULT_PENDING_INTERVAL,
) -> AsyncGenerator[Response, None]:
    """Run the C-STORE sub-operations, yielding the Pending responses; stops early on C-CANCEL
    or when the sub-operation association is lost (the rest then count as failed).

    A Pending response is yielded after every ``pending_every`` sub-operations
    (0: never by count) and whenever ``pending_interval`` seconds (0: never by
    time) passed since the last one, so a requester sees progress without one
    extra message per instance. Each file is located (:func:`locate`) just before it is sent.
    """
    cancelled = message.cancelled
    last_pending = time.monotonic()
    for index, instance in enumerate(instances):
        if cancelled.is_set():
            progress.cancelled = True
            return
        instance = locate(instance)
        if instance.problem:
            progress.fail(instance, instance.problem)
        else:
            try:
                status, text = await send_one(instance)
            except LookupError as exc:
                short = (
                    exc.comment if isinstance(exc, NoContext) else "No accepted presentation context fits; see the log"
                )
                progress.fail(instance, str(exc), short)
            except TranscodeError as exc:
                progress.fail(instance, str(exc), "An instance could not be converted; see the server log")
            except AssociationError as exc:
                if assoc.dul.is_closed:
                    raise
                progress.fail(instance, str(exc))
                for rest in instances[index + 1 :]:
                    progress.fail(rest, "not sent: the storage association was lost")
                log.warning("%s storage sub-operations stopped: %s", assoc.label, exc)
                return
            else:
                if is_success(status):
                    progress.completed += 1
                elif is_warning(status):
                    progress.warning += 1
                else:
                    progress.fail(instance, describe(status) + (f" ({text})" if text else ""))
        if progress.remaining <= 0:
            continue
        now = time.monotonic()
        due = (pending_every > 0 and (index + 1) % pending_every == 0) or (
            pending_interval > 0 and now - last_pending >= pending_interval
        )
        if due:
            if cancelled.is_set():
                progress.cancelled = True
                return
            yield progress_response(PENDING, progress)
            last_pending = now
    if cancelled.is_set() and progress.remaining > 0:
        progress.cancelled = True


def counts(progress: Progress) -> Mapping[str, int]:
    return {
        "completed": progress.completed,
        "failed": progress.failed,
        "warning": progress.warning,
        "remaining": progress.remaining,
    }
