"""dicom/xml_model.py: the PS3.19 Native DICOM Model of a PS3.18 JSON object (PS3.18 F.3.1).

Each rule of Table F.3.1-1 has a row here; generated datasets of every VR (tests/dicom/test_json_model.py's
generator, through pydicom's JSON) are checked against the A.1.6 schema with xmllint and read back
by F.3.1 into the JSON they came from.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from minipacs.dicom.xml_model import NAMESPACE, native_xml
from tests.dicom.test_json_model import EXPLICIT, IMPLICIT, part10, random_dataset, reference
from tests.native_schema import from_native_xml, schema_errors

NS = "{" + NAMESPACE + "}"


def _root(obj: dict[str, Any]) -> ET.Element:
    return ET.fromstring(native_xml(obj).encode())


def _attributes(obj: dict[str, Any]) -> list[dict[str, str]]:
    return [dict(node.attrib) for node in _root(obj).findall(NS + "DicomAttribute")]


def test_the_root_names_the_schemas_namespace_and_preserves_white_space() -> None:
    """PS3.19 A.1.6 default namespace; Table A.1.5-1: xml:space="preserve" shall be included."""
    root = _root({})
    assert root.tag == NS + "NativeDicomModel"
    assert root.attrib == {"{http://www.w3.org/XML/1998/namespace}space": "preserve"}
    assert native_xml({}).startswith('<?xml version="1.0" encoding="UTF-8"?>')


@pytest.mark.parametrize(
    "element,expected",
    [
        # Table F.3.1-1 row 2: tag, vr, one Value per value, numbered from 1; keyword from PS3.6
        ({"00100020": {"vr": "LO", "Value": ["ID1"]}}, '<Value number="1">ID1</Value>'),
        # row 3: several values
        (
            {"00080060": {"vr": "CS", "Value": ["CT", "PT"]}},
            '<Value number="1">CT</Value><Value number="2">PT</Value>',
        ),
        # F.3.1: an empty value is a null in JSON, an empty Value element in XML
        ({"00200013": {"vr": "IS", "Value": [None, 4]}}, '<Value number="1"/><Value number="2">4</Value>'),
        # numbers as JSON wrote them (a DS that was no number stays the text it was, F.2.3)
        ({"00181050": {"vr": "DS", "Value": [0.1, "1A"]}}, '<Value number="1">0.1</Value><Value number="2">1A</Value>'),
        # row 4: no value at all
        ({"00100030": {"vr": "DA"}}, ""),
        ({"00100030": {"vr": "DA", "Value": []}}, ""),
        # row 5: PersonName with its groups and components; empty components left out
        (
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John^^Dr", "Ideographic": "山田^太郎"}]}},
            '<PersonName number="1"><Alphabetic><FamilyName>Doe</FamilyName><GivenName>John</GivenName>'
            "<NamePrefix>Dr</NamePrefix></Alphabetic><Ideographic><FamilyName>山田</FamilyName>"
            "<GivenName>太郎</GivenName></Ideographic></PersonName>",
        ),
        ({"00100010": {"vr": "PN", "Value": [None, {}]}}, '<PersonName number="1"/><PersonName number="2"/>'),
        # row 6: Items numbered from 1, an empty item empty
        (
            {"00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2"]}}, {}]}},
            '<Item number="1"><DicomAttribute tag="0020000E" vr="UI" keyword="SeriesInstanceUID">'
            '<Value number="1">1.2</Value></DicomAttribute></Item><Item number="2"/>',
        ),
        # rows 7 and 8: BulkData uri=, InlineBinary
        ({"7FE00010": {"vr": "OW", "BulkDataURI": "http://h/b?a=1&b=2"}}, '<BulkData uri="http://h/b?a=1&amp;b=2"/>'),
        ({"00281201": {"vr": "OW", "InlineBinary": "AAEC"}}, "<InlineBinary>AAEC</InlineBinary>"),
    ],
)
def test_table_f31_1_rows(element: dict[str, Any], expected: str) -> None:
    (key,) = element
    text = native_xml(element)
    inner = re.search(r"<DicomAttribute [^>]*?(/>|>(.*)</DicomAttribute>)", text, re.S)
    assert inner is not None
    assert (inner.group(2) or "") == expected
    attributes = _attributes(element)[0]
    assert attributes["tag"] == key and attributes["vr"] == element[key]["vr"] and attributes["keyword"]


def test_private_elements_carry_their_creator_and_not_their_block() -> None:
    """PS3.19 Table A.1.5-2: a private tag is gggg00ee with privateCreator (the block is not sent); the
    creator elements themselves are conveyed that way. An element whose creator is absent keeps its tag."""
    attributes = _attributes(
        {
            "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
            "00090011": {"vr": "LO", "Value": ["OTHER"]},
            "00091001": {"vr": "LO", "Value": ["a"]},
            "00091101": {"vr": "US", "Value": [7]},
            "00091201": {"vr": "UN", "InlineBinary": "AA=="},
            "00190000": {"vr": "UL", "Value": [4]},  # a group length: never in the model (PS3.19 A.1.1)
        }
    )
    assert attributes == [
        {"tag": "00090001", "vr": "LO", "privateCreator": "ACME 1.0"},
        {"tag": "00090001", "vr": "US", "privateCreator": "OTHER"},
        {"tag": "00091201", "vr": "UN"},
    ]


def test_text_is_escaped_and_what_xml_cannot_carry_is_named() -> None:
    """Markup characters are escaped, CR survives as a reference; C0 controls XML 1.0 cannot carry at all
    become U+xxxx (PS3.18 8.8.5's replacements) instead of making the document unreadable."""
    value = 'a<b>&"c"\r\n\t\x00\x1b\ud800'
    root = _root({"00104000": {"vr": "LT", "Value": [value]}, "00081190": {"vr": "UR", "BulkDataURI": '"<x>\n'}})
    assert root[0][0].text == 'a<b>&"c"\r\n\tU+0000U+001BU+D800'
    assert root[1][0].attrib["uri"] == '"<x>\n'


def _expected(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the XML reader gives it back: what F.3.1 maps, with the documented replacements."""
    out: dict[str, Any] = {}
    for key, element in obj.items():
        if key.endswith("0000"):
            continue
        element = dict(element)
        values = element.pop("Value", None)
        if values:
            if element["vr"] == "SQ":
                element["Value"] = [_expected(item or {}) for item in values]
            elif element["vr"] == "PN":
                element["Value"] = [_name(value) for value in values]
            elif element["vr"] in ("DS", "IS"):  # XML is text: a DS written as JSON text reads back as a number
                element["Value"] = [_number(value) for value in values]
            else:
                element["Value"] = [_string(value) for value in values]
        out[key] = element
    return out


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value, parse_constant=_not_a_number)
        except ValueError:
            return value or None  # an empty value: an empty Value element, read back as null (F.3.1)
    return value


def _not_a_number(text: str) -> Any:
    raise ValueError(text)


def _name(value: dict[str, str] | None) -> dict[str, str] | None:
    groups = {group: _string(text).rstrip("^") for group, text in (value or {}).items() if text.strip("^")}
    return groups or None


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not value:
        return None  # "" and null are both an empty Value element (F.3.1)
    return re.sub("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", lambda m: f"U+{ord(m[0]):04X}", value)


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
def test_generated_datasets_are_valid_and_read_back(ts: str, tmp_path: Path) -> None:
    """Every VR, empty values, NULs, tabs, nested and empty items: valid against the A.1.6 schema, and the
    F.3.1 reading of each document is the JSON object it was made from."""
    rng = random.Random(f"xml-model-{ts}")
    objects: list[dict[str, Any]] = []
    while len(objects) < 150:
        data, _offset = part10(random_dataset(rng, implicit=ts == IMPLICIT), ts)
        text = reference(data)
        if text is not None:
            objects.append(json.loads(text))
    documents = [native_xml(obj).encode() for obj in objects]
    assert schema_errors(documents, tmp_path) == ""
    for obj, document in zip(objects, documents, strict=True):
        assert from_native_xml(document) == _expected(obj)


@pytest.mark.parametrize(
    "document",
    [
        f'<NativeDicomModel xmlns="{NAMESPACE}"/>',  # no xml:space="preserve"
        '<NativeDicomModel xml:space="preserve"/>',  # not in the namespace
        f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve"><DicomAttribute tag="0010001a" vr="PN"/>'
        "</NativeDicomModel>",  # lowercase hex
        f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve"><DicomAttribute tag="00100010" vr="PN">'
        '<Value number="1">Doe</Value></DicomAttribute></NativeDicomModel>',  # a PN as a Value: well, allowed
    ],
)
def test_the_schema_check_can_fail(document: str, tmp_path: Path) -> None:
    """The transcribed schema refuses what A.1.5/A.1.6 refuse (the last row: the schema does not tie Value
    to the VR, so that one passes -- Table A.1.5-2's "shall not be used if the VR is PN" is ours to keep)."""
    errors = schema_errors([document.encode()], tmp_path)
    assert (errors == "") == document.endswith("</DicomAttribute></NativeDicomModel>"), errors
