"""The PS3.19 A.1.6 schema of the Native DICOM Model, xmllint to check documents against it, and a reader
that maps a document back to the PS3.18 JSON model by PS3.18 F.3.1 (for round-trip tests).

The standard gives the schema in RELAX NG compact syntax; xmllint reads the XML syntax, so it is
transcribed here pattern for pattern, with two corrections the standard's own text calls for:
the VR choice's empty alternative (``| | "OW"``, a typo) is dropped, and the root must carry
``xml:space="preserve"``, which Table A.1.5-1 requires and the compact schema does not declare.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from minipacs.dicom.vr import ALL_VRS
from minipacs.dicom.xml_model import NAME_COMPONENTS, NAME_GROUPS, NAMESPACE
from tests.peers import missing_peer

XMLLINT = Path("/usr/bin/xmllint")

_VRS = "".join(f"<value>{vr}</value>" for vr in sorted(ALL_VRS))
_COMPONENTS = "".join(
    f'<optional><element name="{name}"><data type="string"/></element></optional>' for name in NAME_COMPONENTS
)
_GROUPS = "".join(
    f'<optional><element name="{group}"><ref name="NameComponents"/></element></optional>' for group in NAME_GROUPS
)
#: PS3.19 A.1.6, in RELAX NG XML syntax (see the module docstring for the two corrections).
SCHEMA = f"""<?xml version="1.0" encoding="UTF-8"?>
<grammar xmlns="http://relaxng.org/ns/structure/1.0" ns="{NAMESPACE}"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <start>
    <element name="NativeDicomModel">
      <attribute name="space" ns="http://www.w3.org/XML/1998/namespace"><value>preserve</value></attribute>
      <ref name="DicomDataSet"/>
    </element>
  </start>
  <define name="DicomDataSet"><zeroOrMore><ref name="DicomAttribute"/></zeroOrMore></define>
  <define name="DicomAttribute">
    <element name="DicomAttribute">
      <ref name="Tag"/><ref name="VR"/>
      <optional><ref name="Keyword"/></optional>
      <optional><ref name="PrivateCreator"/></optional>
      <optional>
        <choice>
          <ref name="BulkData"/>
          <oneOrMore><ref name="Value"/></oneOrMore>
          <oneOrMore><ref name="Item"/></oneOrMore>
          <oneOrMore><ref name="PersonName"/></oneOrMore>
          <ref name="InlineBinary"/>
        </choice>
      </optional>
    </element>
  </define>
  <define name="BulkData">
    <element name="BulkData"><choice><ref name="UUID"/><ref name="URI"/></choice></element>
  </define>
  <define name="Value"><element name="Value"><ref name="Number"/><data type="string"/></element></define>
  <define name="InlineBinary"><element name="InlineBinary"><data type="base64Binary"/></element></define>
  <define name="Item"><element name="Item"><ref name="Number"/><ref name="DicomDataSet"/></element></define>
  <define name="PersonName"><element name="PersonName"><ref name="Number"/>{_GROUPS}</element></define>
  <define name="NameComponents">{_COMPONENTS}</define>
  <define name="Keyword"><attribute name="keyword"><data type="token"/></attribute></define>
  <define name="Tag">
    <attribute name="tag">
      <data type="string">
        <param name="minLength">8</param><param name="maxLength">8</param><param name="pattern">[0-9A-F]{{8}}</param>
      </data>
    </attribute>
  </define>
  <define name="VR"><attribute name="vr"><choice>{_VRS}</choice></attribute></define>
  <define name="PrivateCreator"><attribute name="privateCreator"><data type="string"/></attribute></define>
  <define name="UUID"><attribute name="uuid"><data type="string"/></attribute></define>
  <define name="URI"><attribute name="uri"><data type="anyURI"/></attribute></define>
  <define name="Number"><attribute name="number"><data type="positiveInteger"/></attribute></define>
</grammar>
"""


def schema_errors(documents: list[bytes], tmp: Path) -> str:
    """xmllint --relaxng over ``documents``: "" when every one is valid, else what xmllint said."""
    if not XMLLINT.exists():
        missing_peer("xmllint", "apt-get install libxml2-utils")
    schema = tmp / "native_dicom_model.rng"
    schema.write_text(SCHEMA)
    paths = []
    for n, document in enumerate(documents):
        path = tmp / f"document{n}.xml"
        path.write_bytes(document)
        paths.append(str(path))
    done = subprocess.run(
        [str(XMLLINT), "--noout", "--relaxng", str(schema), *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "" if done.returncode == 0 else done.stderr[-4000:]


_NS = "{" + NAMESPACE + "}"
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})


def _dataset(node: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.findall(_NS + "DicomAttribute"):
        tag, vr = attr.attrib["tag"], attr.attrib["vr"]
        if "privateCreator" in attr.attrib:  # PS3.18 F.3.1: remapped to a block (here: from 0x10 up)
            group = tag[:4]
            creators = [k for k, v in out.items() if k.startswith(group) and v.get("creator")]
            block = next(
                (k[6:] for k in creators if out[k]["Value"] == [attr.attrib["privateCreator"]]),
                f"{0x10 + len(creators):02X}",
            )
            out.setdefault(f"{group}00{block}", {"vr": "LO", "Value": [attr.attrib["privateCreator"]], "creator": 1})
            tag = f"{group}{block}{tag[6:]}"
        element: dict[str, Any] = {"vr": vr}
        children = list(attr)
        if children and children[0].tag == _NS + "BulkData":
            element["BulkDataURI"] = children[0].attrib["uri"]
        elif children and children[0].tag == _NS + "InlineBinary":
            element["InlineBinary"] = children[0].text or ""
        elif children:
            element["Value"] = [_value(child, vr) for child in children]
        out[tag] = element
    for element in out.values():
        element.pop("creator", None)
    return out


def _not_a_number(text: str) -> Any:
    raise ValueError(text)


def _value(child: ET.Element, vr: str) -> Any:
    if child.tag == _NS + "Item":
        return _dataset(child)
    if child.tag == _NS + "PersonName":
        name: dict[str, str] = {}
        for group in NAME_GROUPS:
            found = child.find(_NS + group)
            if found is not None:
                parts = [(found.findtext(_NS + part) or "") for part in NAME_COMPONENTS]
                name[group] = "^".join(parts).rstrip("^")
        return name or None
    if child.text is None:
        return None
    if vr in _NUMERIC_VRS:
        try:  # a number as JSON writes it; "NaN", "1A" and the like stay text, as in the JSON model
            return json.loads(child.text, parse_constant=_not_a_number)
        except ValueError:
            return child.text
    return child.text


def from_native_xml(document: bytes) -> dict[str, Any]:
    """The PS3.18 JSON object a Native DICOM Model document maps to (PS3.18 F.3.1)."""
    root = ET.fromstring(document)
    assert root.tag == _NS + "NativeDicomModel", root.tag
    return _dataset(root)
