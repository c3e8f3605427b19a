"""The ONE query engine: an identifier in, matching entities out, streamed (PS3.4 C.2.2, C.6).

Served to C-FIND (every information model) and, later, QIDO-RS and the web.
Indexed keys are matched in SQL (index/matching.py); keys the index does not
hold are matched and answered from the stored file of a representative
instance; computed keys (C.3.4, C.6.1.1) are aggregates per page. Results are
paged through the index by primary key (keyset pagination): the first match
is out long before the last page is read. Raises IdentifierMismatch or
InvalidKeyValue; never speaks DIMSE.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, Final, cast

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from minipacs.blobs.base import BlobStore
from minipacs.core.errors import IdentifierMismatch, InvalidKeyValue, InvalidQuery, QueryTooBroad
from minipacs.core.identifier import Key, key_matches, read_keys, sequence_matches
from minipacs.core.query_model import (
    _ORDER,
    COMBINED_DATE_TIME,
    COMPUTED_KEYS,
    CONSTANT_KEYS,
    INDEXED_KEYS,
    LEVELS,
    NEVER_MATCHED_KEYS,
    OMITTED_WHEN_EMPTY,
    SERVICE_KEYS,
    ComputedKey,
    IndexedKey,
)
from minipacs.core.stored import read_blob_header
from minipacs.dicom.identifier import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, element_text
from minipacs.dicom.levels import InformationModel, Level
from minipacs.index import query_sql
from minipacs.index.database import IndexConnection
from minipacs.index.entities import Entity
from minipacs.index.matching import UNIVERSAL, ColumnKind, Matching, python_matches

log = logging.getLogger("minipacs.query")

#: Rows read per index round trip: small first (latency), then larger (throughput).
FIRST_PAGE: Final = 64
PAGE: Final = 1000
#: Matches per batch of :func:`run_query_batches` (about 10 KB of C-FIND responses).
BATCH: Final = 32


# ------------------------------------------------------------------ the prepared query


@dataclass(frozen=True)
class PreparedQuery:
    """A validated identifier, ready to run."""

    model: InformationModel
    level: Level
    keys: tuple[Key, ...]
    relational: bool
    #: Keys with a value we cannot match on (reported as "optional keys not supported").
    unsupported: tuple[str, ...] = ()
    sql_keys: tuple[tuple[Key, IndexedKey], ...] = ()
    computed_keys: tuple[tuple[Key, ComputedKey], ...] = ()
    file_keys: tuple[Key, ...] = ()  # answered (and matched) from the stored file
    ignored: frozenset[int] = field(default_factory=frozenset)  # tags answered empty
    #: Keywords of computed keys a match must have NO value for (no DICOM matching says "empty";
    #: the REST API's ``complete=false`` does): a NOT EXISTS on the key's match table.
    absent: tuple[str, ...] = ()
    #: Labels (core/labels.py) the matching study (or the study of a matching series or
    #: instance) must carry, every one; STUDY level or below.
    labels: tuple[str, ...] = ()
    #: A key of :data:`CONSTANT_KEYS` asks for a value no entity has (``InstanceAvailability=OFFLINE``:
    #: every stored instance is ONLINE): the query matches nothing and reads nothing.
    matches_nothing: bool = False


def _effective_level(level: Level, model: InformationModel) -> Level:
    """In a model without a PATIENT level, patient attributes belong to the STUDY level (C.6.2.1)."""
    return Level.STUDY if level is Level.PATIENT and Level.PATIENT not in model.levels else level


def prepare_query(
    identifier: Dataset,
    model: InformationModel,
    *,
    level: Level | None = None,
    relational: bool = False,
    absent: Sequence[str] = (),
    labels: Sequence[str] = (),
    combined_date_time: bool = False,
) -> PreparedQuery:
    """Validate ``identifier`` against ``model`` (PS3.4 C.4.1.2); raises IdentifierMismatch / InvalidKeyValue.

    ``combined_date_time``: combined datetime matching was negotiated (PS3.4 C.5.1.1): a date range and
    the range of its time key (:data:`COMBINED_DATE_TIME`, same form: "A-B", "-B" or "A-") are one range
    of moments, 20240105-20240107 with 1000-1800 from January 5 10:00 to January 7 18:00 (otherwise
    10:00 to 18:00 on each day: C.2.2.2.5 matches each key on its own).

    ``absent``: keywords of matchable computed keys of the query level that matches must have no value for.
    ``labels``: labels (core/labels.py, not DICOM) a matching study must carry, every one; at the
    SERIES or IMAGE level, the study the series or instance belongs to (rule filters: core/rules.py,
    core/compression.py). Not at the PATIENT level: labels are put on studies.
    """
    keys = read_keys(identifier, combined=COMBINED_DATE_TIME if combined_date_time else None)
    if level is None:
        level = _level_of(keys, model)
    elif level not in model.levels:
        raise IdentifierMismatch(f"level {level.value} is not part of the {model.name} information model")
    if labels and _effective_level(level, model) is Level.PATIENT:
        raise InvalidQuery(
            f"labels are put on studies: filter by them at the study, series or image level, not {level.value}"
        )
    without: list[str] = []
    for keyword in absent:
        comp = COMPUTED_KEYS.get(keyword)
        if comp is None or not comp.matchable or _effective_level(comp.level, model) is not level:
            raise InvalidQuery(
                f"{keyword} cannot be required empty at the {level.value} level; only computed "
                "keys of that level that can be matched can"
            )
        without.append(keyword)
    unsupported: list[str] = []
    sql_keys: list[tuple[Key, IndexedKey]] = []
    computed: list[tuple[Key, ComputedKey]] = []
    file_keys: list[Key] = []
    ignored: set[int] = set()
    matches_nothing = False
    for key in keys:
        if key.keyword in CONSTANT_KEYS:
            # PS3.4 C.2.2.2: a match satisfies every key, a constant one too (C.4.1.1.3.2 Instance
            # Availability): answering ONLINE to InstanceAvailability=OFFLINE returned what was not asked.
            if not python_matches(key.condition, key.vr, CONSTANT_KEYS[key.keyword]):
                matches_nothing = True
            continue
        if key.keyword in SERVICE_KEYS:
            continue
        indexed = INDEXED_KEYS.get(key.keyword)
        comp = COMPUTED_KEYS.get(key.keyword)
        key_level = indexed.level if indexed else comp.level if comp else level
        key_level = _effective_level(key_level, model)
        if _ORDER[key_level] > _ORDER[level]:
            # PS3.4 C.4.1.2.2: no keys below the query level. Answered empty, never matched.
            ignored.add(key.tag)
            if not key.is_universal:
                unsupported.append(key.name)
            continue
        if indexed is not None and key.partner and _partner_column(key, indexed) is None:
            # the time key is not in the index (SeriesTime): answered from the index, matched with its
            # time from the stored file
            sql_keys.append((replace(key, condition=UNIVERSAL, partner=0), indexed))
            file_keys.append(key)
        elif indexed is not None:
            sql_keys.append((key, indexed))
        elif comp is not None:
            if _effective_level(comp.level, model) is not level and level not in comp.answered_below:
                # A count or list of an upper level (ModalitiesInStudy at the SERIES level): answered, the
                # value of the entity above each match (C.4.1.2.1: keys of the levels above); a value in
                # it is not matched and says so (0xFF01), never silently dropped.
                if not key.is_universal:
                    unsupported.append(key.name)
                computed.append((replace(key, condition=UNIVERSAL), comp))
                continue
            if not key.is_universal and not comp.matchable:
                unsupported.append(key.name)
            computed.append((key, comp))
        elif key.keyword in NEVER_MATCHED_KEYS:
            file_keys.append(replace(key, condition=UNIVERSAL))  # answered, not matched
        else:
            file_keys.append(key)
    if not relational:
        _check_hierarchical(keys, model, level)
    return PreparedQuery(
        model,
        level,
        keys,
        relational,
        tuple(unsupported),
        tuple(sql_keys),
        tuple(computed),
        tuple(file_keys),
        frozenset(ignored),
        tuple(without),
        tuple(labels),
        matches_nothing,
    )


def _partner_column(key: Key, indexed: IndexedKey) -> str | None:
    """The index column of the time key joined to date key ``key`` (combined datetime matching) when it is
    on the same entity as ``indexed``, typed; None when the index does not hold it there."""
    from pydicom.datadict import keyword_for_tag

    partner = INDEXED_KEYS.get(keyword_for_tag(key.partner))
    if partner is None or partner.level is not indexed.level or partner.kind is not ColumnKind.TIME:
        return None
    return partner.match_column


def _level_of(keys: Sequence[Key], model: InformationModel) -> Level:
    key = next((k for k in keys if k.tag == QUERY_RETRIEVE_LEVEL), None)
    if key is None or not key.text:
        raise IdentifierMismatch(
            "the identifier has no QueryRetrieveLevel (0008,0052); "
            f"the {model.name} model needs one of {', '.join(lv.value for lv in model.levels)}"
        )
    try:
        level = Level(key.text.strip().upper())
    except ValueError:
        raise IdentifierMismatch(
            f"QueryRetrieveLevel {key.text[:20]!r} is not one of {', '.join(lv.value for lv in model.levels)}"
        ) from None
    if level not in model.levels:
        raise IdentifierMismatch(f"QueryRetrieveLevel {level.value} is not part of the {model.name} model")
    return level


def _check_hierarchical(keys: Sequence[Key], model: InformationModel, level: Level) -> None:
    """PS3.4 C.4.1.2.1: "a single value in the Unique Key Attribute for each level above the Query/Retrieve
    level"; List of UID Matching only at the query level itself. The hierarchical search (C.4.1.3.1.1 b)
    goes down through ONE entity per upper level. A list above the level is a relational query
    (C.4.1.3.2.1: any key at any level, with any C.2.2.2 matching): served when relational queries are
    negotiated. C-MOVE and C-GET take a single value there too (C.4.2.2.1, core/retrieve.py)."""
    for upper in model.levels[: model.levels.index(level)]:
        unique = LEVELS[upper].unique_key
        key = next((k for k in keys if k.keyword == unique), None)
        if key is None or key.condition.kind is not Matching.SINGLE:
            # The first clause (up to "; ") is the Error Comment (services/qr_find.py refusal_comment):
            # it names the key, within the LO's 64 characters.
            found = "is missing" if key is None else f"asks for {key.condition.kind.value} matching"
            why = (
                f"a {level.value} query needs a single value in {unique}; it {found} (a hierarchical query "
                f"in the {model.name} model gives {unique}, the unique key of the {upper.value} level, for "
                "each level above its own: PS3.4 C.4.1.2.1)"
            )
            if key is not None and key.condition.kind is Matching.UID_LIST:
                why += (
                    "; several UIDs above the query level make a relational query: negotiate relational "
                    f"queries (SOP Class Extended Negotiation) or ask one {upper.value.lower()} at a time"
                )
            raise IdentifierMismatch(why)


# ------------------------------------------------------------------ running it


async def query(
    archive: Any,
    level: Level | None,
    identifier: Dataset,
    *,
    model: InformationModel,
    limit: int | None = None,
    relational: bool = False,
    labels: Sequence[str] = (),
) -> AsyncIterator[Dataset]:
    """Validate and run in one go (see :func:`prepare_query` and :func:`run_query`)."""
    prepared = prepare_query(identifier, model, level=level, relational=relational, labels=labels)
    async for match in run_query(archive, prepared, limit=limit):
        yield match


@dataclass(frozen=True)
class ResponseField:
    """One element of every response identifier of a query: its tag and VR; ``omit_empty``: left
    out of a response that has no value for it (query_model.py OMITTED_WHEN_EMPTY)."""

    tag: int
    vr: str
    omit_empty: bool = False


#: One value of a :data:`Row`: text in its DICOM string form (as the index holds it, values
#: joined by '\\'), None for an empty value, or the stored file's element (keys answered from it).
RowValue = str | DataElement | RawDataElement | None
#: One match: values in the order of :func:`response_fields`.
Row = tuple[RowValue, ...]


def response_fields(prepared: PreparedQuery) -> tuple[ResponseField, ...]:
    """The elements of every response identifier, in ascending tag order (PS3.5 §7.1)."""
    return tuple(ResponseField(int(slot.tag), slot.vr, slot.omit_empty) for slot in _plan(prepared))


async def run_query(archive: Any, prepared: PreparedQuery, *, limit: int | None = None) -> AsyncIterator[Dataset]:
    """Yield one response identifier per match, in index order; at most ``limit``.

    ``archive`` is anything with ``async read(fn)`` and ``blobs`` (a BlobStore).
    The Dataset view of :func:`run_query_rows` (QIDO-RS, the web); C-FIND encodes the rows.
    """
    fields = response_fields(prepared)
    async with aclosing(run_query_rows(archive, prepared, limit=limit)) as rows:
        async for row in rows:
            yield row_dataset(fields, row)


async def run_query_rows(
    archive: Any, prepared: PreparedQuery, *, limit: int | None = None
) -> AsyncGenerator[Row, None]:
    """Yield one :data:`Row` per match, in index order; at most ``limit``."""
    async with aclosing(run_query_batches(archive, prepared, limit=limit)) as batches:
        async for rows in batches:
            for row in rows:
                yield row


async def run_query_batches(
    archive: Any, prepared: PreparedQuery, *, limit: int | None = None, batch: int = BATCH
) -> AsyncGenerator[list[Row], None]:
    """Yield the matches in index order, at most ``batch`` :data:`Row` at a time and at
    most ``limit`` in all: C-FIND sends a batch in one write.

    Once a page's first batch is out, the next page is read while the rest is sent.
    """
    if prepared.matches_nothing:
        return
    page = FIRST_PAGE
    sent = 0
    slots = _plan(prepared)
    spec = page_query(prepared)
    budget = FileReads(getattr(getattr(archive, "settings", None), "query_max_file_reads", 0))

    def read(after: int, want: int) -> Awaitable[tuple[list[Row], int, bool]]:
        return cast(
            Awaitable[tuple[list[Row], int, bool]],
            archive.read(lambda conn: _read_page(conn, prepared, spec, slots, after, want, archive.blobs, budget)),
        )

    pending: asyncio.Future[tuple[list[Row], int, bool]] | None = None
    try:
        want = page if limit is None else min(page, limit)
        rows, last, exhausted = await read(0, want)
        while True:
            if limit is not None:
                rows = rows[: limit - sent]
            after_page = sent + len(rows)
            for start in range(0, len(rows), batch):
                yield rows[start : start + batch]
                if start == 0 and not exhausted:  # the first batch is out: read the next page meanwhile
                    page = PAGE
                    next_want = page if limit is None else min(page, limit - after_page)
                    if next_want > 0:
                        pending = asyncio.ensure_future(read(last, next_want))
            sent = after_page
            if exhausted or (limit is not None and sent >= limit):
                return
            if pending is None:  # a page whose rows were all filtered out: nothing was read ahead
                page = PAGE
                want = page if limit is None else min(page, limit - sent)
                rows, last, exhausted = await read(last, want)
            else:
                rows, last, exhausted = await pending
                pending = None
    finally:
        if pending is not None:
            pending.cancel()


def page_query(prepared: PreparedQuery) -> query_sql.PageQuery:
    """What the index matches for ``prepared`` (index/query_sql.py): entity, indexed keys, computed keys."""
    keys = tuple(
        query_sql.KeyMatch(
            f"k{key.tag:08x}",
            LEVELS[ik.level].entity,
            ik.value_column,
            ik.match_column,
            ik.kind,
            key.condition,
            (_partner_column(key, ik) or "") if key.partner else "",
        )
        for key, ik in prepared.sql_keys
    )
    related = tuple(
        (key.keyword, key.condition) for key, comp in prepared.computed_keys if not key.is_universal and comp.matchable
    )
    answered = tuple(key.keyword for key, _comp in prepared.computed_keys)
    return query_sql.PageQuery(LEVELS[prepared.level].entity, keys, related, prepared.absent, prepared.labels, answered)


@dataclass
class FileReads:
    """The stored files one query may still read (``limit`` 0: any number): one per candidate entity when
    it has keys the index does not hold. Pages are read one at a time, so one counter serves them."""

    limit: int
    used: int = 0

    def take(self, count: int, keys: Sequence[Key]) -> None:
        """Count ``count`` more reads; QueryTooBroad, reading none of them, when they would pass the limit."""
        if self.limit and self.used + count > self.limit:
            names = ", ".join(key.keyword or f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})" for key in keys[:3])
            raise QueryTooBroad(
                f"the query needs more than {self.limit} stored files read to match or answer {names}, which "
                "the index does not hold (query_max_file_reads); narrow it with indexed keys (PatientID, "
                "StudyDate, AccessionNumber, ...)"
            )
        self.used += count


def _read_page(
    conn: IndexConnection,
    prepared: PreparedQuery,
    spec: query_sql.PageQuery,
    slots: Sequence[_Slot],
    after: int,
    want: int,
    blobs: BlobStore,
    budget: FileReads | None = None,
) -> tuple[list[Row], int, bool]:
    """One page of matches: (rows, last primary key read, no more rows)."""
    rows, position = query_sql.match_page(conn, spec, after, want)
    if not rows:
        return [], after, True
    pks = [int(r[0]) for r in rows]
    computed = {
        key.keyword: _in_page_values(rows, pks, position[label], comp)
        if (label := query_sql.in_page_label(key.keyword)) in position
        else _computed_values(conn, spec.entity, key.keyword, comp, pks, _owner_entity(prepared, comp))
        for key, comp in prepared.computed_keys
    }
    files: dict[int, Dataset | None] = {}
    if prepared.file_keys:  # keys matched or answered from a stored file (answered ones too: universal)
        if budget is not None:
            budget.take(len(pks), prepared.file_keys)
        files = _representative_files(conn, prepared, spec.entity, pks, blobs)
    if not prepared.file_keys and all(slot.source is not _Source.FILE for slot in slots):
        return _build_rows(slots, position, computed, rows, pks), pks[-1], len(rows) < want
    out: list[Row] = []
    fill = _row_builder(slots, position, computed)
    for pk, row in zip(pks, rows, strict=True):
        stored = files.get(pk)
        if prepared.file_keys and not _file_keys_match(prepared.file_keys, stored):
            continue
        out.append(fill(row, pk, stored))
    return out, pks[-1], len(rows) < want


def _in_page_values(rows: Sequence[Sequence[Any]], pks: list[int], column: int, comp: ComputedKey) -> dict[int, str]:
    """A computed key answered in the page rows (index/query_sql.py IN_PAGE), as :func:`_computed_values`
    gives it: distinct values sorted and joined, or the count."""
    if comp.joined:
        # a page's matches mostly share a few sets (ModalitiesInStudy "CT\\SR"): each joined once
        joined: dict[tuple[Any, ...], str] = {}
        out: dict[int, str] = {}
        for pk, row in zip(pks, rows, strict=True):
            if values := row[column]:
                key = tuple(values)
                text = joined.get(key)
                if text is None:
                    text = joined[key] = "\\".join(sorted(str(v) for v in values if v))
                out[pk] = text
        return out
    return {pk: str(row[column]) for pk, row in zip(pks, rows, strict=True)}


def _owner_entity(prepared: PreparedQuery, comp: ComputedKey) -> Entity | None:
    """The entity above the query level whose value computed key ``comp`` answers, or None: its own level."""
    own = _effective_level(comp.level, prepared.model)
    if own is prepared.level or prepared.level in comp.answered_below:
        return None
    return LEVELS[own].entity


def _computed_values(
    conn: IndexConnection,
    entity: Entity,
    keyword: str,
    comp: ComputedKey,
    pks: list[int],
    owner: Entity | None = None,
) -> dict[int, str]:
    """The values of computed key ``keyword`` for the ``entity`` rows ``pks``; with ``owner``, those of the
    ``owner`` entity each row belongs to (NumberOfStudyRelatedInstances of a series' study)."""
    if owner is None:
        values = query_sql.aggregate_values(conn, keyword, entity, pks)
    else:
        owners = query_sql.owners_of(conn, entity, owner, pks)
        by_owner = query_sql.aggregate_values(conn, keyword, owner, sorted(set(owners.values())))
        values = {pk: by_owner[up] for pk, up in owners.items() if up in by_owner}
    if comp.joined:
        return {pk: "\\".join(sorted(v for v in vals if v)) for pk, vals in values.items()}
    return {pk: vals[0] for pk, vals in values.items()}


def _representative_files(
    conn: IndexConnection,
    prepared: PreparedQuery,
    entity: Entity,
    pks: list[int],
    blobs: BlobStore,
) -> dict[int, Dataset | None]:
    """The stored header (no pixel data) of one instance per matched entity (the first stored)."""
    tags = [k.tag for k in prepared.file_keys] + [SPECIFIC_CHARACTER_SET]
    found: dict[int, Dataset | None] = {}
    for owner_pk, blob_key in query_sql.representative_blobs(conn, entity, pks):
        found[owner_pk] = _read_stored(blobs, blob_key, tags)
    return found


def _read_stored(blobs: BlobStore, key: str, tags: list[int]) -> Dataset | None:
    try:
        ds = read_blob_header(blobs, key, specific_tags=tags)  # default limits: bounded; the header only
        for elem in ds:  # convert now, off the event loop; a bad value becomes empty below
            _ = elem.value
        return ds
    except Exception as exc:  # noqa: BLE001 - a missing or damaged file answers empty values
        log.warning("cannot read the stored file %s for query return keys: %s", key, exc)
        return None


def _file_keys_match(keys: Sequence[Key], stored: Dataset | None) -> bool:
    for key in keys:
        if key.is_universal:
            continue
        if stored is None or key.tag not in stored:
            return False
        elem = stored[key.tag]
        if key.condition.kind is Matching.SEQUENCE:
            if not sequence_matches(key, elem.value):
                return False
        elif not key_matches(key, element_text(elem), stored):  # a date with its time: combined
            return False
    return True


class _Source(enum.Enum):
    """Where one response element's value comes from."""

    LEVEL = "level"
    EMPTY = "empty"
    CONSTANT = "constant"
    INDEX = "index"
    COMPUTED = "computed"
    FILE = "file"


@dataclass(frozen=True)
class _Slot:
    tag: BaseTag
    vr: str
    source: _Source
    name: str  # row label, computed keyword or constant value
    #: The requested key (FILE slots): a sequence is answered with the items and attributes it asks for.
    key: Key | None = None
    omit_empty: bool = False


def _plan(prepared: PreparedQuery) -> list[_Slot]:
    """How to fill each response element, worked out once per query (rows are many)."""
    slots: list[_Slot] = []
    for key in prepared.keys:
        tag = BaseTag(key.tag)
        if key.tag == SPECIFIC_CHARACTER_SET:
            continue
        if key.tag == QUERY_RETRIEVE_LEVEL:
            slots.append(_Slot(tag, "CS", _Source.LEVEL, prepared.level.value))
        elif key.tag in prepared.ignored:
            slots.append(_Slot(tag, key.vr, _Source.EMPTY, ""))
        elif key.keyword in CONSTANT_KEYS:
            slots.append(_Slot(tag, key.vr, _Source.CONSTANT, CONSTANT_KEYS[key.keyword]))
        elif key.keyword in INDEXED_KEYS:
            slots.append(_Slot(tag, key.vr, _Source.INDEX, f"k{key.tag:08x}"))
        elif key.keyword in COMPUTED_KEYS:
            slots.append(_Slot(tag, key.vr, _Source.COMPUTED, key.keyword))
        else:
            slots.append(_Slot(tag, key.vr, _Source.FILE, "", key, key.keyword in OMITTED_WHEN_EMPTY))
    unique = _tag(LEVELS[prepared.level].unique_key)
    if not any(slot.tag == unique for slot in slots):
        vr = "LO" if prepared.level is Level.PATIENT else "UI"
        slots.append(_Slot(BaseTag(unique), vr, _Source.INDEX, query_sql.UNIQUE_LABEL))
    if not any(slot.tag == QUERY_RETRIEVE_LEVEL for slot in slots):
        slots.append(_Slot(BaseTag(QUERY_RETRIEVE_LEVEL), "CS", _Source.LEVEL, prepared.level.value))
    slots.sort(key=lambda slot: int(slot.tag))
    return slots


def _build_rows(
    slots: Sequence[_Slot],
    position: Mapping[str, int],
    computed: Mapping[str, Mapping[int, str]],
    rows: Sequence[Sequence[Any]],
    pks: list[int],
) -> list[Row]:
    """Every :data:`Row` of a page none of whose values comes from a stored file: slot by slot
    down the page (one comprehension each), then zipped into rows -- what :func:`_row_builder`
    gives row by row, without a call per value (a C-FIND range's page is hundreds of matches)."""
    columns: list[Iterable[RowValue]] = []
    for slot in slots:
        source = slot.source
        if source is _Source.INDEX:
            column = position[slot.name]
            columns.append([None if (value := row[column]) is None else str(value) for row in rows])
        elif source is _Source.COMPUTED:
            values = computed[slot.name]
            missing = "" if COMPUTED_KEYS[slot.name].joined else "0"
            columns.append([values.get(pk, missing) for pk in pks])
        elif source is _Source.EMPTY:
            columns.append(repeat(None, len(rows)))
        elif source is _Source.FILE:  # pragma: no cover - such pages are built by _row_builder
            raise ValueError("a stored-file slot in a page built without the files")
        else:
            columns.append(repeat(slot.name, len(rows)))
    if not columns:
        return [() for _ in rows]
    return list(zip(*columns, strict=True))


def _row_builder(
    slots: Sequence[_Slot], position: Mapping[str, int], computed: Mapping[str, Mapping[int, str]]
) -> Callable[[Any, int, Dataset | None], Row]:
    """A function turning one index row into a :data:`Row`; the per-slot decisions are made here, once."""
    getters: list[Callable[[Any, int, Dataset | None], RowValue]] = []
    for slot in slots:
        getters.append(_getter(slot, position, computed))

    def build(row: Any, pk: int, stored: Dataset | None) -> Row:
        return tuple([get(row, pk, stored) for get in getters])

    return build


def _getter(
    slot: _Slot, position: Mapping[str, int], computed: Mapping[str, Mapping[int, str]]
) -> Callable[[Any, int, Dataset | None], RowValue]:
    source = slot.source
    if source is _Source.INDEX:
        column = position[slot.name]
        return lambda row, pk, stored: None if row[column] is None else str(row[column])
    if source is _Source.COMPUTED:
        values = computed[slot.name]
        missing = "" if COMPUTED_KEYS[slot.name].joined else "0"
        return lambda row, pk, stored: values.get(pk, missing)
    if source is _Source.FILE:
        tag = slot.tag
        key = slot.key
        if key is not None and key.vr == "SQ" and any(key.items):
            return lambda row, pk, stored: (
                answer_sequence(key, stored[tag]) if stored is not None and tag in stored else None
            )
        return lambda row, pk, stored: stored[tag] if stored is not None and tag in stored else None
    if source is _Source.EMPTY:
        return lambda row, pk, stored: None
    constant = slot.name
    return lambda row, pk, stored: constant


def answer_sequence(key: Key, stored: DataElement) -> DataElement:
    """A stored sequence as a response gives it back for a sequence key (PS3.4 C.2.2.2.6): the whole
    sequence for a key without item keys (zero-length item: "the entire Sequence of Items"); else
    "a sequence of matching Items containing only the requested Attributes", recursively, each
    requested attribute the item lacks answered empty (C.4.1.1.3.2 note 2)."""
    wanted = next((item for item in key.items if item), None)
    if wanted is None:
        return stored
    items = stored.value if isinstance(stored.value, (DicomSequence, list)) else []
    answered = [_answer_item(wanted, item) for item in items if sequence_matches(key, [item])]
    return DataElement(stored.tag, "SQ", DicomSequence(answered))


def _answer_item(keys: Sequence[Key], item: Dataset) -> Dataset:
    out = Dataset()
    for key in keys:
        if key.tag == SPECIFIC_CHARACTER_SET:
            continue
        if key.tag not in item:
            out.add(DataElement(key.tag, key.vr, [] if key.vr == "SQ" else None))
            continue
        elem = item[key.tag]
        out.add(answer_sequence(key, elem) if key.vr == "SQ" else elem)
    return out


def row_dataset(fields: Sequence[ResponseField], row: Row) -> Dataset:
    """The response identifier of one :data:`Row` as a pydicom Dataset."""
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for spec, value in zip(fields, row, strict=True):
        tag = BaseTag(spec.tag)
        if spec.omit_empty and _is_empty(value):
            continue
        if isinstance(value, (DataElement, RawDataElement)):
            elements[tag] = value
            continue
        converted = _element_value(spec.vr, value)
        if spec.vr == "PN" and converted is not None:  # pydicom writes PN values only as PersonName
            converted = [PersonName(v) for v in converted] if isinstance(converted, list) else PersonName(converted)
        elements[tag] = DataElement(
            tag, spec.vr, converted, already_converted=True, validation_mode=pydicom.config.IGNORE
        )
    return Dataset(elements)


def _is_empty(value: RowValue) -> bool:
    if isinstance(value, DataElement):
        return bool(value.is_empty)
    if isinstance(value, RawDataElement):
        return not value.value
    return not value


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - our tables hold standard keywords only
        raise KeyError(keyword)
    return int(tag)


def _element_value(vr: str, value: str | None) -> Any:
    if value is None or value == "":
        return None if vr != "SQ" else []
    if vr == "SQ":
        return []
    if vr in ("US", "UL", "SS", "SL"):
        try:
            return int(value)
        except ValueError:
            return None
    if vr in ("FL", "FD"):
        try:
            return float(value)
        except ValueError:
            return None
    if "\\" in value and vr not in ("LT", "ST", "UT"):
        return value.split("\\")
    return value


__all__ = [
    "COMPUTED_KEYS",
    "INDEXED_KEYS",
    "IndexedKey",
    "InformationModel",
    "InvalidKeyValue",
    "LEVELS",
    "Level",
    "PreparedQuery",
    "ResponseField",
    "Row",
    "RowValue",
    "answer_sequence",
    "page_query",
    "prepare_query",
    "query",
    "response_fields",
    "row_dataset",
    "run_query",
    "run_query_batches",
    "run_query_rows",
]
