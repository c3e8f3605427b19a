"""The index schema: patients → studies → series → instances, the association log, the AE registry.

Portable across SQLite and PostgreSQL. Every column users search by is indexed
and, for names, kept in a normalised (casefolded) twin. DICOM dates (DA) and
times (TM) are stored typed, NULL when unparseable, next to their raw text.
Any change here needs a new migration in ``index/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: BIGINT primary keys, except on SQLite where only INTEGER PRIMARY KEY autoincrements.
Id = BigInteger().with_variant(Integer(), "sqlite")
UID = String(64)  # PS3.5 §9.1


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite keeps no zone).

    A naive value is taken as local time, as ``datetime.astimezone`` does.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stamp: dt.datetime = value
        return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """A patient: one per (Patient ID, Issuer), and one per study for instances without a Patient ID.

    ``patient_key`` is the internal key (index/repository.py ``patient_key``): the Patient ID
    itself when there is one, else a per-study key no Patient ID can equal. It is never answered;
    ``patient_id`` is what every query answers and matches ("" for a patient without an ID).
    """

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("patient_key", "issuer_of_patient_id", name="uq_patients_id_issuer"),
        # PostgreSQL: prefix wildcards (LIKE 'smith%') need an operator class that ignores the collation
        # (migration 0014); SQLite's GLOB uses the plain index above.
        Index(
            "ix_patients_patient_name_norm_pattern",
            "patient_name_norm",
            postgresql_ops={"patient_name_norm": "text_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
        Index("ix_patients_patient_id_pattern", "patient_id", postgresql_ops={"patient_id": "text_pattern_ops"}).ddl_if(
            dialect="postgresql"
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_key: Mapped[str] = mapped_column(String())
    patient_id: Mapped[str] = mapped_column(String(), index=True, server_default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String())
    patient_name: Mapped[str] = mapped_column(String())
    patient_name_norm: Mapped[str] = mapped_column(String(), index=True)
    patient_birth_date: Mapped[dt.date | None] = mapped_column(Date())
    patient_birth_date_raw: Mapped[str] = mapped_column(String())
    patient_sex: Mapped[str] = mapped_column(String())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


#: Indexes a migration creates only where the database allows (not declared here): PostgreSQL's
#: trigram index of the patient name, when the pg_trgm extension can be had (migration 0014).
OPTIONAL_INDEXES: Final = frozenset({"ix_patients_patient_name_norm_trgm"})


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index(
            "ix_studies_referring_physician_name_norm_pattern",
            "referring_physician_name_norm",
            postgresql_ops={"referring_physician_name_norm": "text_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_studies_accession_number_pattern",
            "accession_number",
            postgresql_ops={"accession_number": "text_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(Id, ForeignKey("patients.id", name="fk_studies_patient"), index=True)
    study_date: Mapped[dt.date | None] = mapped_column(Date(), index=True)
    study_date_raw: Mapped[str] = mapped_column(String())
    study_time: Mapped[dt.time | None] = mapped_column(Time())
    study_time_raw: Mapped[str] = mapped_column(String())
    accession_number: Mapped[str] = mapped_column(String(), index=True)
    study_id: Mapped[str] = mapped_column(String())
    study_description: Mapped[str] = mapped_column(String())
    referring_physician_name: Mapped[str] = mapped_column(String())
    referring_physician_name_norm: Mapped[str] = mapped_column(String())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(Id, ForeignKey("studies.id", name="fk_series_study"), index=True)
    modality: Mapped[str] = mapped_column(String(), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer())
    series_description: Mapped[str] = mapped_column(String())
    body_part_examined: Mapped[str] = mapped_column(String())
    series_date: Mapped[dt.date | None] = mapped_column(Date())
    series_date_raw: Mapped[str] = mapped_column(String())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(Id, ForeignKey("series.id", name="fk_instances_series"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer())
    number_of_frames: Mapped[int | None] = mapped_column(Integer())
    rows: Mapped[int | None] = mapped_column(Integer())
    columns: Mapped[int | None] = mapped_column(Integer())
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    blob_key: Mapped[str] = mapped_column(String(255), index=True)
    size: Mapped[int] = mapped_column(BigInteger())
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)  # arrivals (migration 0021)
    origin_kind: Mapped[str] = mapped_column(String())
    calling_aet: Mapped[str] = mapped_column(String())
    called_aet: Mapped[str] = mapped_column(String())
    peer_host: Mapped[str] = mapped_column(String())
    #: Size of the file as it arrived, when the archive replaced it by a compressed copy (else NULL).
    original_size: Mapped[int | None] = mapped_column(BigInteger(), nullable=True)
    #: "" (compression not tried), the syntax name it was compressed to, or "skipped: <why>" (migration 0016).
    compression: Mapped[str] = mapped_column(String(), server_default="")


class Association(Base):
    __tablename__ = "associations"
    __table_args__ = (Index("ix_associations_started_at", "started_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    role: Mapped[str] = mapped_column(String())
    calling_aet: Mapped[str] = mapped_column(String())
    called_aet: Mapped[str] = mapped_column(String())
    peer_host: Mapped[str] = mapped_column(String())
    peer_port: Mapped[int] = mapped_column(Integer())
    accepted: Mapped[bool] = mapped_column()
    reject_reason: Mapped[str] = mapped_column(Text())
    end_reason: Mapped[str] = mapped_column(Text())
    contexts: Mapped[str] = mapped_column(Text())  # JSON list
    operations: Mapped[str] = mapped_column(Text())  # JSON list
    bytes_received: Mapped[int] = mapped_column(BigInteger())
    bytes_sent: Mapped[int] = mapped_column(BigInteger())
    #: DICOM TLS: "" plain TCP, the TLS version, or "failed" (handshake); the peer certificate's subject.
    tls: Mapped[str] = mapped_column(String(), default="", server_default="")
    tls_peer: Mapped[str] = mapped_column(Text(), default="", server_default="")
    #: The User Identity username (PS3.7 D.3.3.7), "name (not checked)" when dicom_user_identity = ignore.
    user_identity: Mapped[str] = mapped_column(String(), default="", server_default="")
    #: The minipacs node that saw it (its ``node_id``): several nodes share one index.
    node: Mapped[str] = mapped_column(String(), default="", server_default="")


class Node(Base):
    """A known DICOM node (AE registry). One row per (AE title, host): real sites
    reuse AE titles on several hosts, so the title alone is not a key."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("ae_title", "host", name="uq_nodes_ae_title_host"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))  # PS3.5 Table 6.2-1 AE: at most 16 characters
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer())
    description: Mapped[str] = mapped_column(Text())
    permissions: Mapped[str] = mapped_column(String())  # comma-separated: echo,find,get,move,store
    tls: Mapped[bool] = mapped_column(Boolean())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class WorklistItem(Base):
    """A Modality Worklist entry (PS3.4 Annex K): the whole dataset (PS3.18 JSON), the keys
    modalities filter on most copied into indexed columns, and its lifecycle status."""

    __tablename__ = "worklist"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(16), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    scheduled_station_ae: Mapped[str] = mapped_column(String(16), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    start_date: Mapped[str] = mapped_column(String(8))
    #: SCHEDULED, IN PROGRESS, COMPLETED, DISCONTINUED (from MPPS), CANCELLED (by an order).
    status: Mapped[str] = mapped_column(String(16), index=True)
    dataset: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class PerformedProcedureStep(Base):
    """An MPPS instance (PS3.4 Annex F): its state, links, and the SOP instances it references."""

    __tablename__ = "mpps"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[str] = mapped_column(String(16))  # IN PROGRESS, COMPLETED, DISCONTINUED
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    accession_number: Mapped[str] = mapped_column(String(16))
    worklist_pk: Mapped[int | None] = mapped_column(Id, nullable=True)
    #: Referenced SOP Instance UIDs of the Performed Series Sequence, '\'-joined.
    referenced: Mapped[str] = mapped_column(Text)
    dataset: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class IntakeState(Base):
    """One row: the last intake-log record whose index rows are committed (core/intake.py)."""

    __tablename__ = "intake_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    lsn: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class StudyCompletion(Base):
    """A study whose MPPS is COMPLETED and every referenced instance arrived (issue 5)."""

    __tablename__ = "study_completion"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    mpps_sop_instance_uid: Mapped[str] = mapped_column(UID)
    completed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    #: What C-FIND and QIDO-RS answer in Study Status ID (0032,000A) for this study (core/query_model.py).
    study_status_id: Mapped[str] = mapped_column(String(16), default="COMPLETED", server_default="COMPLETED")


class Change(Base):
    """The changes journal (core/changes.py): one row per change, written in the transaction
    that makes it. ``seq`` only grows; rows are never updated."""

    __tablename__ = "changes"
    seq: Mapped[int] = mapped_column(Id, primary_key=True)
    change_type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16))
    uid: Mapped[str] = mapped_column(String(64))  # a UID, or the Patient ID at patient level
    study_instance_uid: Mapped[str] = mapped_column(UID)  # "" when the change has no single study
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    #: Why, when something other than a person's request made it: "retention:<rule>" (core/retention.py).
    reason: Mapped[str] = mapped_column(String(100), server_default="")
    #: The node (``node_id``) whose transaction made the change (migration 0014).
    node: Mapped[str] = mapped_column(String(64), default="", server_default="")


class StudyLabel(Base):
    """A label on a study (core/labels.py), as Orthanc 1.12 has: keyed by Study Instance UID, removed
    with the study (core/delete.py)."""

    __tablename__ = "study_labels"
    __table_args__ = (UniqueConstraint("study_instance_uid", "label", name="uq_study_labels"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    label: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class JobRecord(Base):
    """One background job (core/jobs.py): what to do (kind + JSON params), where it stands, who runs it.

    The row is the truth for every node sharing the index: a runner claims a queued row (PostgreSQL:
    ``FOR UPDATE SKIP LOCKED``), reports progress and a heartbeat into it, and reads back whether
    someone asked it to stop. Jobs of one ``lane`` run one at a time, in the order of their ids
    (index/jobs_repo.py ``claim``)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_next_try_at", "state", "next_try_at"),
        Index("ix_jobs_lane_state", "lane", "state"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text())
    params: Mapped[str] = mapped_column(Text())  # JSON object: the handler's input, enough to run it again
    #: queued, running, done, failed, cancelled (core/jobs.py JobState).
    state: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer())
    done: Mapped[int] = mapped_column(Integer())
    failed: Mapped[int] = mapped_column(Integer())
    message: Mapped[str] = mapped_column(Text())  # where it stands, in words
    details: Mapped[str] = mapped_column(Text())  # JSON object: the handler's results (failures, counts)
    attempts: Mapped[int] = mapped_column(Integer())
    max_attempts: Mapped[int] = mapped_column(Integer())
    next_try_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str] = mapped_column(Text())
    #: The minipacs node (process) that runs or last ran it: settings.node_name, else host:pid.
    runner: Mapped[str] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    #: The runner's last sign of life; a running row silent for job_stale_seconds is taken over.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    #: "" or an ordered lane (one per HL7 sender, hl7/sequence.py: its ADT and queued orders): a queued
    #: job of a lane is not claimed while an older job of that lane is queued or running, on any node
    #: (migration 0024).
    lane: Mapped[str] = mapped_column(String(64), default="", server_default="")


__all__ = [
    "Association",
    "Base",
    "BlobRemoval",
    "Change",
    "Delivery",
    "Correction",
    "Instance",
    "IntakeState",
    "JobRecord",
    "Node",
    "Patient",
    "PerformedProcedureStep",
    "RoutingMark",
    "RoutingRule",
    "Series",
    "NodeStats",
    "OPTIONAL_INDEXES",
    "StorageStats",
    "Study",
    "StudyCompletion",
    "StudyLabel",
    "UtcDateTime",
    "WorklistItem",
]


class StorageStats(Base):
    """Counters of what the archive holds, for ``GET /api/stats`` without walking the storage folder
    (issue 10). Kept by triggers on patients, studies, series and instances, in the transaction
    that changes them (migration 0010 creates them: SQLite one row, PostgreSQL several rows
    that readers sum, so nodes' writers do not queue on one row). ``index/stats_repo.py`` reads it."""

    __tablename__ = "storage_stats"
    slot: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    patients: Mapped[int] = mapped_column(BigInteger())
    studies: Mapped[int] = mapped_column(BigInteger())
    series: Mapped[int] = mapped_column(BigInteger())
    instances: Mapped[int] = mapped_column(BigInteger())
    #: Sum of ``instances.size``: the bytes of the stored instance files.
    instance_bytes: Mapped[int] = mapped_column(BigInteger())


class NodeStats(Base):
    """What each node sharing the index did since it started, for ``GET /api/stats`` from any node:
    figures a process keeps in memory (its ingests and index transactions) and of its own disk (free
    bytes), written by the node itself every ``node_stats_seconds`` and at its clean stop
    (core/stats.py). One row per ``node_id``; the shared counts are ``storage_stats``."""

    __tablename__ = "node_stats"
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    #: Ingests (any outcome) and index transactions carrying them since the node started.
    ingested: Mapped[int] = mapped_column(BigInteger())
    index_batches: Mapped[int] = mapped_column(BigInteger())
    #: Free bytes on the node's staging filesystem (its own disk unless the data folder is shared).
    free_bytes: Mapped[int] = mapped_column(BigInteger())
    #: False once the node stopped cleanly; a row still True with an old ``updated_at`` is a node
    #: that died or lost the index.
    running: Mapped[bool] = mapped_column()


class InstanceMetadata(Base):
    """PS3.18 JSON metadata (Annex F) of each stored instance, computed once after ingest
    (core/metadata.py) so QIDO-RS and WADO-RS metadata never re-read the files."""

    __tablename__ = "instance_metadata"
    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    json: Mapped[str] = mapped_column(Text())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class AnonymizationMapping(Base):
    """What de-identification replaced (core/anonymize.py): original value <-> pseudonym, by kind
    ("patient_id", "patient_name", "uid", "date_shift_days"). Read by admins only; one row per
    distinct triple (the pseudonyms are keyed HMACs: a new key gives new rows, old ones stay)."""

    __tablename__ = "anonymization_mappings"
    __table_args__ = (
        UniqueConstraint("kind", "original", "pseudonym", name="uq_anonymization_mapping"),
        Index("ix_anonymization_mappings_pseudonym", "pseudonym"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    original: Mapped[str] = mapped_column(String(400))
    pseudonym: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class AuditEvent(Base):
    """The audit trail (core/audit.py): who did what to which patient and study. Rows are written in
    batches off the request path and pruned after ``audit_retention_days``; never updated."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))  # user, token, http, dicom, hl7, rule, cli, system
    actor: Mapped[str] = mapped_column(String(128), index=True)  # user name, token name, AE title, ...
    address: Mapped[str] = mapped_column(String(64))  # client / peer IP address, "" when none
    action: Mapped[str] = mapped_column(String(16))  # core/audit.py Action
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    detail: Mapped[str] = mapped_column(Text())
    node: Mapped[str] = mapped_column(String(), default="", server_default="")
    #: PS3.15 A.5 EventOutcomeIndicator: 0 success, 4 minor failure (a refused login), 8, 12 (migration 0023).
    outcome: Mapped[int] = mapped_column(SmallInteger(), default=0, server_default="0")


class BlobRemoval(Base):
    """A blob of a replaced copy (a re-sent copy under duplicate_policy "replace", a corrected or a
    compressed copy took its place), queued in the transaction that switched the row and removed after
    ``remove_after``: a retrieve that chose the old copy just before the switch still finds it
    (migration 0016; ``size`` since 0022, for the disk figures; core/blob_removals.py)."""

    __tablename__ = "blob_removals"
    __table_args__ = (Index("ix_blob_removals_remove_after", "remove_after"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(255))
    remove_after: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(Text(), default="", server_default="")
    #: The blob's size in bytes, as the replaced row held it (0 for a removal queued before 0022).
    size: Mapped[int] = mapped_column(BigInteger(), default=0, server_default="0")


class RoutingRule(Base):
    """An auto-routing rule created through ``/api/rules`` (core/routing.py; docs/ROUTING.md). Rules of
    the config file are not stored: they are read-only and come back with the config at each start."""

    __tablename__ = "routing_rules"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: The rule as a JSON object, with the same keys as a ``[[rules]]`` table.
    definition: Mapped[str] = mapped_column(Text())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class RoutingMark(Base):
    """What a rule with a waiting trigger (stable, complete, scheduled) has seen and done, per event:
    ``key`` is a Study or Series Instance UID ("stable", "complete") or ``worklist:<id>`` ("scheduled").
    ``last_arrival_at``: the latest instance seen; ``routed_at``: when it was last routed (NULL: not
    yet). A row routes again when an instance arrives after ``routed_at``. Shared by every node: the
    node whose conditional UPDATE sets ``routed_at`` routes it."""

    __tablename__ = "routing_marks"
    __table_args__ = (
        UniqueConstraint("rule", "key", name="uq_routing_marks_rule_key"),
        Index("ix_routing_marks_due", "rule", "last_arrival_at"),
    )
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(80))
    study_instance_uid: Mapped[str] = mapped_column(UID)
    last_arrival_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    routed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class RoutingCursor(Base):
    """Per node: the changes journal's ``seq`` up to which the instances this node stored have been given
    to the "instance" and "stable" rules (their jobs or marks are written; core/routing.py). What came
    after it is routed at the node's next start, even after a crash. No row: no rule watched arrivals."""

    __tablename__ = "routing_cursors"
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class HL7Ack(Base):
    """The ACK (MSA-1 AA) of an HL7 message accepted lately, by the SHA-256 of its bytes (hex): a resend of
    the same bytes within the resend window gets it again, on any node, after a restart (core/hl7_acks.py)."""

    __tablename__ = "hl7_acks"
    __table_args__ = (Index("ix_hl7_acks_received_at", "received_at"),)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    ack: Mapped[bytes] = mapped_column(LargeBinary())
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class WatchCursor(Base):
    """How far in the changes journal a background watcher of this name has looked, for every node sharing
    the index (core/merge_watch.py); moved from the value read, so two nodes never take the same rows."""

    __tablename__ = "watch_cursors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Delivery(Base):
    """The delivery receipt (core/routing.py): one row per instance sent (or study moved) to one
    destination by one rule, with its status in words. ``sop_instance_uid`` is "" for a C-MOVE of a
    whole study (prefetch)."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_rule_destination_sop", "rule", "destination", "sop_instance_uid"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    #: An AE title (C-STORE, C-MOVE) or a URL (STOW-RS).
    destination: Mapped[str] = mapped_column(Text())
    method: Mapped[str] = mapped_column(String(16))  # C-STORE, STOW-RS, C-MOVE
    #: queued, sent, retrying, failed (core/routing.py DeliveryStatus).
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text())
    job_id: Mapped[int | None] = mapped_column(Id, nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class Correction(Base):
    """One correction (core/corrections.py, issue 14): a modify, merge or series move, who asked for
    it and the values the resource had before (JSON objects keyed by DICOM keyword), so a wrong
    correction can be undone by hand. Written by the writer in the transaction that changes the rows."""

    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    #: modify, merge, move (core/corrections.py OPERATIONS).
    operation: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))  # patient, study, series
    #: The resource acted on: Patient ID (patient), Study or Series Instance UID.
    target: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(Text())  # who: user, token, HL7 sender, CLI
    old_values: Mapped[str] = mapped_column(Text())
    new_values: Mapped[str] = mapped_column(Text())
    #: rewriting (files being rewritten), done, failed.
    state: Mapped[str] = mapped_column(String(16))
    instances: Mapped[int] = mapped_column(Integer(), server_default="0")  # files rewritten
    message: Mapped[str] = mapped_column(Text(), server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class RejectedInstance(Base):
    """An instance a rejection note rejected (IHE IOCM; core/rejection.py): its rows and file are
    deleted in the transaction that writes this row, and a later store of the same SOP Instance UID is
    refused (0xA771) unless the reason was Data Retention Policy Expired (113039)."""

    __tablename__ = "rejected_instances"
    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    #: The rejection note's title (CID 7011): 113001, 113037, 113038 or 113039 (scheme DCM).
    code: Mapped[str] = mapped_column(String(16))
    #: The rejection note's SOP Instance UID.
    note_uid: Mapped[str] = mapped_column(String(64))
    #: Who sent the note: "AE title at host" or the HTTP user.
    actor: Mapped[str] = mapped_column(Text())
    rejected_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)
