"""C-FIND responses encoded straight from the query engine's rows (services/qr_find.py RowEncoder).

Every case is checked byte for byte against the pydicom path (a Dataset built
from the row, the service's character set choice, pydicom's writer).
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence

from minipacs.core.query import ResponseField, Row, row_dataset
from minipacs.dicom.identifier import response_charset
from minipacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TransferSyntax,
    transfer_syntax,
)
from minipacs.dicom.values import encode_text, uses_code_extensions
from minipacs.dicom.vr import CHARSET_VRS
from minipacs.services.qr_find import RETRIEVE_AE_TITLE, RowEncoder

FIELDS = (
    ResponseField(0x00080020, "DA"),  # StudyDate
    ResponseField(0x00080052, "CS"),  # QueryRetrieveLevel
    ResponseField(0x00080054, "AE"),  # RetrieveAETitle (answered by the service)
    ResponseField(0x00080061, "CS"),  # ModalitiesInStudy
    ResponseField(0x00081030, "LO"),  # StudyDescription
    ResponseField(0x00100010, "PN"),  # PatientName
    ResponseField(0x0020000D, "UI"),  # StudyInstanceUID
    ResponseField(0x00280010, "US"),  # Rows
)
SYNTAXES = [
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
]


def _ts(uid: str) -> TransferSyntax:
    ts = transfer_syntax(uid)
    assert ts is not None
    return ts


def reference(
    fields: tuple[ResponseField, ...],
    row: Row,
    ts: TransferSyntax,
    request_charset: str,
    constants: dict[int, tuple[str, str]],
) -> bytes:
    """The identifier as pydicom writes it, character set chosen by response_charset. Under ISO 2022 code
    extensions pydicom writes each text value as dicom/values.py encode_text gives it (pydicom's own
    encoder writes Latin-1 with no escape sequence under ISO 2022 IR 6; tests/dicom/test_values.py holds
    encode_text to the bytes of PS3.5 Annexes H-K)."""
    ds = row_dataset(fields, row)
    for tag, (vr, value) in constants.items():
        ds.add_new(tag, vr, value)
    charset = response_charset(request_charset, ds)
    if charset:
        ds.SpecificCharacterSet = charset
    if uses_code_extensions(charset):
        for elem in list(ds):
            if elem.VR in CHARSET_VRS and elem.value is not None:
                raw = encode_text(str(elem.value), elem.VR, charset)
                raw += b" " * (len(raw) % 2)
                ds[elem.tag] = RawDataElement(elem.tag, elem.VR, len(raw), raw, 0, ts.implicit_vr, ts.little_endian)
        ds.set_original_encoding(ts.implicit_vr, ts.little_endian, ds._character_set)
    buffer = DicomBytesIO()
    buffer.is_little_endian = ts.little_endian
    buffer.is_implicit_VR = ts.implicit_vr
    write_dataset(buffer, ds)
    data = bytes(buffer.getvalue())
    if ts.deflated:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        data += b"\x00" * (len(data) % 2)  # PS3.5 A.5: an odd deflate stream is padded to even length
    return data


def _row(**values: Any) -> Row:
    base: dict[int, Any] = {
        0x00080020: "20240115",
        0x00080052: "STUDY",
        0x00080054: None,
        0x00080061: "CT\\MR",
        0x00081030: "CT HEAD",
        0x00100010: "Doe^John",
        0x0020000D: "1.2.3.45",
        0x00280010: "512",
    }
    names = {
        "date": 0x00080020,
        "desc": 0x00081030,
        "name": 0x00100010,
        "uid": 0x0020000D,
        "rows": 0x00280010,
        "modalities": 0x00080061,
    }
    for key, value in values.items():
        base[names[key]] = value
    return tuple(base[f.tag] for f in FIELDS)


# (row, request character set, constants, expected SpecificCharacterSet or None)
CASES: dict[str, tuple[Row, str, dict[int, tuple[str, str]], str | None]] = {
    "ascii, no character set asked": (_row(), "", {}, None),
    "ascii, character set echoed": (_row(), "ISO_IR 100", {}, "ISO_IR 100"),
    "latin-1 name in ISO_IR 100": (_row(name="Müller^Jürgen"), "ISO_IR 100", {}, "ISO_IR 100"),
    "latin-1 name, none asked: UTF-8": (_row(name="Müller^Jürgen"), "", {}, "ISO_IR 192"),
    "japanese name, ISO_IR 100 asked: UTF-8": (_row(name="山田^太郎"), "ISO_IR 100", {}, "ISO_IR 192"),
    "empty values": (_row(date=None, desc="", rows=None, modalities=""), "", {}, None),
    "odd lengths padded (UI with NUL)": (_row(uid="1.2.3.456", desc="ODD"), "", {}, None),
    "unreadable US answered empty": (_row(rows="x"), "", {}, None),
    "RetrieveAETitle answered by the service": (_row(), "", {RETRIEVE_AE_TITLE: ("AE", "MINIPACS")}, None),
}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("case", list(CASES))
def test_row_encoding_matches_pydicom(case: str, syntax: str) -> None:
    row, request_charset, constants, charset = CASES[case]
    ts = _ts(syntax)
    encoder = RowEncoder(FIELDS, ts, request_charset, constants)
    assert encoder.flat
    data = encoder.encode(row)
    assert data == reference(FIELDS, row, ts, request_charset, constants)
    raw = zlib.decompress(data, -zlib.MAX_WBITS) if ts.deflated else data
    if charset is None:
        assert b"ISO_IR" not in raw
    else:
        assert charset.encode() in raw


def test_iso_2022_and_stored_elements_go_through_pydicom() -> None:
    ts = _ts(EXPLICIT_VR_LITTLE_ENDIAN)
    iso2022 = RowEncoder(FIELDS, ts, "ISO 2022 IR 6\\ISO 2022 IR 100", {})
    row = _row()  # ASCII only: the requester's ISO 2022 set is echoed, so pydicom writes it
    assert iso2022._encode_fast(row) is None
    assert iso2022.encode(row) == reference(FIELDS, row, ts, "ISO 2022 IR 6\\ISO 2022 IR 100", {})

    item = Dataset()
    item.CodeValue = "X1"
    fields = (*FIELDS[:5], ResponseField(0x00081032, "SQ"), *FIELDS[5:])
    stored = DataElement(0x00081032, "SQ", DicomSequence([item]))
    with_sequence = (*_row()[:5], stored, *_row()[5:])
    encoder = RowEncoder(fields, ts, "", {})
    assert not encoder.flat
    assert encoder.encode(with_sequence) == reference(fields, with_sequence, ts, "", {})


def test_stored_text_element_goes_through_pydicom() -> None:
    ts = _ts(IMPLICIT_VR_LITTLE_ENDIAN)
    stored = DataElement(0x00081030, "LO", "FROM THE FILE")
    row = (*_row()[:4], stored, *_row()[5:])
    encoder = RowEncoder(FIELDS, ts, "", {})
    assert encoder._encode_fast(row) is None
    assert encoder.encode(row) == reference(FIELDS, row, ts, "", {})


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("request_charset", ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6\\ISO 2022 IR 100"])
def test_encode_many_matches_pydicom(syntax: str, request_charset: str) -> None:
    """The batch path (all-ASCII rows in one loop, the rest as before) gives pydicom's bytes, row by row."""
    ts = _ts(syntax)
    constants = {RETRIEVE_AE_TITLE: ("AE", "MINIPACS")}
    rows = [case[0] for case in CASES.values()] + [_row(desc="X" * 0xFFFD), _row(name="Ünal^Ça")]
    encoder = RowEncoder(FIELDS, ts, request_charset, constants)
    assert encoder.encode_many(rows) == [reference(FIELDS, row, ts, request_charset, constants) for row in rows]
    if "\\" in request_charset:
        assert encoder._ascii_plan is None  # ISO 2022 code extensions: pydicom writes them
        # PS3.5 6.1.2.5: value 1 (ISO 2022 IR 6) designates no G1 set: Latin-1 is designated in each component
        encoded = encoder.encode(_row(name="Ünal^Ça"))
        assert b"\x1b-A\xdcnal^\x1b-A\xc7a" in (zlib.decompress(encoded, -zlib.MAX_WBITS) if ts.deflated else encoded)
    else:
        assert encoder._encode_ascii(_row()) is not None
        assert encoder._encode_ascii(_row(name="Müller")) is None  # not ASCII: the character set is chosen
