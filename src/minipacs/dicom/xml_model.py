"""The PS3.19 Native DICOM Model (Annex A.1) of a PS3.18 JSON object, as XML text (PS3.18 F.3.1).

The archive keeps every instance's metadata in the PS3.18 JSON model (core/metadata.py) and QIDO-RS
builds its matches in it (web/search.py ``to_json``); ``application/dicom+xml`` is made from that,
by the mapping of PS3.18 F.3.1 Table F.3.1-1, so the two representations cannot tell different
stories. Written by hand rather than with ``xml.etree``: the escaping is the point (below), and
the element tree would cost a Python object per value.

* root ``NativeDicomModel`` in the namespace of the normative schema (PS3.19 A.1.6) with
  ``xml:space="preserve"`` (Table A.1.5-1); no indentation, since white space is preserved;
* one ``DicomAttribute`` per JSON attribute, with ``tag``, ``vr`` and, for a standard attribute,
  ``keyword`` (PS3.6); Group Length (gggg,0000) is left out (PS3.19 A.1.1);
* private data elements (odd group, element ``XXee`` with XX >= 10): ``tag="gggg00ee"`` and the
  ``privateCreator`` the dataset's (gggg,00XX) names (Table A.1.5-2: "the block used in the DICOM
  encoding shall not be sent"); the Private Creator elements themselves are conveyed that way and
  not written again. A private element whose creator is absent keeps its tag, without creator;
* ``Value number=n`` per value (a JSON ``null`` is an empty ``Value``, F.3.1), ``PersonName number=n``
  with ``Alphabetic``/``Ideographic``/``Phonetic`` and the five name components (empty ones left
  out), ``Item number=n`` per sequence item, ``InlineBinary``, ``BulkData uri=``;
* text goes out escaped (``&``, ``<``, ``>``, and in attributes ``"`` and white space), a carriage
  return as ``&#13;`` (an XML parser would turn a literal one into a line feed). XML 1.0 cannot carry
  the C0 controls but TAB, LF and CR, lone surrogates, U+FFFE and U+FFFF, not even as character
  references (XML 1.0 section 2.2): such a character becomes the six characters ``U+xxxx``, one of
  the replacements PS3.18 8.8.5 lists for a character the response cannot represent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pydicom.datadict import keyword_for_tag

#: PS3.19 A.1.6: the default namespace of the normative RELAX NG schema.
NAMESPACE: Final = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
#: PS3.18 Table 8.7.3-3: the media type of Metadata encoded as Native DICOM Model XML.
MEDIA_TYPE: Final = "application/dicom+xml"
#: PS3.19 A.1.6 NameComponents, in the order of the PN components (PS3.5 6.2.1.1).
NAME_COMPONENTS: Final = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
#: PS3.19 A.1.6 PersonName: the component groups, as PS3.18 F.2.2 names them in JSON.
NAME_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'

#: XML 1.0 section 2.2 Char: everything else cannot appear in a document at all.
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTRIBUTE: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}
)


def _replace(found: re.Match[str]) -> str:
    return f"U+{ord(found.group()):04X}"


def text(value: str) -> str:
    """``value`` as XML character data (see the module docstring)."""
    return _NOT_XML.sub(_replace, value).translate(_TEXT)


def attribute(value: str) -> str:
    """``value`` as the inside of a double-quoted XML attribute value."""
    return _NOT_XML.sub(_replace, value).translate(_ATTRIBUTE)


def _scalar(value: Any) -> str:
    """A JSON value of ``Value`` as the DICOM string it stands for: numbers as JSON wrote them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # not a DICOM value; written as JSON spells it rather than as 0/1
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _name_groups(value: Any) -> list[tuple[str, list[str]]]:
    """(group, its five components) of a PN value in the JSON model, groups with no component left out."""
    if isinstance(value, str):  # not the JSON model's object: read it as the alphabetic group
        value = {"Alphabetic": value}
    if not isinstance(value, Mapping):
        return []
    groups = []
    for group in NAME_GROUPS:
        written = value.get(group)
        parts = written.split("^") if isinstance(written, str) else []
        if len(parts) > len(NAME_COMPONENTS):  # more components than PN has: keep them in the suffix
            parts[len(NAME_COMPONENTS) - 1 :] = ["^".join(parts[len(NAME_COMPONENTS) - 1 :])]
        if any(parts):
            groups.append((group, parts))
    return groups


def _person_name(out: list[str], number: int, value: Any) -> None:
    groups = _name_groups(value)
    if not groups:
        out.append(f'<PersonName number="{number}"/>')
        return
    out.append(f'<PersonName number="{number}">')
    for group, parts in groups:
        out.append(f"<{group}>")
        for name, part in zip(NAME_COMPONENTS, parts, strict=False):
            if part:
                out.append(f"<{name}>{text(part)}</{name}>")
        out.append(f"</{group}>")
    out.append("</PersonName>")


def _private_creators(obj: Mapping[str, Any]) -> dict[int, str]:
    """(group << 16 | block) -> the Private Creator (gggg,00XX) of that block, from one dataset."""
    creators: dict[int, str] = {}
    for key, element in obj.items():
        tag = _tag(key)
        if tag is None or not _is_private_creator(tag) or not isinstance(element, Mapping):
            continue
        values = element.get("Value") or []
        if values and isinstance(values[0], str):
            creators[tag] = values[0].strip()
    return creators


def _tag(key: str) -> int | None:
    try:
        return int(key, 16) if len(key) == 8 else None
    except ValueError:
        return None


def _is_private_creator(tag: int) -> bool:
    return (tag >> 16) % 2 == 1 and 0x0010 <= (tag & 0xFFFF) <= 0x00FF


def _dataset(out: list[str], obj: Mapping[str, Any]) -> None:
    creators = _private_creators(obj)
    for key, element in obj.items():
        tag = _tag(key)
        if tag is None or not isinstance(element, Mapping) or tag & 0xFFFF == 0 or _is_private_creator(tag):
            continue
        group, elem = tag >> 16, tag & 0xFFFF
        head = ""
        if group % 2 == 1 and elem > 0x00FF:
            creator = creators.get(group << 16 | elem >> 8)
            if creator is not None:
                head = f'tag="{group:04X}00{elem & 0xFF:02X}" vr="{attribute(str(element.get("vr", "UN")))}"'
                head += f' privateCreator="{attribute(creator)}"'
        if not head:
            head = f'tag="{tag:08X}" vr="{attribute(str(element.get("vr", "UN")))}"'
            keyword = keyword_for_tag(tag) if group % 2 == 0 else ""
            if keyword:
                head += f' keyword="{keyword}"'
        _attribute(out, head, element)


def _attribute(out: list[str], head: str, element: Mapping[str, Any]) -> None:
    vr = element.get("vr")
    values = element.get("Value")
    if "BulkDataURI" in element:
        uri = attribute(str(element["BulkDataURI"]))
        out.append(f'<DicomAttribute {head}><BulkData uri="{uri}"/></DicomAttribute>')
    elif "InlineBinary" in element:
        out.append(f"<DicomAttribute {head}><InlineBinary>{text(str(element['InlineBinary']))}</InlineBinary>")
        out.append("</DicomAttribute>")
    elif not isinstance(values, list) or not values:
        out.append(f"<DicomAttribute {head}/>")
    else:
        out.append(f"<DicomAttribute {head}>")
        for number, value in enumerate(values, 1):
            if vr == "SQ":
                if isinstance(value, Mapping) and value:
                    out.append(f'<Item number="{number}">')
                    _dataset(out, value)
                    out.append("</Item>")
                else:
                    out.append(f'<Item number="{number}"/>')
            elif vr == "PN":
                _person_name(out, number, value)
            elif value is None:
                out.append(f'<Value number="{number}"/>')
            else:
                out.append(f'<Value number="{number}">{text(_scalar(value))}</Value>')
        out.append("</DicomAttribute>")


def native_xml(obj: Mapping[str, Any]) -> str:
    """The Native DICOM Model document of one PS3.18 JSON object (an instance's metadata, a match)."""
    out = [DECLARATION, f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve">']
    _dataset(out, obj)
    out.append("</NativeDicomModel>\n")
    return "".join(out)


def native_xml_documents(objects: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """:func:`native_xml` of each object, UTF-8 encoded (the encoding the declaration names)."""
    return [native_xml(obj).encode("utf-8") for obj in objects]


__all__ = [
    "DECLARATION",
    "MEDIA_TYPE",
    "NAMESPACE",
    "NAME_COMPONENTS",
    "NAME_GROUPS",
    "attribute",
    "native_xml",
    "native_xml_documents",
    "text",
]
