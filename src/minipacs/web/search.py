"""HTTP query parameters -> a C-FIND identifier for the ONE query engine (PS3.18 §8.3.4).

The adapter is small on purpose: parameters become identifier keys (by keyword
or tag), ``includefield`` adds universal keys, and the engine does the matching.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Final, cast

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName

from minipacs.core.archive import Archive
from minipacs.core.errors import InvalidQuery
from minipacs.core.labels import parse_labels
from minipacs.core.query import prepare_query, run_query
from minipacs.core.query_model import COMPUTED_KEYS, CONSTANT_KEYS, INDEXED_KEYS
from minipacs.dicom.levels import PATIENT_ROOT, STUDY_ROOT, Level
from minipacs.dicom.vr import control_character
from minipacs.web.errors import HttpError

#: Not DICOM: studies carrying every one of these labels (comma-separated), REST search and QIDO-RS studies.
LABELS_PARAM: Final = "labels"

# PS3.18 Table 10.6.3-3..5: attributes returned by default, per level
DEFAULT_KEYS: Final[Mapping[Level, tuple[str, ...]]] = {
    Level.PATIENT: ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "SeriesDate",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}
#: PS3.18 Table 10.6.3-3 and 10.6.3-5: Instance Availability (0008,0056) "shall be present if known"; the engine
#: knows it (every stored instance is ONLINE, core/query_model.py CONSTANT_KEYS). QIDO-RS adds it to the defaults.
QIDO_EXTRA_KEYS: Final[Mapping[Level, tuple[str, ...]]] = {
    Level.PATIENT: (),
    Level.STUDY: ("InstanceAvailability",),
    Level.SERIES: (),
    Level.IMAGE: ("InstanceAvailability",),
}
#: Parameters that are not attribute keys (PS3.18 Table 8.3.4-1), and ours: ``labels`` (core/labels.py).
CONTROL_PARAMS: Final = frozenset(
    {"limit", "offset", "includefield", "fuzzymatching", "level", "accept", "charset", LABELS_PARAM}
)
#: Parameters that may be given more than once: ``includefield`` (PS3.18 8.3.4.3: "one or more") and
#: ``labels`` (they add up). Any other, attribute key or not, is one value (PS3.18 8.3.4.1, Table 8.3.4-1).
REPEATABLE_PARAMS: Final = frozenset({"includefield", LABELS_PARAM})
#: Multi-valued keys whose JSON object gets ``"Value": []`` when empty, instead of no "Value" member (PS3.18
#: F.2.5 allows either reading: no Value is "zero length"). The OHIF viewer that ``minipacs ohif install`` pins
#: (3.x, ``getModalities``) reads ``ModalitiesInStudy.Value.length`` without a check, and one study without a
#: Modality then empties its whole study list; ``[]`` reads as "no value" to every other client too.
EMPTY_AS_LIST: Final = frozenset({"00080061"})
MAX_LIMIT: Final = 10000
_TAG: Final = re.compile(r"^[0-9A-Fa-f]{8}$")
_QR_LEVEL: Final = 0x00080052


def _key_levels() -> dict[str, Level]:
    """Keyword -> the level the query engine holds it at (indexed and computed keys); other keys are unknown."""
    levels = {keyword: key.level for keyword, key in INDEXED_KEYS.items()}
    levels.update({keyword: key.level for keyword, key in COMPUTED_KEYS.items()})
    return levels


#: The level of each key the engine knows (core/query_model.py): for ``includefield`` (PS3.18 10.6.3.3).
KEY_LEVELS: Final[Mapping[str, Level]] = _key_levels()
_DEPTH: Final = {level: depth for depth, level in enumerate(Level)}


def qido_defaults(level: Level, fixed: Mapping[str, str]) -> tuple[str, ...]:
    """The attributes a QIDO-RS resource returns for each match (PS3.18 10.6.3.3): its level's (Tables
    10.6.3-3..5); for All Series and All Instances the Study's too, for All Instances and Study's
    Instances the Series' too (the levels the URL does not already fix). Not the counts and lists the
    engine computes for a higher level (NumberOfStudyRelatedSeries, ModalitiesInStudy at the series
    level): it computes those at their own level only, and an empty one would read as a wrong value."""
    upper: list[str] = []
    if level is Level.IMAGE and "SeriesInstanceUID" not in fixed:
        upper += DEFAULT_KEYS[Level.SERIES]
    if level in (Level.SERIES, Level.IMAGE) and "StudyInstanceUID" not in fixed:
        upper += DEFAULT_KEYS[Level.STUDY]
    keys = [*DEFAULT_KEYS[level], *QIDO_EXTRA_KEYS[level], *(k for k in upper if k not in COMPUTED_KEYS)]
    return tuple(dict.fromkeys(keys))


def all_keys(level: Level) -> tuple[str, ...]:
    """``includefield=all`` (PS3.18 8.3.4.3): every attribute the engine holds at ``level`` (at the study
    level the patient's too: QIDO-RS searches the Study Root model, PS3.18 10.6.1, whose Study level
    holds the Patient's attributes, PS3.4 C.3.2 and C.6.2.1.2 Table C.6-5), the keys it computes there
    and the constant ones. So at the study level Number of Patient Related Studies/Series/Instances
    (Table C.6-5 named them in older editions, e.g. 2011; "All other Attributes at Study Level" now): not
    among the defaults of PS3.18 Table 10.6.3-3, but "all" is "all available Study Level Attributes"
    (10.6.3.3.1)."""
    levels = {level, Level.PATIENT} if level is Level.STUDY else {level}
    keys = [keyword for keyword, key in INDEXED_KEYS.items() if key.level in levels]
    keys += [keyword for keyword, computed in COMPUTED_KEYS.items() if computed.level in levels]
    return tuple(keys) + tuple(CONSTANT_KEYS)


def tag_of(name: str) -> int:
    """A keyword or 8-hex-digit tag -> tag; HttpError 400 otherwise (nested keys are not supported).

    Also 400 for a tag the data dictionary gives no single VR: an Item or delimiter (VR "NONE"; PS3.5 7.5,
    no attribute) or one whose VR depends on the instance ("OB or OW", "US or SS"; PS3.5 Annex A). An
    identifier key needs one VR, and PS3.18 F.2.3's "vr" must be one of PS3.5 Table 6.2-1's: such a key
    came back as ``{"vr": "OB or OW"}``, which no client can read."""
    tag: int | None = None
    if _TAG.match(name):
        tag = int(name, 16) if keyword_for_tag(int(name, 16)) else None
    else:
        found = tag_for_keyword(name)
        tag = None if found is None else int(found)
    if tag is not None:
        vr = dictionary_VR(tag)
        if vr != "NONE" and " or " not in vr:
            return tag
        raise HttpError(
            400,
            "unknown_attribute",
            f"{keyword_for_tag(tag)} ({tag:08X}) has no single VR in the DICOM data dictionary ({vr}): "
            "it is not an attribute this archive can search by or return; leave it out",
        )
    raise HttpError(
        400,
        "unknown_attribute",
        f"{name[:64]!r} is not a DICOM keyword or tag this archive can "
        "search by; use a keyword such as PatientName or a tag such as 00100010",
    )


#: Most attribute ids in one dotted path (PS3.18 8.3.4.1 attribute = attribute-id *("." attribute-id))
MAX_PATH: Final = 4


def key_path(name: str) -> list[int]:
    """``Keyword``, ``ggggeeee`` or a dotted path of them into sequences (PS3.18 8.3.4.1) -> tags; 400 otherwise."""
    parts = name.split(".")
    if len(parts) > MAX_PATH:
        raise HttpError(400, "unknown_attribute", f"{name[:64]!r} nests deeper than {MAX_PATH} attributes")
    return [tag_of(part) for part in parts]


#: Most digits a number parameter may have: any count, offset or frame number fits in 18 (< 2**63), and
#: ``int()`` refuses strings over 4300 digits with a ValueError, which answered 500 where 400 is meant.
MAX_DIGITS: Final = 18


def ascii_digits(raw: str) -> bool:
    """True for a whole number written in ASCII digits 0-9 only, at most :data:`MAX_DIGITS` of them.
    ``str.isdigit`` and ``int()`` also take other scripts' digits (``"١٠"`` is 10 to both), superscripts,
    "+", "_" and spaces: a parameter is ASCII digits (RFC 3986 §2.3 unreserved DIGIT) or it is not a number."""
    return 0 < len(raw) <= MAX_DIGITS and raw.isascii() and raw.isdigit()


def refuse_repeats(params: Iterable[tuple[str, str]]) -> None:
    """400 for a parameter other than :data:`REPEATABLE_PARAMS` given twice (by name; an attribute key
    named twice by keyword and by tag is found by :func:`identifier`). PS3.18 8.3.4.1: a match is one
    attribute and one value (a UID list: one comma-separated value); several values of one key are
    Multiple Value Matching (PS3.4 C.2.2.2.8), which the search does not offer. The last value used to win
    silently, an answer to a question the client did not ask; PS3.18 8.3: an invalid value is a 400."""
    seen: set[str] = set()
    for name, _ in params:
        if name in REPEATABLE_PARAMS:
            continue
        if name in seen:
            raise _repeated(name, "" if name in CONTROL_PARAMS else _vr_of(name))
        seen.add(name)


def merge_uid_lists(params: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``params`` with the values of a UID key given more than once (by keyword or tag, at the same place
    in a sequence path) joined into one comma-separated UID list (PS3.18 8.3.4.1 uid-list-match, PS3.4
    C.2.2.2.2 List of UID Matching), in the place of its first occurrence.

    A list of UIDs has one reading whichever way it is spelled, and dicomweb-client sends a list given
    as a search filter (``search_filters={"StudyInstanceUID": [a, b]}``) as the key repeated, which
    :func:`refuse_repeats` answered with a 400. An empty value among them (universal matching) is left
    alone, and so stays a repeat: a list and "any" do not add up to one question."""
    first: dict[tuple[int, ...], int] = {}
    merged: list[tuple[str, str]] = []
    for name, value in params:
        path = None if name in CONTROL_PARAMS or not value.strip() else _uid_path(name)
        if path is not None and path in first:
            earlier_name, earlier_value = merged[first[path]]
            merged[first[path]] = (earlier_name, f"{earlier_value},{value}")
            continue
        if path is not None:
            first[path] = len(merged)
        merged.append((name, value))
    return merged


def _uid_path(name: str) -> tuple[int, ...] | None:
    """The tags of a key whose attribute is a UID (VR UI), or None for any other name (an unknown one
    included: :func:`identifier` refuses it with its own message)."""
    try:
        path = key_path(name)
    except HttpError:
        return None
    return tuple(path) if dictionary_VR(path[-1]) == "UI" else None


def _vr_of(name: str) -> str:
    """The VR of the attribute a parameter names, or "" when it names none (the hint then says less)."""
    try:
        return str(dictionary_VR(key_path(name)[-1]))
    except (HttpError, KeyError):
        return ""


def _repeated(name: str, vr: str = "") -> HttpError:
    hint = (
        f"several UIDs go in one comma-separated value ({name}=1.2.3,1.2.4)"
        if vr == "UI"
        else "give it once (wildcards * and ? match several values)"
        if vr
        else "give it once"
    )
    return HttpError(
        400,
        "repeated_parameter",
        f"{name} is given more than once; it takes one value (PS3.18 8.3.4.1), so the search would not say "
        f"which one it answers: {hint}",
    )


def _int_param(params: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not ascii_digits(raw) or int(raw) > maximum:
        raise HttpError(400, f"invalid_{name}", f"{name} must be a whole number from 0 to {maximum}, not {raw[:20]!r}")
    return int(raw)


def page_size(params: Iterable[tuple[str, str]]) -> int:
    """The most matches one answer carries: ``limit`` (PS3.18 8.3.4.4), at most :data:`MAX_LIMIT` (the
    origin server's maxResults; a larger limit is no error: 8.3.4.4.1 answers min(limit, maxResults))."""
    return min(_int_param(dict(params), "limit", MAX_LIMIT, 10**9), MAX_LIMIT)


def included(level: Level, params: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The attributes ``includefield`` asks for (PS3.18 8.3.4.3): ``includefield = *("includefield" "="
    (1#attribute / "all"))``, so each parameter is a comma-separated list of attributes, or ``all`` alone,
    and "if a parameter with the value of "all" is present, then other includefield parameters shall not be
    present". ``all`` with anything else (``all,PatientID``, ``includefield=all&includefield=PatientID``,
    ``all`` twice) is a 400 rather than read one way or the other: a client that lists attributes next to
    ``all`` may believe they narrow it. ``all`` is matched without regard to case (RFC 5234 §2.3: quoted
    ABNF strings are case-insensitive), and empty list elements are skipped, as before."""
    fields = [
        field.strip() for name, value in params if name == "includefield" for field in value.split(",") if field.strip()
    ]
    if not any(field.lower() == "all" for field in fields):
        return tuple(fields)
    if len(fields) > 1:
        others = [field for field in fields if field.lower() != "all"]
        raise HttpError(
            400,
            "invalid_includefield",
            f"includefield=all asks for every attribute and comes alone (PS3.18 8.3.4.3: other includefield "
            f"parameters shall not be present), but the request also has "
            f"{', '.join(repr(f[:40]) for f in others[:5]) if others else 'all a second time'}: send "
            "includefield=all alone, or list the attributes wanted without it",
        )
    return all_keys(level)


def identifier(
    level: Level,
    params: Iterable[tuple[str, str]],
    fixed: Mapping[str, str],
    defaults: Sequence[str] | None = None,
) -> Dataset:
    """The identifier for a search at ``level``: default keys (``defaults``, else :data:`DEFAULT_KEYS`),
    ``includefield`` keys, matching keys.

    PS3.18 8.3.4.1: a UID List Matching value is a comma-separated list of UIDs; C-FIND's separator
    is the backslash, so commas in a UI value become backslashes (a UID has no comma of its own).
    ``includefield`` (:func:`included`): an attribute of a level below ``level`` is not returned (PS3.18
    10.6.3.3.1-2); ``all`` adds :func:`all_keys`."""
    params = list(params)  # read twice: includefield first, then the matching keys
    ds = Dataset()

    def put(path: Sequence[int], value: str, *, keep: bool = False) -> None:
        """Set the key ``path`` names (PS3.18 8.3.4.1 attribute: sequence.attribute... as PS3.4 C.2.2.2.6
        Sequence Matching: one item holding the nested keys); ``keep``: leave a key already there."""
        node = ds
        for tag in path[:-1]:
            if dictionary_VR(tag) != "SQ":
                raise HttpError(
                    400, "invalid_attribute", f"{keyword_for_tag(tag)} is not a sequence: nothing can be nested in it"
                )
            if tag not in node or not node[tag].value:
                node[tag] = DataElement(tag, "SQ", DicomSequence([Dataset()]))
            node = node[tag].value[0]
        tag = path[-1]
        if keep and tag in node:
            return
        vr = dictionary_VR(tag)
        if vr == "SQ":
            if value:
                raise HttpError(
                    400,
                    "invalid_key_value",
                    f"the sequence {keyword_for_tag(tag)} is matched by its items' attributes "
                    f"({keyword_for_tag(tag)}.Keyword=value, PS3.18 8.3.4.1), not by a value of its own",
                )
            if tag not in node:
                node[tag] = DataElement(tag, "SQ", DicomSequence())
            return
        if vr == "UI":
            value = value.replace(",", "\\")
        if control_character(value, vr) is not None:
            # PS3.5 6.1.2-6.1.3: no value holds NUL or a C0 control other than ESC (and, in LT, ST, UT,
            # the format effectors; dicom/vr.py, the rule C-FIND shares). PatientName=%00 read as empty
            # was universal matching: every patient
            raise HttpError(
                400,
                "invalid_key_value",
                f"the value for {keyword_for_tag(tag)} holds a control character ({value[:40]!r}); "
                "DICOM text holds none (PS3.5 6.1.3)",
            )
        if len(value) > 1024:
            raise HttpError(400, "invalid_key_value", f"the value for {keyword_for_tag(tag)} is too long")
        try:
            node[tag] = DataElement(tag, vr, value or None, validation_mode=pydicom.config.IGNORE)
        except (ValueError, OverflowError):  # an IS or DS query value that is no number ("SeriesNumber=1A"),
            # or one past any float: pydicom's IS("1e400") is int(float("inf")), an OverflowError
            raise HttpError(
                400, "invalid_key_value", f"{value[:40]!r} is not a valid {vr} value for {keyword_for_tag(tag)}"
            ) from None

    for keyword in DEFAULT_KEYS[level] if defaults is None else defaults:
        put([tag_of(keyword)], "")
    for wanted in included(level, params):
        path = key_path(wanted)
        below = KEY_LEVELS.get(keyword_for_tag(path[0]))
        if below is None or _DEPTH[below] <= _DEPTH[level]:
            put(path, "", keep=True)
    matched: dict[tuple[int, ...], str] = {}  # the keys given, by tags (PatientID and 00100020 are one): value
    for name, value in params:
        if name in CONTROL_PARAMS:
            continue
        path = key_path(name)
        if tuple(path) in matched:
            raise _repeated(".".join(keyword_for_tag(tag) or f"{tag:08X}" for tag in path), dictionary_VR(path[-1]))
        matched[tuple(path)] = value
        put(path, value)
    for keyword, value in fixed.items():
        given = matched.get((tag_of(keyword),), "")
        if given and value not in given.replace(",", "\\").split("\\"):
            # the URL names one study (series); a key asking for another would silently yield to it
            raise HttpError(
                400,
                "conflicting_key",
                f"{keyword}={given[:70]} asks for another {keyword} than the URL's ({value}); leave the key out, "
                "or search at the URL of the one wanted",
            )
        put([tag_of(keyword)], value)
    put([_QR_LEVEL], level.value)
    return ds


def to_json(ds: Dataset) -> dict[str, Any]:
    """A query match in the PS3.18 JSON model (Annex F); engine text values become proper PN values.

    PS3.18 F.2.2: "Attribute objects within a DICOM JSON Model object shall be ordered by their property
    name in ascending lexicographic order", in sequence items too. pydicom writes them in the order they
    were put in the Dataset, and a match gets its Retrieve URL (0008,1190) last, after Study Instance UID
    and the counts: a client that reads the object in order (or compares it as text) met it out of place."""
    for elem in list(ds):
        if elem.VR == "PN" and not elem.is_empty and not isinstance(elem.value, PersonName):
            ds[elem.tag] = DataElement(elem.tag, "PN", elem.value, validation_mode=pydicom.config.IGNORE)
    result = ordered(ds.to_json_dict())
    for element in result.values():
        if element.get("vr") == "PN" and element.get("Value"):
            # an empty name among several is null (PS3.18 F.2.5), as in the instance's metadata
            # (dicom/json_model.py); pydicom writes {"Alphabetic": ""}, a name that is there but blank
            element["Value"] = [None if _blank_name(value) else value for value in element["Value"]]
    for tag in EMPTY_AS_LIST:
        element = result.get(tag)
        if element is not None and "Value" not in element:
            element["Value"] = []
    return result


def _blank_name(value: Any) -> bool:
    """A PN value of the JSON model with no name in any of its component groups."""
    return isinstance(value, dict) and not any(value.values())


def ordered(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` with its attributes, and those of every sequence item, in ascending tag order (PS3.18
    F.2.2); the tags are eight upper-case hex digits, so text order is tag order."""
    result: dict[str, Any] = {}
    for tag in sorted(model):
        element = model[tag]
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [ordered(item) for item in element["Value"]]}
        result[tag] = element
    return result


async def search(
    archive: Archive,
    level: Level,
    params: list[tuple[str, str]],
    fixed: Mapping[str, str] | None = None,
    absent: Sequence[str] = (),
    defaults: Sequence[str] | None = None,
    one_more: bool = False,
) -> AsyncIterator[Dataset]:
    """Matches of a search, after ``offset``, at most ``limit`` (PS3.18 §8.3.4.4); with ``one_more``,
    one more than ``limit`` when there is one (so the caller knows results remain).

    ``absent``: computed keys matches must have no value for (see ``prepare_query``), e.g. the
    REST API's ``complete=false``: studies without a Study Status ID. ``labels=a,b``: studies
    carrying both labels (core/labels.py; several ``labels`` parameters add up). ``defaults``: the
    keys every match returns (:func:`identifier`)."""
    params = merge_uid_lists(params)
    refuse_repeats(params)
    query = dict(params)
    labels = parse_labels(",".join(v for k, v in params if k == LABELS_PARAM))
    if labels and level is not Level.STUDY:  # the engine could (rule filters do); searches keep it simple
        raise InvalidQuery(f"labels are put on studies: search at the study level to filter by them, not {level.value}")
    limit = page_size(params)
    offset = _int_param(query, "offset", 0, 10**9)
    ds = identifier(level, params, fixed or {}, defaults)
    model = PATIENT_ROOT if level is Level.PATIENT else STUDY_ROOT
    prepared = prepare_query(ds, model, level=level, relational=True, absent=absent, labels=labels)
    seen = 0
    # run_query is an async generator: close it if the consumer stops early
    matches = cast(AsyncGenerator[Dataset, None], run_query(archive, prepared, limit=offset + limit + one_more))
    async with aclosing(matches):
        async for match in matches:
            seen += 1
            if seen > offset:
                if _QR_LEVEL in match:
                    del match[_QR_LEVEL]
                yield match


__all__ = [
    "CONTROL_PARAMS",
    "DEFAULT_KEYS",
    "KEY_LEVELS",
    "QIDO_EXTRA_KEYS",
    "REPEATABLE_PARAMS",
    "all_keys",
    "qido_defaults",
    "LABELS_PARAM",
    "ascii_digits",
    "identifier",
    "included",
    "page_size",
    "refuse_repeats",
    "key_path",
    "merge_uid_lists",
    "ordered",
    "search",
    "tag_of",
    "to_json",
]
