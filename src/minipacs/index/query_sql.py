"""The query engine's SQL (core/query.py, PS3.4 C.2.2 / C.6): one page of matches, the
computed keys of a page (C.3.4, C.6.1.1), the representative instance of each match.

The core hands over what to match (:class:`PageQuery`: the level's entity, the indexed
keys with their conditions, the computed keys matched or required absent) and gets rows
back. Pages run on the level table's primary key (keyset pagination): each page is
``WHERE id > :after ORDER BY id LIMIT n``, so the first rows are out long before the last
page is read, and no page costs more than the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, FromClause, Integer, Select, Table, exists, func, literal, select
from sqlalchemy.types import NullType

from minipacs.index.entities import DEPTH, ENTITIES, Entity
from minipacs.index.labels_repo import labelled_clause
from minipacs.index.matching import UNIVERSAL, ColumnKind, Condition, sql_condition, sql_date_time_range
from minipacs.index.schema import StudyCompletion

#: Label of the primary key, the first column of every page row.
PK_LABEL: Final = "pk"
#: Label of the level's unique key in every page row.
UNIQUE_LABEL: Final = "unique_key"

_PAT, _STU, _SER, _INS = (ENTITIES[entity].table for entity in Entity)
#: Complete studies (core/mpps.py), keyed by Study Instance UID.
_DONE: Final = cast(Table, StudyCompletion.__table__)


@dataclass(frozen=True)
class KeyMatch:
    """One indexed key of a query: answered from ``value_column`` as ``label``, matched on
    ``match_column`` (its typed or normalised twin) by ``condition``."""

    label: str
    entity: Entity
    value_column: str
    match_column: str
    kind: ColumnKind
    condition: Condition
    #: The typed time column of the same entity whose value joins ``match_column``'s date into one
    #: date and time matched by ``condition`` (combined datetime matching: matching.py
    #: sql_date_time_range); "" for any other key.
    partner_column: str = ""


@dataclass(frozen=True)
class PageQuery:
    """What one query matches, level by level: everything :func:`match_page` needs."""

    entity: Entity  # the query level's table: one row per match
    keys: tuple[KeyMatch, ...] = ()
    #: Computed keys matched through EXISTS on their match table: (keyword of :data:`AGGREGATES`, condition).
    related: tuple[tuple[str, Condition], ...] = ()
    #: Computed keys a match must have NO row for (NOT EXISTS), by keyword of :data:`AGGREGATES`.
    absent: tuple[str, ...] = ()
    #: Labels (core/labels.py) a matching study (or the study of a matching series or instance)
    #: must carry, every one: the studies table is then joined in.
    labels: tuple[str, ...] = ()
    #: Computed keys answered (keywords of :data:`AGGREGATES`): on PostgreSQL, those of
    #: :data:`IN_PAGE` come in the page statement itself (:func:`in_page_label`).
    answered: tuple[str, ...] = ()


# ------------------------------------------------------------------ computed keys


def _owner_column(entity: Entity) -> Any:
    """The column naming the owning entity of a row one level down."""
    return {Entity.PATIENT: _STU.c.patient_pk, Entity.STUDY: _SER.c.study_pk, Entity.SERIES: _INS.c.series_pk}[entity]


def _count(target: Table, *joins: tuple[Table, Any]) -> Callable[[Entity], Select[Any]]:
    """count(target) grouped by the key of the owning entity, over the given join path."""

    def build(entity: Entity) -> Select[Any]:
        frm: Any = target
        for table, on in joins:
            frm = frm.join(table, on)
        owner = _owner_column(entity)
        return select(owner, func.count(target.c.id)).select_from(frm).group_by(owner)

    return build


def _distinct(column: Any, *joins: tuple[Table, Any]) -> Callable[[Entity], Select[Any]]:
    def build(entity: Entity) -> Select[Any]:
        frm: Any = column.table
        for table, on in joins:
            frm = frm.join(table, on)
        owner = _owner_column(entity)
        return select(owner, column).select_from(frm).group_by(owner, column)

    return build


def _count_of(target: FromClause, *joins: tuple[FromClause, Any]) -> Callable[[Any], ColumnElement[Any]]:
    """count(target) of one owner row, as a scalar subquery correlated to the page's ``owner_id``."""

    def build(owner_id: Any) -> ColumnElement[Any]:
        frm: Any = target
        for table, on in joins:
            frm = frm.join(table, on)
        return select(func.count(target.c.id)).select_from(frm).where(owner_id).scalar_subquery()

    return build


def _values_of(column: Any, *joins: tuple[Table, Any]) -> Callable[[Any], ColumnElement[Any]]:
    """The distinct values of ``column`` for one owner row, as a list (PostgreSQL's array_agg, which
    psycopg returns as a list: typed NullType, SQLAlchemy does not convert it again row by row)."""

    def build(owner_id: Any) -> ColumnElement[Any]:
        frm: Any = column.table
        for table, on in joins:
            frm = frm.join(table, on)
        values = func.array_agg(column.distinct(), type_=NullType())
        return select(values).select_from(frm).where(owner_id).scalar_subquery()

    return build


#: The studies of a patient, beside the studies table a STUDY-level page reads: the patient's counts asked
#: at the STUDY level (the Study Root model, PS3.4 C.6.2.1.2 Table C.6-5) go from the matched study to its
#: patient and back down to all of that patient's studies.
_PAT_STU: Final = _STU.alias("patient_studies")
#: The join of a patient's series and instances up to :data:`_PAT_STU`.
_SER_PAT_STU: Final = (_PAT_STU, _SER.c.study_pk == _PAT_STU.c.id)


def _patient_count(target: FromClause, *joins: tuple[FromClause, Any]) -> Callable[[Entity], Select[Any]]:
    """count(target) per patient, over the given join path up to :data:`_PAT_STU`: grouped by the patient
    (PATIENT level) or by each study of the patient (STUDY level, the Study Root model: PS3.4 C.6.2.1.2,
    Number of Patient Related Studies/Series/Instances are Study level keys there). Counting from the
    page's own studies table instead joined it to nothing: a cartesian product (every study of the
    archive once per series of the matched study)."""

    def build(entity: Entity) -> Select[Any]:
        frm: Any = target
        for table, on in joins:
            frm = frm.join(table, on)
        if entity is Entity.PATIENT:
            owner: Any = _PAT_STU.c.patient_pk
        elif entity is Entity.STUDY:
            owner = _STU.c.id
            frm = frm.join(_STU, _STU.c.patient_pk == _PAT_STU.c.patient_pk)
        else:
            raise ValueError(f"a patient's counts are answered at the patient or study level, not {entity.value}")
        return select(owner, func.count(target.c.id)).select_from(frm).group_by(owner)

    return build


def _completion(entity: Entity) -> Select[Any]:
    """Study Status ID of each complete study; a study that is not complete has none."""
    return select(_STU.c.id, _DONE.c.study_status_id).select_from(
        _STU.join(_DONE, _DONE.c.study_instance_uid == _STU.c.study_instance_uid)
    )


@dataclass(frozen=True)
class Aggregate:
    """How the index computes one computed key: (owner primary key, value) rows per query
    entity, and the column matched (through EXISTS) when the key carries a value."""

    rows: Callable[[Entity], Select[Any]]
    match_column: Any = None  # None: not matchable


# PS3.4 C.3.4 (Additional Query/Retrieve Attributes) and C.6.1.1.x, by keyword: the SQL half of
# core/query_model.py COMPUTED_KEYS (level, VR and how values are joined live there).
AGGREGATES: Final[Mapping[str, Aggregate]] = {
    "NumberOfPatientRelatedStudies": Aggregate(_patient_count(_PAT_STU)),
    "NumberOfPatientRelatedSeries": Aggregate(_patient_count(_SER, _SER_PAT_STU)),
    "NumberOfPatientRelatedInstances": Aggregate(
        _patient_count(_INS, (_SER, _INS.c.series_pk == _SER.c.id), _SER_PAT_STU)
    ),
    "NumberOfStudyRelatedSeries": Aggregate(_count(_SER)),
    "NumberOfStudyRelatedInstances": Aggregate(_count(_INS, (_SER, _INS.c.series_pk == _SER.c.id))),
    "ModalitiesInStudy": Aggregate(_distinct(_SER.c.modality), _SER.c.modality),
    "SOPClassesInStudy": Aggregate(
        _distinct(_INS.c.sop_class_uid, (_SER, _INS.c.series_pk == _SER.c.id)), _INS.c.sop_class_uid
    ),
    "NumberOfSeriesRelatedInstances": Aggregate(_count(_INS)),
    # Study Status ID (0032,000A): "COMPLETED" once the study's MPPS is COMPLETED and every
    # instance it references is stored (issue 5), else empty.
    "StudyStatusID": Aggregate(_completion, _DONE.c.study_status_id),
}

_INS_SER: Final = (_SER, _INS.c.series_pk == _SER.c.id)


def _in_page(
    build: Callable[[Any], ColumnElement[Any]], owner: Callable[[Table], Any]
) -> Callable[[Table], ColumnElement[Any]]:
    """A computed key's correlated subquery given the page's level table: ``build`` over the rows
    ``owner(base)`` selects."""
    return lambda base: build(owner(base))


#: The computed keys answered inside the page statement on PostgreSQL, by keyword and by the level whose
#: page rows they describe: the correlated subquery, given the page's level table. One statement instead
#: of two per page: no second round trip, and a text that stays the same from query to query, so
#: psycopg's prepared statement is reused (index/database.py). A patient's counts have a STUDY row too
#: (the Study Root model, PS3.4 C.6.2.1.2): over the studies of the matched study's patient.
IN_PAGE: Final[Mapping[str, Mapping[Entity, Callable[[Table], ColumnElement[Any]]]]] = {
    "NumberOfPatientRelatedStudies": {
        Entity.PATIENT: _in_page(_count_of(_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.id),
        Entity.STUDY: _in_page(_count_of(_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.patient_pk),
    },
    "NumberOfPatientRelatedSeries": {
        Entity.PATIENT: _in_page(_count_of(_SER, _SER_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.id),
        Entity.STUDY: _in_page(_count_of(_SER, _SER_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.patient_pk),
    },
    "NumberOfPatientRelatedInstances": {
        Entity.PATIENT: _in_page(
            _count_of(_INS, _INS_SER, _SER_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.id
        ),
        Entity.STUDY: _in_page(
            _count_of(_INS, _INS_SER, _SER_PAT_STU), lambda base: _PAT_STU.c.patient_pk == base.c.patient_pk
        ),
    },
    "NumberOfStudyRelatedSeries": {
        Entity.STUDY: _in_page(_count_of(_SER), lambda base: _SER.c.study_pk == base.c.id),
    },
    "NumberOfStudyRelatedInstances": {
        Entity.STUDY: _in_page(_count_of(_INS, _INS_SER), lambda base: _SER.c.study_pk == base.c.id),
    },
    "ModalitiesInStudy": {
        Entity.STUDY: _in_page(_values_of(_SER.c.modality), lambda base: _SER.c.study_pk == base.c.id),
    },
    "SOPClassesInStudy": {
        Entity.STUDY: _in_page(_values_of(_INS.c.sop_class_uid, _INS_SER), lambda base: _SER.c.study_pk == base.c.id),
    },
    "NumberOfSeriesRelatedInstances": {
        Entity.SERIES: _in_page(_count_of(_INS), lambda base: _INS.c.series_pk == base.c.id),
    },
}
#: Dialects whose page statement answers :data:`IN_PAGE` (array_agg, correlated scalar subqueries).
IN_PAGE_DIALECTS: Final = frozenset({"postgresql"})
#: PostgreSQL's cost of a random page read while a page of matches is planned (its default is 4.0, a
#: spinning disk's). The index a C-FIND reads is hot (cached, or on SSD); at 4.0 the planner joins a
#: one-month StudyDate range's ~500 studies to their patients by a hash join over a sequential scan
#: of every patient (50,000: 18 ms for the page, issue 11) rather than by ~500 primary-key lookups
#: (6 ms). 1.1 is PostgreSQL's usual figure for SSDs. Only for the page statements, as SET LOCAL: the
#: server's other statements, and what an operator set for the database, are left alone.
PAGE_RANDOM_PAGE_COST: Final = "1.1"


def in_page_label(keyword: str) -> str:
    """The label of computed key ``keyword``'s column in a page row, when it is answered there."""
    return f"agg_{keyword}"


# Table of a computed key's match column -> its rows that belong to the study being matched (STUDY level).
_STUDY_ROWS: Final[Mapping[Any, Callable[[], Select[Any]]]] = {
    _SER: lambda: select(_SER.c.id).where(_SER.c.study_pk == _STU.c.id),
    _INS: lambda: select(_INS.c.id).join(_SER, _INS.c.series_pk == _SER.c.id).where(_SER.c.study_pk == _STU.c.id),
    _DONE: lambda: select(_DONE.c.id).where(_DONE.c.study_instance_uid == _STU.c.study_instance_uid),
}


def _exists(keyword: str, condition: Condition, dialect: str) -> ColumnElement[bool]:
    """ModalitiesInStudy / SOPClassesInStudy / StudyStatusID matching: some series, instance or
    completion row of the study matches (PS3.4 C.2.2.2 on each of its values)."""
    column = AGGREGATES[keyword].match_column
    clause = sql_condition(column, ColumnKind.TEXT, condition, dialect)
    sub = _STUDY_ROWS[column.table]()
    if clause is not None:
        sub = sub.where(clause)
    return exists(sub)


# ------------------------------------------------------------------ pages


def _base_select(query: PageQuery, dialect: str) -> Select[Any]:
    entity = query.entity
    base = ENTITIES[entity].table
    frm: Any = base
    needed = {DEPTH[key.entity] for key in query.keys}
    if query.labels:  # labelled_clause correlates with the studies table
        needed.add(DEPTH[Entity.STUDY])
    top = min(needed | {DEPTH[entity]})
    chain = list(Entity)[top : DEPTH[entity] + 1]
    # join upwards: child.parent_fk == parent.id
    for child, parent in zip(reversed(chain[1:]), reversed(chain[:-1]), strict=True):
        spec = ENTITIES[child]
        frm = frm.join(ENTITIES[parent].table, spec.table.c[str(spec.parent_fk)] == ENTITIES[parent].table.c.id)
    columns = [base.c.id.label(PK_LABEL)]
    for key in query.keys:
        columns.append(ENTITIES[key.entity].table.c[key.value_column].label(key.label))
    columns.append(base.c[ENTITIES[entity].unique_column].label(UNIQUE_LABEL))
    if dialect in IN_PAGE_DIALECTS:
        for keyword in query.answered:
            folded = IN_PAGE.get(keyword, {}).get(entity)
            if folded is not None:
                columns.append(folded(base).label(in_page_label(keyword)))
    where: list[ColumnElement[bool]] = []
    for key in query.keys:
        table = ENTITIES[key.entity].table
        if key.partner_column:
            clause = sql_date_time_range(table.c[key.match_column], table.c[key.partner_column], key.condition)
        else:
            clause = sql_condition(table.c[key.match_column], key.kind, key.condition, dialect)
        if clause is not None:
            where.append(clause)
    for keyword, condition in query.related:
        where.append(_exists(keyword, condition, dialect))
    for keyword in query.absent:
        where.append(~_exists(keyword, UNIVERSAL, dialect))
    for label in query.labels:
        where.append(labelled_clause(label))
    return select(*columns).select_from(frm).where(*where)


def match_page(
    conn: Connection, query: PageQuery, after: int, want: int
) -> tuple[Sequence[Sequence[Any]], Mapping[str, int]]:
    """Up to ``want`` matching rows whose primary key is above ``after``, in primary key order,
    and the position of each label in a row (:data:`PK_LABEL` first, each key's label,
    :data:`UNIQUE_LABEL`, then the computed keys answered in the page: :func:`in_page_label`).
    Fewer than ``want`` rows: there are no more."""
    base = ENTITIES[query.entity].table
    # The LIMIT is rendered as a literal: given a bound LIMIT, SQLite's planner walks the primary key
    # (no sort) instead of the index of a selective key, e.g. 35 ms instead of 5 ms for a one-month
    # StudyDate range over 100,000 studies.
    statement = (
        _base_select(query, conn.dialect.name)
        .where(base.c.id > after)
        .order_by(base.c.id)
        .limit(literal(want, Integer, literal_execute=True))
    )
    position = {name: index for index, name in enumerate(statement.selected_columns.keys())}
    if conn.dialect.name == "postgresql":
        # to the end of the read's transaction (IndexDatabase.read commits); one round trip
        conn.exec_driver_sql(f"SET LOCAL random_page_cost = {PAGE_RANDOM_PAGE_COST}")
    return conn.execute(statement).all(), position


def aggregate_values(conn: Connection, keyword: str, entity: Entity, pks: Sequence[int]) -> dict[int, list[str]]:
    """The values of computed key ``keyword`` for each of the ``entity`` rows ``pks`` that has any."""
    statement = AGGREGATES[keyword].rows(entity)
    owner = statement.selected_columns[0]
    values: dict[int, list[str]] = {}
    for owner_pk, value in conn.execute(statement.where(owner.in_(pks))):
        values.setdefault(int(owner_pk), []).append(str(value))
    return values


def owners_of(conn: Connection, entity: Entity, owner: Entity, pks: Sequence[int]) -> dict[int, int]:
    """The primary key of the ``owner`` entity (a level above ``entity``) of each ``entity`` row of ``pks``."""
    chain = list(Entity)[DEPTH[owner] : DEPTH[entity] + 1]
    base = ENTITIES[entity].table
    frm: Any = base
    for child, parent in zip(reversed(chain[2:]), reversed(chain[1:-1]), strict=True):  # up to below the owner
        spec = ENTITIES[child]
        frm = frm.join(ENTITIES[parent].table, spec.table.c[str(spec.parent_fk)] == ENTITIES[parent].table.c.id)
    below = ENTITIES[chain[1]]  # the entity just below the owner holds the owner's key
    statement = select(base.c.id, below.table.c[str(below.parent_fk)]).select_from(frm).where(base.c.id.in_(pks))
    return {int(pk): int(owner_pk) for pk, owner_pk in conn.execute(statement)}


def representative_blobs(conn: Connection, entity: Entity, pks: Sequence[int]) -> list[tuple[int, str]]:
    """(owner primary key, blob key) of one instance per ``entity`` row of ``pks``: the first stored."""
    if entity is Entity.INSTANCE:
        owner: Any = _INS.c.id
        frm: Any = _INS
    elif entity is Entity.SERIES:
        owner, frm = _INS.c.series_pk, _INS
    elif entity is Entity.STUDY:
        owner, frm = _SER.c.study_pk, _INS.join(_SER, _INS.c.series_pk == _SER.c.id)
    else:
        owner = _STU.c.patient_pk
        frm = _INS.join(_SER, _INS.c.series_pk == _SER.c.id).join(_STU, _SER.c.study_pk == _STU.c.id)
    first = (
        select(owner.label("owner"), func.min(_INS.c.id).label("first"))
        .select_from(frm)
        .where(owner.in_(pks))
        .group_by(owner)
        .subquery()
    )
    statement = select(first.c.owner, _INS.c.blob_key).join(_INS, _INS.c.id == first.c.first)
    return [(int(owner_pk), str(blob_key)) for owner_pk, blob_key in conn.execute(statement)]


__all__ = [
    "AGGREGATES",
    "IN_PAGE",
    "PAGE_RANDOM_PAGE_COST",
    "PK_LABEL",
    "UNIQUE_LABEL",
    "Aggregate",
    "KeyMatch",
    "PageQuery",
    "aggregate_values",
    "in_page_label",
    "match_page",
    "owners_of",
    "representative_blobs",
]
