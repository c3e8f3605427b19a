"""Elements of groups 0000-0007 leading a received data set are dropped before storing (core/staging.py).

PS3.5 §7.1 defines a Data Set from group 0008 on (PS3.4 C.4.1.1.3 note: File Meta Information
elements such as (0002,0010) Transfer Syntax UID are not part of one). Stored after our own File
Meta, a (0002,0010) in the data set made pydicom read the file with the wrong transfer syntax.
Every element encoding (implicit VR, explicit VR little and big endian, short and long VRs), every
split of the bytes, undefined lengths and a data set that ends inside the lead.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from minipacs.core.staging import StagingFile
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

SOP = "1.2.3.4.5"
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


def element(syntax: str, tag: int, vr: str, value: bytes, *, undefined: bool = False) -> bytes:
    """One data element in ``syntax`` (PS3.5 §7.1.1-7.1.3)."""
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    length = 0xFFFFFFFF if undefined else len(value)
    if syntax == ImplicitVRLittleEndian:
        return head + struct.pack("<I", length) + value
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + vr.encode() + b"\0\0" + struct.pack(order + "I", length) + value
    return head + vr.encode() + struct.pack(order + "H", length) + value


def lead(syntax: str) -> bytes:
    """Group 0000, 0002 (short and long VR) and 0004 elements, as some senders put them in a data set."""
    return b"".join(
        (
            element(syntax, 0x00000902, "LO", b"stray command"),
            element(syntax, 0x00020002, "UI", CT_IMAGE_STORAGE.encode() + b"\0"),
            element(syntax, 0x00020010, "UI", b"1.2.840.10008.1.2.4.50\0"[:22]),
            element(syntax, 0x00020102, "OB", bytes(300)),
            element(syntax, 0x00041130, "CS", b"FILESET "),
        )
    )


def stage(tmp_path: Path, syntax: str, data: bytes, piece: int) -> tuple[bytes, Path]:
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, SOP, syntax, "SENDER")
    for at in range(0, len(data), piece):
        staging.write(memoryview(data)[at : at + piece])
    staged = staging.finish()
    return staged.path.read_bytes()[staged.dataset_offset :], staged.path


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("piece", [1, 3, 7, 12, 64, 1 << 20])
def test_the_lead_is_dropped_however_the_bytes_are_split(
    tmp_path: Path, syntax: str, piece: int, caplog: pytest.LogCaptureFixture
) -> None:
    body = encode_dataset(make_ct("1.2", "1.3", SOP), syntax)
    with caplog.at_level(logging.WARNING, logger="minipacs.core.staging"):
        stored, path = stage(tmp_path, syntax, lead(syntax) + body, piece)
    assert stored == body
    read = pydicom.dcmread(path)
    assert read.file_meta.TransferSyntaxUID == syntax  # not the data set's JPEG Baseline
    assert str(read.PatientName) == "Doe^John"
    assert not [e for e in read if e.tag.group < 8]
    assert "5 element(s)" in caplog.text and "(0002,0010)" in caplog.text and "from SENDER" in caplog.text


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("piece", [1, 5, 1 << 20])
def test_a_data_set_without_a_lead_is_stored_byte_for_byte(
    tmp_path: Path, syntax: str, piece: int, caplog: pytest.LogCaptureFixture
) -> None:
    body = encode_dataset(make_ct("1.2", "1.3", SOP), syntax)
    with caplog.at_level(logging.WARNING, logger="minipacs.core.staging"):
        stored, _ = stage(tmp_path, syntax, body, piece)
    assert stored == body
    assert "dropped" not in caplog.text


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_an_undefined_length_in_the_lead_is_left_for_the_structure_walk(tmp_path: Path, syntax: str) -> None:
    body = encode_dataset(make_ct("1.2", "1.3", SOP), syntax)
    odd = element(syntax, 0x00020100, "UN", b"", undefined=True)
    first = element(syntax, 0x00020002, "UI", CT_IMAGE_STORAGE.encode() + b"\0")
    stored, _ = stage(tmp_path, syntax, first + odd + body, 7)
    assert stored == odd + body  # the element before it is dropped, the rest kept as it came


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("tail", [b"", b"\x02", b"\x02\x00\x10\x00\x55"])
def test_a_data_set_that_ends_in_its_lead_keeps_what_is_left(tmp_path: Path, syntax: str, tail: bytes) -> None:
    """Only the lead, or the lead and fewer bytes than an element header: the walk refuses what remains."""
    stored, _ = stage(tmp_path, syntax, lead(syntax) + tail, 4)
    assert stored == tail


def test_a_value_running_past_the_end_swallows_nothing_more(tmp_path: Path) -> None:
    """A lead element whose length runs past the data set's end: the bytes are dropped, nothing is invented."""
    syntax = ExplicitVRLittleEndian
    liar = element(syntax, 0x00020102, "OB", b"")[:-4] + struct.pack("<I", 10_000) + b"short"
    stored, _ = stage(tmp_path, syntax, liar, 3)
    assert stored == b""


def test_a_deflated_data_set_is_not_looked_into(tmp_path: Path) -> None:
    body = encode_dataset(make_ct("1.2", "1.3", SOP), DeflatedExplicitVRLittleEndian)
    deflated_lead = b"\x02\x00" + body  # compressed bytes: they are not elements, whatever they look like
    stored, _ = stage(tmp_path, DeflatedExplicitVRLittleEndian, deflated_lead, 64)
    assert stored == deflated_lead
