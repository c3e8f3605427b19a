"""Byte-for-byte tests of the PDUs (PS3.8 §9.3) and their items (PS3.8 Annex D, PS3.7 D.3.3).

Expected bytes are built here by hand from the standard's field tables with
``struct.pack`` and literals; the code under test is never used to build them.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

import pytest

from minipacs.dicom.uids import APPLICATION_CONTEXT_NAME
from minipacs.net.pdu import (
    PDU,
    PDU_HEADER,
    PDU_TYPES,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    decode_pdu,
    encode_pdu,
    pdata_pdu_header,
    pdata_pdus,
)
from minipacs.net.pdu_items import (
    AsynchronousOperationsWindow,
    PDUError,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from tests.peers import associate_seeing_rejection

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def item(item_type: int, value: bytes, byte1: int = 0) -> bytes:
    """PS3.8 §9.3.2: Item-type (1), Reserved (1), Item-length (2), value."""
    return struct.pack(">BBH", item_type, byte1, len(value)) + value


def u16_prefixed(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def pdu(pdu_type: int, body: bytes) -> bytes:
    """PS3.8 §9.3.1: PDU-type (1), Reserved (1), PDU-length (4), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def decode_whole(raw: bytes) -> PDU:
    return decode_pdu(raw[0], memoryview(raw)[6:])


# ------------------------------------------------------------ sub-items

# PS3.8 Annex D.1 and PS3.7 Annex D.3.3: (UserInformation, expected sub-item bytes).
SUB_ITEM_CASES: list[tuple[str, UserInformation, bytes]] = [
    (
        "51H maximum length",
        UserInformation(maximum_length=16384),
        # 0 type 51H, 1 reserved, 2-3 length 4, 4-7 Maximum-length-received
        bytes.fromhex("51 00 0004 00004000"),
    ),
    (
        "52H implementation class UID",
        UserInformation(implementation_class_uid="1.2.3.4"),
        bytes.fromhex("52 00 0007") + b"1.2.3.4",
    ),
    (
        "55H implementation version name",
        UserInformation(implementation_version_name="MINIPACS_01"),
        bytes.fromhex("55 00 000b") + b"MINIPACS_01",
    ),
    (
        "53H asynchronous operations window",
        UserInformation(async_ops=AsynchronousOperationsWindow(5, 0)),
        # 4-5 Maximum-number-operations-invoked, 6-7 Maximum-number-operations-performed
        bytes.fromhex("53 00 0004 0005 0000"),
    ),
    (
        "54H role selection",
        UserInformation(roles=[RoleSelection(CT_IMAGE, scu_role=False, scp_role=True)]),
        # 4-5 UID-length 25, 6-30 SOP-class-uid, 31 SCU-role, 32 SCP-role
        bytes.fromhex("54 00 001d 0019") + CT_IMAGE.encode() + bytes.fromhex("00 01"),
    ),
    (
        "56H SOP class extended negotiation",
        UserInformation(extended=[SOPClassExtendedNegotiation("1.2.3", b"\x01\x00\x01")]),
        # 4-5 SOP-class-uid-length, 6-10 SOP-class-uid, 11- Service-class-application-information
        bytes.fromhex("56 00 000a 0005") + b"1.2.3" + b"\x01\x00\x01",
    ),
    (
        "57H SOP class common extended negotiation",
        UserInformation(common_extended=[SOPClassCommonExtendedNegotiation("1.2.3", "1.2.4", ["1.2.5", "1.2.66"])]),
        # 0 type 57H, 1 Sub-Item-version 0, 2-3 length 31, 4-5 SOP-class-uid-length,
        # 6-10 SOP-class-uid, 11-12 Service-class-uid-length, 13-17 Service-class-uid,
        # 18-19 Related-general-sop-class-identification-length 15, 20- sub-fields
        bytes.fromhex("57 00 001f 0005")
        + b"1.2.3"
        + bytes.fromhex("0005")
        + b"1.2.4"
        + bytes.fromhex("000f 0005")
        + b"1.2.5"
        + bytes.fromhex("0006")
        + b"1.2.66",
    ),
    (
        "57H with no related general SOP classes",
        UserInformation(common_extended=[SOPClassCommonExtendedNegotiation("1.2.3", "1.2.4", [])]),
        bytes.fromhex("57 00 0010 0005") + b"1.2.3" + bytes.fromhex("0005") + b"1.2.4" + b"\0\0",
    ),
    (
        "58H user identity username and passcode",
        UserInformation(user_identity_rq=UserIdentityRQ(2, True, b"alice", b"s3cret")),
        # 4 User-Identity-Type, 5 Positive-response-requested, 6-7 Primary-field-length,
        # 8-12 Primary-field, 13-14 Secondary-field-length, 15-20 Secondary-field
        bytes.fromhex("58 00 0011 02 01 0005") + b"alice" + bytes.fromhex("0006") + b"s3cret",
    ),
    (
        "58H user identity username only",
        UserInformation(user_identity_rq=UserIdentityRQ(1, False, b"bob")),
        bytes.fromhex("58 00 0009 01 00 0003") + b"bob" + bytes.fromhex("0000"),
    ),
    (
        "59H user identity server response",
        UserInformation(user_identity_ac=UserIdentityAC(b"ticket")),
        # 4-5 Server-response-length, 6- Server-response
        bytes.fromhex("59 00 0008 0006") + b"ticket",
    ),
    (
        "59H empty server response",
        UserInformation(user_identity_ac=UserIdentityAC(b"")),
        bytes.fromhex("59 00 0002 0000"),
    ),
]


@pytest.mark.parametrize(("info", "sub_item"), [c[1:] for c in SUB_ITEM_CASES], ids=[c[0] for c in SUB_ITEM_CASES])
def test_user_information_sub_item(info: UserInformation, sub_item: bytes) -> None:
    expected = item(0x50, sub_item)
    assert info.encode() == expected
    assert UserInformation.decode(memoryview(expected)[4:]) == info
    assert UserInformation.decode(expected[4:]) == info


def test_user_information_sub_item_order() -> None:
    info = UserInformation(
        maximum_length=0,
        implementation_class_uid="1.2",
        implementation_version_name="V",
        async_ops=AsynchronousOperationsWindow(1, 1),
        roles=[RoleSelection("1.3", True, False), RoleSelection("1.4", True, True)],
        extended=[SOPClassExtendedNegotiation("1.5", b"")],
        common_extended=[SOPClassCommonExtendedNegotiation("1.6", "1.7")],
        user_identity_rq=UserIdentityRQ(1, False, b"u"),
        user_identity_ac=UserIdentityAC(b"r"),
    )
    expected = item(
        0x50,
        item(0x51, b"\0\0\0\0")
        + item(0x52, b"1.2")
        + item(0x55, b"V")
        + item(0x53, b"\0\x01\0\x01")
        + item(0x54, b"\0\x031.3\x01\x00")
        + item(0x54, b"\0\x031.4\x01\x01")
        + item(0x56, b"\0\x031.5")
        + item(0x57, b"\0\x031.6\0\x031.7\0\0")
        + item(0x58, b"\x01\x00\0\x01u\0\0")
        + item(0x59, b"\0\x01r"),
    )
    assert info.encode() == expected
    assert UserInformation.decode(expected[4:]) == info


def test_user_information_tolerates_padded_uids_and_unknown_sub_items() -> None:
    value = (
        item(0x52, b"1.2.3\0")  # a NUL-padded UID from an old peer
        + item(0x5F, b"\xde\xad")  # unknown sub-item type
        + item(0x51, b"\0\0\x40\0")
    )
    info = UserInformation.decode(value)
    assert info.implementation_class_uid == "1.2.3"
    assert info.maximum_length == 0x4000
    assert info.unknown == [UnknownItem(0x5F, b"\xde\xad")]
    # unknown sub-items are for tracing only: never re-encoded
    assert info.encode() == item(0x50, item(0x51, b"\0\0\x40\0") + item(0x52, b"1.2.3"))


# ----------------------------------------------------- A-ASSOCIATE-RQ/AC


def associate_fixed(called: bytes, calling: bytes, version: int = 1) -> bytes:
    """PS3.8 Table 9-11: 7-8 Protocol-version, 9-10 reserved, 11-26 Called-AE-title,
    27-42 Calling-AE-title, 43-74 reserved (PDU offsets, 1-based as in the standard)."""
    return struct.pack(">HH", version, 0) + called + calling + bytes(32)


APP_CONTEXT_ITEM = item(0x10, b"1.2.840.10008.3.1.1.1")

RQ_BYTES = pdu(
    0x01,
    associate_fixed(b"ANY-SCP         ", b"MINIPACS        ")
    + APP_CONTEXT_ITEM
    # PS3.8 Table 9-13: 5 Presentation-context-ID, 6-8 reserved, then 30H and 40H sub-items
    + item(
        0x20,
        bytes([1, 0, 0, 0])
        + item(0x30, VERIFICATION.encode())
        + item(0x40, IMPLICIT_LE.encode())
        + item(0x40, EXPLICIT_LE.encode()),
    )
    + item(0x20, bytes([3, 0, 0, 0]) + item(0x30, CT_IMAGE.encode()) + item(0x40, EXPLICIT_LE.encode()))
    + item(
        0x50,
        item(0x51, struct.pack(">L", 16384))
        + item(0x52, b"1.2.826.0.1.3680043.9.1")
        + item(0x55, b"MINIPACS_01")
        + item(0x53, struct.pack(">HH", 2, 1))
        + item(0x54, u16_prefixed(CT_IMAGE.encode()) + b"\x01\x01")
        + item(0x56, u16_prefixed(b"1.2.840.10008.5.1.4.1.2.1.1") + b"\x01")
        + item(
            0x57,
            u16_prefixed(b"1.2.3") + u16_prefixed(b"1.2.4") + u16_prefixed(u16_prefixed(b"1.2.5")),
        )
        + item(0x58, b"\x01\x01" + u16_prefixed(b"alice") + u16_prefixed(b"")),
    ),
)

RQ = AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="MINIPACS",
    presentation_contexts=[
        PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE, EXPLICIT_LE]),
        PresentationContextRQ(3, CT_IMAGE, [EXPLICIT_LE]),
    ],
    user_information=UserInformation(
        maximum_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.9.1",
        implementation_version_name="MINIPACS_01",
        async_ops=AsynchronousOperationsWindow(2, 1),
        roles=[RoleSelection(CT_IMAGE, True, True)],
        extended=[SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.1.1", b"\x01")],
        common_extended=[SOPClassCommonExtendedNegotiation("1.2.3", "1.2.4", ["1.2.5"])],
        user_identity_rq=UserIdentityRQ(1, True, b"alice"),
    ),
)

AC_BYTES = pdu(
    0x02,
    associate_fixed(b"ANY-SCP         ", b"MINIPACS        ")
    + APP_CONTEXT_ITEM
    # PS3.8 Table 9-18: 5 Presentation-context-ID, 6 reserved, 7 Result/Reason, 8 reserved
    + item(0x21, bytes([1, 0, 0, 0]) + item(0x40, IMPLICIT_LE.encode()))
    + item(0x21, bytes([3, 0, 4, 0]) + item(0x40, b""))
    + item(0x21, bytes([5, 0, 3, 0]) + item(0x40, EXPLICIT_LE.encode()))
    + item(
        0x50,
        item(0x51, struct.pack(">L", 0))
        + item(0x52, b"1.2.826.0.1.3680043.9.2")
        + item(0x55, b"OTHER")
        + item(0x53, struct.pack(">HH", 1, 1))
        + item(0x54, u16_prefixed(CT_IMAGE.encode()) + b"\x00\x01")
        + item(0x56, u16_prefixed(b"1.2.840.10008.5.1.4.1.2.1.1") + b"\x00")
        + item(0x59, u16_prefixed(b"\x30\x82")),
    ),
)

AC = AAssociateAC(
    called_ae="ANY-SCP",
    calling_ae="MINIPACS",
    presentation_contexts=[
        PresentationContextAC(1, 0, IMPLICIT_LE),
        PresentationContextAC(3, 4, ""),
        PresentationContextAC(5, 3, EXPLICIT_LE),
    ],
    user_information=UserInformation(
        maximum_length=0,
        implementation_class_uid="1.2.826.0.1.3680043.9.2",
        implementation_version_name="OTHER",
        async_ops=AsynchronousOperationsWindow(1, 1),
        roles=[RoleSelection(CT_IMAGE, False, True)],
        extended=[SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.1.1", b"\x00")],
        user_identity_ac=UserIdentityAC(b"\x30\x82"),
    ),
)

# PS3.8 Table 9-23: each PDV item is Item-length (4), Presentation-context-ID (1),
# message control header (1; bit 0 command, bit 1 last), then the fragment.
PDATA_BYTES = pdu(
    0x04,
    struct.pack(">LBB", 2 + 4, 1, 0b11)
    + b"\x00\x00\x02\x00"
    + struct.pack(">LBB", 2 + 3, 1, 0b00)
    + b"abc"
    + struct.pack(">LBB", 2 + 0, 3, 0b10),
)
PDATA = PDataTF(
    [
        PDV(1, True, True, b"\x00\x00\x02\x00"),
        PDV(1, False, False, b"abc"),
        PDV(3, False, True, b""),
    ]
)

# (name, object, expected bytes) for every PDU type.
PDU_CASES: list[tuple[str, PDU, bytes]] = [
    ("A-ASSOCIATE-RQ", RQ, RQ_BYTES),
    ("A-ASSOCIATE-AC", AC, AC_BYTES),
    # PS3.8 Table 9-21: 7 reserved, 8 Result, 9 Source, 10 Reason/Diag.
    ("A-ASSOCIATE-RJ", AAssociateRJ(1, 1, 7), bytes.fromhex("03 00 00000004 00 01 01 07")),
    ("P-DATA-TF", PDATA, PDATA_BYTES),
    ("A-RELEASE-RQ", AReleaseRQ(), bytes.fromhex("05 00 00000004 00000000")),
    ("A-RELEASE-RP", AReleaseRP(), bytes.fromhex("06 00 00000004 00000000")),
    # PS3.8 Table 9-26: 7-8 reserved, 9 Source, 10 Reason/Diag.
    ("A-ABORT", AAbort(2, 6), bytes.fromhex("07 00 00000004 00 00 02 06")),
]


@pytest.mark.parametrize(("obj", "raw"), [c[1:] for c in PDU_CASES], ids=[c[0] for c in PDU_CASES])
def test_pdu_encode_is_byte_exact(obj: PDU, raw: bytes) -> None:
    assert encode_pdu(obj) == raw


@pytest.mark.parametrize(("obj", "raw"), [c[1:] for c in PDU_CASES], ids=[c[0] for c in PDU_CASES])
def test_pdu_decode_and_round_trip(obj: PDU, raw: bytes) -> None:
    assert PDU_HEADER.unpack_from(raw) == (raw[0], len(raw) - 6)
    decoded = decode_whole(raw)
    assert decoded == obj
    assert encode_pdu(decoded) == raw
    assert decode_pdu(raw[0], raw[6:]) == obj  # bytes work as well as memoryview


def test_pdu_types_table() -> None:
    assert {k: v.__name__ for k, v in PDU_TYPES.items()} == {
        1: "AAssociateRQ",
        2: "AAssociateAC",
        3: "AAssociateRJ",
        4: "PDataTF",
        5: "AReleaseRQ",
        6: "AReleaseRP",
        7: "AAbort",
    }


def test_associate_defaults_and_fixed_field_offsets() -> None:
    assert RQ.application_context == APPLICATION_CONTEXT_NAME and RQ.protocol_version == 1
    raw = RQ_BYTES
    assert raw[6:8] == b"\x00\x01"  # Protocol-version at PDU bytes 7-8
    assert raw[10:26] == b"ANY-SCP         "  # Called-AE-title at bytes 11-26
    assert raw[26:42] == b"MINIPACS        "  # Calling-AE-title at bytes 27-42
    assert raw[42:74] == bytes(32)
    assert raw[74] == 0x10  # first variable item at byte 75


def test_protocol_version_kept_as_decoded() -> None:
    body = associate_fixed(b"A".ljust(16), b"B".ljust(16), version=0x0002) + APP_CONTEXT_ITEM
    decoded = decode_pdu(0x01, body)
    assert isinstance(decoded, AAssociateRQ) and decoded.protocol_version == 2


def test_ae_titles_with_leading_spaces_are_stripped() -> None:
    body = associate_fixed(b"  SCP".ljust(16), b" SCU ".ljust(16)) + APP_CONTEXT_ITEM
    decoded = decode_pdu(0x01, body)
    assert isinstance(decoded, AAssociateRQ)
    assert (decoded.called_ae, decoded.calling_ae) == ("SCP", "SCU")
    assert decoded.user_information == UserInformation()  # missing 50H item tolerated
    assert decoded.presentation_contexts == []


def test_unknown_items_are_skipped() -> None:
    body = (
        associate_fixed(b"SCP".ljust(16), b"SCU".ljust(16))
        + item(0x99, b"future item")
        + APP_CONTEXT_ITEM
        + item(0x21, b"\x01\0\0\0" + item(0x40, b"1.2"))  # an AC item inside an RQ
        + item(0x20, b"\x01\0\0\0" + item(0x77, b"?") + item(0x30, b"1.1") + item(0x40, b"1.2"))
        + item(0x50, item(0x51, b"\0\0\x10\0") + item(0x6A, b"xyz"))
    )
    decoded = decode_pdu(0x01, body)
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.presentation_contexts == [PresentationContextRQ(1, "1.1", ["1.2"])]
    assert decoded.user_information.maximum_length == 4096
    assert decoded.user_information.unknown == [UnknownItem(0x6A, b"xyz")]


def test_ac_titles_are_not_tested_and_rejected_context_may_omit_transfer_syntax() -> None:
    body = associate_fixed(bytes(16), b" " * 16) + APP_CONTEXT_ITEM + item(0x21, b"\x07\0\x03\0")
    decoded = decode_pdu(0x02, body)
    assert isinstance(decoded, AAssociateAC)
    assert decoded.calling_ae == ""
    assert decoded.presentation_contexts == [PresentationContextAC(7, 3, "")]


# ---------------------------------------------------------------- P-DATA


def test_pdata_decode_does_not_copy() -> None:
    buf = bytearray(PDATA_BYTES)
    decoded = decode_pdu(buf[0], memoryview(buf)[6:])
    assert isinstance(decoded, PDataTF)
    first = decoded.pdvs[0].data
    assert isinstance(first, memoryview)
    buf[12] = 0xFF  # first data byte of the first PDV
    assert first[0] == 0xFF


def test_pdata_pdu_header() -> None:
    data = b"\x08\x00" * 5
    header = pdata_pdu_header(5, is_command=False, is_last=True, data_length=len(data))
    # 0 type 04H, 1 reserved, 2-5 PDU-length, 6-9 Item-length, 10 context ID, 11 control
    assert header == bytes.fromhex("04 00 00000010 0000000c 05 02")
    assert encode_pdu(PDataTF([PDV(5, False, True, data)])) == header + data
    assert pdata_pdu_header(1, True, False, 0) == bytes.fromhex("04 00 00000006 00000002 01 01")


def test_pdata_encode_accepts_memoryview() -> None:
    data = memoryview(b"xxhelloxx")[2:7]
    assert encode_pdu(PDataTF([PDV(1, False, True, data)])) == pdu(0x04, struct.pack(">LBB", 7, 1, 2) + b"hello")


# ------------------------------------------------------------- encoding errors


@pytest.mark.parametrize(
    "called",
    ["SEVENTEEN_CHARS_X", "CAFÉ", "", "   "],
    ids=["too long", "non-ASCII", "empty", "all spaces"],
)
def test_bad_ae_title_is_refused_on_encode(called: str) -> None:
    with pytest.raises(ValueError):
        encode_pdu(AAssociateRQ(called, "SCU", [], UserInformation()))


def test_oversized_values_are_refused_on_encode() -> None:
    with pytest.raises(ValueError):
        UserInformation(user_identity_rq=UserIdentityRQ(5, False, b"x" * 70000)).encode()
    with pytest.raises(ValueError):
        UserInformation(implementation_version_name="X" * 17).encode()
    with pytest.raises(ValueError):
        encode_pdu(PDataTF([]))
    with pytest.raises(ValueError):
        pdata_pdu_header(256, False, False, 10)


# ------------------------------------------------------------- malformed input


def rq_body(*items: bytes, called: bytes = b"SCP".ljust(16), calling: bytes = b"SCU".ljust(16)) -> bytes:
    return associate_fixed(called, calling) + b"".join(items)


def ui(*sub_items: bytes) -> bytes:
    return item(0x50, b"".join(sub_items))


GOOD_PC = item(0x20, b"\x01\0\0\0" + item(0x30, b"1.1") + item(0x40, b"1.2"))


@dataclass
class Malformed:
    name: str
    pdu_type: int
    body: bytes
    reason: int
    match: str


MALFORMED: list[Malformed] = [
    Malformed("unknown PDU type", 0x08, b"\0\0\0\0", 1, "unrecognized PDU type 08H"),
    Malformed("PDU type zero", 0x00, b"", 1, "unrecognized"),
    Malformed("RQ shorter than fixed fields", 0x01, bytes(67), 6, "fixed fields"),
    Malformed("AC shorter than fixed fields", 0x02, bytes(10), 6, "fixed fields"),
    Malformed(
        "called AE all spaces",
        0x01,
        rq_body(APP_CONTEXT_ITEM, called=b" " * 16),
        6,
        "Called-AE-title",
    ),
    Malformed(
        "calling AE non-ASCII",
        0x01,
        rq_body(APP_CONTEXT_ITEM, calling=b"\xff" * 16),
        6,
        "not ASCII",
    ),
    Malformed("missing application context", 0x01, rq_body(GOOD_PC), 6, "no Application Context"),
    Malformed("two application contexts", 0x01, rq_body(APP_CONTEXT_ITEM, APP_CONTEXT_ITEM), 5, "second"),
    Malformed("two user information items", 0x01, rq_body(APP_CONTEXT_ITEM, ui(), ui()), 5, "second"),
    Malformed("application context non-ASCII", 0x01, rq_body(item(0x10, b"1.2\xe9")), 6, "not ASCII"),
    Malformed("item header truncated", 0x01, rq_body(APP_CONTEXT_ITEM, b"\x20\x00"), 6, "byte 99"),
    Malformed(
        "item length past buffer",
        0x01,
        rq_body(APP_CONTEXT_ITEM, b"\x20\x00\x00\x30" + bytes(4)),
        6,
        "item length 48",
    ),
    Malformed(
        "presentation context too short",
        0x01,
        rq_body(APP_CONTEXT_ITEM, item(0x20, b"\x01\0")),
        6,
        "Reserved",
    ),
    Malformed(
        "presentation context without abstract syntax",
        0x01,
        rq_body(APP_CONTEXT_ITEM, item(0x20, b"\x01\0\0\0" + item(0x40, b"1.2"))),
        6,
        "no Abstract Syntax",
    ),
    Malformed(
        "presentation context without transfer syntax",
        0x01,
        rq_body(APP_CONTEXT_ITEM, item(0x20, b"\x01\0\0\0" + item(0x30, b"1.1"))),
        6,
        "no Transfer Syntax",
    ),
    Malformed(
        "two abstract syntaxes",
        0x01,
        rq_body(
            APP_CONTEXT_ITEM,
            item(0x20, b"\x01\0\0\0" + item(0x30, b"1.1") + item(0x30, b"1.1") + item(0x40, b"1.2")),
        ),
        5,
        "second Abstract Syntax",
    ),
    Malformed(
        "sub-item overruns presentation context",
        0x01,
        rq_body(APP_CONTEXT_ITEM, item(0x20, b"\x01\0\0\0" + b"\x30\x00\x00\x09" + b"1.1")),
        6,
        "item 30H",
    ),
    Malformed(
        "accepted context without transfer syntax",
        0x02,
        rq_body(APP_CONTEXT_ITEM, item(0x21, b"\x01\0\0\0")),
        6,
        "accepts the context",
    ),
    Malformed(
        "two transfer syntaxes in AC",
        0x02,
        rq_body(APP_CONTEXT_ITEM, item(0x21, b"\x01\0\0\0" + item(0x40, b"1.2") + item(0x40, b"1.2"))),
        5,
        "second Transfer Syntax",
    ),
    Malformed(
        "max length too short",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x51, b"\0\0"))),
        6,
        "Maximum-length",
    ),
    Malformed(
        "max length too long",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x51, bytes(5)))),
        6,
        "unexpected byte",
    ),
    Malformed(
        "async ops window short",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x53, b"\0\x01\0"))),
        6,
        "performed",
    ),
    Malformed(
        "role selection UID length overruns",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x54, b"\0\x10" + b"1.2\x01\x01"))),
        6,
        "SOP-class-uid",
    ),
    Malformed(
        "role selection trailing bytes",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x54, b"\0\x031.2\x01\x01\x00"))),
        6,
        "unexpected byte",
    ),
    Malformed(
        "role selection missing SCP role",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x54, b"\0\x031.2\x01"))),
        6,
        "SCP-role",
    ),
    Malformed(
        "extended negotiation UID overruns",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x56, b"\0\x091.2"))),
        6,
        "SOP-class-uid",
    ),
    Malformed(
        "common extended related block overruns",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x57, b"\0\x011\0\x012\0\x08\0\x011"))),
        6,
        "Related-general-sop-class-identification",
    ),
    Malformed(
        "common extended related UID overruns block",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x57, b"\0\x011\0\x012\0\x03\0\x051"))),
        6,
        "Related-general-sop-class-uid",
    ),
    Malformed(
        "user identity primary field overruns",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x58, b"\x01\x00\x00\x09bob\x00\x00"))),
        6,
        "Primary-field",
    ),
    Malformed(
        "user identity missing secondary length",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x58, b"\x01\x00\x00\x03bob"))),
        6,
        "Secondary-field-length",
    ),
    Malformed(
        "user identity AC response overruns",
        0x02,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x59, b"\x00\x05ab"))),
        6,
        "Server-response",
    ),
    Malformed(
        "user information sub-item overruns",
        0x01,
        rq_body(APP_CONTEXT_ITEM, item(0x50, b"\x51\x00\x00\x08\0\0\0\0")),
        6,
        "item 51H",
    ),
    Malformed(
        "implementation UID non-ASCII",
        0x01,
        rq_body(APP_CONTEXT_ITEM, ui(item(0x52, b"1.\x80"))),
        6,
        "not ASCII",
    ),
    Malformed("RJ too short", 0x03, b"\0\x01\x01", 6, "must be 4 bytes"),
    Malformed("RJ trailing garbage", 0x03, b"\0\x01\x01\x01\x00", 6, "got 5"),
    Malformed("release RQ too short", 0x05, b"", 6, "A-RELEASE-RQ"),
    Malformed("release RP trailing garbage", 0x06, bytes(6), 6, "A-RELEASE-RP"),
    Malformed("abort too short", 0x07, b"\0\0\x02", 6, "A-ABORT"),
    Malformed("P-DATA with no PDVs", 0x04, b"", 6, "no PDV item"),
    Malformed("PDV item length below 2", 0x04, b"\0\0\0\x01\x01\x03", 6, "below 2"),
    Malformed("PDV item length zero", 0x04, b"\0\0\0\x00\x01\x03", 6, "below 2"),
    Malformed("PDV header truncated", 0x04, b"\0\0\0\x02\x01", 6, "truncated"),
    Malformed("PDV length past buffer", 0x04, b"\0\0\0\x08\x01\x03abc", 6, "past the end"),
    Malformed(
        "trailing garbage after PDV",
        0x04,
        b"\0\0\0\x03\x01\x03a" + b"\0\0",
        6,
        "byte 13",
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[m.name for m in MALFORMED])
def test_malformed_input_raises_pdu_error(case: Malformed) -> None:
    with pytest.raises(PDUError, match=case.match) as info:
        decode_pdu(case.pdu_type, memoryview(case.body))
    assert info.value.reason == case.reason


@pytest.mark.parametrize(("obj", "raw"), [c[1:] for c in PDU_CASES], ids=[c[0] for c in PDU_CASES])
def test_every_truncation_raises_only_pdu_error(obj: PDU, raw: bytes) -> None:
    """Cutting the body anywhere gives a valid prefix or a PDUError, never a crash."""
    for cut in range(6, len(raw)):
        try:
            decode_pdu(raw[0], memoryview(raw)[6:cut])
        except PDUError:
            pass


# ------------------------------------------------------------- pynetdicom


def test_decode_pynetdicom_built_rq_with_every_sub_item() -> None:
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
        UserIdentityNegotiation,
    )
    from pynetdicom.pdu_primitives import (
        SOPClassCommonExtendedNegotiation as PynSOPClassCommonExtendedNegotiation,
    )
    from pynetdicom.pdu_primitives import (
        SOPClassExtendedNegotiation as PynSOPClassExtendedNegotiation,
    )

    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = "PYN_SCU"
    primitive.called_ae_title = "MINIPACS"
    context = build_context(CT_IMAGE, [EXPLICIT_LE])
    context.context_id = 7
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 32768
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.3.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYN_TEST"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT_IMAGE
    role.scu_role, role.scp_role = False, True
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 3
    window.maximum_number_operations_performed = 2
    extended = PynSOPClassExtendedNegotiation()
    extended.sop_class_uid = CT_IMAGE
    extended.service_class_application_information = b"\x01\x00"
    common = PynSOPClassCommonExtendedNegotiation()
    common.sop_class_uid = "1.2.3"
    common.service_class_uid = "1.2.4"
    common.related_general_sop_class_identification = ["1.2.5", "1.2.6"]
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"user"
    identity.secondary_field = b"pass"
    primitive.user_information = [
        max_length,
        class_uid,
        version,
        role,
        window,
        extended,
        common,
        identity,
    ]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    raw = rq.encode()

    decoded = decode_whole(raw)
    assert decoded == AAssociateRQ(
        called_ae="MINIPACS",
        calling_ae="PYN_SCU",
        presentation_contexts=[PresentationContextRQ(7, CT_IMAGE, [EXPLICIT_LE])],
        user_information=UserInformation(
            maximum_length=32768,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="PYN_TEST",
            async_ops=AsynchronousOperationsWindow(3, 2),
            roles=[RoleSelection(CT_IMAGE, False, True)],
            extended=[SOPClassExtendedNegotiation(CT_IMAGE, b"\x01\x00")],
            common_extended=[SOPClassCommonExtendedNegotiation("1.2.3", "1.2.4", ["1.2.5", "1.2.6"])],
            user_identity_rq=UserIdentityRQ(2, True, b"user", b"pass"),
        ),
    )
    # pynetdicom keeps the primitive's sub-item order; ours is canonical, same length.
    assert len(encode_pdu(decoded)) == len(raw)


async def _capture_first_pdu() -> tuple[int, bytes]:
    """Let a real pynetdicom AE associate with a listener that keeps the first PDU."""
    from pynetdicom import AE

    loop = asyncio.get_running_loop()
    captured: asyncio.Future[tuple[int, bytes]] = loop.create_future()
    handled = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(6)
            pdu_type, length = struct.unpack(">BxL", header)
            captured.set_result((pdu_type, await reader.readexactly(length)))
            # Reply with an A-ASSOCIATE-RJ (permanent, service-user, no reason) built by hand.
            writer.write(bytes.fromhex("03 00 00000004 00 01 01 01"))
            await writer.drain()
            # As an acceptor in Sta13 does: let the requestor close first. Closing at once
            # races pynetdicom's reader, which may see the EOF before it dispatches the RJ.
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            handled.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 30  # a loaded CI machine: seen failing at 5
    try:
        assoc, rj = await asyncio.to_thread(associate_seeing_rejection, ae, "127.0.0.1", port, ae_title="MINIPACS")
        assert rj == (1, 1, 1) and not assoc.is_established
    finally:
        ae.shutdown()
        server.close()
        await server.wait_closed()
    # Python 3.11's wait_closed() does not wait for the handler: without this, asyncio.run
    # cancels it mid-wait and its transport is reported unclosed in whatever test runs next.
    await asyncio.wait_for(handled.wait(), 15)
    return await captured


def test_decode_rq_from_live_pynetdicom_ae() -> None:
    pdu_type, body = asyncio.run(_capture_first_pdu())
    assert pdu_type == 0x01
    decoded = decode_pdu(pdu_type, memoryview(body))
    assert isinstance(decoded, AAssociateRQ)
    assert decoded.called_ae == "MINIPACS"
    assert decoded.calling_ae == "PYNETDICOM"
    assert decoded.protocol_version & 1
    assert decoded.application_context == APPLICATION_CONTEXT_NAME
    [context] = decoded.presentation_contexts
    assert context.context_id == 1 and context.abstract_syntax == VERIFICATION
    assert IMPLICIT_LE in context.transfer_syntaxes
    info = decoded.user_information
    assert info.maximum_length == 16382
    assert info.implementation_class_uid is not None
    assert info.implementation_class_uid.startswith("1.2.826.0.1.3680043.9.3811.")
    assert info.implementation_version_name is not None
    assert info.implementation_version_name.startswith("PYNETDICOM")
    assert info.unknown == []
    assert decode_pdu(0x01, encode_pdu(decoded)[6:]) == decoded


def test_pdata_pdus_one_message_per_pdu() -> None:
    """C-FIND Pending responses: the command and the dataset of a message in one P-DATA-TF PDU
    (PS3.8 9.3.5: one or more PDV items), never past the peer's Maximum Length (its variable field)."""
    messages = [(b"C" * 10, b"D" * (20 + 2 * n)) for n in range(3)]
    sizes = [12 + len(c) + len(d) for c, d in messages]  # two PDV items: 4+2 header bytes each
    pdus = pdata_pdus(3, messages, sizes[-1])
    assert pdus is not None and len(pdus) == 3
    for raw, (cmd, data), size in zip(pdus, messages, sizes, strict=True):
        assert raw[0] == 0x04 and int.from_bytes(raw[2:6], "big") == len(raw) - 6 == size
        decoded = decode_pdu(raw[0], raw[6:])
        assert isinstance(decoded, PDataTF)
        assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in decoded.pdvs] == [
            (3, True, True, cmd),
            (3, False, True, data),
        ]
    assert pdata_pdus(3, messages, sizes[-1] - 1) is None  # the last message needs fragments
