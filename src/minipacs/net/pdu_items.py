"""Variable items of the A-ASSOCIATE-RQ/AC PDUs and the user information sub-items.

PS3.8 §9.3.2.1–§9.3.2.3 (request items), §9.3.3.1–§9.3.3.3 (accept items),
PS3.8 Annex D.1 (Maximum Length Sub-Item) and PS3.7 Annex D.3.3 (Implementation
identification, Asynchronous Operations Window, SCP/SCU Role Selection, SOP Class
Extended and Common Extended Negotiation, User Identity Negotiation).

Every item starts with the same 4-byte header (PS3.8 §9.3.2): Item-type (1),
Reserved (1; the Sub-Item-version for item 57H), Item-length (2, big endian).
Decoding never lets ``IndexError`` or ``struct.error`` escape: anything malformed
is a :class:`PDUError` naming the field and the byte offset. Offsets count from
``offset`` (the position of the given buffer inside the PDU) so that a message
points at the byte a person would look at in a packet capture.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Self

from minipacs.dicom.uids import APPLICATION_CONTEXT_NAME

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "AsynchronousOperationsWindow",
    "PDUError",
    "PresentationContextAC",
    "PresentationContextRQ",
    "RoleSelection",
    "SOPClassCommonExtendedNegotiation",
    "SOPClassExtendedNegotiation",
    "UnknownItem",
    "UserIdentityAC",
    "UserIdentityRQ",
    "UserInformation",
    "decode_application_context",
    "encode_application_context",
]

# PS3.8 §9.3.2 / §9.3.3 item types; PS3.8 Annex D / PS3.7 Annex D.3.3 sub-item types.
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_SUB_ITEM = 0x30
TRANSFER_SYNTAX_SUB_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_SUB_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_SUB_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM = 0x53
ROLE_SELECTION_SUB_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_SUB_ITEM = 0x55
SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM = 0x56
SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM = 0x57
USER_IDENTITY_RQ_SUB_ITEM = 0x58
USER_IDENTITY_AC_SUB_ITEM = 0x59

ITEM_HEADER = struct.Struct(">BxH")  # Item-type, Reserved, Item-length
_SUB_ITEM_57_HEADER = struct.Struct(">BBH")  # Item-type, Sub-Item-version, Item-length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")


class PDUError(Exception):
    """A PDU or item is malformed; ``reason`` is the A-ABORT reason (PS3.8 §9.3.8).

    Reasons: 0 not specified, 1 unrecognized PDU, 2 unexpected PDU,
    4 unrecognized PDU parameter, 5 unexpected PDU parameter,
    6 invalid PDU parameter value.
    """

    def __init__(self, message: str, reason: int = 6) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- primitives


class FieldReader:
    """Reads big-endian fields from one item value, failing with a :class:`PDUError`.

    ``where`` names the item in messages; ``base`` is the offset of ``buf[0]``.
    """

    __slots__ = ("_base", "_buf", "_pos", "_where")

    def __init__(self, buf: memoryview, base: int, where: str) -> None:
        self._buf = buf
        self._pos = 0
        self._base = base
        self._where = where

    def _need(self, size: int, name: str) -> int:
        pos = self._pos
        remaining = len(self._buf) - pos
        if size > remaining:
            raise PDUError(
                f"{self._where}: field '{name}' at byte {self._base + pos} needs "
                f"{size} byte(s) but only {remaining} remain in the item"
            )
        self._pos = pos + size
        return pos

    def u8(self, name: str) -> int:
        return self._buf[self._need(1, name)]

    def u16(self, name: str) -> int:
        value: int = _U16.unpack_from(self._buf, self._need(2, name))[0]
        return value

    def u32(self, name: str) -> int:
        value: int = _U32.unpack_from(self._buf, self._need(4, name))[0]
        return value

    def take(self, size: int, name: str) -> memoryview:
        pos = self._need(size, name)
        return self._buf[pos : pos + size]

    def uid(self, size: int, name: str) -> str:
        start = self._base + self._pos
        return decode_uid(self.take(size, name), f"{self._where}: {name}", start)

    def rest(self) -> memoryview:
        pos = self._pos
        self._pos = len(self._buf)
        return self._buf[pos:]

    @property
    def at_end(self) -> bool:
        return self._pos >= len(self._buf)

    @property
    def position(self) -> int:
        """Absolute offset of the next unread byte."""
        return self._base + self._pos

    def expect_end(self) -> None:
        extra = len(self._buf) - self._pos
        if extra:
            raise PDUError(
                f"{self._where}: {extra} unexpected byte(s) at byte "
                f"{self._base + self._pos}; the item length does not match its fields"
            )


def iter_items(buf: memoryview, base: int, where: str) -> Iterator[tuple[int, memoryview, int]]:
    """Yield ``(item_type, value, value_offset)`` for each item in ``buf`` (PS3.8 §9.3.2)."""
    pos = 0
    end = len(buf)
    while pos < end:
        if end - pos < ITEM_HEADER.size:
            raise PDUError(
                f"{where}: item header at byte {base + pos} is truncated ({end - pos} byte(s) left, 4 needed)"
            )
        item_type, length = ITEM_HEADER.unpack_from(buf, pos)
        start = pos + ITEM_HEADER.size
        if length > end - start:
            raise PDUError(
                f"{where}: item {item_type:02X}H at byte {base + pos} has item length "
                f"{length} but only {end - start} byte(s) remain"
            )
        yield item_type, buf[start : start + length], base + start
        pos = start + length


def encode_item(item_type: int, value: bytes) -> bytes:
    """Item header + value; ``ValueError`` if the value exceeds the 16-bit Item-length."""
    if len(value) > 0xFFFF:
        raise ValueError(
            f"item {item_type:02X}H value is {len(value)} bytes; the Item-length field holds at most 65535"
        )
    return ITEM_HEADER.pack(item_type, len(value)) + value


def encode_uid(uid: str) -> bytes:
    """PS3.8 Annex F: UIDs on the wire are ASCII with no padding (the length says it all)."""
    try:
        return uid.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"UID {uid!r} is not ASCII") from None


def decode_uid(raw: memoryview, where: str, offset: int) -> str:
    """ASCII, trailing NUL and space padding stripped (tolerating padding peers)."""
    try:
        return bytes(raw).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        raise PDUError(f"{where} at byte {offset} is not ASCII: {bytes(raw)!r}") from None


def _u16_prefixed(value: bytes, name: str) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"{name} is {len(value)} bytes; its length field holds at most 65535")
    return _U16.pack(len(value)) + value


# ------------------------------------------------------ application context


def encode_application_context(name: str = APPLICATION_CONTEXT_NAME) -> bytes:
    """PS3.8 §9.3.2.1 / §9.3.3.1 Application Context Item (10H)."""
    return encode_item(APPLICATION_CONTEXT_ITEM, encode_uid(name))


def decode_application_context(value: memoryview, offset: int) -> str:
    """The Application-context-name of a 10H item value."""
    return decode_uid(value, "Application Context Item: Application-context-name", offset)


# --------------------------------------------------- presentation contexts


@dataclass
class PresentationContextRQ:
    """PS3.8 §9.3.2.2 Presentation Context Item (20H) with its sub-items (30H, 40H)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]

    def encode(self) -> bytes:
        parts = [
            struct.pack(">B3x", self.context_id),
            encode_item(ABSTRACT_SYNTAX_SUB_ITEM, encode_uid(self.abstract_syntax)),
        ]
        parts += [encode_item(TRANSFER_SYNTAX_SUB_ITEM, encode_uid(ts)) for ts in self.transfer_syntaxes]
        return encode_item(PRESENTATION_CONTEXT_RQ_ITEM, b"".join(parts))

    @classmethod
    def decode(cls, value: memoryview, offset: int = 0) -> Self:
        """Decode the item value (after its 4-byte header); unknown sub-items are skipped."""
        where = "Presentation Context Item (20H)"
        reader = FieldReader(value, offset, where)
        context_id = reader.u8("Presentation-context-ID")
        reader.take(3, "Reserved")
        where = f"{where} with context ID {context_id}"
        abstract: str | None = None
        transfer: list[str] = []
        for sub_type, sub_value, sub_offset in iter_items(reader.rest(), reader.position, where):
            if sub_type == ABSTRACT_SYNTAX_SUB_ITEM:
                if abstract is not None:
                    raise PDUError(f"{where}: second Abstract Syntax Sub-Item at byte {sub_offset - 4}", 5)
                abstract = decode_uid(sub_value, f"{where}: Abstract-syntax-name", sub_offset)
            elif sub_type == TRANSFER_SYNTAX_SUB_ITEM:
                transfer.append(decode_uid(sub_value, f"{where}: Transfer-syntax-name", sub_offset))
        if abstract is None:
            raise PDUError(f"{where} has no Abstract Syntax Sub-Item (30H)")
        if not transfer:
            raise PDUError(f"{where} has no Transfer Syntax Sub-Item (40H)")
        return cls(context_id, abstract, transfer)


@dataclass
class PresentationContextAC:
    """PS3.8 §9.3.3.2 Presentation Context Item (21H) with its Transfer Syntax Sub-Item.

    ``result`` (PS3.8 Table 9-18): 0 acceptance, 1 user-rejection, 2 no-reason
    (provider rejection), 3 abstract-syntax-not-supported, 4
    transfer-syntaxes-not-supported. When ``result`` is not 0 the transfer syntax
    "shall not be significant"; it is still encoded, possibly empty, and a missing
    sub-item is then tolerated on decode (``transfer_syntax == ""``).
    """

    context_id: int
    result: int
    transfer_syntax: str

    def encode(self) -> bytes:
        value = struct.pack(">BxBx", self.context_id, self.result) + encode_item(
            TRANSFER_SYNTAX_SUB_ITEM, encode_uid(self.transfer_syntax)
        )
        return encode_item(PRESENTATION_CONTEXT_AC_ITEM, value)

    @classmethod
    def decode(cls, value: memoryview, offset: int = 0) -> Self:
        where = "Presentation Context Item (21H)"
        reader = FieldReader(value, offset, where)
        context_id = reader.u8("Presentation-context-ID")
        reader.take(1, "Reserved")
        result = reader.u8("Result/Reason")
        reader.take(1, "Reserved")
        where = f"{where} with context ID {context_id}"
        transfer: str | None = None
        for sub_type, sub_value, sub_offset in iter_items(reader.rest(), reader.position, where):
            if sub_type != TRANSFER_SYNTAX_SUB_ITEM:
                continue
            if transfer is not None:
                raise PDUError(f"{where}: second Transfer Syntax Sub-Item at byte {sub_offset - 4}", 5)
            transfer = decode_uid(sub_value, f"{where}: Transfer-syntax-name", sub_offset)
        if transfer is None:
            if result == 0:
                raise PDUError(f"{where} accepts the context but has no Transfer Syntax Sub-Item (40H)")
            transfer = ""
        return cls(context_id, result, transfer)


# ----------------------------------------------------- user information


@dataclass
class AsynchronousOperationsWindow:
    """PS3.7 Annex D.3.3.3 Asynchronous Operations Window Sub-Item (53H); 0 = unlimited."""

    max_invoked: int
    max_performed: int

    def encode(self) -> bytes:
        return encode_item(
            ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM,
            struct.pack(">HH", self.max_invoked, self.max_performed),
        )

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(
            reader.u16("Maximum-number-operations-invoked"),
            reader.u16("Maximum-number-operations-performed"),
        )


@dataclass
class RoleSelection:
    """PS3.7 Annex D.3.3.4 SCP/SCU Role Selection Sub-Item (54H); role bytes 0/1."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool

    def encode(self) -> bytes:
        uid = _u16_prefixed(encode_uid(self.sop_class_uid), "SOP-class-uid")
        return encode_item(ROLE_SELECTION_SUB_ITEM, uid + bytes((int(self.scu_role), int(self.scp_role))))

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        uid = reader.uid(reader.u16("UID-length"), "SOP-class-uid")
        return cls(uid, bool(reader.u8("SCU-role")), bool(reader.u8("SCP-role")))


@dataclass
class SOPClassExtendedNegotiation:
    """PS3.7 Annex D.3.3.5 SOP Class Extended Negotiation Sub-Item (56H)."""

    sop_class_uid: str
    info: bytes

    def encode(self) -> bytes:
        uid = _u16_prefixed(encode_uid(self.sop_class_uid), "SOP-class-uid")
        return encode_item(SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM, uid + bytes(self.info))

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        uid = reader.uid(reader.u16("SOP-class-uid-length"), "SOP-class-uid")
        return cls(uid, bytes(reader.rest()))


@dataclass
class SOPClassCommonExtendedNegotiation:
    """PS3.7 Annex D.3.3.6 SOP Class Common Extended Negotiation Sub-Item (57H), version 0."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        related = b"".join(
            _u16_prefixed(encode_uid(uid), "Related-general-sop-class-uid") for uid in self.related_general_sop_classes
        )
        value = (
            _u16_prefixed(encode_uid(self.sop_class_uid), "SOP-class-uid")
            + _u16_prefixed(encode_uid(self.service_class_uid), "Service-class-uid")
            + _u16_prefixed(related, "Related-general-sop-class-identification")
        )
        # Byte 1 is the Sub-Item-version (00H), not a reserved byte.
        if len(value) > 0xFFFF:
            raise ValueError(f"item 57H value is {len(value)} bytes; the Item-length field holds at most 65535")
        return _SUB_ITEM_57_HEADER.pack(SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM, 0, len(value)) + value

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        sop_class = reader.uid(reader.u16("SOP-class-uid-length"), "SOP-class-uid")
        service_class = reader.uid(reader.u16("Service-class-uid-length"), "Service-class-uid")
        related_length = reader.u16("Related-general-sop-class-identification-length")
        block = FieldReader(
            reader.take(related_length, "Related-general-sop-class-identification"),
            reader.position - related_length,
            "SOP Class Common Extended Negotiation Sub-Item (57H): Related-general-sop-class-identification",
        )
        related: list[str] = []
        while not block.at_end:
            related.append(
                block.uid(
                    block.u16("Related-general-sop-class-uid-length"),
                    "Related-general-sop-class-uid",
                )
            )
        return cls(sop_class, service_class, related)


@dataclass
class UserIdentityRQ:
    """PS3.7 Annex D.3.3.7.1 User Identity Sub-Item (58H).

    ``identity_type``: 1 username, 2 username and passcode, 3 Kerberos,
    4 SAML, 5 JSON Web Token. The Secondary-field-length is always present.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""

    def encode(self) -> bytes:
        value = (
            struct.pack(">BB", self.identity_type, int(self.positive_response_requested))
            + _u16_prefixed(bytes(self.primary_field), "Primary-field")
            + _u16_prefixed(bytes(self.secondary_field), "Secondary-field")
        )
        return encode_item(USER_IDENTITY_RQ_SUB_ITEM, value)

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        identity_type = reader.u8("User-Identity-Type")
        positive = bool(reader.u8("Positive-response-requested"))
        primary = bytes(reader.take(reader.u16("Primary-field-length"), "Primary-field"))
        secondary = bytes(reader.take(reader.u16("Secondary-field-length"), "Secondary-field"))
        return cls(identity_type, positive, primary, secondary)


@dataclass
class UserIdentityAC:
    """PS3.7 Annex D.3.3.7.2 User Identity Sub-Item (59H) in the A-ASSOCIATE-AC."""

    server_response: bytes

    def encode(self) -> bytes:
        return encode_item(USER_IDENTITY_AC_SUB_ITEM, _u16_prefixed(bytes(self.server_response), "Server-response"))

    @classmethod
    def read(cls, reader: FieldReader) -> Self:
        return cls(bytes(reader.take(reader.u16("Server-response-length"), "Server-response")))


@dataclass
class UnknownItem:
    """A sub-item of a type this module does not know; skipped per PS3.7 Annex D.3.3."""

    item_type: int
    data: bytes


@dataclass
class UserInformation:
    """PS3.8 §9.3.2.3 / §9.3.3.3 User Information Item (50H) and its sub-items.

    ``maximum_length`` is PS3.8 Annex D.1 (0 = no limit). ``unknown`` keeps
    sub-items of unrecognised type for tracing; they are never re-encoded.
    An empty ``implementation_version_name`` is treated like ``None``.
    """

    ITEM_TYPE: ClassVar[int] = USER_INFORMATION_ITEM

    maximum_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: AsynchronousOperationsWindow | None = None
    roles: list[RoleSelection] = field(default_factory=list)
    extended: list[SOPClassExtendedNegotiation] = field(default_factory=list)
    common_extended: list[SOPClassCommonExtendedNegotiation] = field(default_factory=list)
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown: list[UnknownItem] = field(default_factory=list)

    def encode(self) -> bytes:
        """The whole 50H item; sub-items in the order 51, 52, 55, 53, 54*, 56*, 57*, 58, 59."""
        parts: list[bytes] = []
        if self.maximum_length is not None:
            parts.append(encode_item(MAXIMUM_LENGTH_SUB_ITEM, _U32.pack(self.maximum_length)))
        if self.implementation_class_uid is not None:
            parts.append(encode_item(IMPLEMENTATION_CLASS_UID_SUB_ITEM, encode_uid(self.implementation_class_uid)))
        if self.implementation_version_name:
            name = self.implementation_version_name
            if len(name) > 16:
                raise ValueError(f"Implementation-version-name {name!r} is longer than 16 characters (PS3.7 D.3.3.2.3)")
            parts.append(encode_item(IMPLEMENTATION_VERSION_NAME_SUB_ITEM, encode_uid(name)))
        if self.async_ops is not None:
            parts.append(self.async_ops.encode())
        parts += [role.encode() for role in self.roles]
        parts += [ext.encode() for ext in self.extended]
        parts += [common.encode() for common in self.common_extended]
        if self.user_identity_rq is not None:
            parts.append(self.user_identity_rq.encode())
        if self.user_identity_ac is not None:
            parts.append(self.user_identity_ac.encode())
        return encode_item(USER_INFORMATION_ITEM, b"".join(parts))

    @classmethod
    def decode(cls, data: memoryview | bytes, offset: int = 0) -> UserInformation:
        """Decode the item value (after its 4-byte header); ``offset`` locates it for messages."""
        info = cls()
        buf = data if isinstance(data, memoryview) else memoryview(data)
        for sub_type, value, value_offset in iter_items(buf, offset, "User Information Item (50H)"):
            entry = _SUB_ITEM_READERS.get(sub_type)
            if entry is None:
                info.unknown.append(UnknownItem(sub_type, bytes(value)))
                continue
            name, read = entry
            reader = FieldReader(value, value_offset, name)
            read(info, reader)
            reader.expect_end()
        return info


def _read_maximum_length(info: UserInformation, reader: FieldReader) -> None:
    info.maximum_length = reader.u32("Maximum-length-received")


def _read_implementation_class_uid(info: UserInformation, reader: FieldReader) -> None:
    info.implementation_class_uid = decode_uid(reader.rest(), "Implementation-class-uid", reader.position)


def _read_implementation_version_name(info: UserInformation, reader: FieldReader) -> None:
    info.implementation_version_name = decode_uid(reader.rest(), "Implementation-version-name", reader.position)


def _read_async_ops(info: UserInformation, reader: FieldReader) -> None:
    info.async_ops = AsynchronousOperationsWindow.read(reader)


def _read_role(info: UserInformation, reader: FieldReader) -> None:
    info.roles.append(RoleSelection.read(reader))


def _read_extended(info: UserInformation, reader: FieldReader) -> None:
    info.extended.append(SOPClassExtendedNegotiation.read(reader))


def _read_common_extended(info: UserInformation, reader: FieldReader) -> None:
    info.common_extended.append(SOPClassCommonExtendedNegotiation.read(reader))


def _read_user_identity_rq(info: UserInformation, reader: FieldReader) -> None:
    info.user_identity_rq = UserIdentityRQ.read(reader)


def _read_user_identity_ac(info: UserInformation, reader: FieldReader) -> None:
    info.user_identity_ac = UserIdentityAC.read(reader)


# PS3.8 Annex D.1 and PS3.7 Annex D.3.3: user information sub-item type -> (name, reader).
_SUB_ITEM_READERS: dict[int, tuple[str, Callable[[UserInformation, FieldReader], None]]] = {
    MAXIMUM_LENGTH_SUB_ITEM: ("Maximum Length Sub-Item (51H)", _read_maximum_length),
    IMPLEMENTATION_CLASS_UID_SUB_ITEM: (
        "Implementation Class UID Sub-Item (52H)",
        _read_implementation_class_uid,
    ),
    ASYNCHRONOUS_OPERATIONS_WINDOW_SUB_ITEM: (
        "Asynchronous Operations Window Sub-Item (53H)",
        _read_async_ops,
    ),
    ROLE_SELECTION_SUB_ITEM: ("SCP/SCU Role Selection Sub-Item (54H)", _read_role),
    IMPLEMENTATION_VERSION_NAME_SUB_ITEM: (
        "Implementation Version Name Sub-Item (55H)",
        _read_implementation_version_name,
    ),
    SOP_CLASS_EXTENDED_NEGOTIATION_SUB_ITEM: (
        "SOP Class Extended Negotiation Sub-Item (56H)",
        _read_extended,
    ),
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION_SUB_ITEM: (
        "SOP Class Common Extended Negotiation Sub-Item (57H)",
        _read_common_extended,
    ),
    USER_IDENTITY_RQ_SUB_ITEM: ("User Identity Sub-Item (58H)", _read_user_identity_rq),
    USER_IDENTITY_AC_SUB_ITEM: ("User Identity Sub-Item (59H)", _read_user_identity_ac),
}
