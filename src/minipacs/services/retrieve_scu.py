"""Query/Retrieve SCU side: C-MOVE and C-GET requests (PS3.4 C.4.2, C.4.3), and a
storage receiver writing into a folder (for `minipacs move` to ourselves and `minipacs get`).

The identifier is built from structured keys (``Keyword`` or ``gggg,eeee`` -> value; the
CLI parses its DCMTK-like ``-k`` flags into them, cli/keys.py). Responses are followed to the final one; its counts and
Failed SOP Instance UID List are returned as a :class:`RetrieveResult`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset

from minipacs.core.paths import validate_uid
from minipacs.core.staging import StagingFile
from minipacs.dicom.identifier import encode_identifier
from minipacs.dicom.levels import RETRIEVE_MODELS
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, transfer_syntax
from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.memory import BytesSink
from minipacs.net.pdu_items import RoleSelection
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Operation
from minipacs.services.qr_retrieve import GET_MODELS
from minipacs.services.status import PENDING, SUCCESS, describe, error_comment, status_for_store_error

log = logging.getLogger("minipacs.retrieve_scu")

MOVE_MODEL_UIDS = {name: model.move_sop_class for name, model in RETRIEVE_MODELS.items() if not model.retired}
GET_MODEL_UIDS = {name: model.get_sop_class for name, model in RETRIEVE_MODELS.items() if not model.retired}
QR_SYNTAXES = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
#: Transfer syntaxes we offer when receiving (C-GET proposals), native first. Not all
#: of PS3.6: DCMTK refuses a context with more than a few dozen syntaxes.
RECEIVABLE_SYNTAXES = [
    uid
    for uid in (
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",  # JPEG baseline/extended/lossless
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",  # JPEG lossless SV1, JPEG-LS
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",  # RLE, deflated, big endian
    )
    if transfer_syntax(uid) is not None
]
#: What our folder receiver accepts: every syntax whose header we can parse.
STORABLE_SYNTAXES = frozenset(uid for uid in TRANSFER_SYNTAXES if transfer_syntax(uid) is not None)


class KeySyntaxError(ValueError):
    """A key cannot be understood."""


def retrieve_identifier(level: str, keys: Mapping[str, str | int | None]) -> Dataset:
    """An identifier from keys (``Keyword`` or ``gggg,eeee`` -> value, a backslash between values),
    QueryRetrieveLevel set to ``level`` (PS3.4 C.4.2.1.4). It is encoded only once the association
    says in which transfer syntax (:func:`c_move`, :func:`c_get`)."""
    from pydicom.config import disable_value_validation
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    for key, raw in keys.items():
        value = "" if raw is None else str(raw)
        item = f"{key}={value}"  # as the user would have written it, for messages
        name = key.strip().strip("()")
        tag: int | None
        if "," in name:
            try:
                group, element = (int(p, 16) for p in name.split(",", 1))
            except ValueError:
                raise KeySyntaxError(f"key {item!r}: expected gggg,eeee=value or Keyword=value") from None
            tag = (group << 16) | element
        else:
            tag = tag_for_keyword(name)
        if tag is None or not keyword_for_tag(tag):
            raise KeySyntaxError(f"key {item!r}: {name!r} is not a DICOM keyword or tag")
        vr = dictionary_VR(tag)
        values = value.split("\\") if value else ""
        # The peer judges the values (a wildcard UID is its to refuse), not us.
        with disable_value_validation():
            ds.add_new(tag, vr, values if isinstance(values, str) or len(values) != 1 else values[0])
    if any(not str(elem.value).isascii() for elem in ds if elem.value is not None):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def encode_for(context: NegotiatedContext, identifier: Dataset) -> bytes:
    """``identifier`` in the transfer syntax the peer accepted for ``context`` (PS3.7 9.3: a
    message's dataset is encoded in its presentation context's syntax; an archive that accepts
    only Implicit VR Little Endian, as DCMTK dcmqrscp +xi, cannot read Explicit VR)."""
    ts = transfer_syntax(context.transfer_syntax)
    if ts is None:  # pragma: no cover - we only propose syntaxes we know
        raise LookupError(f"the peer accepted {context.transfer_syntax}, a transfer syntax we cannot encode")
    with disable_value_validation():
        return encode_identifier(identifier, ts)


@dataclass
class RetrieveResult:
    status: int = -1
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    error_comment: str = ""
    failed_uids: list[str] = field(default_factory=list)
    pending_responses: int = 0


def _failed_list(message: Message) -> list[str]:
    if not isinstance(message.dataset, BytesSink):
        return []
    from pydicom.config import disable_value_validation
    from pydicom.filereader import read_dataset

    ts = transfer_syntax(message.context.transfer_syntax)
    try:
        ds = read_dataset(
            io.BytesIO(message.dataset.getvalue()), ts.implicit_vr if ts else True, ts.little_endian if ts else True
        )
        with disable_value_validation():
            value = ds.get("FailedSOPInstanceUIDList")
    except Exception:  # noqa: BLE001 - a malformed identifier in a response is reported as empty
        return []
    if value is None:
        return []
    return [str(v) for v in value] if not isinstance(value, str) else [v for v in value.split("\\") if v]


def _update(result: RetrieveResult, message: Message) -> None:
    cmd = message.command
    result.status = int(cmd.get("Status", -1))
    result.completed = int(cmd.get("NumberOfCompletedSuboperations", result.completed))
    result.failed = int(cmd.get("NumberOfFailedSuboperations", result.failed))
    result.warning = int(cmd.get("NumberOfWarningSuboperations", result.warning))
    result.remaining = int(cmd.get("NumberOfRemainingSuboperations", 0)) if result.status == PENDING else 0
    if result.status == PENDING:
        result.pending_responses += 1
    else:
        result.error_comment = str(cmd.get("ErrorComment", ""))
        result.failed_uids = _failed_list(message)


Progress = Callable[[RetrieveResult], None]


async def _retrieve(
    assoc: Association, rq_name: str, model_uid: str, identifier: Dataset, progress: Progress | None, **fields: Any
) -> RetrieveResult:
    ctx = assoc.context_for(model_uid)
    if ctx is None:
        raise LookupError(f"the peer did not accept {rq_name[:6]} with the {model_uid} information model")
    msg_id = assoc.next_message_id()
    rq = Command.make(rq_name, has_dataset=True, MessageID=msg_id, Priority=0, AffectedSOPClassUID=model_uid, **fields)
    result = RetrieveResult()
    # Sub-operations can take long: wait for each response as long as the DIMSE timeout allows.
    async for rsp in assoc.request(ctx.context_id, rq, encode_for(ctx, identifier)):
        _update(result, rsp)
        if progress is not None:
            progress(result)
    return result


async def c_move(
    assoc: Association, model: str, identifier: Dataset, destination: str, progress: Progress | None = None
) -> RetrieveResult:
    """C-MOVE-RQ on ``assoc``; returns the final response's counts."""
    return await _retrieve(
        assoc, "C-MOVE-RQ", MOVE_MODEL_UIDS[model], identifier, progress, MoveDestination=destination
    )


async def c_get(
    assoc: Association, model: str, identifier: Dataset, progress: Progress | None = None
) -> RetrieveResult:
    """C-GET-RQ on ``assoc`` (which must carry a handler for the C-STOREs coming back)."""
    return await _retrieve(assoc, "C-GET-RQ", GET_MODEL_UIDS[model], identifier, progress)


def get_storage_classes(extra: Sequence[str] = ()) -> list[str]:
    """Storage SOP classes to offer for C-GET, at most 127 - len(models): images first."""
    named = [uid for uid, name in STORAGE_SOP_CLASSES.items() if "Retired" not in name]
    images = [uid for uid in named if "Image" in STORAGE_SOP_CLASSES[uid]]
    others = [uid for uid in named if uid not in images]
    chosen = list(dict.fromkeys([*extra, *images, *others]))
    return chosen[: 128 - len(GET_MODELS)]


def get_contexts(model: str, extra: Sequence[str] = ()) -> tuple[list[tuple[str, list[str]]], list[RoleSelection]]:
    """Contexts and role selections for a C-GET requester: the GET model, plus
    Storage classes in which we are SCP (PS3.4 C.4.3, PS3.7 D.3.3.4)."""
    classes = get_storage_classes(extra)
    contexts: list[tuple[str, list[str]]] = [(GET_MODEL_UIDS[model], QR_SYNTAXES)]
    contexts += [(uid, RECEIVABLE_SYNTAXES) for uid in classes]
    roles = [RoleSelection(uid, False, True) for uid in classes]
    return contexts, roles


def move_contexts(model: str) -> list[tuple[str, list[str]]]:
    return [(MOVE_MODEL_UIDS[model], QR_SYNTAXES)]


class _FileSink:
    __slots__ = ("staging", "target", "path")

    def __init__(self, staging: StagingFile, target: Path) -> None:
        self.staging = staging
        self.target = target
        self.path: Path | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.staging.write(data)

    def finish(self) -> None:
        staged = self.staging.finish()
        os.replace(staged.path, self.target)
        self.path = self.target

    def discard(self) -> None:
        self.staging.discard()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class FolderStorage(Service):
    """Storage SCP writing each received instance to ``folder/<SOPInstanceUID>.dcm`` (Part 10)."""

    name = "folder-storage"

    def __init__(self, folder: Path, on_stored: Callable[[str, Path], None] | None = None) -> None:
        self.folder = folder
        self.on_stored = on_stored
        self.received = 0
        self.failed = 0
        folder.mkdir(parents=True, exist_ok=True)

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {uid: SupportedContext(uid, STORABLE_SYNTAXES) for uid in STORAGE_SOP_CLASSES}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-STORE-RQ": Operation(self.c_store, access="store")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        sop_class = command.affected_sop_class_uid
        sop_instance = validate_uid("AffectedSOPInstanceUID", command.affected_sop_instance_uid)
        staging = StagingFile(self.folder, sop_class, sop_instance, context.transfer_syntax, assoc.calling_ae)
        return _FileSink(staging, self.folder / f"{sop_instance}.dcm")

    async def c_store(self, assoc: Association, message: Message) -> None:
        cmd = message.command
        sop_instance = str(cmd.get("AffectedSOPInstanceUID", ""))
        status, text = SUCCESS, ""
        sink = message.dataset
        if message.dataset_error is not None:
            status, text = status_for_store_error(message.dataset_error), str(message.dataset_error)
        elif not isinstance(sink, _FileSink) or sink.path is None:
            status, text = 0xC000, "C-STORE request without a dataset"
        if status == SUCCESS and isinstance(sink, _FileSink) and sink.path is not None:
            self.received += 1
            if self.on_stored is not None:
                self.on_stored(sop_instance, sink.path)
        else:
            self.failed += 1
            log.warning("%s C-STORE %s refused with %s: %s", assoc.label, sop_instance, describe(status), text)
        fields: dict[str, Any] = {
            "MessageIDBeingRespondedTo": cmd["MessageID"],
            "AffectedSOPClassUID": cmd.get("AffectedSOPClassUID", ""),
            "AffectedSOPInstanceUID": sop_instance,
            "Status": status,
        }
        if text:
            fields["ErrorComment"] = error_comment(status, message.dataset_error or text)
        await assoc.send_message(message.context.context_id, Command.make("C-STORE-RSP", **fields))
        record_operation(
            assoc,
            op="C-STORE",
            sop_instance=sop_instance,
            status=status,
            outcome="stored" if status == SUCCESS else "failed",
            error=text,
        )


__all__ = [
    "FolderStorage",
    "KeySyntaxError",
    "RetrieveResult",
    "c_get",
    "c_move",
    "encode_for",
    "get_contexts",
    "move_contexts",
    "retrieve_identifier",
]
