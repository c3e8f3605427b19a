"""Study completion (core/mpps.py, table ``study_completion``) for the REST API and the UI.

A study is complete when its MPPS is COMPLETED and every referenced instance arrived. The
query engine answers and matches it as Study Status ID (0032,000A): "COMPLETED", or empty
(core/query_model.py), so C-FIND and QIDO-RS see it too. The REST study resources carry it
as ``"complete": true/false`` and filter on ``complete=true|false`` in SQL: ``true`` is the
matching key StudyStatusID=COMPLETED, ``false`` asks the engine for studies WITHOUT a Study
Status ID (a NOT EXISTS; DICOM matching cannot say "empty"). The study list shows a badge.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset

from minipacs.core.archive import Archive
from minipacs.index import worklist_repo
from minipacs.web.errors import HttpError

#: The query parameter that filters REST study searches by completion.
PARAM: Final = "complete"
#: The attribute the query engine answers completion in, and its value for a complete study.
KEYWORD: Final = "StudyStatusID"
COMPLETED: Final = "COMPLETED"
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


async def completed_studies(archive: Archive) -> set[str]:
    """Study Instance UIDs of the complete studies."""
    return set(await archive.read(worklist_repo.completed_studies))


def wanted(raw: str | None) -> bool | None:
    """``complete=`` -> True / False, None when absent; HttpError 400 for anything else."""
    if raw is None or raw == "":
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise HttpError(400, "invalid_complete", f"complete must be true or false, not {raw[:20]!r}")


def search_terms(want: bool | None) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """(query parameters to add, keys required empty) for a study search filtered by ``want``.

    Study Status ID is always asked for, so :func:`is_complete` can read each match."""
    if want is True:
        return [(KEYWORD, COMPLETED)], ()
    return [("includefield", KEYWORD)], (KEYWORD,) if want is False else ()


def is_complete(match: Dataset) -> bool:
    """Whether a study match (asked with :func:`search_terms`) is complete."""
    return str(match.get(KEYWORD) or "") == COMPLETED


__all__ = ["COMPLETED", "KEYWORD", "PARAM", "completed_studies", "is_complete", "search_terms", "wanted"]
