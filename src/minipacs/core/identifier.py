"""A query identifier (PS3.4 C.4.1.1.3), taken apart into keys the engine can match.

Works on pydicom Datasets as read off the wire (raw elements, never converted by
pydicom, so hostile values cannot trip pydicom's validation) and on Datasets
built in code (QIDO, tests). Text values are decoded with the identifier's
Specific Character Set (PS3.5 §6.1; ISO_IR 100 and ISO_IR 192 among others),
kept whole with their backslashes: the matching decides what they mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from minipacs.core.errors import InvalidKeyValue
from minipacs.dicom import values as _values
from minipacs.dicom.identifier import dataset_charset, element_text
from minipacs.dicom.values import codecs_for
from minipacs.dicom.vr import BINARY_VRS, control_character
from minipacs.index.errors import InvalidMatchValue
from minipacs.index.matching import (
    UNIVERSAL,
    Condition,
    Matching,
    classify,
    combined_date_time,
    joined_date_time,
    python_matches,
)

#: Most keys (at any depth) one identifier may carry.
MAX_KEYS: Final = 2000


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
    #: The tag of the TM key whose stored value joins this DA key's into one DT when the two are
    #: matched as one range (index/matching.py combined_date_time); 0 for any other key.
    partner: int = 0

    @property
    def name(self) -> str:
        return self.keyword or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    @property
    def is_universal(self) -> bool:
        return self.condition.kind is Matching.UNIVERSAL


def decode_text(raw: bytes, vr: str, codecs: Sequence[str]) -> str:
    """A key's text value (dicom/values.py decode_text), with every NUL dropped, a UID's too: a key
    value goes into SQL, where PostgreSQL refuses a NUL."""
    text = _values.decode_text(raw, vr, codecs)
    return text.replace("\x00", "").strip(" ") if vr == "UI" else text


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


def read_keys(
    ds: Dataset,
    inherited_charset: str = "",
    depth: int = 0,
    budget: list[int] | None = None,
    combined: Mapping[int, int] | None = None,
) -> tuple[Key, ...]:
    """The keys of ``ds`` in tag order, values decoded and classified; raises InvalidKeyValue.

    ``combined``: DA tag -> TM tag of the pairs whose ranges are matched as one DT range when both
    are ranges of one form (index/matching.py combined_date_time; at any depth): the DA key then
    carries the DT condition and the TM tag as its ``partner``, the TM key is answered, not matched.
    """
    if depth > 8:
        raise InvalidKeyValue("sequences nested deeper than 8 levels in the identifier")
    budget = budget if budget is not None else [MAX_KEYS]
    charset = dataset_charset(ds, inherited_charset)
    codecs = codecs_for(charset)
    overrides = _combined_conditions(ds, codecs, combined) if combined else {}
    keys: list[Key] = []
    for tag in sorted(int(t) for t in ds.keys()):
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidKeyValue(f"the identifier has more than {MAX_KEYS} keys")
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0:  # file meta and group lengths are not keys
            continue
        key = _read_key(ds, tag, charset, codecs, depth, budget, combined, overrides.get(tag))
        if combined and tag in overrides and tag in combined:
            key = replace(key, partner=combined[tag])
        keys.append(key)
    return tuple(keys)


def _combined_conditions(ds: Dataset, codecs: Sequence[str], combined: Mapping[int, int]) -> dict[int, Condition]:
    """Tag -> condition of the (DA, TM) pairs of ``ds`` matched as one range (see :func:`read_keys`)."""
    found: dict[int, Condition] = {}
    for date_tag, time_tag in combined.items():
        if date_tag in ds and time_tag in ds:
            date_text, time_text = _plain_text(ds, date_tag, codecs), _plain_text(ds, time_tag, codecs)
            try:
                cond = combined_date_time(date_text, time_text, _keyword(date_tag))
            except InvalidMatchValue as exc:
                raise InvalidKeyValue(str(exc)) from exc
            if cond is not None:
                found[date_tag], found[time_tag] = cond, UNIVERSAL
    return found


def _plain_text(ds: Dataset, tag: int, codecs: Sequence[str]) -> str:
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return decode_text(bytes(elem.value or b""), _vr_of(tag, elem.VR), codecs)
    return element_text(elem)


def _read_key(
    ds: Dataset,
    tag: int,
    charset: str,
    codecs: Sequence[str],
    depth: int,
    budget: list[int],
    combined: Mapping[int, int] | None = None,
    override: Condition | None = None,
) -> Key:
    elem = ds.get_item(tag)
    keyword = _keyword(tag)
    if isinstance(elem, RawDataElement):
        vr = _vr_of(tag, elem.VR)
        if vr != "SQ":
            raw = bytes(elem.value or b"")
            if vr not in BINARY_VRS:
                _refuse_controls(raw.rstrip(b"\x00") if vr == "UI" else raw, vr, keyword or hex(tag))
            text = "" if vr in BINARY_VRS else decode_text(raw, vr, codecs)
            if vr in BINARY_VRS and raw:
                raise InvalidKeyValue(
                    f"{keyword or hex(tag)} ({vr}) cannot be used for matching; send it empty as a return key"
                )
            return Key(tag, keyword, vr, text, condition=override or _classify(vr, text, keyword))
        try:
            elem = ds[tag]
        except Exception as exc:
            raise InvalidKeyValue(f"sequence {keyword or hex(tag)} cannot be read: {exc}") from exc
    vr = _vr_of(tag, elem.VR)
    if vr == "SQ":
        items = tuple(read_keys(item, charset, depth + 1, budget, combined) for item in (elem.value or DicomSequence()))
        matching = any(not k.is_universal for item in items for k in item)
        cond = Condition(Matching.SEQUENCE) if matching else UNIVERSAL
        return Key(tag, keyword, vr, "", items, cond)
    if vr in BINARY_VRS:
        if elem.value not in (None, b"", ""):
            raise InvalidKeyValue(
                f"{keyword or hex(tag)} ({vr}) cannot be used for matching; send it empty as a return key"
            )
        return Key(tag, keyword, vr)
    value = elem.value
    for one in value if isinstance(value, (MultiValue, list, tuple)) else [value]:
        if isinstance(one, str):
            _refuse_controls(one.rstrip("\x00") if vr == "UI" else one, vr, keyword or hex(tag))
    text = element_text(elem)
    return Key(tag, keyword, vr, text, condition=override or _classify(vr, text, keyword))


def _refuse_controls(value: str | bytes, vr: str, name: str) -> None:
    """InvalidKeyValue for a key value holding NUL or a C0 control but ESC (LT, ST, UT: but the format
    effectors too), PS3.5 6.1.2-6.1.3, by the rule QIDO-RS applies (dicom/vr.py control_character). Such
    a value was read with its NULs dropped: a key of only NUL was universal matching, answering everything.
    A UI's trailing NUL is padding (PS3.5 9.1), removed by the caller."""
    found = control_character(value, vr)
    if found is not None:
        # short enough for the Error Comment (64 characters) with most keywords; PS3.5 6.1.3 in the docstring
        raise InvalidKeyValue(f"{name} holds control character {found!r}; remove it")


def _classify(vr: str, text: str, keyword: str) -> Condition:
    """The index's classification of a key value, its refusal raised as the core's InvalidKeyValue."""
    try:
        return classify(vr, text, keyword)
    except InvalidMatchValue as exc:
        raise InvalidKeyValue(str(exc)) from exc


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
    return key_matches(key, element_text(elem), item)


def key_matches(key: Key, text: str | None, stored: Dataset) -> bool:
    """Whether the stored value ``text`` of ``key`` (None: absent) matches it; a DA key matched with
    its TM partner as one range (:func:`read_keys` ``combined``) reads the partner from ``stored``."""
    if key.partner:
        partner = stored.get(key.partner)
        joined = joined_date_time(text or "", element_text(partner) if partner is not None else "")
        return python_matches(key.condition, "DT", joined)
    return python_matches(key.condition, key.vr, text)


__all__ = [
    "Key",
    "codecs_for",
    "decode_text",
    "element_text",
    "key_matches",
    "read_keys",
    "sequence_matches",
    "value_of",
    "walk",
]
