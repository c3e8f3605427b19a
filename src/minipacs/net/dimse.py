"""DIMSE command sets: PS3.7 §9.3 (DIMSE-C), §10.3 (DIMSE-N), Annex E.

A command set is group 0000 encoded Implicit VR Little Endian (PS3.7 §6.3.1).
:class:`Command` holds the fields by DICOM keyword; ``encode``/``decode`` are
table-driven (``COMMAND_FIELDS``), and ``MESSAGE_TYPES`` names every DIMSE-C
and DIMSE-N message with the fields PS3.7 makes mandatory for it.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

#: PS3.7 §9.3 and §10.3, value of (0000,0800) when no data set follows.
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000


class CommandError(Exception):
    """A received command set is malformed; PS3.7 C.5.x statuses apply."""


class VR(enum.Enum):
    UL = "UL"
    US = "US"
    UI = "UI"
    AE = "AE"
    LO = "LO"
    AT = "AT"


# PS3.7 Table E.1-1: Command Fields (tag -> keyword, VR)
COMMAND_FIELDS: dict[int, tuple[str, VR]] = {
    0x00000000: ("CommandGroupLength", VR.UL),
    0x00000002: ("AffectedSOPClassUID", VR.UI),
    0x00000003: ("RequestedSOPClassUID", VR.UI),
    0x00000100: ("CommandField", VR.US),
    0x00000110: ("MessageID", VR.US),
    0x00000120: ("MessageIDBeingRespondedTo", VR.US),
    0x00000600: ("MoveDestination", VR.AE),
    0x00000700: ("Priority", VR.US),
    0x00000800: ("CommandDataSetType", VR.US),
    0x00000900: ("Status", VR.US),
    0x00000901: ("OffendingElement", VR.AT),
    0x00000902: ("ErrorComment", VR.LO),
    0x00000903: ("ErrorID", VR.US),
    0x00001000: ("AffectedSOPInstanceUID", VR.UI),
    0x00001001: ("RequestedSOPInstanceUID", VR.UI),
    0x00001002: ("EventTypeID", VR.US),
    0x00001005: ("AttributeIdentifierList", VR.AT),
    0x00001008: ("ActionTypeID", VR.US),
    0x00001020: ("NumberOfRemainingSuboperations", VR.US),
    0x00001021: ("NumberOfCompletedSuboperations", VR.US),
    0x00001022: ("NumberOfFailedSuboperations", VR.US),
    0x00001023: ("NumberOfWarningSuboperations", VR.US),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", VR.AE),
    0x00001031: ("MoveOriginatorMessageID", VR.US),
}
KEYWORD_TAGS: dict[str, int] = {kw: tag for tag, (kw, _vr) in COMMAND_FIELDS.items()}


@dataclass(frozen=True)
class MessageType:
    name: str
    command_field: int
    required: tuple[str, ...]


# PS3.7 Tables 9.3-1 .. 9.3-13 and 10.3-1 .. 10.3-12: mandatory (M) fields
# of each message, besides CommandGroupLength, CommandField and CommandDataSetType.
_MESSAGES = (
    MessageType("C-STORE-RQ", 0x0001, ("AffectedSOPClassUID", "MessageID", "Priority", "AffectedSOPInstanceUID")),
    MessageType("C-STORE-RSP", 0x8001, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("C-GET-RQ", 0x0010, ("AffectedSOPClassUID", "MessageID", "Priority")),
    MessageType("C-GET-RSP", 0x8010, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("C-FIND-RQ", 0x0020, ("AffectedSOPClassUID", "MessageID", "Priority")),
    MessageType("C-FIND-RSP", 0x8020, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("C-MOVE-RQ", 0x0021, ("AffectedSOPClassUID", "MessageID", "Priority", "MoveDestination")),
    MessageType("C-MOVE-RSP", 0x8021, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("C-ECHO-RQ", 0x0030, ("AffectedSOPClassUID", "MessageID")),
    MessageType("C-ECHO-RSP", 0x8030, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("C-CANCEL-RQ", 0x0FFF, ("MessageIDBeingRespondedTo",)),
    MessageType(
        "N-EVENT-REPORT-RQ", 0x0100, ("AffectedSOPClassUID", "MessageID", "AffectedSOPInstanceUID", "EventTypeID")
    ),
    MessageType("N-EVENT-REPORT-RSP", 0x8100, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("N-GET-RQ", 0x0110, ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID")),
    MessageType("N-GET-RSP", 0x8110, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("N-SET-RQ", 0x0120, ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID")),
    MessageType("N-SET-RSP", 0x8120, ("MessageIDBeingRespondedTo", "Status")),
    MessageType(
        "N-ACTION-RQ", 0x0130, ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID", "ActionTypeID")
    ),
    MessageType("N-ACTION-RSP", 0x8130, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("N-CREATE-RQ", 0x0140, ("AffectedSOPClassUID", "MessageID")),
    MessageType("N-CREATE-RSP", 0x8140, ("MessageIDBeingRespondedTo", "Status")),
    MessageType("N-DELETE-RQ", 0x0150, ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID")),
    MessageType("N-DELETE-RSP", 0x8150, ("MessageIDBeingRespondedTo", "Status")),
)
MESSAGE_TYPES: dict[int, MessageType] = {m.command_field: m for m in _MESSAGES}
MESSAGE_BY_NAME: dict[str, MessageType] = {m.name: m for m in _MESSAGES}

#: Command sets decoded lately (their bytes -> fields), for :meth:`Command.decode`: the Pending
#: responses of one C-FIND (or C-GET/C-MOVE) are the same bytes hundreds of times over, and an SCU
#: reading them should not parse each anew. Small, and emptied when full: a C-STORE-RQ's command
#: (its own SOP Instance UID each time) never hits, and costs one lookup and one insert.
_DECODED: dict[bytes, dict[str, Any]] = {}
_DECODED_MAX: Final = 64
#: Longer command sets are not kept (a typical response's is ~100 bytes).
_DECODED_BYTES: Final = 512

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
#: A whole US element (tag, length 2, value), and the CommandGroupLength element with its value.
_US_ELEMENT = struct.Struct("<HHLH")
_GROUP_LENGTH = struct.Struct("<HHLL")
#: VR members as plain names for the codecs: ``VR.US`` is a descriptor call on Python 3.11 (~45 ns),
#: and encoding or decoding one command set compared a field's VR with them ~30 times.
_VR_US, _VR_UL, _VR_UI, _VR_AE, _VR_LO, _VR_AT = VR.US, VR.UL, VR.UI, VR.AE, VR.LO, VR.AT


@dataclass
class Command:
    """A DIMSE command set, fields by keyword (PS3.7 Table E.1-1)."""

    fields: dict[str, Any] = field(default_factory=dict)

    # -- construction -------------------------------------------------------
    @classmethod
    def make(cls, message: str, *, has_dataset: bool = False, **values: Any) -> Command:
        mtype = MESSAGE_BY_NAME[message]
        cmd = cls({"CommandField": mtype.command_field, **values})
        cmd.fields["CommandDataSetType"] = DATASET_PRESENT if has_dataset else NO_DATASET
        missing = [k for k in mtype.required if cmd.fields.get(k) is None]
        if missing:
            raise ValueError(f"{message} needs {', '.join(missing)}")
        return cmd

    # -- accessors ----------------------------------------------------------
    def get(self, keyword: str, default: Any = None) -> Any:
        return self.fields.get(keyword, default)

    def __getitem__(self, keyword: str) -> Any:
        return self.fields[keyword]

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.fields

    # -- typed accessors: PS3.7 Table E.1-1 fields by name; an absent field reads as its empty value
    @property
    def message_id(self) -> int:
        """(0000,0110) Message ID; 0 when absent (requests must have one: decode checks)."""
        return int(self.fields.get("MessageID", 0))

    @property
    def message_id_being_responded_to(self) -> int:
        """(0000,0120); -1 when absent."""
        return int(self.fields.get("MessageIDBeingRespondedTo", -1))

    @property
    def status(self) -> int:
        """(0000,0900) Status of a response; -1 when absent."""
        return int(self.fields.get("Status", -1))

    @property
    def error_comment(self) -> str:
        return str(self.fields.get("ErrorComment", ""))

    @property
    def affected_sop_class_uid(self) -> str:
        return str(self.fields.get("AffectedSOPClassUID", ""))

    @property
    def affected_sop_instance_uid(self) -> str:
        return str(self.fields.get("AffectedSOPInstanceUID", "") or "")

    @property
    def requested_sop_class_uid(self) -> str:
        return str(self.fields.get("RequestedSOPClassUID", ""))

    @property
    def requested_sop_instance_uid(self) -> str:
        return str(self.fields.get("RequestedSOPInstanceUID", "") or "")

    @property
    def sop_class_uid(self) -> str:
        """The SOP class the message is about: Affected (DIMSE-C, N-CREATE, N-EVENT-REPORT) or Requested."""
        return self.affected_sop_class_uid or self.requested_sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        """The SOP instance the message is about: Affected or Requested; "" when it names none."""
        return self.affected_sop_instance_uid or self.requested_sop_instance_uid

    @property
    def move_destination(self) -> str:
        """(0000,0600) of a C-MOVE-RQ, without the AE title's padding."""
        return str(self.fields.get("MoveDestination", "")).strip()

    @property
    def action_type_id(self) -> int | None:
        """(0000,1008) of an N-ACTION; None when absent."""
        value = self.fields.get("ActionTypeID")
        return None if value is None else int(value)

    @property
    def event_type_id(self) -> int | None:
        """(0000,1002) of an N-EVENT-REPORT; None when absent."""
        value = self.fields.get("EventTypeID")
        return None if value is None else int(value)

    @property
    def command_field(self) -> int:
        return int(self.fields.get("CommandField", -1))

    @property
    def message_type(self) -> MessageType | None:
        return MESSAGE_TYPES.get(self.command_field)

    @property
    def name(self) -> str:
        mtype = self.message_type
        if mtype is not None:
            return mtype.name
        if "CommandField" not in self.fields:
            return "command without a CommandField"
        return f"unknown command 0x{self.command_field:04X}"

    @property
    def has_dataset(self) -> bool:
        return bool(self.fields.get("CommandDataSetType", NO_DATASET) != NO_DATASET)

    @property
    def is_request(self) -> bool:
        return not self.command_field & 0x8000

    def summary(self) -> str:
        """One line for the debug trace, in the spirit of DCMTK's dumps."""
        parts = [self.name]
        for kw in (
            "MessageID",
            "MessageIDBeingRespondedTo",
            "AffectedSOPClassUID",
            "RequestedSOPClassUID",
            "AffectedSOPInstanceUID",
            "RequestedSOPInstanceUID",
            "MoveDestination",
        ):
            if kw in self.fields:
                parts.append(f"{kw}={self.fields[kw]}")
        if "Status" in self.fields:
            parts.append(f"Status=0x{int(self.fields['Status']):04X}")
        parts.append("with dataset" if self.has_dataset else "no dataset")
        return " ".join(parts)

    # -- codec --------------------------------------------------------------
    def encode(self) -> bytes:
        """Implicit VR Little Endian, ascending tags, CommandGroupLength first."""
        fields = self.fields
        body = bytearray()
        for tag in sorted(KEYWORD_TAGS[k] for k in fields if k != "CommandGroupLength"):
            keyword, vr = COMMAND_FIELDS[tag]
            if vr is _VR_US:  # most fields: tag, length and value in one pack
                body += _US_ELEMENT.pack(0x0000, tag & 0xFFFF, 2, int(fields[keyword]))
                continue
            value = _encode_value(vr, fields[keyword], keyword)
            body += _ELEMENT.pack(0x0000, tag & 0xFFFF, len(value))
            body += value
        return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Command:
        """The command set in ``data``; :class:`CommandError` if it is malformed (PS3.7 §6.3.1)."""
        if len(data) > _DECODED_BYTES:
            return cls(cls._decode_fields(data))
        key = bytes(data)
        fields = _DECODED.get(key)
        if fields is None:
            fields = cls._decode_fields(key)
            if any(type(value) is list for value in fields.values()):
                return cls(fields)  # AT values (lists) are mutable: not shared
            if len(_DECODED) >= _DECODED_MAX:
                _DECODED.clear()
            _DECODED[key] = fields
        return cls(dict(fields))

    @classmethod
    def _decode_fields(cls, data: bytes | bytearray | memoryview) -> dict[str, Any]:
        view = memoryview(data)
        end = len(view)
        fields: dict[str, Any] = {}
        offset = 0
        while offset < end:
            if offset + 8 > end:
                raise CommandError(f"command set truncated at offset {offset}")
            group, element, length = _ELEMENT.unpack_from(view, offset)
            offset += 8
            if group != 0x0000:
                raise CommandError(f"element ({group:04X},{element:04X}) outside group 0000 in command set")
            stop = offset + length
            if stop > end:
                raise CommandError(f"element (0000,{element:04X}) length {length} runs past the command set")
            known = COMMAND_FIELDS.get(element)
            if known is not None:  # retired or private command elements are ignored
                keyword, vr = known
                if vr is _VR_US and length == 2:  # most fields, read in place
                    fields[keyword] = _US.unpack_from(view, offset)[0]
                else:
                    fields[keyword] = _decode_value(vr, view[offset:stop], keyword)
            offset = stop
        cmd = cls(fields)
        mtype = cmd.message_type
        if mtype is None:
            if "CommandField" not in fields:
                raise CommandError("the command set has no CommandField (0000,0100), so it names no DIMSE message")
            raise CommandError(f"unknown CommandField 0x{cmd.command_field:04X}")
        missing = [k for k in mtype.required if k not in fields]
        if missing:
            raise CommandError(f"{mtype.name} lacks required {', '.join(missing)} (PS3.7)")
        return fields


def _encode_value(vr: VR, value: Any, keyword: str) -> bytes:
    if vr is _VR_US:
        return _US.pack(int(value))
    if vr is _VR_UL:
        return _UL.pack(int(value))
    if vr is _VR_AT:
        tags = value if isinstance(value, (list, tuple)) else [value]
        return b"".join(struct.pack("<HH", (int(t) >> 16) & 0xFFFF, int(t) & 0xFFFF) for t in tags)
    text = str(value).encode("ascii", "replace") if vr is not _VR_LO else str(value).encode("latin-1", "replace")
    if vr is _VR_UI:
        return text + b"\x00" if len(text) % 2 else text
    if vr is _VR_AE:
        text = text[:16]
    return text + b" " if len(text) % 2 else text


def _decode_value(vr: VR, raw: memoryview, keyword: str) -> Any:
    try:
        if vr is _VR_US:
            return _US.unpack(raw)[0]
        if vr is _VR_UL:
            return _UL.unpack(raw)[0]
        if vr is _VR_AT:
            if len(raw) % 4:
                raise CommandError(f"{keyword} has length {len(raw)}, not a multiple of 4")
            return [(g << 16) | e for g, e in struct.iter_unpack("<HH", raw)]
    except struct.error as exc:
        raise CommandError(f"{keyword} ({vr.value}) has invalid length {len(raw)}") from exc
    text = bytes(raw).decode("latin-1")
    text = text.rstrip("\x00 ") if vr is _VR_UI else text.strip(" \x00")
    if _CONTROL.search(text) is None:
        return text
    # Read with its control characters shown escaped ("\\n"): a UI or AE so read is no valid UID or AE
    # title (a backslash), so the service refuses the message with its own status and Error Comment
    # (0xC000, 0xA900, 0x0117...) and the association goes on, as for any other invalid value; an
    # Error Comment is text for a person. Never raw: a newline would end the log line that shows the
    # value and let the peer write a line of its own.
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


#: C0, DEL and C1 control characters (PS3.5 6.1.2.1: none belongs in a UI or AE value; an LO allows ESC only for
#: character set switching, which a command set, always in the default repertoire, never does).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
