"""De-identification of one dataset: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The actions come from the generated table (dicom/deid_table.py, PS3.15 Table E.1-1); this
module only says what each action does to an element of each VR:

- **X** remove; **Z** empty (Patient's Name: the pseudonym, which Z allows: "a dummy value
  consistent with the VR"); **D** a dummy value (Patient ID: the pseudonym); **U** a UID mapped
  with the keyed HMAC (:class:`Pseudonyms`) but for the standard's own (:data:`DICOM_ROOT`);
  **K** keep; **C** clean: dates shifted by the
  patient's keyed offset (Retain Longitudinal Temporal Information, Modified Dates), text with
  every identifying word of this dataset blanked out (Clean Descriptors, Device Identity...).
- The combined actions (X/Z, Z/D, X/D, X/Z/D, X/Z/U*) are resolved to the choice that keeps
  any IOD conformant whatever the attribute's type (PS3.15 E.1.1: "... depending on the Type"):
  X/Z -> Z, Z/D and X/D and X/Z/D -> D, X/Z/U* -> the sequence kept with its UIDs mapped.
- A sequence that is kept, dummied, cleaned or mapped keeps its items, and each item is
  de-identified by the same table (PS3.15 E.1.1: the actions apply at any nesting level).
- A sequence dummied (D) keeps its structure but not its words: after the table, every free text
  value (SH, LO, ST, LT, UC, UT, PN) the table does not name, in its items at any depth, becomes the
  dummy of its VR; codes stay. This is what D on Content Sequence (0040,A730) means for an SR
  (:func:`_dummy_text`): Text Value (0040,A160) is not in Table E.1-1, so the table alone kept a
  report's findings word for word. The Clean Structured Content Option (PS3.15 E.3.4) cleans instead.
- An option's action replaces the basic one; of several options, K wins over C.
- Private attributes (odd groups) are removed, unless Retain Safe Private is chosen and the
  element is in :data:`SAFE_PRIVATE` (our short list, after PS3.15 Table E.3.10-1).
- Attributes the table does not name are kept (they are not identifying per the profile).

The de-identified dataset then says so: Patient Identity Removed YES, De-identification Method
and its Code Sequence (PS3.16 CID 7050), Longitudinal Temporal Information Modified.
Burned-in text in the pixel data is blanked only with the Clean Pixel Data option, where configured
regions say it is (core/pixel_clean.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.core.errors import ArchiveError
from minipacs.core.pixel_clean import PixelRegions, clean_pixels
from minipacs.dicom.deid_table import EDITION, OPTIONS, PRIVATE, PROFILE, Row
from minipacs.dicom.uids import DICOM_UID_ROOT
from minipacs.dicom.vr import BYTE_ARRAY_VRS, CHARSET_VRS, PLACEHOLDER_TEXT, PLACEHOLDER_VALUES, TEXT_VRS

# PS3.16 CID 7050 De-identification Method: the option -> (code value, meaning), scheme DCM.
OPTION_CODES: Final[dict[str, tuple[str, str]]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean-pixel-data": ("113101", "Clean Pixel Data Option"),
    "clean-graphics": ("113103", "Clean Graphics Option"),
    "clean-structured-content": ("113104", "Clean Structured Content Option"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    "retain-long-full-dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-long-modified-dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "retain-safe-private": ("113111", "Retain Safe Private Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}
#: Every option: Table E.1-1's columns, and Clean Pixel Data (PS3.15 E.3.1), which acts on the pixels, not
#: on attributes, so the table has no column for it (core/pixel_clean.py).
ALL_OPTIONS: Final = (*OPTIONS, "clean-pixel-data")
#: Options that cannot be chosen together.
EXCLUSIVE: Final = (frozenset({"retain-long-full-dates", "retain-long-modified-dates"}),)

#: Retain Safe Private: (private creator, group, element byte) kept. Our own short list, of the kind
#: PS3.15 Table E.3.10-1 lists (acquisition parameters needed for quantitative work, no identity).
SAFE_PRIVATE: Final[frozenset[tuple[str, int, int]]] = frozenset(
    {
        ("GEMS_ACQU_01", 0x0019, 0x23),  # table speed
        ("GEMS_ACQU_01", 0x0019, 0x24),  # mid scan time
        ("GEMS_ACQU_01", 0x0019, 0x27),  # rotation speed
        ("GEMS_PARM_01", 0x0043, 0x27),  # scan pitch ratio
        ("GEMS_PARM_01", 0x0043, 0x39),  # slop_int_6..9 (diffusion b value)
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # diffusion directionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # diffusion gradient direction
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # B matrix
        ("Philips Imaging DD 001", 0x2001, 0x03),  # diffusion B-factor
        ("Philips Imaging DD 001", 0x2001, 0x04),  # diffusion direction
        ("Philips PET Private Group", 0x7053, 0x00),  # SUV factor
        ("Philips PET Private Group", 0x7053, 0x09),  # activity concentration scale factor
    }
)

# PS3.15 E.1.1: the combined actions, resolved to the IOD-safe choice.
RESOLVED: Final[dict[str, str]] = {"X/Z": "Z", "Z/D": "D", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
#: Where the resolved combined action would break the IOD whatever the profile allows, the choice
#: that keeps it (checked with dciodvfy): Referenced Study Sequence (X/Z) is Type 3 with 1-n items in
#: the General Study module (PS3.3 C.7.2.1), so Z's empty sequence is an error: its items stay, their
#: UIDs mapped, as X/Z/U* does for Referenced Image Sequence.
IOD_CHOICE: Final[dict[int, str]] = {0x00081110: "U*"}
#: PS3.3 C.7.1.3: Clinical Trial Protocol Ethics Committee Name (D) is 1C, present only with the
#: Approval Number (X): (attribute, the one it needs).
REMOVED_WITH: Final[tuple[tuple[int, int], ...]] = ((0x00120081, 0x00120082),)
#: Code sequences whose D is a dummy code, not the original items: their Code Value and Code Meaning
#: (which the table does not name) ARE the identity, e.g. the hospital's name as the Code Meaning of
#: Institution Code Sequence, an employee number of Person Identification Code Sequence. PS3.15 E.1.1
#: D: "a non-zero length value that may be a dummy value"; the item is a PS3.3 Table 8.8-1 Code
#: Sequence Macro with a private coding scheme (PS3.16 8.2: "99" prefix).
DUMMY_CODE_SEQUENCES: Final = frozenset({0x00080082, 0x00401101})
DUMMY_CODE: Final = ("ANONYMIZED", "99MINIPACS", "Removed by de-identification")
#: PS3.3 Table 8.8-1 Code Sequence Macro: Code Value, Coding Scheme Designator, Long Code Value, URN
#: Code Value. An item holding one of them is a code (a concept name, a coded value, units): a
#: dummied sequence keeps it as it is (:func:`_dummy_text`).
CODE_ITEM_TAGS: Final = frozenset({0x00080100, 0x00080102, 0x00080119, 0x00080120})
#: The DICOM root (PS3.5 9.1): UIDs under it are the standard's well-known ones (PS3.6 Annex A), e.g.
#: the UTC Synchronization Frame of Reference (1.2.840.10008.15.1.1), the Talairach Frame of Reference,
#: the standard color palettes' SOP Instance UIDs. They identify nobody and mean something only as they
#: are, so U keeps them (the standard is silent; docs/ANONYMIZATION.md says so).
DICOM_ROOT: Final = DICOM_UID_ROOT
#: VRs of bytes: C (Clean Graphics on Overlay Data (60xx,3000) and Curve Data (50xx,xxxx), Clean
#: Descriptors on Maker Note (0016,002B)) cannot look into them for text, so they are removed as the
#: basic profile does (docs/ANONYMIZATION.md): a kept, uncleaned bitmap would not be "cleaned".
BINARY_VRS: Final = BYTE_ARRAY_VRS | {"OB or OW"}  # pydicom's name of an ambiguous one
#: PS3.3 C.9.2 Overlay Plane: Overlay Data (60xx,3000) is Type 1, so once the profile removes it (X)
#: the rest of that overlay group is removed with it (an overlay without its bits is not an overlay).
OVERLAY_DATA: Final = 0x3000
DUMMY_TEXT: Final = PLACEHOLDER_TEXT
#: PS3.5 Table 6.2-1: a dummy value of each VR (D), never empty (dicom/vr.py).
DUMMY: Final = PLACEHOLDER_VALUES
PATIENT_ID: Final = 0x00100020
PATIENT_NAME: Final = 0x00100010
#: Days a patient's dates move back at most (Modified Dates); at least one.
MAX_SHIFT_DAYS: Final = 3650
_EXACT: Final[dict[int, Row]] = {row[0]: row for row in PROFILE if row[1] == 0xFFFFFFFF}
_MASKED: Final[tuple[Row, ...]] = tuple(row for row in PROFILE if row[1] != 0xFFFFFFFF)


class InvalidDeidOptions(ArchiveError, ValueError):
    """Options that are unknown or cannot be chosen together."""


def check_options(options: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(options)
    unknown = sorted(chosen - set(ALL_OPTIONS))
    if unknown:
        raise InvalidDeidOptions(f"unknown de-identification option(s) {unknown}; known: {', '.join(ALL_OPTIONS)}")
    for group in EXCLUSIVE:
        if group <= chosen:
            raise InvalidDeidOptions(f"choose one of {' and '.join(sorted(group))}, not both")
    return chosen


def row_of(tag: int) -> Row | None:
    """The Table E.1-1 row for a public tag, exact or by the (50xx,xxxx) / (60xx,...) masks."""
    row = _EXACT.get(tag)
    if row is not None:
        return row
    for candidate in _MASKED:
        if tag & candidate[1] == candidate[0]:
            return candidate
    return None


def action_for(tag: int, options: frozenset[str]) -> str:
    """The action for ``tag`` with ``options``: K for a tag the table does not name."""
    if tag >> 16 & 1:
        chosen = {PRIVATE[o] for o in options if o in PRIVATE}
        return "C" if "C" in chosen else PRIVATE["basic"]
    row = row_of(tag)
    if row is None:
        return "K"
    chosen = {row[4][o] for o in options if o in row[4]}
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return IOD_CHOICE.get(tag) or RESOLVED.get(row[3], row[3])


class Pseudonyms:
    """Keyed pseudonyms: HMAC-SHA256 with the archive's anonymization key, so the same original
    value gives the same pseudonym in every study and every run, and nobody without the key (or
    the stored mapping) can go back or even test a guess."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the anonymization key must be at least 16 bytes")
        self._key = key

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """PS3.5 B.2: a UUID-derived UID, 2.25.<128-bit integer> (at most 44 characters)."""
        return "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))

    def patient_token(self, patient_key: str) -> str:
        return base64.b32encode(self._mac("patient", patient_key)[:10]).decode("ascii")[:12]

    def patient_id(self, patient_key: str) -> str:
        return "ANON" + self.patient_token(patient_key)

    def patient_name(self, patient_key: str) -> str:
        return "ANON^" + self.patient_token(patient_key)

    def day_shift(self, patient_key: str) -> int:
        """Days (negative) this patient's dates move: the same for every study of the patient."""
        return -(1 + int.from_bytes(self._mac("days", patient_key)[:4], "big") % MAX_SHIFT_DAYS)


def patient_key(ds: Dataset) -> str:
    """Who the patient is, for pseudonyms: issuer + Patient ID, or name + birth date without an ID."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return f"id\x00{str(ds.get('IssuerOfPatientID', '') or '').strip()}\x00{pid}"
    return f"name\x00{str(ds.get('PatientName', '') or '').strip()}\x00{ds.get('PatientBirthDate', '') or ''}"


@dataclass
class Mapping:
    """What one de-identification replaced: (kind, original, pseudonym) rows for the index."""

    rows: set[tuple[str, str, str]] = field(default_factory=set)

    def add(self, kind: str, original: str, pseudonym: str) -> None:
        if original:
            self.rows.add((kind, original, pseudonym))


_WORD: Final = re.compile(r"[^\W_]+", re.UNICODE)


def _words(value: object) -> set[str]:
    text = str(value)
    return {w for w in _WORD.findall(text) if (len(w) >= 3 and not w.isdigit()) or len(w) >= 4}


@dataclass
class _Context:
    options: frozenset[str]
    pseudonyms: Pseudonyms
    mapping: Mapping
    patient: str
    shift: int
    secrets: set[str]
    pattern: re.Pattern[str] | None = None

    def scrub(self, text: str) -> str:
        """Clean (C) free text: every identifying word of the dataset becomes '***'."""
        if self.pattern is None:
            words = sorted(self.secrets, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(w) for w in words) or "(?!)", re.IGNORECASE)
        return self.pattern.sub("***", text)


def _shift_date(text: str, days: int) -> str:
    """DA or the date of a DT moved ``days``; a value that is not a date becomes the dummy."""
    head = text[:8]
    try:
        moved = dt.datetime.strptime(head, "%Y%m%d").date() + dt.timedelta(days=days)
    except ValueError:
        return str(DUMMY["DA"]) + text[8:] if len(text) > 8 else str(DUMMY["DA"])
    return moved.strftime("%Y%m%d") + text[8:]


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _set(elem: DataElement, values: list[Any]) -> None:
    elem.value = values[0] if len(values) == 1 else values


def _date_spellings(value: str) -> set[str]:
    """The ways a report or a description writes the date of a DA or DT value: 20240105, 2024-01-05,
    2024/01/05, 05.01.2024, 05/01/2024, 01/05/2024, 05-01-2024 (none when it is not a date)."""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return set()
    return {day.strftime(f) for f in ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y")}


def _identifying_words(ds: Dataset, options: frozenset[str], out: set[str]) -> None:
    """Words of every value the de-identification changes, at any depth (what C must blank): text and
    dates the profile does not keep, and the dates it shifts (Modified Dates, PS3.15 E.3.6: a real
    date left in a cleaned text would undo the shift). Dates also as they are written in text."""
    shifted = "retain-long-modified-dates" in options
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _identifying_words(item, options, out)
        elif elem.VR in TEXT_VRS | {"DA", "DT"} and elem.tag.group != 0x0002:
            action = action_for(int(elem.tag), options)
            is_date = elem.VR in ("DA", "DT")
            if action == "K" or (action == "C" and not (is_date and shifted)):
                continue
            for value in _values(elem):
                out |= _words(value)
                if is_date:
                    out |= _date_spellings(str(value))


def _clean(elem: DataElement, ctx: _Context) -> None:
    if elem.VR == "DA" or elem.VR == "DT":
        if "retain-long-modified-dates" in ctx.options:
            _set(elem, [_shift_date(str(v), ctx.shift) for v in _values(elem)] or [""])
        return
    if elem.VR == "TM" or elem.VR not in TEXT_VRS:
        return  # times stay with shifted dates; numbers carry no words
    if elem.VR in ("CS", "AE", "UR"):
        return  # coded strings and addresses are not free text (Network ID is not in a standard IOD)
    cleaned = [ctx.scrub(str(v)) for v in _values(elem)]
    if cleaned:
        _set(elem, cleaned)


def _dummy(elem: DataElement, ctx: _Context) -> None:
    tag = int(elem.tag)
    if tag == PATIENT_ID:
        elem.value = ctx.pseudonyms.patient_id(ctx.patient)
    elif tag == PATIENT_NAME:
        elem.value = ctx.pseudonyms.patient_name(ctx.patient)
    elif elem.VR == "UI":
        _uid(elem, ctx)
    else:
        elem.value = DUMMY.get(elem.VR, DUMMY_TEXT)


def _uid(elem: DataElement, ctx: _Context) -> None:
    mapped = []
    for value in _values(elem):
        if str(value).startswith(DICOM_ROOT):
            mapped.append(value)  # a well-known UID of PS3.6 Annex A names no one: kept
            continue
        new = ctx.pseudonyms.uid(str(value))
        ctx.mapping.add("uid", str(value), new)
        mapped.append(new)
    if mapped:
        _set(elem, mapped)


def _private_kept(ds: Dataset, tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    if element < 0x1000:
        return False  # creators are kept below, with the elements of their block
    creator = ds.get((group << 16) | (element >> 8))
    name = str(creator.value).strip() if creator is not None else ""
    return (name, group, element & 0xFF) in SAFE_PRIVATE


def _private(ds: Dataset, ctx: _Context) -> None:
    tags = [int(t) for t in ds.keys() if t.group & 1]
    kept = {t for t in tags if "retain-safe-private" in ctx.options and _private_kept(ds, t)}
    creators = {(t >> 16) << 16 | (t & 0xFFFF) >> 8 for t in kept}
    for tag in tags:
        if tag not in kept and tag not in creators:
            del ds[tag]


def _apply(ds: Dataset, ctx: _Context) -> None:
    _private(ds, ctx)
    for elem in list(ds):
        tag = int(elem.tag)
        if tag >> 16 & 1:
            continue  # the kept safe private elements
        if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
            del ds[tag]  # group lengths go stale; command and file meta elements do not belong here
            continue
        action = action_for(tag, ctx.options)
        if action == "X":
            del ds[tag]
        elif elem.VR == "SQ":
            if action == "Z":
                elem.value = Sequence()
            elif action == "D" and tag in DUMMY_CODE_SEQUENCES:
                elem.value = Sequence([_dummy_code()])
            else:  # K, D, C, U, U*: the items stay, each de-identified in turn
                for item in elem.value or []:
                    _apply(item, ctx)
                    if action == "C":
                        _clean_all(item, ctx)
                    elif action == "D":
                        _dummy_text(item, ctx)
        elif action == "Z":
            if tag == PATIENT_NAME:
                _dummy(elem, ctx)
            else:
                elem.value = None if elem.VR not in TEXT_VRS | {"DA", "DT", "TM", "DS", "IS", "AS", "UI"} else ""
        elif action == "D":
            _dummy(elem, ctx)
        elif action in ("U", "U*"):
            _uid(elem, ctx) if elem.VR == "UI" else _dummy(elem, ctx)
        elif action == "C":
            if elem.VR in BINARY_VRS:
                del ds[tag]  # a bitmap (overlay, curve data) cannot be cleaned of burned-in text: removed
            else:
                _clean(elem, ctx)
    for dependent, needed in REMOVED_WITH:
        if dependent in ds and needed not in ds:
            del ds[dependent]
    _remove_bare_overlays(ds)


def _dummy_code() -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = DUMMY_CODE
    return item


def _remove_bare_overlays(ds: Dataset) -> None:
    """Every (60xx) overlay group left without its Overlay Data goes (PS3.3 C.9.2, Type 1)."""
    groups = {t.group for t in ds.keys() if 0x6000 <= t.group <= 0x601E and not t.group & 1}
    for group in groups:
        if (group << 16 | OVERLAY_DATA) not in ds:
            for tag in [t for t in ds.keys() if t.group == group]:
                del ds[tag]


def _dummy_text(ds: Dataset, ctx: _Context) -> None:
    """D on a sequence (PS3.15 E.1.1: "replace with a non-zero length value that may be a dummy value
    and consistent with the VR"), in an item the table has already de-identified: every free text
    value the table does not name becomes the dummy of its VR, here and in the item's kept sequences.

    On Content Sequence (0040,A730, Table E.1-1 basic action D) the SR stays an SR (PS3.3 C.17.3):
    every item keeps Relationship Type, Value Type (CS, not free text), Concept Name Code Sequence
    and its value: CODE, NUM and CONTAINER values as they are (codes and numbers name nobody), TEXT
    (Text Value (0040,A160), which the table does not name) becomes the dummy, while the table itself
    gives PNAME, DATE, TIME and DATETIME their dummies (D) and maps UIDREF and the UIDs of IMAGE and
    COMPOSITE references (U) to the same pseudonyms as the instances they point at. Codes are kept
    (:data:`CODE_ITEM_TAGS`); sequences with an action of their own (C, D) were done by it.
    """
    for elem in ds:
        tag = int(elem.tag)
        if tag >> 16 & 1:
            continue  # the kept safe private elements
        if elem.VR == "SQ":
            if action_for(tag, ctx.options) not in ("C", "D"):
                for item in elem.value or []:
                    if not CODE_ITEM_TAGS & {int(t) for t in item.keys()}:
                        _dummy_text(item, ctx)
        elif elem.VR in CHARSET_VRS and row_of(tag) is None and _values(elem):
            elem.value = DUMMY[elem.VR]


def _clean_all(ds: Dataset, ctx: _Context) -> None:
    """Clean Structured Content / Graphics: the text left in an item is cleaned too."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _clean_all(item, ctx)
        elif elem.VR in CHARSET_VRS:
            _clean(elem, ctx)


def _describe(ds: Dataset, options: frozenset[str]) -> None:
    """PS3.3 C.7.1.1 Patient Identity Removed / De-identification Method (Code Sequence)."""
    ds.PatientIdentityRemoved = "YES"
    chosen = ["basic", *sorted(options)]
    ds.DeidentificationMethod = f"PS3.15 E.1 {EDITION} minipacs"
    codes = Sequence()
    for name in chosen:
        value, meaning = OPTION_CODES[name]
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    # PS3.3 C.7.1.1: what happened to the dates and times
    if "retain-long-full-dates" in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif "retain-long-modified-dates" in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


def deidentify(
    ds: Dataset,
    options: frozenset[str],
    pseudonyms: Pseudonyms,
    mapping: Mapping,
    pixel_regions: Seq[PixelRegions] = (),
) -> Dataset:
    """De-identify ``ds`` in place (and return it); ``mapping`` collects what was replaced. With
    clean-pixel-data the pixels are cleaned first, by ``pixel_regions`` matched on the original header
    (core/pixel_clean.py; PixelCleanError when they cannot be); compressed pixels are then decompressed
    and ``ds.file_meta``'s Transfer Syntax UID says so."""
    options = check_options(options)
    if "clean-pixel-data" in options:
        clean_pixels(ds, pixel_regions)
    key = patient_key(ds)
    secrets: set[str] = set()
    _identifying_words(ds, options, secrets)
    ctx = _Context(options, pseudonyms, mapping, key, pseudonyms.day_shift(key), secrets)
    original_id = str(ds.get("PatientID", "") or "")
    original_name = str(ds.get("PatientName", "") or "")
    _apply(ds, ctx)
    mapping.add("patient_id", original_id or key, pseudonyms.patient_id(key))
    mapping.add("patient_name", original_name, pseudonyms.patient_name(key))
    if "retain-long-modified-dates" in options:
        mapping.add("date_shift_days", original_id or key, str(ctx.shift))
    if "PatientName" not in ds:
        ds.PatientName = pseudonyms.patient_name(key)
    if "PatientID" not in ds:
        ds.PatientID = pseudonyms.patient_id(key)
    _describe(ds, options)
    return ds


__all__ = [
    "ALL_OPTIONS",
    "BINARY_VRS",
    "CODE_ITEM_TAGS",
    "DUMMY",
    "DUMMY_CODE_SEQUENCES",
    "EXCLUSIVE",
    "InvalidDeidOptions",
    "Mapping",
    "OPTION_CODES",
    "Pseudonyms",
    "RESOLVED",
    "SAFE_PRIVATE",
    "action_for",
    "check_options",
    "deidentify",
    "patient_key",
    "row_of",
]
