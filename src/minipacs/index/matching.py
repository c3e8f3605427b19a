"""PS3.4 C.2.2.2 attribute matching, as SQL (indexed keys) and in Python (the rest).

A key's value says which kind of matching it asks for (:func:`classify`); each
kind is one row of ``SQL_MATCHERS`` and ``PYTHON_MATCHERS``. Values are always
bound parameters; wildcard values are escaped before ``*``/``?`` become the
pattern characters of the dialect (GLOB on SQLite, which is case-sensitive like
DICOM matching; LIKE with an escape character on PostgreSQL). Person names
match case-insensitively through the normalised (casefolded) columns.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, false, func, or_

from minipacs.dicom.values import (
    date_bound,
    datetime_bound,
    datetime_utc_bound,
    normalise_name,
    time_bound,
)
from minipacs.dicom.vr import (
    BINARY_VRS,
    DATE_TIME_VRS,
)
from minipacs.index.errors import InvalidMatchValue
from minipacs.index.repository import as_int

#: Longest single value we match on (a wildcard pattern included); longer is refused.
MAX_VALUE_LENGTH: Final = 1024
#: Most values in a list of UIDs (or any multi-valued key).
MAX_LIST_VALUES: Final = 1000

# VRs whose values cannot carry wildcards (PS3.4 C.2.2.2.4 excludes DA, TM, DT, UI and numbers).
NO_WILDCARD_VRS: Final = DATE_TIME_VRS | {"UI", "IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "AT"}

# PS3.5 Table 6.2-1: the text of an IS (an integer) and of a DS (a fixed or floating point number);
# the padding spaces are gone by the time a key is classified. What words the refusal uses for each.
NUMBER_SYNTAX: Final[Mapping[str, tuple[re.Pattern[str], str]]] = {
    "IS": (re.compile(r"[+-]?[0-9]+", re.ASCII), "a whole number"),
    "DS": (
        re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII),
        "a decimal number",
    ),
}


class Matching(enum.Enum):
    """PS3.4 C.2.2.2.1-7: the kinds of matching a key value can ask for."""

    UNIVERSAL = "universal"  # C.2.2.2.3: zero length (or only "*")
    SINGLE = "single value"  # C.2.2.2.1
    UID_LIST = "list of UIDs"  # C.2.2.2.2
    WILDCARD = "wildcard"  # C.2.2.2.4
    RANGE = "range"  # C.2.2.2.5
    SEQUENCE = "sequence"  # C.2.2.2.6
    MULTIPLE = "multiple values"  # C.2.2.2.7 / C.2.2.2.8-style: any of several values


@dataclass(frozen=True)
class Condition:
    """What one key asks for: the kind and its operands (already validated)."""

    kind: Matching
    values: tuple[str, ...] = ()  # SINGLE/WILDCARD: (v,); RANGE: (low, high), "" = open
    parts: tuple[Condition, ...] = ()  # UID_LIST / MULTIPLE: one condition per value


UNIVERSAL: Final = Condition(Matching.UNIVERSAL)


def classify(vr: str, value: str, keyword: str = "") -> Condition:
    """The matching a key value of ``vr`` asks for (PS3.4 C.2.2.2); raises InvalidMatchValue."""
    name = keyword or vr
    if value == "" or (set(value) == {"*"} and vr not in BINARY_VRS):
        return UNIVERSAL
    if vr in BINARY_VRS:
        raise InvalidMatchValue(f"{name} ({vr}) cannot be used for matching; send it empty as a return key")
    if "\\" in value:
        # An empty value in a list ("1.2.3\\", a trailing backslash) names nothing: it is dropped, not
        # taken for universal matching (C.2.2.2.3 is a zero-length VALUE), which answered every entity.
        items = [item for item in value.split("\\") if item]
        if len(items) <= 1:
            return classify(vr, items[0], keyword) if items else UNIVERSAL
        if len(items) > MAX_LIST_VALUES:
            raise InvalidMatchValue(f"{name} lists {len(items)} values; at most {MAX_LIST_VALUES} are accepted")
        parts = tuple(classify(vr, item, keyword) for item in items)
        if any(p.kind is Matching.UNIVERSAL for p in parts):
            return UNIVERSAL
        return Condition(Matching.UID_LIST if vr == "UI" else Matching.MULTIPLE, parts=parts)
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidMatchValue(
            f"{name} value of {len(value)} characters is longer than {MAX_VALUE_LENGTH}; no stored value can match it"
        )
    if vr in DATE_TIME_VRS:
        return _date_time_condition(vr, value, name)
    _check_syntax(vr, value, name)
    if ("*" in value or "?" in value) and vr not in NO_WILDCARD_VRS:
        return Condition(Matching.WILDCARD, (re.sub(r"\*+", "*", value),))
    return Condition(Matching.SINGLE, (value,))


def _check_syntax(vr: str, value: str, name: str) -> None:
    """Refuse a value its VR cannot hold, which no stored value can match: a number key that is no
    number (PS3.5 Table 6.2-1; "SeriesNumber=1A", "InstanceNumber=1*": numbers take single value
    matching only, PS3.4 C.2.2.2.1), a UID with wildcards (PS3.4 C.2.2.2.4 allows none in UI).

    Refused rather than answered with no match, as QIDO-RS refuses them (HTTP 400): a requester
    that asked for something impossible is told so, not left to believe nothing is stored. The
    sentence fits an Error Comment (64 characters) for the usual keywords and values."""
    syntax = NUMBER_SYNTAX.get(vr)
    if syntax is not None and syntax[0].fullmatch(value.strip(" ")) is None:
        raise InvalidMatchValue(f"{name} {value[:24]!r} is not a valid {vr} value ({syntax[1]})")
    if vr == "UI" and ("*" in value or "?" in value):
        raise InvalidMatchValue(f"{name} {value[:24]!r}: a UID cannot hold a wildcard")


def _date_time_condition(vr: str, value: str, name: str) -> Condition:
    """PS3.4 C.2.2.2.5 range matching: "A-B", "-B", "A-"; a single value is a one-point range."""
    if vr == "DT":
        low, sep, high = _split_dt_range(value)
    else:
        low, sep, high = value.partition("-")
    for part in (low, high):
        if part and _BOUNDS[vr](part, False) is None:
            raise InvalidMatchValue(
                f"{name} {value[:20]!r} is not a valid {vr} value or range; "
                f"ranges are written A-B, -B or A- (PS3.5 Table 6.2-1)"
            )
    if not sep:
        return Condition(Matching.SINGLE, (value,))
    if not low and not high:
        return UNIVERSAL
    if low and high and _BOUNDS[vr](low, False) > _BOUNDS[vr](high, True):
        if vr == "TM":  # PS3.4 C.2.2.2.5.2: "Range matching crossing midnight is not supported"
            raise InvalidMatchValue(f"{name} range {value[:24]!r} crosses midnight; send two ranges")
        raise InvalidMatchValue(f"{name} range {value[:40]!r} ends before it starts")
    return Condition(Matching.RANGE, (low, high))


def combined_date_time(date_value: str, time_value: str, name: str = "") -> Condition | None:
    """A DA range and a TM range matched as ONE DT range (PS3.4 C.2.2.2.5.4; for the Modality
    Worklist's Scheduled Procedure Step Start Date and Time always, PS3.4 Table K.6-1): the date
    range July 5 to July 7 with the time range 10:00 to 18:00 is July 5 10:00 until July 7 18:00,
    not 10:00 to 18:00 on each day; so 20240105-20240106 with 2300-0100 is the two hours around
    midnight. None when the two are not ranges of the same form ("A-B", "-B" or "A-"), which are
    then matched each on its own. Raises InvalidMatchValue for a value that is no date or time, or
    a combined range that ends before it starts. The condition is matched on the stored date and
    time joined into a DT (:func:`joined_date_time`)."""
    if "\\" in date_value or "\\" in time_value:
        return None
    date_low, date_sep, date_high = date_value.partition("-")
    time_low, time_sep, time_high = time_value.replace(":", "").partition("-")
    form = (bool(date_low), bool(date_high))
    if not (date_sep and time_sep) or form != (bool(time_low), bool(time_high)) or form == (False, False):
        return None
    for bound, part in (
        (date_bound, date_low),
        (date_bound, date_high),
        (time_bound, time_low),
        (time_bound, time_high),
    ):
        if part and bound(part, False) is None:
            raise InvalidMatchValue(f"{name} {date_value[:20]!r} {time_value[:20]!r} is not a date and time range")
    low = date_low.replace(".", "") + time_low
    high = date_high.replace(".", "") + time_high
    start = datetime_bound(low, False) if low else dt.datetime.min
    end = datetime_bound(high, True) if high else dt.datetime.max
    if start is None or end is None:
        raise InvalidMatchValue(f"{name} {date_value[:20]!r} {time_value[:20]!r} is not a date and time range")
    if start > end:
        # without the keyword: the sentence is the Error Comment, at most 64 characters
        raise InvalidMatchValue(f"range {date_value[:17]} {time_value[:13]} ends before it starts")
    return Condition(Matching.RANGE, (low, high))


def joined_date_time(date_text: str, time_text: str) -> str:
    """A stored date and time as the DT :func:`combined_date_time` conditions are matched on
    ("" when there is no date; the date alone, a whole day, when there is no time)."""
    date = date_text.split("\\")[0].replace(".", "")
    return date + time_text.split("\\")[0].replace(":", "") if date else ""


def _split_dt_range(value: str) -> tuple[str, str, str]:
    """A DT range: the '-' that separates, not the sign of a UTC offset ("...HH-0500")."""
    for index, char in enumerate(value):
        offset = (
            index >= 10
            and value[index + 1 : index + 5].isdigit()
            and len(value) in (index + 5,)
            or (index >= 10 and value[index + 1 : index + 5].isdigit() and value[index + 5 : index + 6] == "-")
        )
        if char == "-" and not offset:
            return value[:index], "-", value[index + 1 :]
    return value, "", ""


# ----------------------------------------------------------------- value bounds

# PS3.4 C.2.2.2.5: a DT is compared as the moment it names, its offset from UTC taken into account
# (C.2.2.2.5.3 d); DA and TM carry no offset (C.2.2.2.5.2: "No offset ... is permitted in the TM").
_BOUNDS: Final[Mapping[str, Callable[[str, bool], Any]]] = {
    "DA": date_bound,
    "TM": time_bound,
    "DT": datetime_utc_bound,
}


# ----------------------------------------------------------------- SQL


class ColumnKind(enum.Enum):
    """How an index column holds its attribute (index/schema.py)."""

    TEXT = "text"  # exact, case-sensitive text (CS, SH, LO, AE...)
    UID = "uid"
    NAME = "name"  # the casefolded twin of a PN
    DATE = "date"  # typed DA, NULL when unparseable
    TIME = "time"  # typed TM
    INT = "int"  # IS / US as integer


Column = ColumnElement[Any]
SqlMatcher = Callable[[Column, ColumnKind, Condition, str], "ColumnElement[bool] | None"]


def _operand(kind: ColumnKind, value: str) -> Any:
    if kind is ColumnKind.NAME:
        return normalise_name(value)
    if kind is ColumnKind.INT:
        return as_int(value)
    return value


def _sql_universal(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    return None


def _sql_single(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    value = cond.values[0]
    if kind in (ColumnKind.DATE, ColumnKind.TIME):
        return _sql_range(col, kind, Condition(Matching.RANGE, (value, value)), dialect)
    operand = _operand(kind, value)
    if operand is None:  # e.g. "abc" for an integer key: nothing can match
        return false()
    if kind is ColumnKind.NAME:
        return _sql_name(col, str(operand), dialect, wildcard=False)
    clause: ColumnElement[bool] = col == operand
    return clause


#: PS3.5 6.2.1: a person name has at most three component groups.
MAX_NAME_GROUPS: Final = 3


def name_group_patterns(key: str) -> list[tuple[str, int | None]]:
    """(pattern, number of ``=`` the stored name must have) pairs through which a normalised PN key
    matches a whole normalised stored name (``alphabetic=ideographic=phonetic``), component group by
    component group (PS3.4 C.2.2.2.1 and PS3.5 6.2.1, read as dcm4chee-arc does; :func:`name_matches`):

    - a key with ``=`` is matched group by group, an empty key group matching anything;
    - a key without ``=`` matches the first group; and, when it has a character beyond ASCII, any
      group (ideographic and phonetic groups are written in ideographs, kana or hangul: PS3.5
      Annexes H-J; an ASCII key stays on the name's index: equality or a prefix).

    Fixing the count of ``=`` keeps every ``*`` within its group: each ``=`` of the pattern needs one
    of the name's. None: no count needed (the key's pattern alone is exact)."""
    groups = key.split("=")
    if len(groups) > 1:
        joined = "=".join(group or "*" for group in groups)
        return [(joined + "=*" * extra, len(groups) - 1 + extra) for extra in range(MAX_NAME_GROUPS - len(groups) + 1)]
    first: list[tuple[str, int | None]] = [(key, 0), (f"{key}=*", 1), (f"{key}=*=*", 2)]
    if key.isascii():
        return first
    inner = key.strip("*")
    if key.startswith("*") and key.endswith("*") and inner and "*" not in inner:
        return [(key, None)]  # a run of characters without "=": wherever it is, it is within one group
    return [*first, (f"*={key}", 1), (f"*={key}=*", 2), (f"*=*={key}", 2)]


def _sql_name(col: Column, key: str, dialect: str, *, wildcard: bool) -> ColumnElement[bool]:
    equals = func.length(col) - func.length(func.replace(col, "=", ""))
    clauses: list[ColumnElement[bool]] = []
    for pattern, count in name_group_patterns(key):
        if not wildcard and pattern == key:
            clauses.append(col == key)  # the name is this one group: the index answers it
            continue
        if dialect == "sqlite":
            clause = col.op("GLOB", is_comparison=True)(_glob_keeping_stars(pattern, wildcard))
        else:
            clause = col.like(_like_keeping_stars(pattern, wildcard), escape="\\")
        clauses.append(
            clause if count is None or (count == 0 and "*" not in pattern) else and_(clause, equals == count)
        )
    if not clauses:  # more component groups than a name has (PS3.5 6.2.1: at most three)
        return false()
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


def _glob_keeping_stars(pattern: str, wildcard: bool) -> str:
    """GLOB for a pattern whose ``*`` are ours (group skips) and, when ``wildcard``, also the key's;
    a literal key's ``?`` stays literal."""
    escaped = pattern.replace("[", "[[]")
    return escaped if wildcard else escaped.replace("?", "[?]")


def _like_keeping_stars(pattern: str, wildcard: bool) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    escaped = escaped.replace("*", "%")
    return escaped.replace("?", "_") if wildcard else escaped


def glob_pattern(value: str) -> str:
    """DICOM wildcard → SQLite GLOB: '[' escaped as '[[]'; '*' and '?' mean the same."""
    return value.replace("[", "[[]")


def like_pattern(value: str) -> str:
    """DICOM wildcard → SQL LIKE with '\\' as escape: %, _ and \\ taken literally."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _sql_wildcard(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    value = str(_operand(kind, cond.values[0]))
    if kind is ColumnKind.NAME:
        return _sql_name(col, value, dialect, wildcard=True)
    if dialect == "sqlite":
        clause: ColumnElement[bool] = col.op("GLOB", is_comparison=True)(glob_pattern(value))
        return clause
    return col.like(like_pattern(value), escape="\\")


def _sql_range(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    low, high = cond.values
    bound = {ColumnKind.DATE: date_bound, ColumnKind.TIME: time_bound}.get(kind)
    if bound is None:  # a range on a text column: compare the text
        clauses = ([col >= low] if low else []) + ([col <= high] if high else [])
        return and_(*clauses)
    clauses = []
    if low:
        clauses.append(col >= bound(low, False))
    if high:
        clauses.append(col <= bound(high, True))
    return and_(*clauses)


def sql_date_time_range(date_col: Column, time_col: Column, cond: Condition) -> ColumnElement[bool] | None:
    """A combined date and time range (:func:`combined_date_time`) on a typed date column and its typed
    time column (PS3.4 C.2.2.2.5 with combined datetime matching, C.5.1.1): the stored date and time
    joined are within the range; a stored date without a time is the whole day, as
    :func:`joined_date_time` makes it for the matching in Python."""
    low, high = cond.values
    clauses: list[ColumnElement[bool]] = []
    if low:
        start = datetime_bound(low, False)
        if start is None:  # pragma: no cover - combined_date_time checked it
            raise InvalidMatchValue(f"{low!r} is not a date and time")
        clauses.append(
            or_(
                date_col > start.date(),
                and_(date_col == start.date(), or_(time_col.is_(None), time_col >= start.time())),
            )
        )
    if high:
        end = datetime_bound(high, True)
        if end is None:  # pragma: no cover - combined_date_time checked it
            raise InvalidMatchValue(f"{high!r} is not a date and time")
        clauses.append(
            or_(date_col < end.date(), and_(date_col == end.date(), or_(time_col.is_(None), time_col <= end.time())))
        )
    return and_(*clauses) if clauses else None


def _sql_any(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    singles = [
        _operand(kind, p.values[0])
        for p in cond.parts
        if p.kind is Matching.SINGLE and kind not in (ColumnKind.DATE, ColumnKind.TIME, ColumnKind.NAME)
    ]
    singles = [s for s in singles if s is not None]
    others = [
        p
        for p in cond.parts
        if p.kind is not Matching.SINGLE or kind in (ColumnKind.DATE, ColumnKind.TIME, ColumnKind.NAME)
    ]
    clauses: list[ColumnElement[bool]] = []
    if singles:
        clauses.append(col.in_(singles))
    for part in others:
        clause = SQL_MATCHERS[part.kind](col, kind, part, dialect)
        if clause is not None:
            clauses.append(clause)
    return or_(*clauses) if clauses else false()


def _sql_sequence(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    raise InvalidMatchValue("sequence matching is not done on index columns")  # pragma: no cover


# PS3.4 C.2.2.2: matching kind → SQL condition on an index column (None: no condition).
SQL_MATCHERS: Final[Mapping[Matching, SqlMatcher]] = {
    Matching.UNIVERSAL: _sql_universal,
    Matching.SINGLE: _sql_single,
    Matching.UID_LIST: _sql_any,
    Matching.WILDCARD: _sql_wildcard,
    Matching.RANGE: _sql_range,
    Matching.MULTIPLE: _sql_any,
    Matching.SEQUENCE: _sql_sequence,
}


def sql_condition(col: Column, kind: ColumnKind, cond: Condition, dialect: str) -> ColumnElement[bool] | None:
    """The WHERE clause for ``cond`` on ``col``, or None for universal matching."""
    return SQL_MATCHERS[cond.kind](col, kind, cond, dialect)


# ----------------------------------------------------------------- Python (stored files)

PythonMatcher = Callable[[Condition, str, str], bool]


def _py_universal(cond: Condition, vr: str, candidate: str) -> bool:
    return True


def _py_single(cond: Condition, vr: str, candidate: str) -> bool:
    if vr in DATE_TIME_VRS:
        return _py_range(Condition(Matching.RANGE, (cond.values[0], cond.values[0])), vr, candidate)
    values = candidate.split("\\")
    if vr == "PN":
        wanted = normalise_name(cond.values[0])
        return any(name_matches(wanted, normalise_name(v), wildcard=False) for v in values)
    return cond.values[0] in values


def name_matches(key: str, name: str, *, wildcard: bool) -> bool:
    """A normalised PN key against one normalised stored name, component group by component group
    (the rule :func:`name_group_patterns` states; here exactly: a ``*`` stays within its group)."""
    groups = name.split("=")

    def one(pattern: str, group: str) -> bool:
        return wildcard_match(pattern, group) if wildcard else pattern == group

    wanted = key.split("=")
    if len(wanted) == 1:
        return any(one(key, group) for group in (groups if not key.isascii() else groups[:1]))
    return all(not part or (i < len(groups) and one(part, groups[i])) for i, part in enumerate(wanted))


def wildcard_match(pattern: str, value: str) -> bool:
    """PS3.4 C.2.2.2.4 Wildcard Matching: ``*`` any run of characters, ``?`` exactly one.

    No backtracking: the pattern is cut at its ``*``; the first piece must start the value,
    the last must end it, and each piece between is taken at its leftmost place after the
    previous one (leftmost is never worse for what follows). The cost is at most
    len(value) x len(pattern) character comparisons — linear in the value's length for a
    pattern of bounded length (a query value is at most MAX_VALUE_LENGTH) — where a
    backtracking regex is exponential in the number of ``*`` (``*a*a*a…b``).
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return len(value) == len(pattern) and _piece_at(pattern, value, 0)
    first, last = pieces[0], pieces[-1]
    end = len(value) - len(last)
    if end < len(first) or not _piece_at(first, value, 0) or not _piece_at(last, value, end):
        return False
    position = len(first)
    for piece in pieces[1:-1]:
        if piece:
            found = _find_piece(piece, value, position, end)
            if found < 0:
                return False
            position = found + len(piece)
    return True


def _piece_at(piece: str, value: str, start: int) -> bool:
    """``piece`` (``?`` matching any one character) occurs in ``value`` at ``start``."""
    if "?" not in piece:
        return value.startswith(piece, start)
    if start + len(piece) > len(value):
        return False
    return all(p == "?" or p == value[start + i] for i, p in enumerate(piece))


def _find_piece(piece: str, value: str, start: int, end: int) -> int:
    """The leftmost place >= ``start`` where ``piece`` lies wholly before ``end``, or -1."""
    if "?" not in piece:
        return value.find(piece, start, end)
    # Anchor on the longest run without '?', found with str.find, then check the whole piece.
    anchor = max(piece.split("?"), key=len)
    offset = piece.find(anchor) if anchor else 0
    last_start = end - len(piece)
    candidate = start
    while candidate <= last_start:
        if anchor:
            hit = value.find(anchor, candidate + offset, last_start + offset + len(anchor))
            if hit < 0:
                return -1
            candidate = hit - offset
        if _piece_at(piece, value, candidate):
            return candidate
        candidate += 1
    return -1


def _py_wildcard(cond: Condition, vr: str, candidate: str) -> bool:
    if vr == "PN":
        pattern = normalise_name(cond.values[0])
        return any(name_matches(pattern, normalise_name(v), wildcard=True) for v in candidate.split("\\"))
    return any(wildcard_match(cond.values[0], v) for v in candidate.split("\\"))


def _py_range(cond: Condition, vr: str, candidate: str) -> bool:
    bound = _BOUNDS.get(vr)
    low, high = cond.values
    for value in candidate.split("\\"):
        if bound is None:
            if (not low or value >= low) and (not high or value <= high):
                return True
            continue
        start, end = bound(value, False), bound(value, True)
        if start is None or end is None:
            continue
        if (not low or end >= bound(low, False)) and (not high or start <= bound(high, True)):
            return True
    return False


def _py_any(cond: Condition, vr: str, candidate: str) -> bool:
    return any(PYTHON_MATCHERS[part.kind](part, vr, candidate) for part in cond.parts)


def _py_sequence(cond: Condition, vr: str, candidate: str) -> bool:
    raise InvalidMatchValue("sequence matching needs the items, not text")  # pragma: no cover


# PS3.4 C.2.2.2: matching kind → test of one stored value (text, multiple values joined by '\').
PYTHON_MATCHERS: Final[Mapping[Matching, PythonMatcher]] = {
    Matching.UNIVERSAL: _py_universal,
    Matching.SINGLE: _py_single,
    Matching.UID_LIST: _py_any,
    Matching.WILDCARD: _py_wildcard,
    Matching.RANGE: _py_range,
    Matching.MULTIPLE: _py_any,
    Matching.SEQUENCE: _py_sequence,
}


def python_matches(cond: Condition, vr: str, candidate: str | None) -> bool:
    """Whether a stored value (None: attribute absent) satisfies ``cond``.

    An absent or empty stored value matches only universal matching.
    """
    if cond.kind is Matching.UNIVERSAL:
        return True
    if not candidate:
        return False
    return PYTHON_MATCHERS[cond.kind](cond, vr, candidate)


__all__ = [
    "BINARY_VRS",
    "DATE_TIME_VRS",
    "MAX_LIST_VALUES",
    "MAX_VALUE_LENGTH",
    "PYTHON_MATCHERS",
    "SQL_MATCHERS",
    "UNIVERSAL",
    "ColumnKind",
    "Condition",
    "Matching",
    "classify",
    "combined_date_time",
    "date_bound",
    "datetime_bound",
    "glob_pattern",
    "joined_date_time",
    "like_pattern",
    "python_matches",
    "sql_condition",
    "sql_date_time_range",
    "time_bound",
    "wildcard_match",
]
