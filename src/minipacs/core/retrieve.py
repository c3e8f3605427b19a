"""The ONE retrieve path: which stored instances a retrieve request names.

C-MOVE, C-GET (and later WADO and the REST download) all come here with a
Query/Retrieve level and an identifier, and get back the stored files, with
where each dataset starts, so the bytes can be streamed out as they are.

PS3.4 C.4.2.2.1 / C.4.3.2.1: a retrieve identifier carries the Unique Key of
the retrieve level (a single value, or a list of UIDs) and, in baseline
hierarchical retrieve, the unique keys of the levels above it, "a single value"
each (C.4.2.2.1; C-FIND's hierarchical queries alike, C.4.1.2.1). We take the
keys above the level as constraints when present and do not require them (as
relational retrieve would allow); keys below the level and non-unique keys
are ignored. Wildcards and ranges have no place here (no matching is done).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Final

from minipacs.blobs.base import BlobError, BlobStore
from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.dicom.levels import LEVEL_SPELLINGS, RETRIEVE_MODELS, Level
from minipacs.dicom.part10 import (
    NotPart10,
    dataset_offset_from,
    dataset_offset_of,
)
from minipacs.index.entities import Entity
from minipacs.index.retrieve_repo import StoredRow, stored_instances

log = logging.getLogger(__name__)

#: More values than this in one list of UIDs is refused (one SQL IN list each).
MAX_KEYS: Final = 5000


class InvalidRetrieveIdentifier(ArchiveError):
    """The retrieve level or keys do not name instances the way PS3.4 C.4.2.2.1 requires."""


@dataclass(frozen=True)
class RetrieveLevel:
    name: str
    unique_key: str  # DICOM keyword of the Unique Key at this level
    entity: Entity  # index entity whose unique column holds it
    uid_list: bool  # whether a list of values is allowed (UIDs only)


# PS3.4 C.6.1.1 (Patient Root) and C.6.2.1 (Study Root): levels and their Unique Keys (dicom/levels.py),
# with the index column holding each
LEVELS: Final[dict[str, RetrieveLevel]] = {
    level.value: RetrieveLevel(level.value, LEVEL_SPELLINGS[level].unique_key, entity, LEVEL_SPELLINGS[level].uid_list)
    for level, entity in (
        (Level.PATIENT, Entity.PATIENT),
        (Level.STUDY, Entity.STUDY),
        (Level.SERIES, Entity.SERIES),
        (Level.IMAGE, Entity.INSTANCE),
    )
}

# PS3.4 C.6.1 / C.6.2: the levels of each information model, top down
MODELS: Final[dict[str, tuple[str, ...]]] = {
    name: tuple(level.value for level in model.levels) for name, model in RETRIEVE_MODELS.items()
}


@dataclass(frozen=True)
class StoredInstance:
    """One stored instance to send: its blob (a Part 10 file) and where its dataset begins.

    Its bytes are read through the blob store only: ``open`` (a seekable file), ``local_file``
    (a local file for the ``with`` block: the stored file itself on the filesystem store)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    blobs: BlobStore = field(compare=False, repr=False)
    dataset_offset: int = -1  # -1 until located (see ``locate``), or when the file cannot be read (``problem``)
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    problem: str = ""  # why this instance cannot be sent, e.g. its file is missing

    @property
    def label(self) -> str:
        """What messages call it: its blob key."""
        return self.blob_key

    def open(self) -> BinaryIO:
        """The stored file, open for reading; raises BlobNotFound (a FileNotFoundError)."""
        return self.blobs.open(self.blob_key)

    def local_file(self) -> AbstractContextManager[Path]:
        """A local file with the stored bytes, for the ``with`` block (BlobStore.local_file)."""
        return self.blobs.local_file(self.blob_key)

    def size(self) -> int:
        return self.blobs.size(self.blob_key)


def _values(identifier: Mapping[str, object], keyword: str) -> list[str]:
    """The key's values: '' or absent -> [], 'a\\b' or a sequence -> ['a', 'b']."""
    raw = identifier.get(keyword)
    if raw is None:
        return []
    items: list[str] = []
    if isinstance(raw, str):
        items = raw.split("\\")
    elif isinstance(raw, (bytes, bytearray)):
        items = bytes(raw).decode("ascii", "replace").split("\\")
    elif isinstance(raw, Sequence):
        items = [str(v) for v in raw]
    else:
        items = [str(raw)]
    return [v.strip(" \x00") for v in items if v.strip(" \x00")]


def _checked(keyword: str, values: list[str], level: RetrieveLevel | None) -> list[str]:
    for value in values:
        if "*" in value or "?" in value:
            raise InvalidRetrieveIdentifier(
                f"{keyword} {value[:70]!r} contains a wildcard; a retrieve names instances by exact "
                "unique keys (PS3.4 C.4.2.2.1): query with C-FIND first, then retrieve the UIDs found"
            )
        if len(value) > 64:
            raise InvalidRetrieveIdentifier(
                f"{keyword} {value[:40]!r}... is {len(value)} characters long; unique keys have at most 64"
            )
    if len(values) > 1 and (level is None or not level.uid_list):
        raise InvalidRetrieveIdentifier(
            f"{keyword} has {len(values)} values; only the Unique Key of the retrieve level may be a "
            "list, and only when it is a UID (PS3.4 C.4.2.2.1)"
        )
    if len(values) > MAX_KEYS:
        raise InvalidRetrieveIdentifier(
            f"{keyword} lists {len(values)} UIDs; at most {MAX_KEYS} per request, split the retrieve"
        )
    return values


def plan(level: str, identifier: Mapping[str, object], model: str = "STUDY") -> list[tuple[RetrieveLevel, list[str]]]:
    """Check the identifier; return the (level, values) constraints it sets, top down."""
    levels = MODELS.get(model.upper())
    if levels is None:
        raise InvalidRetrieveIdentifier(f"unknown information model {model!r}; expected one of {', '.join(MODELS)}")
    name = level.strip().upper()
    if not name:
        raise InvalidRetrieveIdentifier(
            "QueryRetrieveLevel (0008,0052) is missing; it must be one of " + ", ".join(levels)
        )
    if name not in levels:
        raise InvalidRetrieveIdentifier(
            f"QueryRetrieveLevel {level[:20]!r} is not a level of the {RETRIEVE_MODELS[model.upper()].name} model "
            f"(expected one of {', '.join(levels)})"
        )
    target = LEVELS[name]
    own = _checked(target.unique_key, _values(identifier, target.unique_key), target)
    if not own:
        raise InvalidRetrieveIdentifier(
            f"a {name}-level retrieve needs the Unique Key {target.unique_key}; the identifier has "
            "none (PS3.4 C.4.2.2.1)"
        )
    constraints: list[tuple[RetrieveLevel, list[str]]] = []
    for above in levels[: levels.index(name)]:
        spec = LEVELS[above]
        values = _checked(spec.unique_key, _values(identifier, spec.unique_key), None)
        if values:
            constraints.append((spec, values))
    constraints.append((target, own))
    return constraints


def _instance(archive: Archive, row: StoredRow) -> StoredInstance:
    return StoredInstance(
        row.sop_class_uid,
        row.sop_instance_uid,
        row.transfer_syntax_uid,
        row.blob_key,
        archive.blobs,
        -1,
        row.study_instance_uid,
        row.series_instance_uid,
    )


def locate(instance: StoredInstance, blob_key: str = "") -> StoredInstance:
    """``instance`` with its dataset offset, or with ``problem`` saying why its file cannot be sent."""
    if instance.dataset_offset >= 0 or instance.problem:
        return instance
    name = blob_key or instance.blob_key
    try:
        head = b"".join(instance.blobs.open_range(instance.blob_key, 0, 144))
        return replace(instance, dataset_offset=dataset_offset_from(head))
    except FileNotFoundError:  # BlobNotFound too
        problem = f"its file {name} is missing from storage"
    except (OSError, BlobError, NotPart10) as exc:
        problem = f"its file {name} cannot be read: {exc}"
    log.error("SOP Instance %s is indexed but %s", instance.sop_instance_uid, problem)
    return replace(instance, problem=problem)


def _locate(archive: Archive, rows: list[StoredRow]) -> list[StoredInstance]:
    return [locate(_instance(archive, row), row.blob_key) for row in rows]


async def select_instances(
    archive: Archive, level: str, identifier: Mapping[str, object], model: str = "STUDY", *, located: bool = True
) -> list[StoredInstance]:
    """The stored instances a retrieve request names, in study/series/instance order.

    ``identifier`` maps DICOM keywords to values (a string, possibly with
    backslash-separated values, or a sequence of strings). ``model`` is the
    information model: "PATIENT" or "STUDY" root. Raises InvalidRetrieveIdentifier.
    An identifier that matches nothing gives an empty list. ``located=False``
    leaves each file unread (``dataset_offset`` -1): the caller runs :func:`locate`
    just before sending it, so the first sub-operation does not wait for every file.
    """
    constraints = plan(level, identifier, model)
    named = [(spec.entity, values) for spec, values in constraints]
    rows = await archive.read(lambda conn: stored_instances(conn, named))
    if not located:
        return [_instance(archive, row) for row in rows]
    return await asyncio.to_thread(_locate, archive, rows)


__all__ = [
    "InvalidRetrieveIdentifier",
    "LEVELS",
    "MODELS",
    "StoredInstance",
    "dataset_offset_of",
    "locate",
    "plan",
    "select_instances",
]
