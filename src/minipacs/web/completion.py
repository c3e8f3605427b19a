"""Study completion (core/mpps.py, table ``study_completion``) for the REST API and the UI.

A study is complete when its MPPS is COMPLETED and every referenced instance arrived. The
REST study resources carry it as ``"complete": true/false`` and filter on ``complete=true|false``;
the study list shows a badge. Not a DICOM attribute: QIDO-RS and C-FIND do not see it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pydicom.dataset import Dataset

from minipacs.core.archive import Archive
from minipacs.index import worklist_repo
from minipacs.web.errors import HttpError

#: The query parameter that filters REST study searches by completion.
PARAM: Final = "complete"
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


def keep(done: set[str], want: bool | None) -> Callable[[Dataset], bool] | None:
    """A search filter keeping studies whose completion is ``want`` (None: no filter)."""
    if want is None:
        return None
    return lambda ds: (str(ds.get("StudyInstanceUID", "") or "") in done) is want


__all__ = ["PARAM", "completed_studies", "keep", "wanted"]
