"""A query identifier (PS3.4 C.4.1.1.3), taken apart into keys the engine can match.

Works on pydicom Datasets as read off the wire (raw elements, never converted by
pydicom, so hostile values cannot trip pydicom's validation) and on Datasets
built in code (QIDO, tests). Text values are decoded with the identifier's
Specific Character Set (PS3.5 §6.1; ISO_IR 100 and ISO_IR 192 among others),
kept whole with their backslashes: the matching decides what they mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydicom.charset import decode_bytes, python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from minipacs.core.errors import InvalidKeyValue
from minipacs.index.errors import InvalidMatchValue
from minipacs.index.matching import BINARY_VRS, UNIVERSAL, Condition, Matching, classify, python_matches

SPECIFIC_CHARACTER_SET: Final = 0x00080005
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
#: Most keys (at any depth) one identifier may carry.
MAX_KEYS: Final = 2000
# PS3.5 §6.1.2.5.3: characters that end an ISO 2022 code element, per VR kind.
_PN_DELIMITERS: Final = {0x5C, 0x5E, 0x3D}
_TEXT_DELIMITERS: Final = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}
# PS3.5 §6.1.2.3: VRs whose values may use the extended character sets.
_EXTENDED_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})


@dataclass(frozen=True)
class Key:
    """One key of an identifier: its tag, keyword (or "" if private/unknown), VR and value.

    ``text`` holds a text value (all values, joined by backslashes); ``items`` the
    items of a sequence key, each a tuple of keys.
    """

    tag: int
    keyword: str
    vr: str
    text: str = ""
    items: tuple[tuple[Key, ...], ...] = ()
    condition: Condition = UNIVERSAL

    @property
    def name(self) -> str:
        return self.keyword or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    @property
    def is_universal(self) -> bool:
        return self.condition.kind is Matching.UNIVERSAL


def codecs_for(specific_character_set: str) -> list[str]:
    """PS3.3 C.12.1.1.2 defined terms → Python codecs; unknown terms fall back to the default."""
    terms = [term.strip() for term in specific_character_set.split("\\")] or [""]
    return [python_encoding.get(term, python_encoding[""]) for term in terms]


def decode_text(raw: bytes, vr: str, codecs: Sequence[str]) -> str:
    """A text value; PS3.5 §6.2 padding removed; NULs dropped (they cannot be in the index)."""
    if vr in _EXTENDED_VRS:
        if 0x1B in raw:  # ISO 2022 escape sequences (PS3.5 §6.1.2.5)
            text = decode_bytes(raw, list(codecs), _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS)
        else:
            text = raw.decode(codecs[0], errors="replace")
    else:
        text = raw.decode("ascii", errors="replace")
    text = text.replace("\x00", "")
    return text.rstrip(" ") if vr in ("UT", "ST", "LT", "UC") else text.strip(" ")


def element_text(elem: DataElement) -> str:
    """A converted element's value as DICOM text (multiple values joined by backslashes)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return ""
    return str(value).replace("\x00", "")


def _vr_of(tag: int, vr: str | None) -> str:
    if vr:
        return vr
    try:
        found = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return found.split(" or ")[0] if found else "UN"


def _keyword(tag: int) -> str:
    try:
        return keyword_for_tag(tag) or ""
    except KeyError:  # pragma: no cover - pydicom returns "" for unknown tags
        return ""


def _charset(ds: Dataset, inherited: str) -> str:
    if SPECIFIC_CHARACTER_SET not in ds:
        return inherited
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"").decode("ascii", errors="replace").replace("\x00", "").strip(" ")
    return element_text(elem)


def read_keys(ds: Dataset, inherited_charset: str = "", depth: int = 0, budget: list[int] | None = None) -> tuple[Key, ...]:
    """The keys of ``ds`` in tag order, values decoded and classified; raises InvalidKeyValue."""
    if depth > 8:
        raise InvalidKeyValue("sequences nested deeper than 8 levels in the identifier")
    budget = budget if budget is not None else [MAX_KEYS]
    charset = _charset(ds, inherited_charset)
    codecs = codecs_for(charset)
    keys: list[Key] = []
    for tag in sorted(int(t) for t in ds.keys()):
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidKeyValue(f"the identifier has more than {MAX_KEYS} keys")
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0:  # file meta and group lengths are not keys
            continue
        keys.append(_read_key(ds, tag, charset, codecs, depth, budget))
    return tuple(keys)


def _read_key(ds: Dataset, tag: int, charset: str, codecs: Sequence[str], depth: int, budget: list[int]) -> Key:
    elem = ds.get_item(tag)
    keyword = _keyword(tag)
    if isinstance(elem, RawDataElement):
        vr = _vr_of(tag, elem.VR)
        if vr != "SQ":
            raw = bytes(elem.value or b"")
            text = "" if vr in BINARY_VRS else decode_text(raw, vr, codecs)
            if vr in BINARY_VRS and raw:
                raise InvalidKeyValue(f"{keyword or hex(tag)} ({vr}) cannot be used for matching; "
                                      "send it empty as a return key")
            return Key(tag, keyword, vr, text, condition=_classify(vr, text, keyword))
        try:
            elem = ds[tag]
        except Exception as exc:  # noqa: BLE001 - a malformed sequence from a peer
            raise InvalidKeyValue(f"sequence {keyword or hex(tag)} cannot be read: {exc}") from exc
    vr = _vr_of(tag, elem.VR)
    if vr == "SQ":
        items = tuple(read_keys(item, charset, depth + 1, budget) for item in (elem.value or DicomSequence()))
        matching = any(not k.is_universal for item in items for k in item)
        cond = Condition(Matching.SEQUENCE) if matching else UNIVERSAL
        return Key(tag, keyword, vr, "", items, cond)
    if vr in BINARY_VRS:
        if elem.value not in (None, b"", ""):
            raise InvalidKeyValue(f"{keyword or hex(tag)} ({vr}) cannot be used for matching; "
                                  "send it empty as a return key")
        return Key(tag, keyword, vr)
    text = element_text(elem)
    return Key(tag, keyword, vr, text, condition=_classify(vr, text, keyword))


def _classify(vr: str, text: str, keyword: str) -> Condition:
    """The index's classification of a key value, its refusal raised as the core's InvalidKeyValue."""
    try:
        return classify(vr, text, keyword)
    except InvalidMatchValue as exc:
        raise InvalidKeyValue(str(exc)) from exc


def identifier_charset(ds: Dataset) -> str:
    return _charset(ds, "")


def walk(keys: Sequence[Key]) -> Iterator[Key]:
    for key in keys:
        yield key
        for item in key.items:
            yield from walk(item)


def value_of(keys: Sequence[Key], keyword: str) -> Key | None:
    return next((k for k in keys if k.keyword == keyword), None)


def sequence_matches(key: Key, stored: Any) -> bool:
    """PS3.4 C.2.2.2.6: some stored item matches every non-universal key of the (one) query item."""
    if key.is_universal:
        return True
    if not isinstance(stored, (DicomSequence, list)):
        return False
    for query_item in key.items:
        for item in stored:
            if all(_item_key_matches(k, item) for k in query_item):
                return True
    return False


def _item_key_matches(key: Key, item: Dataset) -> bool:
    if key.is_universal:
        return True
    if key.tag not in item:
        return False
    elem = item[key.tag]
    if key.vr == "SQ":
        return sequence_matches(key, elem.value)
    return python_matches(key.condition, key.vr, element_text(elem))


__all__ = [
    "Key",
    "QUERY_RETRIEVE_LEVEL",
    "SPECIFIC_CHARACTER_SET",
    "codecs_for",
    "decode_text",
    "element_text",
    "identifier_charset",
    "read_keys",
    "sequence_matches",
    "value_of",
    "walk",
]
