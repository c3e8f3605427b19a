"""The seven DICOM upper-layer PDUs and their encode/decode dispatch: PS3.8 §9.3.

Every PDU is a 6-byte header — PDU-type (1), Reserved (1), PDU-length (4, big
endian) — followed by a body of PDU-length bytes. :func:`decode_pdu` takes the
type and the body (the transport reads the header to know how much to read);
:func:`encode_pdu` returns the whole PDU, header included.

Decoding never lets ``IndexError`` or ``struct.error`` escape: anything
malformed is a :class:`~minipacs.net.pdu_items.PDUError` whose ``reason`` is the
A-ABORT reason to send (PS3.8 §9.3.8). Offsets in messages are 0-based from the
first byte of the PDU header, as a packet capture shows them.

P-DATA-TF is the hot path: decoding slices the body without copying (each
``PDV.data`` is a ``memoryview`` into it) and :func:`pdata_pdu_header` lets a
sender write the 12 header bytes and the fragment without joining them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeVar

from minipacs.dicom.uids import APPLICATION_CONTEXT_NAME
from minipacs.net.pdu_items import (
    APPLICATION_CONTEXT_ITEM,
    PRESENTATION_CONTEXT_AC_ITEM,
    PRESENTATION_CONTEXT_RQ_ITEM,
    USER_INFORMATION_ITEM,
    PDUError,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_application_context,
    encode_application_context,
    iter_items,
)

__all__ = [
    "PDU",
    "PDU_HEADER",
    "PDU_TYPES",
    "PDV",
    "AAbort",
    "AAssociateAC",
    "AAssociateRJ",
    "AAssociateRQ",
    "AReleaseRP",
    "AReleaseRQ",
    "PDataTF",
    "decode_ae_title",
    "decode_pdu",
    "encode_ae_title",
    "encode_pdu",
    "pdata_pdu_header",
    "pdata_pdus",
]

PDU_HEADER = struct.Struct(">BxL")  # PDU-type, Reserved, PDU-length
_BODY_BASE = PDU_HEADER.size  # body offsets are reported from the start of the PDU

# PS3.8 Table 9-11 / 9-17: Protocol-version, Reserved, Called-AE-title,
# Calling-AE-title, Reserved (32 bytes); the variable items follow at body byte 68.
_ASSOCIATE_FIXED = struct.Struct(">H2x16s16s32x")
_REJECT = struct.Struct(">xBBB")  # PS3.8 Table 9-21: Reserved, Result, Source, Reason/Diag.
_ABORT = struct.Struct(">xxBB")  # PS3.8 Table 9-26: Reserved, Reserved, Source, Reason/Diag.
_RELEASE = struct.Struct(">4x")  # PS3.8 Tables 9-24, 9-25: Reserved
_PDV_HEADER = struct.Struct(">LBB")  # PS3.8 Table 9-23: Item-length, Context-ID, control header
_PDATA_HEADER = struct.Struct(">BxLLBB")  # PDU header + first PDV item header

_AE_TITLE_LENGTH = 16
_COMMAND_BIT = 0x01  # PS3.8 Annex E.2: bit 0 set = Command, clear = Data Set
_LAST_BIT = 0x02  # bit 1 set = last fragment


def _header(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def _view(body: memoryview | bytes) -> memoryview:
    return body if isinstance(body, memoryview) else memoryview(body)


def _expect_size(body: memoryview, size: int, name: str) -> None:
    if len(body) != size:
        raise PDUError(f"{name} PDU body must be {size} bytes (PDU-length {size}), got {len(body)}")


# ---------------------------------------------------------------- AE titles


def encode_ae_title(title: str, name: str) -> bytes:
    """PS3.8 §9.3.2: 16 bytes, ASCII, space padded; ``ValueError`` if it cannot be."""
    try:
        raw = title.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{name} {title!r} is not ASCII") from None
    if len(raw) > _AE_TITLE_LENGTH:
        raise ValueError(f"{name} {title!r} is longer than 16 characters")
    if not raw.strip(b" "):
        raise ValueError(f"{name} is empty; PS3.8 §9.3.2 forbids an all-space AE title")
    return raw.ljust(_AE_TITLE_LENGTH, b" ")


def decode_ae_title(raw: bytes, name: str, offset: int) -> str:
    """ASCII with leading and trailing spaces removed; empty or non-ASCII is a PDUError."""
    try:
        title = raw.decode("ascii").strip(" ")
    except UnicodeDecodeError:
        raise PDUError(f"{name} at byte {offset} is not ASCII: {raw!r}") from None
    if not title:
        raise PDUError(f"{name} at byte {offset} is all spaces (PS3.8 §9.3.2 forbids it)")
    return title


# ---------------------------------------------------- A-ASSOCIATE-RQ / -AC

_Context = TypeVar("_Context", PresentationContextRQ, PresentationContextAC)


def _encode_associate(
    pdu_type: int,
    protocol_version: int,
    called_ae: str,
    calling_ae: str,
    application_context: str,
    contexts: list[_Context],
    user_information: UserInformation,
) -> bytes:
    fixed = _ASSOCIATE_FIXED.pack(
        protocol_version,
        encode_ae_title(called_ae, "Called-AE-title"),
        encode_ae_title(calling_ae, "Calling-AE-title"),
    )
    parts = [fixed, encode_application_context(application_context)]
    parts += [context.encode() for context in contexts]
    parts.append(user_information.encode())
    return _header(pdu_type, b"".join(parts))


@dataclass
class _AssociateFields:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    user_information: UserInformation


def _decode_associate(
    body: memoryview,
    name: str,
    context_item: int,
    decode_context: Callable[[memoryview, int], _Context],
    titles_tested: bool,
) -> tuple[_AssociateFields, list[_Context]]:
    """Shared body of PS3.8 §9.3.2 and §9.3.3; unknown item types are skipped.

    A missing Application Context Item is reason 6 (invalid PDU parameter
    value); a second one, or a second User Information Item, is reason 5
    (unexpected PDU parameter). A missing User Information Item is tolerated
    (an empty :class:`UserInformation`) so that the association layer decides.
    """
    if len(body) < _ASSOCIATE_FIXED.size:
        raise PDUError(
            f"{name} PDU body is {len(body)} bytes; its fixed fields alone need {_ASSOCIATE_FIXED.size} (PS3.8 §9.3.2)"
        )
    version, called_raw, calling_raw = _ASSOCIATE_FIXED.unpack_from(body)
    if titles_tested:
        called = decode_ae_title(called_raw, "Called-AE-title", _BODY_BASE + 4)
        calling = decode_ae_title(calling_raw, "Calling-AE-title", _BODY_BASE + 20)
    else:  # PS3.8 §9.3.3: echoed from the request "but shall not be tested"
        called = called_raw.decode("ascii", "replace").strip(" ")
        calling = calling_raw.decode("ascii", "replace").strip(" ")
    application_context: str | None = None
    user_information: UserInformation | None = None
    contexts: list[_Context] = []
    items = body[_ASSOCIATE_FIXED.size :]
    for item_type, value, offset in iter_items(items, _BODY_BASE + _ASSOCIATE_FIXED.size, name):
        if item_type == context_item:
            contexts.append(decode_context(value, offset))
        elif item_type == APPLICATION_CONTEXT_ITEM:
            if application_context is not None:
                raise PDUError(f"{name}: second Application Context Item at byte {offset - 4}", 5)
            application_context = decode_application_context(value, offset)
        elif item_type == USER_INFORMATION_ITEM:
            if user_information is not None:
                raise PDUError(f"{name}: second User Information Item at byte {offset - 4}", 5)
            user_information = UserInformation.decode(value, offset)
    if application_context is None:
        raise PDUError(f"{name} has no Application Context Item (10H)")
    fields = _AssociateFields(version, called, calling, application_context, user_information or UserInformation())
    return fields, contexts


@dataclass
class AAssociateRQ:
    """PS3.8 §9.3.2 A-ASSOCIATE-RQ PDU (type 01H).

    ``protocol_version`` is kept as decoded; bit 0 set means version 1 and the
    association layer checks it (PS3.8 §9.3.2, Table 9-11).
    """

    PDU_TYPE: ClassVar[int] = 0x01

    called_ae: str
    calling_ae: str
    presentation_contexts: list[PresentationContextRQ]
    user_information: UserInformation
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1

    def encode(self) -> bytes:
        return _encode_associate(
            self.PDU_TYPE,
            self.protocol_version,
            self.called_ae,
            self.calling_ae,
            self.application_context,
            self.presentation_contexts,
            self.user_information,
        )

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        fields, contexts = _decode_associate(
            body,
            "A-ASSOCIATE-RQ",
            PRESENTATION_CONTEXT_RQ_ITEM,
            PresentationContextRQ.decode,
            titles_tested=True,
        )
        return cls(
            fields.called_ae,
            fields.calling_ae,
            contexts,
            fields.user_information,
            fields.application_context,
            fields.protocol_version,
        )


@dataclass
class AAssociateAC:
    """PS3.8 §9.3.3 A-ASSOCIATE-AC PDU (type 02H).

    The AE titles echo the request and "shall not be tested" (Table 9-17), so
    decoding accepts whatever is there (non-ASCII bytes become U+FFFD).
    """

    PDU_TYPE: ClassVar[int] = 0x02

    called_ae: str
    calling_ae: str
    presentation_contexts: list[PresentationContextAC]
    user_information: UserInformation
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1

    def encode(self) -> bytes:
        return _encode_associate(
            self.PDU_TYPE,
            self.protocol_version,
            self.called_ae,
            self.calling_ae,
            self.application_context,
            self.presentation_contexts,
            self.user_information,
        )

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        fields, contexts = _decode_associate(
            body,
            "A-ASSOCIATE-AC",
            PRESENTATION_CONTEXT_AC_ITEM,
            PresentationContextAC.decode,
            titles_tested=False,
        )
        return cls(
            fields.called_ae,
            fields.calling_ae,
            contexts,
            fields.user_information,
            fields.application_context,
            fields.protocol_version,
        )


# ------------------------------------------------------ fixed-size PDUs


@dataclass
class AAssociateRJ:
    """PS3.8 §9.3.4 A-ASSOCIATE-RJ PDU (type 03H); codes per Table 9-21."""

    PDU_TYPE: ClassVar[int] = 0x03

    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        return _header(self.PDU_TYPE, _REJECT.pack(self.result, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        _expect_size(body, _REJECT.size, "A-ASSOCIATE-RJ")
        result, source, reason = _REJECT.unpack(body)
        return cls(result, source, reason)


@dataclass
class AReleaseRQ:
    """PS3.8 §9.3.6 A-RELEASE-RQ PDU (type 05H)."""

    PDU_TYPE: ClassVar[int] = 0x05

    def encode(self) -> bytes:
        return _header(self.PDU_TYPE, _RELEASE.pack())

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        _expect_size(body, _RELEASE.size, "A-RELEASE-RQ")
        return cls()


@dataclass
class AReleaseRP:
    """PS3.8 §9.3.7 A-RELEASE-RP PDU (type 06H)."""

    PDU_TYPE: ClassVar[int] = 0x06

    def encode(self) -> bytes:
        return _header(self.PDU_TYPE, _RELEASE.pack())

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        _expect_size(body, _RELEASE.size, "A-RELEASE-RP")
        return cls()


@dataclass
class AAbort:
    """PS3.8 §9.3.8 A-ABORT PDU (type 07H); codes per Table 9-26."""

    PDU_TYPE: ClassVar[int] = 0x07

    source: int
    reason: int

    def encode(self) -> bytes:
        return _header(self.PDU_TYPE, _ABORT.pack(self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        _expect_size(body, _ABORT.size, "A-ABORT")
        source, reason = _ABORT.unpack(body)
        return cls(source, reason)


# ------------------------------------------------------------- P-DATA-TF


@dataclass
class PDV:
    """PS3.8 §9.3.5.1 Presentation Data Value Item with its message control header.

    Message control header (PS3.8 Annex E.2): bit 0 set for a Command fragment,
    clear for a Data Set fragment; bit 1 set for the last fragment.
    """

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview


@dataclass
class PDataTF:
    """PS3.8 §9.3.5 P-DATA-TF PDU (type 04H): one or more PDV items."""

    PDU_TYPE: ClassVar[int] = 0x04

    pdvs: list[PDV] = field(default_factory=list)

    def encode(self) -> bytes:
        if not self.pdvs:
            raise ValueError("a P-DATA-TF PDU needs at least one PDV item (PS3.8 §9.3.5)")
        parts: list[bytes | memoryview] = [b""]
        total = 0
        pack = _PDV_HEADER.pack
        for pdv in self.pdvs:
            size = len(pdv.data)
            control = pdv.is_command * _COMMAND_BIT | pdv.is_last * _LAST_BIT
            parts.append(pack(size + 2, pdv.context_id, control))
            parts.append(pdv.data)
            total += size + 6
        parts[0] = PDU_HEADER.pack(self.PDU_TYPE, total)
        return b"".join(parts)

    @classmethod
    def decode(cls, body: memoryview) -> Self:
        """Slice each PDV's data out of ``body`` without copying."""
        end = len(body)
        if end == 0:
            raise PDUError("P-DATA-TF PDU has no PDV item (PS3.8 §9.3.5 requires one or more)")
        pdvs: list[PDV] = []
        unpack = _PDV_HEADER.unpack_from
        pos = 0
        while pos < end:
            if end - pos < 6:
                raise PDUError(
                    f"P-DATA-TF: PDV item at byte {_BODY_BASE + pos} is truncated "
                    f"({end - pos} byte(s) left; Item-length, Context-ID and control header need 6)"
                )
            length, context_id, control = unpack(body, pos)
            if length < 2:
                raise PDUError(
                    f"P-DATA-TF: PDV Item-length {length} at byte {_BODY_BASE + pos} is below 2 "
                    "(it must cover the Context-ID and the message control header)"
                )
            stop = pos + 4 + length
            if stop > end:
                raise PDUError(
                    f"P-DATA-TF: PDV Item-length {length} at byte {_BODY_BASE + pos} runs "
                    f"{stop - end} byte(s) past the end of the PDU"
                )
            pdvs.append(
                PDV(
                    context_id,
                    bool(control & _COMMAND_BIT),
                    bool(control & _LAST_BIT),
                    body[pos + 6 : stop],
                )
            )
            pos = stop
        return cls(pdvs)


def pdata_pdu_header(context_id: int, is_command: bool, is_last: bool, data_length: int) -> bytes:
    """The 12 bytes before a single-PDV P-DATA-TF fragment of ``data_length`` bytes.

    PDU header (type 04H, PDU-length ``6 + data_length``), PDV Item-length
    (``2 + data_length``), Presentation-context-ID and message control header
    (PS3.8 §9.3.5, Annex E.2). The sender writes this and then the data.
    """
    control = is_command * _COMMAND_BIT | is_last * _LAST_BIT
    try:
        return _PDATA_HEADER.pack(0x04, 6 + data_length, 2 + data_length, context_id, control)
    except struct.error as exc:
        raise ValueError(f"cannot frame a PDV of {data_length} bytes for context {context_id}: {exc}") from None


_PDV_HEADER = struct.Struct(">LBB")


def pdata_pdus(context_id: int, messages: Sequence[tuple[bytes, bytes]], max_length: int) -> list[bytes] | None:
    """One P-DATA-TF PDU per message (command set, dataset), both as last-fragment PDV items of it
    (PS3.8 §9.3.5: a PDU holds one or more PDV items): half the PDUs of a PDU per PDV, for a peer
    to read, on C-FIND's many small Pending responses. Never two messages in one PDU: DCMTK's
    findscu (3.6.7) crashes on the second. None when a message does not fit in ``max_length``
    (the peer's Maximum Length: the PDV items with their headers, PS3.8 D.1): it must be fragmented."""
    pdus: list[bytes] = []
    command = _COMMAND_BIT | _LAST_BIT
    for cmd, data in messages:
        size = 12 + len(cmd) + len(data)
        if size > max_length:
            return None
        pdus.append(
            _PDATA_HEADER.pack(0x04, size, 2 + len(cmd), context_id, command)
            + cmd
            + _PDV_HEADER.pack(2 + len(data), context_id, _LAST_BIT)
            + data
        )
    return pdus


# -------------------------------------------------------------- dispatch

PDU = AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort

# PS3.8 §9.3.1: PDU-type -> PDU structure.
PDU_TYPES: dict[int, type[PDU]] = {
    cls.PDU_TYPE: cls for cls in (AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ, AReleaseRP, AAbort)
}


def encode_pdu(pdu: PDU) -> bytes:
    """The whole PDU, 6-byte header included; ``ValueError`` if a field cannot be encoded."""
    try:
        return pdu.encode()
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(pdu).__name__}: {exc}") from None


def decode_pdu(pdu_type: int, body: memoryview | bytes) -> PDU:
    """Decode a PDU body (the bytes after the 6-byte header); raises :class:`PDUError`."""
    cls = PDU_TYPES.get(pdu_type)
    if cls is None:
        raise PDUError(f"unrecognized PDU type {pdu_type:02X}H (PS3.8 §9.3.1 knows 01H-07H)", 1)
    return cls.decode(_view(body))
