"""dicom/xml_read.py: a PS3.19 Native DICOM Model document back into the PS3.18 JSON model.

Round trips through dicom/xml_model.py (our writer) and pydicom (``Dataset.from_json``) for every
kind of value, a hand-written document as another writer would make it (no namespace, a private
attribute with its creator, values out of order), and the refusals.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.dicom.xml_model import native_xml
from minipacs.dicom.xml_read import NotNativeXML, read_native_xml


def sample() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.PatientID = "P<&>1"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = 512, 256
    ds.PixelSpacing = ["0.3125", "0.3125000001"]  # DS digits a double would round
    ds.SliceThickness = None
    ds.RescaleSlope = "1.5"
    ds.InstanceNumber = "7"
    ds.ReferencedSOPSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedSOPSequence[1].ReferencedSOPInstanceUID = "1.2.4"
    ds.add_new(0x00091010, "LO", "vendor creator")
    ds.add_new(0x00091001, "US", 42)
    ds.ImageComments = "line one\r\nline two"
    ds.add_new(0x00420011, "OB", b"%PDF-1.4 tiny")
    return ds


def test_our_xml_reads_back_as_the_same_dataset() -> None:
    ds = sample()
    document = native_xml(ds.to_json_dict()).encode()
    back = Dataset.from_json(read_native_xml(document))
    for elem in ds:
        assert back[elem.tag].VR == elem.VR, elem
        assert back[elem.tag].value == elem.value, elem


def test_bulk_data_and_a_document_as_another_writer_makes_it() -> None:
    document = b"""<?xml version="1.0"?>
    <NativeDicomModel>
      <DicomAttribute tag="00100020" vr="LO"><Value number="1">P1</Value></DicomAttribute>
      <DicomAttribute tag="00280030" vr="DS">
        <Value number="2">0.5</Value><Value number="1">0.25</Value></DicomAttribute>
      <DicomAttribute tag="00190010" vr="US" privateCreator="ACME 1.0"><Value number="1">3</Value></DicomAttribute>
      <DicomAttribute tag="00190011" vr="LO" privateCreator="OTHER"><Value number="1">x</Value></DicomAttribute>
      <DicomAttribute tag="7FE00010" vr="OB"><BulkData uri="bulk/1"/></DicomAttribute>
      <DicomAttribute tag="00100010" vr="PN"><PersonName number="1"><Alphabetic>
        <FamilyName>Doe</FamilyName><GivenName>Jane</GivenName></Alphabetic></PersonName></DicomAttribute>
      <DicomAttribute tag="00081110" vr="SQ"/>
    </NativeDicomModel>"""
    got = read_native_xml(document)
    assert got["00280030"] == {"vr": "DS", "Value": ["0.25", "0.5"]}  # by number, kept as text
    assert got["00191010"] == {"vr": "US", "Value": [3]} and got["00190010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    assert got["00191111"] == {"vr": "LO", "Value": ["x"]} and got["00190011"] == {"vr": "LO", "Value": ["OTHER"]}
    assert got["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/1"}
    assert got["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert got["00081110"] == {"vr": "SQ"}


@pytest.mark.parametrize(
    ("document", "words"),
    [
        (b"<NativeDicomModel><DicomAttribute", "not XML"),
        (b"<Other/>", "not NativeDicomModel"),
        (b'<NativeDicomModel><DicomAttribute tag="0010" vr="LO"/></NativeDicomModel>', "8 hexadecimal"),
        (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="XX"/></NativeDicomModel>', "Table 6.2-1"),
        (b'<NativeDicomModel><DicomAttribute tag="00100020"/></NativeDicomModel>', "Table 6.2-1"),
        (
            b'<NativeDicomModel><DicomAttribute tag="00280010" vr="US"><Value number="1">big</Value>'
            b"</DicomAttribute></NativeDicomModel>",
            "not a number",
        ),
        (
            b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
            b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
            b'<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
            b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="1">&h;</Value>'
            b"</DicomAttribute></NativeDicomModel>",
            "not XML",  # expat's amplification limit: an entity bomb is refused, not expanded
        ),
    ],
)
def test_refusals(document: bytes, words: str) -> None:
    with pytest.raises(NotNativeXML, match=words):
        read_native_xml(document)


def test_items_nested_past_the_limit_are_refused() -> None:
    def nested(levels: int) -> bytes:
        inner = b'<DicomAttribute tag="00100020" vr="LO"><Value number="1">x</Value></DicomAttribute>'
        for _ in range(levels):
            inner = b'<DicomAttribute tag="00081110" vr="SQ"><Item number="1">' + inner + b"</Item></DicomAttribute>"
        return b"<NativeDicomModel>" + inner + b"</NativeDicomModel>"

    assert read_native_xml(nested(4), max_depth=4)["00081110"]["vr"] == "SQ"
    with pytest.raises(NotNativeXML, match="deeper than 4"):
        read_native_xml(nested(5), max_depth=4)
