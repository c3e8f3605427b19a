"""dicom/identifier.py: identifiers to and from the wire (PS3.5 §7.1, A.5; PS3.4 C.4.1.1.3.2)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from minipacs.dicom.identifier import (
    choose_charset,
    dataset_charset,
    decode_identifier,
    encode_identifier,
    identifier_charset,
    response_charset,
)
from minipacs.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TransferSyntax,
    transfer_syntax,
)


def _ts(uid: str) -> TransferSyntax:
    ts = transfer_syntax(uid)
    assert ts is not None
    return ts


ENCODE_SAMPLES: list[dict[str, Any]] = [
    {
        "PatientName": "Müller^Jürgen",
        "SpecificCharacterSet": "ISO_IR 192",
        "QueryRetrieveLevel": "STUDY",
        "ModalitiesInStudy": ["CT", "MR"],
        "StudyInstanceUID": "1.2.3",
        "NumberOfStudyRelatedInstances": "12",
        "Rows": 512,
        "StudyDescription": None,
    },
    {"PatientName": "Muller^J", "PatientID": "odd", "AccessionNumber": ""},
    {"PatientName": "Müller", "SpecificCharacterSet": "ISO_IR 100", "StudyDate": "20240101"},
]


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN])
@pytest.mark.parametrize("values", ENCODE_SAMPLES)
def test_flat_encoder_matches_pydicom(syntax: str, values: dict[str, Any]) -> None:
    """The fast response encoder writes exactly what pydicom's writer writes."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ts = _ts(syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = ts.little_endian, ts.implicit_vr
    write_dataset(buffer, ds)
    assert encode_identifier(ds, ts) == buffer.getvalue()


@pytest.mark.parametrize(
    "syntax",
    [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN],
)
def test_round_trip(syntax: str) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = "1.2.3"
    data = encode_identifier(ds, _ts(syntax))
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:  # PS3.5 A.5: a raw deflate stream
        assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)[:4] == b"\x08\x00\x52\x00"
    back = decode_identifier(data, syntax)
    assert bytes(back.get_item(0x00100010).value) == b"Doe^John"
    assert back.StudyInstanceUID == "1.2.3"


def test_unreadable_identifiers_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        decode_identifier(b"", "1.2.3.4")
    with pytest.raises(ValueError, match="cannot be parsed in Explicit VR Little Endian"):
        # an undefined-length sequence whose item claims more bytes than there are
        decode_identifier(
            b"\x08\x00\x11\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00abc", EXPLICIT_VR_LITTLE_ENDIAN
        )


def test_response_character_set() -> None:
    """PS3.4 C.4.1.1.3.2: the requester's set when it carries every value, else ISO_IR 192."""
    assert choose_charset("", ["Doe"]) == ""
    assert choose_charset("ISO_IR 100", ["Müller"]) == "ISO_IR 100"
    assert choose_charset("", ["Müller"]) == "ISO_IR 192"
    assert choose_charset("ISO_IR 100", ["山田"]) == "ISO_IR 192"
    # PS3.5 6.1.2.5 code extensions: a repertoire that holds the names is answered in (issue 12 item 11)
    assert (
        choose_charset("ISO 2022 IR 6\\ISO 2022 IR 87", ["Yamada^Tarou=山田^太郎"]) == "ISO 2022 IR 6\\ISO 2022 IR 87"
    )
    assert choose_charset("ISO 2022 IR 6\\ISO 2022 IR 149", ["Hong^Gildong=洪^吉洞=홍^길동"]) == (
        "ISO 2022 IR 6\\ISO 2022 IR 149"
    )
    assert choose_charset("ISO 2022 IR 6\\ISO 2022 IR 87", ["Müller"]) == "ISO_IR 192"  # IR 6 is ASCII
    assert choose_charset("ISO 2022 IR 6\\ISO 2022 IR 149", ["王^小東 ✓"]) == "ISO_IR 192"
    assert choose_charset("ISO 2022 IR 100\\ISO 2022 IR 87", ["Müller", "山田"]) == "ISO 2022 IR 100\\ISO 2022 IR 87"
    ds = Dataset()
    ds.PatientName = "Müller"
    ds.StudyInstanceUID = "1.2"
    assert response_charset("ISO_IR 100", ds) == "ISO_IR 100"
    assert response_charset("", ds) == "ISO_IR 192"


def test_dataset_charset_raw_and_converted() -> None:
    raw = decode_identifier(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", EXPLICIT_VR_LITTLE_ENDIAN)
    assert identifier_charset(raw) == "ISO_IR 100"
    built = Dataset()
    built.SpecificCharacterSet = "ISO_IR 192"
    assert identifier_charset(built) == "ISO_IR 192"
    assert dataset_charset(Dataset(), "ISO_IR 100") == "ISO_IR 100"


def test_a_deflated_identifier_is_padded_to_even_length_and_still_decodes() -> None:
    """PS3.5 A.5: an odd deflate stream gets one trailing 0x00 (issue 12 item 2); it still inflates."""
    from minipacs.dicom.identifier import decode_identifier, deflate, encode_identifier
    from minipacs.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, transfer_syntax

    ts = transfer_syntax(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert ts is not None
    odd_seen = False
    for n in range(1, 40):
        plain = bytes(range(n)) * 4
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        unpadded = raw.compress(plain) + raw.flush()
        padded = deflate(plain)
        odd_seen |= len(unpadded) % 2 == 1
        assert padded == unpadded + b"\x00" * (len(unpadded) % 2)
        ds = Dataset()
        ds.PatientName = "DOE^" + "J" * n
        assert str(decode_identifier(encode_identifier(ds, ts), ts.uid).PatientName) == "DOE^" + "J" * n
    assert odd_seen  # the padding was exercised
