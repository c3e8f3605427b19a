"""Plain value types shared by the archive core and its edges."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class DuplicatePolicy(str, enum.Enum):
    """What to do with a SOP Instance UID that is already stored."""

    KEEP = "keep"  # keep the first copy, report success (idempotent re-send)
    REPLACE = "replace"  # the new copy replaces the stored one
    REJECT = "reject"  # refuse the new copy


class StoreStatus(str, enum.Enum):
    STORED = "stored"  # new instance
    DUPLICATE_KEPT = "duplicate"  # already had it, kept the first copy
    REPLACED = "replaced"  # already had it, the new copy replaced it


@dataclass(frozen=True)
class Origin:
    """Where an instance or request came from (for the index and the log)."""

    kind: str  # "dicom", "import", "rest", ...
    calling_aet: str = ""
    called_aet: str = ""
    peer_host: str = ""
    peer_port: int = 0


@dataclass(frozen=True)
class StoreOutcome:
    sop_instance_uid: str
    status: StoreStatus
    relative_path: str  # blob key, relative to the blob store root
    size: int  # bytes of the stored Part 10 file
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_class_uid: str = ""
    #: Where the stored copy came from (None where an outcome is made up, e.g. in tests).
    origin: Origin | None = None


@dataclass
class AssociationRecord:
    """One association as the association log keeps it."""

    started_at: datetime
    role: str  # "acceptor" or "requestor"
    calling_aet: str
    called_aet: str
    peer_host: str
    peer_port: int
    accepted: bool
    ended_at: datetime | None = None
    reject_reason: str = ""  # plain words, when not accepted
    end_reason: str = ""  # "released", "aborted by peer", "ARTIM timeout", ...
    contexts: list[dict[str, object]] = field(default_factory=list)
    operations: list[dict[str, object]] = field(default_factory=list)
    bytes_received: int = 0
    bytes_sent: int = 0
    tls: str = ""  # DICOM TLS: "" plain TCP, "TLSv1.3" etc., "failed" for a failed handshake
    tls_peer: str = ""  # the peer certificate's subject, "CN=...,O=..."
    user_identity: str = ""  # the User Identity username (never the passcode)
    node: str = ""  # the minipacs node that saw it (set by Archive.record_association when empty)
    id: int | None = None

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class StagedPath:
    """A staged Part 10 file ready for ingest (written by a StagingFile)."""

    path: Path
    dataset_offset: int  # where the dataset (after File Meta) begins
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    #: The whole Part 10 file when it was received into memory (StagingFile's memory mode): then
    #: nothing is at ``path`` and the writer stores these bytes at the blob key itself.
    data: bytes | None = field(default=None, repr=False, compare=False)
