"""A PS3.19 Native DICOM Model document (Annex A.1) read into the PS3.18 JSON model (F.2), the reverse of
dicom/xml_model.py: STOW-RS with XML metadata (web/stow_bulk.py) then goes the JSON way.

* ``NativeDicomModel`` (with or without the PS3.19 A.1.6 namespace) holds ``DicomAttribute``s: ``tag``
  (8 hex digits), ``vr`` (PS3.19 Table A.1.5-1: required), ``keyword`` and ``privateCreator`` optional;
* ``Value number=n`` (values ordered by ``number``): numbers for IS, the binary integer VRs and
  FL/FD (PS3.18 F.2.3), text for the others (DS kept as its text: F.2.3.1 allows a string, and a
  decimal's digits are not rounded through a double); an empty ``Value`` is a JSON ``null``;
* ``PersonName number=n`` with ``Alphabetic``/``Ideographic``/``Phonetic``, each either the five
  ``NameComponents`` (FamilyName, GivenName, MiddleName, NamePrefix, NameSuffix; joined with ``^``,
  trailing empty ones dropped) or nothing;
* ``Item number=n``: a sequence item, itself DicomAttributes; ``InlineBinary`` (base64) and
  ``BulkData uri=`` as in JSON;
* a private attribute given as ``tag="gggg00ee"`` with ``privateCreator`` gets a block of its group
  (0x10 up, one per creator, the Private Creator element (gggg,00XX) added, PS3.5 7.8.1): Table
  A.1.5-2 says the block of the DICOM encoding is not sent.

Refused with :class:`NotNativeXML` (a sentence): a document that does not parse, another root, an
attribute without tag or VR, a tag that is not 8 hex digits, an unknown VR, Items nested deeper than
``max_depth``, a value of a number VR that is no number. The parser is the standard library's (expat:
no external entities, DTDs ignored, and its amplification limit refuses an entity bomb).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final
from xml.etree import ElementTree as ET

from minipacs.dicom.vr import ALL_VRS
from minipacs.dicom.xml_model import NAME_COMPONENTS, NAME_GROUPS, NAMESPACE

_INTEGER_VRS: Final = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
#: First private block given to creators named in the document (PS3.5 7.8.1: 0x10-0xFF).
_FIRST_BLOCK: Final = 0x10


class NotNativeXML(ValueError):
    """The document is not a Native DICOM Model dataset this reader takes (the message says why)."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if tag.startswith("{") else tag


def _children(node: ET.Element, name: str) -> Iterator[ET.Element]:
    for child in node:
        if _local(child.tag) == name:
            yield child


def _numbered(node: ET.Element, name: str) -> list[ET.Element]:
    found = list(_children(node, name))
    try:
        return sorted(found, key=lambda e: int(e.get("number", "0")))
    except ValueError:
        raise NotNativeXML(f"a {name} has a number attribute that is no number") from None


def read_native_xml(document: bytes, max_depth: int = 32) -> dict[str, Any]:
    """The PS3.18 JSON object of one ``NativeDicomModel`` document; NotNativeXML if it is not one."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise NotNativeXML(f"not XML ({exc})") from None
    if _local(root.tag) != "NativeDicomModel" or root.tag not in (
        "NativeDicomModel",
        f"{{{NAMESPACE}}}NativeDicomModel",
    ):
        raise NotNativeXML(f"the root element is {_local(root.tag)[:40]!r}, not NativeDicomModel (PS3.19 A.1)")
    return _dataset(root, 0, max_depth)


def _dataset(node: ET.Element, depth: int, max_depth: int) -> dict[str, Any]:
    if depth > max_depth:
        raise NotNativeXML(f"Items nest deeper than {max_depth} sequences")
    out: dict[str, Any] = {}
    blocks: dict[tuple[int, str], int] = {}
    for attr in _children(node, "DicomAttribute"):
        tag_text, vr = attr.get("tag", ""), attr.get("vr", "")
        if len(tag_text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag_text):
            raise NotNativeXML(f"a DicomAttribute's tag {tag_text[:16]!r} is not 8 hexadecimal digits")
        if vr not in ALL_VRS:
            raise NotNativeXML(f"({tag_text[:4]},{tag_text[4:]}) has VR {vr[:8]!r}, not one of PS3.5 Table 6.2-1")
        tag = int(tag_text, 16)
        creator = attr.get("privateCreator")
        group, element = tag >> 16, tag & 0xFFFF
        if creator is not None and group % 2 == 1 and element <= 0xFF:
            block = blocks.get((group, creator))
            if block is None:
                block = _FIRST_BLOCK + sum(1 for g, _c in blocks if g == group)
                if block > 0xFF:
                    raise NotNativeXML(f"more than {0xFF - _FIRST_BLOCK + 1} private creators in group {group:04X}")
                blocks[(group, creator)] = block
                out[f"{group:04X}{block:04X}"] = {"vr": "LO", "Value": [creator]}
            tag = group << 16 | block << 8 | element
        out[f"{tag:08X}"] = _element(attr, vr, depth, max_depth)
    return out


def _element(attr: ET.Element, vr: str, depth: int, max_depth: int) -> dict[str, Any]:
    element: dict[str, Any] = {"vr": vr}
    bulk = next(_children(attr, "BulkData"), None)
    inline = next(_children(attr, "InlineBinary"), None)
    if bulk is not None:
        element["BulkDataURI"] = bulk.get("uri", "")
        return element
    if inline is not None:
        element["InlineBinary"] = "".join((inline.text or "").split())
        return element
    if vr == "SQ":
        items = [_dataset(item, depth + 1, max_depth) for item in _numbered(attr, "Item")]
        if items:
            element["Value"] = items
        return element
    if vr == "PN":
        names = [_person_name(name) for name in _numbered(attr, "PersonName")]
        if names:
            element["Value"] = names
        return element
    values = [_value(value.text or "", vr) for value in _numbered(attr, "Value")]
    if values:
        element["Value"] = values
    return element


def _value(raw: str, vr: str) -> Any:
    if vr in _INTEGER_VRS or vr in _FLOAT_VRS:
        text = raw.strip()
        if not text:
            return None
        try:
            return int(text) if vr in _INTEGER_VRS else float(text)
        except ValueError:
            raise NotNativeXML(f"a {vr} value {text[:20]!r} is not a number") from None
    if vr == "DS":
        return raw.strip() or None
    return raw if raw else None


def _person_name(node: ET.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for group in NAME_GROUPS:
        found = next(_children(node, group), None)
        if found is None:
            continue
        components = []
        for name in NAME_COMPONENTS:
            child = next(_children(found, name), None)
            components.append((child.text or "") if child is not None else "")
        while components and not components[-1]:
            components.pop()
        out[group] = "^".join(components)
    return out


__all__ = ["NotNativeXML", "read_native_xml"]
