from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.core.staging import StagingFile
from minipacs.dicom.header import HEADER_ATTRIBUTES, MalformedDataset, read_header
from tests import broken_corpus
from tests.dicomgen import (
    CT_IMAGE_STORAGE,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    encode_dataset,
    make_ct,
)

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]


def stage(tmp_path: Path, ds: Dataset, syntax: str, data: bytes | None = None) -> tuple[Path, int]:
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, ds.SOPInstanceUID, syntax)
    staging.write(encode_dataset(ds, syntax) if data is None else data)
    staged = staging.finish()
    return staged.path, staged.dataset_offset


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_header_parses_every_uncompressed_syntax(tmp_path: Path, syntax: str) -> None:
    ds = make_ct(
        "1.2.3",
        "1.2.3.4",
        "1.2.3.4.5",
        rows=32,
        cols=48,
        transfer_syntax=syntax,
        NumberOfFrames=1,
        IssuerOfPatientID="HOSP",
    )
    path, offset = stage(tmp_path, ds, syntax)
    header = read_header(path, offset, syntax)
    assert header.values == {
        "SpecificCharacterSet": "ISO_IR 100",
        "SOPClassUID": CT_IMAGE_STORAGE,
        "SOPInstanceUID": "1.2.3.4.5",
        "StudyDate": "20240131",
        "SeriesDate": "20240131",
        "StudyTime": "101530.25",
        "AccessionNumber": "ACC1",
        "Modality": "CT",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "CT HEAD",
        "SeriesDescription": "AXIAL",
        "PatientName": "Doe^John",
        "PatientID": "P1",
        "IssuerOfPatientID": "HOSP",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "BodyPartExamined": "HEAD",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "StudyID": "1",
        "SeriesNumber": "2",
        "InstanceNumber": "3",
        "NumberOfFrames": "1",
        "Rows": "32",
        "Columns": "48",
    }
    assert set(header.values) == set(HEADER_ATTRIBUTES)


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Ωμέγα^Ζήτα"), ("ISO_IR 192", "山田^太郎")],
)
def test_names_are_decoded_per_specific_character_set(tmp_path: Path, charset: str, name: str) -> None:
    ds = make_ct("1.2", "1.3", "1.4", SpecificCharacterSet=charset, PatientName=name)
    path, offset = stage(tmp_path, ds, ExplicitVRLittleEndian)
    assert read_header(path, offset, ExplicitVRLittleEndian).get("PatientName") == name


@pytest.mark.parametrize("syntax", broken_corpus.SYNTAXES, ids=lambda s: s.name)
def test_a_nul_inside_the_specific_character_set_is_refused_and_nul_padding_is_not(
    tmp_path: Path, syntax: broken_corpus.Syntax
) -> None:
    """Found by fuzzing ingest against pydicom: "ISO_IR\\x00100" was stored (the header reader dropped
    the NUL), then pydicom could not read the file at all ("embedded null character" from
    codecs.lookup), so the study's PS3.18 metadata answered 500. PS3.5 6.2: a CS value holds
    uppercase letters, digits, space and underscore. NUL padding at the end (some devices pad CS
    values with NUL) is read as padding, as pydicom reads it."""
    import pydicom

    plain = broken_corpus.Encoder(broken_corpus.EXPLICIT if syntax.deflated else syntax)
    name = "Müller^Jürgens".encode("latin-1")  # as long as the name it replaces
    for value, refused in ((b"ISO_IR\x00100", True), (b"\x00\x00ISO_IR 100", True), (b"ISO_IR 100\x00\x00", False)):
        raw = plain.el(0x00080005, "CS", value) + broken_corpus.head(plain, "1.4").replace(b"Broken^Dataset", name)
        data = broken_corpus.deflate(raw) if syntax.deflated else raw
        path, offset = stage(tmp_path, make_ct("1.2", "1.3", "1.4"), syntax.uid, data)
        if refused:
            with pytest.raises(MalformedDataset, match=r"^\(0008,0005\) holds a NUL inside a term"):
                read_header(path, offset, syntax.uid)
            with pytest.raises(ValueError, match="embedded null"), pydicom.config.disable_value_validation():
                pydicom.dcmread(path)  # why: pydicom cannot read the file
        else:
            assert read_header(path, offset, syntax.uid).get("PatientName") == "Müller^Jürgens"
            with pydicom.config.disable_value_validation():
                assert pydicom.dcmread(path).PatientName == "Müller^Jürgens"


def test_iso2022_japanese_name(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4", SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName="Yamada^Tarou=山田^太郎")
    path, offset = stage(tmp_path, ds, ExplicitVRLittleEndian)
    assert read_header(path, offset, ExplicitVRLittleEndian).get("PatientName") == "Yamada^Tarou=山田^太郎"


@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_sequences_before_wanted_attributes_are_stepped_over(tmp_path: Path, syntax: str, undefined: bool) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = "9.9.9"
    nested = Dataset()
    nested.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds = make_ct("1.2", "1.3", "1.4", ReferencedImageSequence=Sequence([item, item]))
    if undefined:
        ds.ReferencedImageSequence.is_undefined_length = True
        for each in ds.ReferencedImageSequence:
            each.is_undefined_length_sequence_item = True
    path, offset = stage(tmp_path, ds, syntax)
    header = read_header(path, offset, syntax)
    assert header.get("PatientName") == "Doe^John"
    assert header.get("Columns") == "64"


@pytest.mark.parametrize("size", [65_000, 65_400, 65_470, 65_536, 140_000])
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_wanted_attributes_past_the_read_window(tmp_path: Path, syntax: str, size: int) -> None:
    """A large element before PatientName: the file source refills its 64 KiB window,
    whichever side of the boundary the next element header and value fall on."""
    ds = make_ct("1.2", "1.3", "1.4", rows=4, cols=4, transfer_syntax=syntax)
    ds.private_block(0x0009, "MINIPACS TEST", create=True).add_new(0x01, "OB", b"\x01" * size)
    path, offset = stage(tmp_path, ds, syntax)
    header = read_header(path, offset, syntax)
    assert header.get("PatientName") == "Doe^John"
    assert header.get("SOPInstanceUID") == "1.4"
    assert header.get("Columns") == "4"


def test_pixel_data_is_never_read(tmp_path: Path) -> None:
    """A 200 MB instance: the header parse reads a few KB (peak memory < 20 MB)."""
    ds = make_ct("1.2", "1.3", "1.4", rows=10000, cols=10000)
    del ds.PixelData
    pixel_bytes = 10000 * 10000 * 2
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian)
    staging.write(encode_dataset(ds, ExplicitVRLittleEndian))
    staging.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
    staged = staging.finish()
    with open(staged.path, "r+b") as fh:  # sparse: 200 MB of zeros without writing them
        fh.truncate(staged.path.stat().st_size + pixel_bytes)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        header = read_header(staged.path, staged.dataset_offset, ExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.get("Rows") == "10000"
    assert peak < 20 * 1024 * 1024
    assert time.perf_counter() - started < 1.0


def test_truncated_header_is_invalid(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4")
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    path, offset = stage(tmp_path, ds, ExplicitVRLittleEndian, data[:301])
    with pytest.raises(MalformedDataset, match="ends in the middle|claims more bytes"):
        read_header(path, offset, ExplicitVRLittleEndian)


def test_implicit_data_announced_as_explicit_is_invalid(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4")
    path, offset = stage(tmp_path, ds, ExplicitVRLittleEndian, encode_dataset(ds, ImplicitVRLittleEndian))
    with pytest.raises(MalformedDataset, match="no valid VR"):
        read_header(path, offset, ExplicitVRLittleEndian)


def test_garbage_deflate_stream_is_invalid(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4")
    path, offset = stage(tmp_path, ds, DeflatedExplicitVRLittleEndian, b"\xff" * 64)
    with pytest.raises(MalformedDataset, match="cannot be inflated"):
        read_header(path, offset, DeflatedExplicitVRLittleEndian)


def test_large_deflated_instance_is_inflated_as_a_stream(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4", rows=2048, cols=2048)  # 8 MB of pixels, deflates to little
    data = encode_dataset(ds, DeflatedExplicitVRLittleEndian)
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)[:4] == b"\x08\x00\x05\x00"
    path, offset = stage(tmp_path, ds, DeflatedExplicitVRLittleEndian, data)
    tracemalloc.start()
    try:
        header = read_header(path, offset, DeflatedExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.get("Rows") == "2048"
    assert peak < 4 * 1024 * 1024


def test_hostile_nesting_is_refused(tmp_path: Path) -> None:
    # 40 levels of undefined-length sequences, each opening one undefined-length item
    opening = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    path, offset = stage(tmp_path, make_ct("1.2", "1.3", "1.4"), ExplicitVRLittleEndian, opening * 40)
    with pytest.raises(MalformedDataset, match="nested"):
        read_header(path, offset, ExplicitVRLittleEndian)


def test_jpip_referenced_deflate_is_read_deflated(tmp_path: Path) -> None:
    """PS3.5 A.6: JPIP Referenced Deflate (1.2.840.10008.1.2.4.95) deflates the dataset like A.5.

    The header reader and the wire read it from one table (dicom/uids.py); before, the wire
    table said the dataset was plain explicit VR little endian."""
    ds = make_ct("1.2", "1.3", "1.4")
    data = encode_dataset(ds, DeflatedExplicitVRLittleEndian)  # the same dataset encoding
    path, offset = stage(tmp_path, ds, "1.2.840.10008.1.2.4.95", data)
    assert read_header(path, offset, "1.2.840.10008.1.2.4.95").get("SOPInstanceUID") == "1.4"


def test_unknown_private_syntax_is_read_as_explicit_little_endian(tmp_path: Path) -> None:
    ds = make_ct("1.2", "1.3", "1.4")
    path, offset = stage(tmp_path, ds, "1.2.3.4.5.6", encode_dataset(ds, ExplicitVRLittleEndian))
    assert read_header(path, offset, "1.2.3.4.5.6").get("SOPInstanceUID") == "1.4"


# ---- read_header_bytes: the fast walk of a file in memory must be read_header_from exactly


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "ok", dict(read().values)
    except MalformedDataset as exc:
        return "error", str(exc)


def _both(data: bytes, offset: int, syntax: str) -> tuple[tuple[str, Any], tuple[str, Any]]:
    from minipacs.dicom.header import read_header_bytes, read_header_from

    return (
        _outcome(lambda: read_header_bytes(data, offset, syntax)),
        _outcome(lambda: read_header_from(io.BytesIO(data), offset, syntax)),
    )


@pytest.mark.parametrize("case", broken_corpus.cases(), ids=lambda c: c.id)
def test_the_fast_walk_reads_the_broken_corpus_as_the_general_one(case: broken_corpus.Case) -> None:
    """Every well-formed and broken dataset of the corpus (both VR encodings, both byte orders,
    defined and undefined lengths, deflated): the same values, or the same error."""
    data = broken_corpus.part10(case)
    offset = len(data) - len(case.data)
    fast, general = _both(data, offset, case.syntax.uid)
    assert fast == general


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_the_fast_walk_at_every_truncation_point(syntax: str) -> None:
    """A header cut at every byte (inside a tag, a VR, a 16- and a 32-bit length, a wanted value,
    a skipped one): the same values or the same sentence as the general walker."""
    from tests.dicomgen import encode_dataset, make_ct

    ds = make_ct("1.2.3", "1.2.3.4", "1.2.3.4.5", PatientName="Müller^Jürgen", SpecificCharacterSet="ISO_IR 100")
    ds.add_new(0x00091010, "OB", b"\x01" * 300)  # a long-length VR among the wanted ones
    encoded = encode_dataset(ds, syntax)
    seen = set()
    for cut in range(0, min(len(encoded), 2000)):
        fast, general = _both(encoded[:cut], 0, syntax)
        assert fast == general, cut
        seen.add(fast[0] if fast[0] == "ok" else fast[1])
    assert "ok" in seen and len(seen) >= 3  # whole headers and both kinds of sentence were met


def test_un_of_undefined_length_before_the_wanted_attributes_in_big_endian(tmp_path: Path) -> None:
    """PS3.5 §6.2.2: a UN of undefined length holds Implicit VR LITTLE Endian items whatever the transfer
    syntax, Explicit VR Big Endian too (DCMTK reads it so, CP-246). A private one before Patient ID:
    the header walk steps over it little endian, as does the ingest walk (both read it big endian
    before, and refused the dataset)."""
    from minipacs.core.structure import walk_bytes

    big, little = broken_corpus.Encoder(broken_corpus.BIG), broken_corpus.Encoder(broken_corpus.IMPLICIT)
    inner = little.text(0x00091001, "LO", "inside") + little.sq(0x00091002, [little.item(b"")], defined=False)
    un = big.tag(0x00091010) + b"UN" + struct.pack(">HI", 0, broken_corpus.UNDEFINED)
    un += little.item(inner, defined=False) + little.item(inner) + little.delimiter(broken_corpus.SEQUENCE_END)
    data = (
        big.text(0x00080016, "UI", CT_IMAGE_STORAGE)
        + big.text(0x00080018, "UI", "1.2.3.4")
        + big.text(0x00090010, "LO", "PRIVATE CREATOR")
        + un
        + big.text(0x00100020, "LO", "BIG-UN")
        + big.us(0x00280010, 8)
    )
    walk_bytes(data, 0, implicit=False, little_endian=False, max_depth=8, encapsulated=False)
    ds = make_ct("1.2", "1.3", "1.2.3.4")
    path, offset = stage(tmp_path, ds, ExplicitVRBigEndian, data)
    header = read_header(path, offset, ExplicitVRBigEndian)
    assert (header.get("PatientID"), header.get("Rows")) == ("BIG-UN", "8")
