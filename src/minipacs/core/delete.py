"""Deleting resources from the archive: index rows first (one writer transaction), then files.

A patient, study, series or instance goes with everything below it; a series,
study or patient left without children goes too. Each resource removed gets a
"Deleted" row in the changes journal (core/changes.py), in the same transaction.
Files are removed after the commit, by the blob keys read from the deleted rows in
the same transaction, never by a path computed from UIDs: each stored copy has its
own key (core/paths.py), so a copy of the same instance re-sent while the deletion
runs is stored under a new key and survives it. A crash in between leaves unindexed
files (harmless; ``minipacs check`` lists them), never rows pointing to missing files. A study that loses instances
also loses its completion mark (core/mpps.py): it is checked again at once, and
waits for its referenced instances if one of them went. A study that goes loses its labels
(core/labels.py) in the same transaction, and the deleted instances (a study that goes: all its
rows) lose their delivery receipts (core/routing.py; docs/ROUTING.md says why).

A deletion made by a policy rather than a person (retention, core/retention.py) gives a
``reason`` ("retention:<rule>"), written in every journal row it makes, and may give a
``guard``: called first in the same transaction, it refuses the deletion (:class:`Spared`)
when what the plan saw has changed (a protecting label put on meanwhile, new arrivals).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from minipacs.blobs.base import BlobError
from minipacs.core.archive import Archive
from minipacs.core.changes import ChangeType, change_row, record
from minipacs.core.errors import ArchiveError, NotFound
from minipacs.core.metadata import delete_rows
from minipacs.index import deletion_repo, labels_repo, routing_repo
from minipacs.index.database import IndexConnection
from minipacs.index.entities import Entity

log = logging.getLogger(__name__)

#: Level a deletion names -> the index entity (the names are the changes journal's levels).
LEVELS: Final[Mapping[str, Entity]] = {entity.value: entity for entity in Entity}


class Spared(ArchiveError):
    """A guarded deletion did not happen: its guard said why (the message)."""


#: Called in the deletion's transaction before anything goes: a reason to spare the resource, or None.
Guard = Callable[[IndexConnection], str | None]


@dataclass(frozen=True)
class Deleted:
    instances: int
    bytes: int


@dataclass(frozen=True)
class _Removed:
    files: list[tuple[str, str, int]]  # (SOP Instance UID, blob key, size) of exactly the rows deleted
    uncompleted: set[str]  # studies whose completion mark went with the deletion


def _delete_rows(
    conn: IndexConnection,
    level: str,
    uids: Sequence[str],
    reason: str = "",
    guard: Guard | None = None,
    *,
    missing: list[str] | None = None,
) -> _Removed:
    """Delete the resources ``uids`` of ``level`` and what hangs on them, in the caller's transaction:
    their instances first, then ONE pass over parents left empty, one journal write, one sweep of
    completion marks (per resource, each is a scan: a rejection note naming 100 instances made 100).
    A UID not stored raises NotFound, or is added to ``missing`` when a list is given."""
    if guard is not None:
        spared = guard(conn)
        if spared is not None:
            raise Spared(spared)
    rows: list[deletion_repo.DeletedInstance] = []
    found: list[str] = []
    for uid in dict.fromkeys(uids):
        these = deletion_repo.delete_instances(conn, LEVELS[level], uid)
        if these is None:
            if missing is None:
                raise NotFound(f"{level} {uid[:70]!r} is not in the archive")
            missing.append(uid)
            continue
        rows += these
        found.append(uid)
    delete_rows(conn, [row.sop_instance_uid for row in rows])
    now = dt.datetime.now(dt.UTC)
    journal = [
        change_row(ChangeType.DELETED, row.sop_instance_uid, row.study_instance_uid, now, "instance", reason)
        for row in rows
    ]
    parents = deletion_repo.delete_orphans(conn)  # parents left without children, bottom up
    journal += [
        change_row(ChangeType.DELETED, parent.name, parent.study_instance_uid, now, parent.entity.value, reason)
        for parent in parents
    ]
    record(conn, journal)
    gone_studies = [parent.name for parent in parents if parent.entity is Entity.STUDY]
    if gone_studies:
        labels_repo.delete_for_studies(conn, gone_studies)
    deleted_sops: dict[str, list[str]] = {}
    for row in rows:
        deleted_sops.setdefault(row.study_instance_uid, []).append(row.sop_instance_uid)
    routing_repo.delete_deliveries(conn, deleted_sops, gone_studies)  # docs/ROUTING.md "A study deleted"
    studies = sorted({row.study_instance_uid for row in rows} | (set(found) if level == "study" else set()))
    uncompleted = deletion_repo.delete_completions(conn, studies)
    return _Removed([(row.sop_instance_uid, row.blob_key, row.size) for row in rows], uncompleted)


async def delete_resources(
    archive: Archive, level: str, uids: Sequence[str], *, reason: str = "", first: Guard | None = None
) -> tuple[Deleted, list[str]]:
    """Delete every resource of ``level`` named in ``uids`` that is stored, in ONE transaction, after
    ``first(conn)`` (more writes of the same transaction; a reason it returns refuses all: Spared).
    Answers what went and the UIDs that were not stored. Used where the deletion and its cause must
    commit together (core/rejection.py: a rejection note's record and the instances it rejects)."""
    if level not in LEVELS or LEVELS[level] is Entity.PATIENT:
        raise ValueError(f"cannot delete several of level {level!r}")

    def run(conn: IndexConnection) -> tuple[_Removed, list[str]]:
        if first is not None:
            spared = first(conn)
            if spared is not None:
                raise Spared(spared)
        missing: list[str] = []
        return _delete_rows(conn, level, uids, reason, missing=missing), missing

    removed, missing = await archive.write(run, removes_entities=True)
    await _after_deletion(archive, removed)
    gone = len(set(uids)) - len(missing)
    log.info("deleted %d %s(s): %d instance(s)%s", gone, level, len(removed.files), f" ({reason})" if reason else "")
    return Deleted(len(removed.files), sum(size for _, _, size in removed.files)), missing


async def _after_deletion(archive: Archive, removed: _Removed) -> None:
    """The listeners, then the removal of exactly the deleted rows' own copies (after the commit)."""
    if removed.uncompleted:
        for listener in archive.on_uncompleted:
            try:
                listener(removed.uncompleted)
            except Exception:
                log.exception("after-deletion listener %r failed", listener)

    def remove_files() -> None:
        for _, key, _ in removed.files:
            try:
                archive.blobs.delete(key)
            except (OSError, BlobError) as exc:
                log.error("deleted instance file %s could not be removed: %s", key, exc)

    await asyncio.to_thread(remove_files)


async def delete_resource(
    archive: Archive, level: str, uid: str, *, reason: str = "", guard: Guard | None = None
) -> Deleted:
    """Delete a patient (by Patient ID), study, series or instance (by UID); raises NotFound, or
    Spared when ``guard`` refuses. ``reason`` goes into each journal row (module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    if LEVELS[level] is Entity.PATIENT and not uid.strip(" "):
        # it would name every patient without an ID at once (index/repository.py patient_key)
        raise NotFound(
            "an empty Patient ID names no patient: patients without one are kept apart, one per "
            "study; delete the study instead"
        )
    removed = await archive.write(lambda conn: _delete_rows(conn, level, [uid], reason, guard), removes_entities=True)
    rows = removed.files
    await _after_deletion(archive, removed)
    log.info("deleted %s %s: %d instance(s)%s", level, uid, len(rows), f" ({reason})" if reason else "")
    return Deleted(len(rows), sum(size for _, _, size in rows))


__all__ = ["LEVELS", "Deleted", "Guard", "Spared", "delete_resource", "delete_resources"]
