"""Storage commitment: which requested instances the archive holds durably (PS3.4 J.3).

An instance is committed when its index row exists: the archive writes the row
only after the file is fsynced and moved into storage (core/archive.py), so the
index is the durable record. Never speaks DIMSE: failures carry a reason name
that services/ turns into a Failure Reason (PS3.4 J.3.3.1.1).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from minipacs.dicom.uids import is_storage_sop_class
from minipacs.index import worklist_repo as repo
from minipacs.index.database import IndexConnection

T = TypeVar("T")


class IndexAccess(Protocol):
    async def read(self, call: Callable[[IndexConnection], T]) -> T: ...


class Failure(enum.Enum):
    NO_SUCH_OBJECT = "no such object instance"
    CLASS_INSTANCE_CONFLICT = "stored with another SOP class"
    SOP_CLASS_NOT_SUPPORTED = "not a storage SOP class the archive takes"
    PROCESSING_FAILURE = "the archive could not check it"


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class CommitmentResult:
    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, Failure]] = field(default_factory=list)


def all_failed(references: Sequence[Reference], why: Failure) -> CommitmentResult:
    """Every reference failed for ``why``: the result when the check itself could not be made."""
    return CommitmentResult(failed=[(ref, why) for ref in references])


async def check_commitment(index: IndexAccess, references: Sequence[Reference]) -> CommitmentResult:
    """PS3.4 J.3.3.1: each reference is committed (stored, same SOP class) or failed with why: not
    stored (and of a storage class we take), stored with another class, or of a class the archive
    does not store at all (PS3.3 C.14.1.1 Failure Reason 0122: the requester learns that sending it
    again will not help)."""
    stored = await index.read(lambda conn: repo.stored_instances(conn, [r.sop_instance_uid for r in references]))
    result = CommitmentResult()
    for ref in references:
        held = stored.get(ref.sop_instance_uid)
        if held is None and not is_storage_sop_class(ref.sop_class_uid):
            result.failed.append((ref, Failure.SOP_CLASS_NOT_SUPPORTED))
        elif held is None:
            result.failed.append((ref, Failure.NO_SUCH_OBJECT))
        elif held and ref.sop_class_uid and held != ref.sop_class_uid:
            result.failed.append((ref, Failure.CLASS_INSTANCE_CONFLICT))
        else:
            result.committed.append(ref)
    return result


__all__ = ["CommitmentResult", "Failure", "Reference", "all_failed", "check_commitment"]
