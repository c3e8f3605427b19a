"""DIMSE command sets (PS3.7 §9.3, §10.3, Annex E) against pynetdicom, byte for byte.

For every row of ``MESSAGE_TYPES`` the command set we encode must equal the
one pynetdicom's ``dimse_messages`` class builds for the same values, encoded
by pydicom as Implicit VR Little Endian (PS3.7 §6.3.1); decoding must give the
values back. Malformed command sets raise :class:`CommandError`.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import dimse_messages

from minipacs.net import dimse
from minipacs.net.dimse import (
    DATASET_PRESENT,
    MESSAGE_BY_NAME,
    MESSAGE_TYPES,
    NO_DATASET,
    Command,
    CommandError,
    MessageType,
)

#: A value for every command field; odd lengths exercise the padding rules
#: (UI pads with NUL, AE and LO with a space: PS3.5 §6.2).
VALUES: dict[str, Any] = {
    "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    "RequestedSOPClassUID": "1.2.840.10008.5.1.4.1.1.20",
    "MessageID": 7,
    "MessageIDBeingRespondedTo": 0xFFFF,
    "MoveDestination": "DEST1",
    "Priority": 2,
    "Status": 0xFF00,
    "OffendingElement": [0x00100010, 0x00100020],
    "ErrorComment": "bad value",
    "ErrorID": 0x0110,
    "AffectedSOPInstanceUID": "1.2.3.4.5",
    "RequestedSOPInstanceUID": "1.2.3.4.56",
    "EventTypeID": 1,
    "AttributeIdentifierList": [0x00100010, 0x7FE00010],
    "ActionTypeID": 3,
    "NumberOfRemainingSuboperations": 3,
    "NumberOfCompletedSuboperations": 2,
    "NumberOfFailedSuboperations": 1,
    "NumberOfWarningSuboperations": 0,
    "MoveOriginatorApplicationEntityTitle": "MOVESCU",
    "MoveOriginatorMessageID": 3,
}
ALWAYS = ("CommandGroupLength", "CommandField", "CommandDataSetType")


def pynetdicom_fields(mtype: MessageType) -> tuple[str, ...]:
    """Every field pynetdicom's class for this message carries, besides ALWAYS."""
    return tuple(k for k in dimse_messages._COMMAND_SET_KEYWORDS[mtype.name] if k not in ALWAYS)


def pynetdicom_encoding(mtype: MessageType, fields: dict[str, Any], data_set_type: int) -> bytes:
    """The command set as pynetdicom builds it, encoded by pydicom (Implicit VR LE)."""
    name, cls = dimse_messages._MESSAGE_TYPES[mtype.command_field]
    assert name == mtype.name
    msg = cls()
    command_set: Dataset = msg.command_set
    for elem in list(command_set):
        if elem.keyword in fields:
            elem.value = fields[elem.keyword]
        elif elem.keyword not in ALWAYS:
            del command_set[elem.tag]
    command_set.CommandField = mtype.command_field
    command_set.CommandDataSetType = data_set_type
    msg._set_command_group_length()
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, command_set)
    return bytes(buffer.getvalue())


CASES = [
    (mtype, variant, has_dataset)
    for mtype in MESSAGE_TYPES.values()
    for variant in ("required", "all")
    for has_dataset in (False, True)
]


@pytest.mark.parametrize(
    ("mtype", "variant", "has_dataset"),
    CASES,
    ids=[f"{m.name}-{v}-{'dataset' if d else 'nodataset'}" for m, v, d in CASES],
)
def test_encoding_matches_pynetdicom(mtype: MessageType, variant: str, has_dataset: bool) -> None:
    keywords = mtype.required if variant == "required" else pynetdicom_fields(mtype)
    fields = {k: VALUES[k] for k in keywords}
    ours = Command.make(mtype.name, has_dataset=has_dataset, **fields).encode()
    data_set_type = DATASET_PRESENT if has_dataset else NO_DATASET
    assert ours == pynetdicom_encoding(mtype, fields, data_set_type)


@pytest.mark.parametrize("mtype", MESSAGE_TYPES.values(), ids=[m.name for m in MESSAGE_TYPES.values()])
def test_required_fields_are_known_to_pynetdicom(mtype: MessageType) -> None:
    assert set(mtype.required) <= set(pynetdicom_fields(mtype))
    assert MESSAGE_BY_NAME[mtype.name] is mtype


@pytest.mark.parametrize("mtype", MESSAGE_TYPES.values(), ids=[m.name for m in MESSAGE_TYPES.values()])
@pytest.mark.parametrize("has_dataset", [False, True], ids=["nodataset", "dataset"])
def test_decode_round_trip(mtype: MessageType, has_dataset: bool) -> None:
    fields = {k: VALUES[k] for k in pynetdicom_fields(mtype)}
    encoded = Command.make(mtype.name, has_dataset=has_dataset, **fields).encode()
    decoded = Command.decode(encoded)
    assert decoded.fields.pop("CommandGroupLength") == len(encoded) - 12
    assert decoded.fields == {
        **fields,
        "CommandField": mtype.command_field,
        "CommandDataSetType": DATASET_PRESENT if has_dataset else NO_DATASET,
    }
    assert decoded.message_type is mtype
    assert decoded.has_dataset is has_dataset
    assert decoded.is_request is mtype.name.endswith("-RQ")
    assert decoded.encode() == encoded


@pytest.mark.parametrize("mtype", MESSAGE_TYPES.values(), ids=[m.name for m in MESSAGE_TYPES.values()])
def test_decodes_pynetdicom_encoding(mtype: MessageType) -> None:
    fields = {k: VALUES[k] for k in pynetdicom_fields(mtype)}
    decoded = Command.decode(pynetdicom_encoding(mtype, fields, 0x0001))
    assert decoded.has_dataset, "any value other than 0101H means a data set follows (PS3.7 E.1)"
    for keyword, value in fields.items():
        assert decoded[keyword] == value, keyword


@pytest.mark.parametrize("mtype", MESSAGE_TYPES.values(), ids=[m.name for m in MESSAGE_TYPES.values()])
def test_make_refuses_missing_required_field(mtype: MessageType) -> None:
    fields = {k: VALUES[k] for k in mtype.required}
    for missing in mtype.required:
        partial = {k: v for k, v in fields.items() if k != missing}
        with pytest.raises(ValueError, match=missing):
            Command.make(mtype.name, **partial)


# ------------------------------------------------------------ malformed input
def element(element_number: int, value: bytes, group: int = 0x0000) -> bytes:
    """PS3.5 §7.1.2 Implicit VR element: tag group, tag element, 32-bit length, value."""
    return struct.pack("<HHL", group, element_number, len(value)) + value


def us(v: int) -> bytes:
    return struct.pack("<H", v)


ECHO_RQ_BODY = (
    element(0x0002, b"1.2.840.10008.1.1\x00")
    + element(0x0100, us(0x0030))
    + element(0x0110, us(1))
    + element(0x0800, us(0x0101))
)
ECHO_RQ = element(0x0000, struct.pack("<L", len(ECHO_RQ_BODY))) + ECHO_RQ_BODY


def test_hand_built_echo_rq_decodes() -> None:
    cmd = Command.decode(ECHO_RQ)
    assert cmd.name == "C-ECHO-RQ"
    assert cmd["MessageID"] == 1
    assert cmd["AffectedSOPClassUID"] == "1.2.840.10008.1.1"
    assert Command.make("C-ECHO-RQ", MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1").encode() == ECHO_RQ


# (case, bytes, message the error must contain)
MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", r"the command set has no CommandField \(0000,0100\)"),
    ("truncated inside an element header", ECHO_RQ[:-5], "truncated"),
    ("truncated inside a value", ECHO_RQ[:-1], "runs past"),
    ("element outside group 0000", ECHO_RQ + element(0x0010, b"DOE^JOHN", group=0x0010), "outside group 0000"),
    ("wrong group first", element(0x0000, us(0x0030), group=0x0008) + ECHO_RQ_BODY, "outside group 0000"),
    (
        "missing required field",
        element(0x0100, us(0x0030)) + element(0x0110, us(1)) + element(0x0800, us(0x0101)),
        "lacks required AffectedSOPClassUID",
    ),
    (
        "missing required field of C-STORE-RQ",
        element(0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00")
        + element(0x0100, us(0x0001))
        + element(0x0110, us(1))
        + element(0x0700, us(0))
        + element(0x0800, us(0x0000)),
        "lacks required AffectedSOPInstanceUID",
    ),
    ("US of length 4", element(0x0100, struct.pack("<L", 0x0030)) + ECHO_RQ_BODY, "invalid length 4"),
    ("US of length 1", element(0x0110, b"\x01") + ECHO_RQ_BODY, "invalid length 1"),
    ("UL of length 2", element(0x0000, us(10)) + ECHO_RQ_BODY, "invalid length 2"),
    ("AT of length 6", ECHO_RQ + element(0x0901, b"\x10\x00\x10\x00\x20\x00"), "not a multiple of 4"),
    ("unknown CommandField", element(0x0100, us(0x0031)) + element(0x0110, us(1)), "unknown CommandField 0x0031"),
    ("no CommandField", element(0x0110, us(1)), r"the command set has no CommandField \(0000,0100\)"),
]


@pytest.mark.parametrize(("data", "match"), [(d, m) for _c, d, m in MALFORMED], ids=[c for c, _d, _m in MALFORMED])
def test_malformed_command_set_raises(data: bytes, match: str) -> None:
    with pytest.raises(CommandError, match=match):
        Command.decode(data)


def test_unknown_command_elements_are_ignored() -> None:
    """Retired elements such as (0000,0001) Length to End are skipped, not errors."""
    cmd = Command.decode(element(0x0001, struct.pack("<L", 99)) + ECHO_RQ)
    assert cmd.name == "C-ECHO-RQ"


def test_a_command_set_without_command_field_is_said_in_words() -> None:
    """Issue 8 item 16: no "unknown CommandField 0x-001" for a command set that lacks the field."""
    data = Command({"MessageID": 1}).encode()
    with pytest.raises(CommandError) as info:
        Command.decode(data)
    assert str(info.value) == "the command set has no CommandField (0000,0100), so it names no DIMSE message"
    assert Command({"MessageID": 1}).name == "command without a CommandField"
    assert Command({"CommandField": 0x0123}).name == "unknown command 0x0123"
    with pytest.raises(CommandError, match="unknown CommandField 0x0123$"):
        Command.decode(Command({"CommandField": 0x0123}).encode())


def test_typed_accessors_read_the_fields_by_name() -> None:
    """Issue 9 point 2: command fields are read through typed accessors, absent ones as their empty value."""
    rq = Command.decode(
        Command.make(
            "N-ACTION-RQ", MessageID=5, RequestedSOPClassUID="1.2", RequestedSOPInstanceUID="1.2.3", ActionTypeID=1
        ).encode()
    )
    assert (rq.message_id, rq.sop_class_uid, rq.sop_instance_uid, rq.action_type_id, rq.event_type_id) == (
        5,
        "1.2",
        "1.2.3",
        1,
        None,
    )
    assert (rq.affected_sop_class_uid, rq.requested_sop_class_uid, rq.status, rq.message_id_being_responded_to) == (
        "",
        "1.2",
        -1,
        -1,
    )
    move = Command.decode(
        Command.make("C-MOVE-RQ", MessageID=1, Priority=0, AffectedSOPClassUID="1.2.4", MoveDestination="DEST").encode()
    )
    assert (move.move_destination, move.sop_class_uid, move.sop_instance_uid) == ("DEST", "1.2.4", "")
    rsp = Command.decode(
        Command.make("C-STORE-RSP", MessageIDBeingRespondedTo=9, Status=0xA700, ErrorComment="full").encode()
    )
    assert (rsp.message_id_being_responded_to, rsp.status, rsp.error_comment) == (9, 0xA700, "full")


def test_the_same_command_set_is_parsed_once_and_each_decode_is_its_own() -> None:
    """Issue 11: an SCU reading a C-FIND's hundreds of identical Pending command sets parses them
    once; every decode is still a Command of its own, which its user may change."""
    data = Command.make(
        "C-FIND-RSP", has_dataset=True, MessageIDBeingRespondedTo=3, AffectedSOPClassUID="1.2.3", Status=0xFF00
    ).encode()
    parsed: list[int] = []
    real = Command._decode_fields.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Command], raw: bytes | bytearray | memoryview) -> dict[str, Any]:
        parsed.append(len(raw))
        return real(cls, raw)  # type: ignore[no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dimse, "_DECODED", {})
        mp.setattr(Command, "_decode_fields", classmethod(counting))
        first = Command.decode(data)
        second = Command.decode(bytearray(data))  # as pdata_indication gathers it
        third = Command.decode(memoryview(data))
    assert len(parsed) == 1
    assert first == second == third
    assert (first.status, first.message_id_being_responded_to, first.has_dataset) == (0xFF00, 3, True)
    first.fields["Status"] = 0
    assert second.status == third.status == Command.decode(data).status == 0xFF00


def test_decoded_command_sets_kept_are_few_and_malformed_ones_never() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dimse, "_DECODED", {})
        for n in range(3 * dimse._DECODED_MAX):
            rq = Command.make(
                "C-STORE-RQ", MessageID=n, Priority=0, AffectedSOPClassUID="1.2", AffectedSOPInstanceUID=f"1.2.{n}"
            )
            assert Command.decode(rq.encode()).affected_sop_instance_uid == f"1.2.{n}"
            assert len(dimse._DECODED) <= dimse._DECODED_MAX
        long = Command.make(
            "C-STORE-RQ", MessageID=1, Priority=0, AffectedSOPClassUID="1.2", AffectedSOPInstanceUID="9" * 600
        ).encode()
        assert Command.decode(long).affected_sop_instance_uid == "9" * 600
        assert long not in dimse._DECODED
        bad = element(0x0100, us(0x0031)) + element(0x0110, us(1))
        for _ in range(2):
            with pytest.raises(CommandError, match="unknown CommandField"):
                Command.decode(bad)
        assert bad not in dimse._DECODED


def test_decoded_attribute_lists_are_not_shared() -> None:
    """AT values decode to lists: a user changing one must not change the next decode's."""
    data = Command.make(
        "N-GET-RQ",
        MessageID=1,
        RequestedSOPClassUID="1.2",
        RequestedSOPInstanceUID="1.2.3",
        AttributeIdentifierList=[0x00100010],
    ).encode()
    first = Command.decode(data)
    first["AttributeIdentifierList"].append(0x00100020)
    assert Command.decode(data)["AttributeIdentifierList"] == [0x00100010]
