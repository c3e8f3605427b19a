"""Labels on studies, as Orthanc 1.12 has them: short words a person or a script puts on a study.

A label is 1 to 64 characters of ``A-Z a-z 0-9 _ -`` (Orthanc's rule, ``ServerToolbox::IsValidLabel``);
case matters ("Keep" is not "keep"). A study carries any number of labels; they are kept by Study
Instance UID in the ``study_labels`` table (index/labels_repo.py) and removed with the study
(core/delete.py). They are used by:

- queries: the REST search and QIDO-RS take ``labels=a,b`` (studies carrying every one of them;
  core/query.py ``prepare_query(labels=...)`` adds an EXISTS per label at the STUDY level);
- retention (core/retention.py): a study carrying a rule's ``protect_label`` is never deleted by it;
- rule filters: the ``labels`` key of routing ``[[rules]]``, ``[[compression]]`` and ``[[retention]]``
  (:func:`rule_labels` reads it) goes to the query engine with the rule's ``match``, the same
  filter as ``labels=``; elsewhere call :func:`study_has_label` (async, from anywhere with the
  archive) or :func:`has_label` (inside an index transaction, e.g. a writer call).

Labels are not DICOM attributes: C-FIND does not see them, and they are not sent with the images.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from minipacs.core.errors import InvalidQuery, NotFound
from minipacs.index import labels_repo

if TYPE_CHECKING:
    from minipacs.core.nodes import IndexAccess
    from minipacs.index.database import IndexConnection

#: Longest label (Orthanc's limit, and the column's size).
MAX_LABEL: Final = 64
#: Most labels one query may ask for.
MAX_QUERY_LABELS: Final = 16
_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class InvalidLabel(InvalidQuery, ValueError):
    """A label that breaks the rule of :func:`validate_label`."""


def validate_label(label: str) -> str:
    """``label`` if it is 1 to 64 of A-Z a-z 0-9 _ -; else InvalidLabel saying so."""
    if not _LABEL.fullmatch(label):
        raise InvalidLabel(
            f"label {label[:70]!r} is not valid: a label is 1 to {MAX_LABEL} characters, "
            "letters A-Z a-z, digits, '_' and '-' only"
        )
    return label


def parse_labels(raw: str) -> tuple[str, ...]:
    """The ``labels=`` query parameter (comma-separated) -> labels, each valid; () for ""."""
    found = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if len(found) > MAX_QUERY_LABELS:
        raise InvalidLabel(f"a query may ask for at most {MAX_QUERY_LABELS} labels, not {len(found)}")
    return tuple(validate_label(label) for label in found)


def rule_labels(raw: Any) -> tuple[str, ...]:
    """A rule's ``labels`` key (a list of labels the study must carry, every one, as ``labels=``)
    -> the labels, each valid; InvalidLabel saying what is wrong (the caller names the rule)."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidLabel('labels must be a list of labels the study must carry, e.g. labels = ["teaching"]')
    if len(items) > MAX_QUERY_LABELS:
        raise InvalidLabel(f"labels lists {len(items)} labels; at most {MAX_QUERY_LABELS}")
    try:
        return tuple(dict.fromkeys(validate_label(i) for i in items))
    except InvalidLabel as exc:
        raise InvalidLabel(f"labels: {exc}") from None


def has_label(conn: IndexConnection, study: str, label: str) -> bool:
    """Whether ``study`` (Study Instance UID) carries ``label``, in the caller's transaction."""
    return labels_repo.has_label(conn, study, label)


async def study_has_label(archive: IndexAccess, study: str, label: str) -> bool:
    """Whether ``study`` (Study Instance UID) carries ``label``: the call for rule filters."""
    return await archive.read(lambda conn: labels_repo.has_label(conn, study, label))


async def labels_of(archive: IndexAccess, study: str) -> list[str]:
    """The labels of a study (sorted); NotFound when the study is not in the archive."""

    def run(conn: IndexConnection) -> list[str] | None:
        if not labels_repo.study_exists(conn, study):
            return None
        return labels_repo.labels_of(conn, study)

    found = await archive.read(run)
    if found is None:
        raise NotFound(f"study {study[:70]!r} is not in the archive")
    return found


async def labels_of_studies(archive: IndexAccess, studies: Sequence[str]) -> dict[str, list[str]]:
    """Study Instance UID -> labels, for the studies of ``studies`` that have any."""
    if not studies:
        return {}
    return await archive.read(lambda conn: labels_repo.labels_of_studies(conn, studies))


async def add_label(archive: IndexAccess, study: str, label: str) -> bool:
    """Put ``label`` on ``study``; False if it was there. NotFound / InvalidLabel."""
    validate_label(label)
    now = dt.datetime.now(dt.UTC)

    def run(conn: IndexConnection) -> bool | None:
        if not labels_repo.study_exists(conn, study):
            return None
        return labels_repo.add_label(conn, study, label, now)

    added = await archive.write(run)
    if added is None:
        raise NotFound(f"study {study[:70]!r} is not in the archive; a label needs a stored study")
    return added


async def remove_label(archive: IndexAccess, study: str, label: str) -> bool:
    """Take ``label`` off ``study``; False if it was not there. NotFound / InvalidLabel."""
    validate_label(label)

    def run(conn: IndexConnection) -> bool | None:
        if not labels_repo.study_exists(conn, study):
            return None
        return labels_repo.remove_label(conn, study, label)

    removed = await archive.write(run)
    if removed is None:
        raise NotFound(f"study {study[:70]!r} is not in the archive")
    return removed


async def all_labels(archive: IndexAccess) -> list[tuple[str, int]]:
    """Every label in use and how many studies carry it."""
    return await archive.read(labels_repo.all_labels)


__all__ = [
    "MAX_LABEL",
    "MAX_QUERY_LABELS",
    "InvalidLabel",
    "add_label",
    "all_labels",
    "has_label",
    "labels_of",
    "labels_of_studies",
    "parse_labels",
    "remove_label",
    "rule_labels",
    "study_has_label",
    "validate_label",
]
