"""Query/Retrieve Service Class, C-FIND SCU: PS3.4 C.4.1, requester side.

Keys are structured: a path (keyword or ``(gggg,eeee)``, sequence items as
``ReferencedStudySequence[0].ReferencedSOPClassUID``) -> a value ('' or None: a
return key, PS3.4 C.2.2.1.3 universal matching). The CLI parses its DCMTK-style
``-k PatientName=Doe*`` flags into them (cli/keys.py); the web passes its JSON.
Responses are yielded as they arrive. ``cancel_after`` sends C-CANCEL after that
many matches (like ``findscu --cancel``). services/outbound.py calls this module.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from minipacs.dicom.identifier import decode_identifier, encode_identifier
from minipacs.dicom.levels import INFORMATION_MODELS, Level
from minipacs.dicom.uids import transfer_syntax
from minipacs.net.association import Association
from minipacs.net.dimse import Command
from minipacs.net.memory import BytesSink

#: -P / -S / -O: information model (dicom/levels.py) → (FIND SOP class, default level: the model's top)
MODELS: Final[Mapping[str, tuple[str, str]]] = {
    model.key: (model.find_sop_class, model.levels[0].value) for model in INFORMATION_MODELS
}

#: Return keys asked for when the user names none (beyond the level).
DEFAULT_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    Level.PATIENT.value: (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    Level.STUDY.value: (
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    Level.SERIES.value: (
        "StudyInstanceUID",
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    Level.IMAGE.value: ("StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}

_TAG_RE: Final = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")
_PATH_RE: Final = re.compile(r"^(.+?)(?:\[(\d+)\])?$")


#: A key's value: text ('' and None ask for the attribute back), or a number for US/UL/SS/SL.
KeyValue = str | int | None


class InvalidKeySpec(ValueError):
    """A key the user wrote cannot be understood."""


def _tag_of(name: str) -> int:
    found = _TAG_RE.match(name.strip())
    if found:
        return int(found.group(1) + found.group(2), 16)
    tag = tag_for_keyword(name.strip())
    if tag is None:
        raise InvalidKeySpec(f"{name!r} is neither a DICOM keyword nor a (gggg,eeee) tag")
    return int(tag)


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        raise InvalidKeySpec(
            f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM dictionary; its VR is unknown"
        ) from None


def set_key(ds: Dataset, path: str, raw: KeyValue = None) -> None:
    """Set one key: ``path`` parts joined by '.', sequence items as ``Name[i]``; ``raw`` as given
    (a backslash separates the values of a multi-valued key, PS3.5 6.4)."""
    value = "" if raw is None else str(raw)
    spec = f"{path}={value}"  # as the user would have written it, for messages
    parts = path.split(".")
    target = ds
    for part in parts[:-1]:
        found = _PATH_RE.match(part)
        if found is None:  # pragma: no cover - the pattern matches any non-empty text
            raise InvalidKeySpec(f"cannot read {part!r} in {spec!r}")
        tag = _tag_of(found.group(1))
        if _vr_of(tag) != "SQ":
            raise InvalidKeySpec(f"{found.group(1)} in {spec!r} is not a sequence")
        index = int(found.group(2) or 0)
        if tag not in target:
            target.add(DataElement(tag, "SQ", DicomSequence()))
        items = target[tag].value
        while len(items) <= index:
            items.append(Dataset())
        target = items[index]
    tag = _tag_of(parts[-1])
    vr = _vr_of(tag)
    if vr == "SQ":
        if value:
            raise InvalidKeySpec(f"{parts[-1]} is a sequence; give its item keys as {parts[-1]}[0].Keyword=value")
        target.add(DataElement(tag, "SQ", DicomSequence()))
        return
    elem_value: Any = value if value else None
    if vr in ("US", "UL", "SS", "SL") and value:
        elem_value = int(value)
    target.add(DataElement(tag, vr, elem_value))


def build_identifier(keys: Mapping[str, KeyValue], level: str | None) -> Dataset:
    """The identifier for ``keys`` at ``level`` (None: no QueryRetrieveLevel, as for the Modality
    Worklist, PS3.4 K.6.1.2); the level's default return keys when none are given."""
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    items = list(keys.items()) or [(k, None) for k in DEFAULT_KEYS.get(level or "", ())]
    for path, value in items:
        set_key(ds, path, value)
    if any(not str(v).isascii() for v in _values(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _values(ds: Dataset) -> Iterable[object]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _values(item)
        elif elem.value is not None:
            yield elem.value


@dataclass
class FindResult:
    status: int = -1
    error_comment: str = ""
    matches: list[Dataset] = field(default_factory=list)
    cancelled_sent: bool = False
    #: Matches that came after ``cancel_after`` (a peer slow to honour C-CANCEL, or one ignoring it): not kept.
    dropped: int = 0


async def find(
    assoc: Association, sop_class: str, identifier: Dataset, *, cancel_after: int | None = None
) -> AsyncIterator[tuple[int, Dataset | None, Command]]:
    """Send C-FIND; yield (status, identifier or None, response command) for every response."""
    ctx = assoc.context_for(sop_class)
    if ctx is None:
        raise LookupError(f"the peer did not accept {sop_class} (C-FIND)")
    ts = transfer_syntax(ctx.transfer_syntax)
    if ts is None:  # pragma: no cover - we only propose syntaxes we know
        raise LookupError(ctx.transfer_syntax)
    msg_id = assoc.next_message_id()
    rq = Command.make("C-FIND-RQ", has_dataset=True, MessageID=msg_id, Priority=0, AffectedSOPClassUID=sop_class)
    received = 0
    cancelled = False
    async for rsp in assoc.request(ctx.context_id, rq, encode_identifier(identifier, ts)):
        status = rsp.command.status
        ds: Dataset | None = None
        if isinstance(rsp.dataset, BytesSink) and rsp.dataset.getvalue():
            ds = decode_identifier(rsp.dataset.getvalue(), ctx.transfer_syntax)
        yield status, ds, rsp.command
        if status in (0xFF00, 0xFF01):
            received += 1
            if cancel_after is not None and received >= cancel_after and not cancelled:
                cancelled = True
                await assoc.send_message(ctx.context_id, Command.make("C-CANCEL-RQ", MessageIDBeingRespondedTo=msg_id))


async def find_all(
    assoc: Association, sop_class: str, identifier: Dataset, *, cancel_after: int | None = None
) -> FindResult:
    """C-FIND and collect every match, at most ``cancel_after`` of them: past it C-CANCEL is sent (PS3.4
    C.4.1.2.3) and what the peer sends before its final response is counted in ``dropped``, not kept."""
    result = FindResult()
    async for status, ds, command in find(assoc, sop_class, identifier, cancel_after=cancel_after):
        if status in (0xFF00, 0xFF01):
            if cancel_after is not None and len(result.matches) >= cancel_after:
                result.dropped += 1
            elif ds is not None:
                result.matches.append(ds)
            continue
        result.status = status
        result.error_comment = command.error_comment
    result.cancelled_sent = cancel_after is not None and len(result.matches) >= cancel_after
    return result


def describe_key(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


__all__ = [
    "DEFAULT_KEYS",
    "FindResult",
    "InvalidKeySpec",
    "KeyValue",
    "MODELS",
    "build_identifier",
    "find",
    "find_all",
    "set_key",
]
