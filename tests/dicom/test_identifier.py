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


@pytest.mark.parametrize(
    ("request_charset", "texts"),
    [
        ("ISO_IR 13", ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"]),  # JIS X 0201: katakana, no kanji
        ("ISO 2022 IR 13", ["山田^太郎"]),
        ("ISO 2022 IR 6\\ISO 2022 IR 87", ["ﾔﾏﾀﾞ^ﾀﾛｳ"]),  # JIS X 0208: no half-width katakana
        ("ISO_IR 999", ["Müller"]),  # a Defined Term we do not know: never answered in it
        ("\\ISO 2022 IR 149", ["똠"]),  # hangul outside KS X 1001
    ],
)
def test_a_response_falls_back_to_utf_8_where_the_requested_set_cannot_hold_a_value(
    request_charset: str, texts: list[str]
) -> None:
    """PS3.4 C.4.1.1.3.2. Asked in ISO_IR 13 about a kanji name, the response said ISO_IR 13 and held the
    kanji as Shift JIS bytes (the codec pydicom names for ISO_IR 13): DCMTK's dcmdump +U8 could not read
    them, and pydicom's writer wrote "?" in their place."""
    assert choose_charset(request_charset, texts) == "ISO_IR 192"
    ds = Dataset()
    ds.SpecificCharacterSet = choose_charset(request_charset, texts)
    ds.PatientName = texts[0]
    read = decode_identifier(encode_identifier(ds, _ts(EXPLICIT_VR_LITTLE_ENDIAN)), EXPLICIT_VR_LITTLE_ENDIAN)
    assert str(read.PatientName) == texts[0]


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN])
@pytest.mark.parametrize(
    ("charset", "keyword", "text", "expected"),
    [
        # PS3.5 Example K.3-1: GB 2312 designated to G1 again after each CR LF (pydicom 3.0 designated it once)
        (
            ["", "ISO 2022 IR 58"],
            "PatientComments",
            "1.第一行文字。\r\n2.第二行文字。\r\n",
            b"1.\x1b$)A\xb5\xda\xd2\xbb\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n2.\x1b$)A\xb5\xda\xb6\xfe\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n",
        ),
        # pydicom 3.0 wrote é as a Latin-1 byte under ISO 2022 IR 6 (it names Latin-1 for it), undesignated
        (
            ["ISO 2022 IR 6", "ISO 2022 IR 58"],
            "PatientName",
            "José^Zhang=张",
            b"Jos\x1b$)A\xa8\xa6^Zhang=\x1b$)A\xd5\xc5",
        ),
        (["ISO 2022 IR 6", "ISO 2022 IR 100"], "PatientName", "Ünal^Ça", b"\x1b-A\xdcnal^\x1b-A\xc7a "),
        # PS3.5 Example H.3-1, in a sequence item (the Referenced Patient Sequence of a worklist answer)
        (
            ["", "ISO 2022 IR 87"],
            "ReferencedPatientSequence",
            "Yamada^Tarou=山田^太郎",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
        ),
    ],
)
def test_iso_2022_responses_are_written_with_the_escape_sequences_ps3_5_requires(
    syntax: str, charset: list[str], keyword: str, text: str, expected: bytes
) -> None:
    """PS3.5 6.1.2.5.3: the identifier writer (pydicom's, for ISO 2022 sets) gets each text value already
    encoded by dicom/values.py encode_text; pydicom reads the bytes back as the text."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    if keyword == "ReferencedPatientSequence":
        item = Dataset()
        item.PatientName = text
        ds.ReferencedPatientSequence = [item]
    else:
        setattr(ds, keyword, text)
    data = encode_identifier(ds, _ts(syntax))
    assert expected in data
    read = decode_identifier(data, syntax)
    read.decode()
    if keyword == "ReferencedPatientSequence":
        assert str(read.ReferencedPatientSequence[0].PatientName) == text
    else:
        assert str(getattr(read, keyword)).rstrip(" ") == text.rstrip(" ")
