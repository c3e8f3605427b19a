"""Typed settings: built-in defaults < TOML file < MINIPACS_* environment < flags.

Every limit the server enforces is a field here, with its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from minipacs.blobs.s3 import parse_s3_url
from minipacs.core.compression import CompressionPolicy, InvalidPolicy, policy_from_mapping
from minipacs.core.merge_watch import MODES as MERGED_ARRIVAL_MODES
from minipacs.core.model import DuplicatePolicy
from minipacs.core.nodes import OPERATIONS, InvalidNode, Node, node_from_mapping
from minipacs.core.pixel_clean import InvalidPixelRegions, PixelRegions, regions_from_tables
from minipacs.core.rejection import MODES as REJECTION_MODES
from minipacs.core.retention import InvalidRetentionRule, RetentionRule, check_rules, rule_from_mapping
from minipacs.core.rules import InvalidRule, Rule, rules_from_tables
from minipacs.core.users import DICOM_IDENTITY_MODES, ApiToken, InvalidUser, User, token_from_mapping, user_from_mapping

KiB = 1024
MiB = 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


#: Longest node_id: it goes into folder names, log lines and the ``runner`` of jobs.
NODE_ID_MAX: Final = 64
NODE_ID_PATTERN: Final = re.compile(rf"[A-Za-z0-9._-]{{1,{NODE_ID_MAX}}}")
#: keep_replaced_seconds when neither it nor its older name is set.
DEFAULT_KEEP_REPLACED_SECONDS: Final = 300.0


def default_node_id(hostname: str | None = None) -> str:
    """The host name made a valid node_id: other characters become '-', cut to NODE_ID_MAX."""
    host = socket.gethostname() if hostname is None else hostname
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", host)[:NODE_ID_MAX].strip("-.")
    return cleaned or "minipacs"


@dataclass(frozen=True)
class Settings:
    # --- where things live
    data_dir: Path = Path("minipacs-data")
    #: Where `minipacs ohif install` put the OHIF viewer (served at /ohif/); empty means DATA/ohif.
    ohif_dir: str = ""
    #: SQLAlchemy URL of the index; empty means SQLite at DATA/index.sqlite3.
    index_url: str = ""
    # --- DICOM listener
    ae_title: str = "MINIPACS"
    host: str = "0.0.0.0"
    port: int = 11112
    #: Reject associations whose Called AE Title is not ours (A-ASSOCIATE-RJ reason 7).
    check_called_aet: bool = False
    #: Accept for storage a SOP class we do not know: a private one (not under 1.2.840.10008.) or a
    #: Storage class newer than our dictionary (1.2.840.10008.5.1.4.1.1.*), as Orthanc's
    #: UnknownSopClassAccepted. Off: such a context is rejected, abstract syntax not supported.
    accept_unknown_sop_classes: bool = False
    # --- DICOM TLS (PS3.15 B.1, net/tls.py) and user identity (PS3.7 D.3.3.7, services/user_identity.py)
    #: Second DICOM listener speaking TLS (2762 is the registered port); 0: none.
    tls_port: int = 0
    #: Our certificate and its private key (PEM): the TLS listener's, and shown to TLS nodes we call.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: CA certificates (PEM) the peers' certificates must chain to: needed to call nodes registered with tls.
    tls_ca_file: str = ""
    #: TLS clients must present a certificate chaining to tls_ca_file (else the handshake fails).
    tls_require_client_cert: bool = False
    #: CRLs (PEM) of the CAs in tls_ca_file: a revoked peer certificate fails the handshake, both ways.
    #: Read again when the file changes; "" no revocation check.
    tls_crl_file: str = ""
    #: User Identity Negotiation: "ignore" (log only), "optional" (checked when sent), "required".
    dicom_user_identity: str = "ignore"
    #: Under dicom_user_identity = "required", a username without passcode (type 1) is enough.
    dicom_trust_usernames: bool = False
    # --- limits
    max_associations: int = 32
    #: Open associations one peer address may hold (its share of max_associations); 0: no cap of its own.
    max_associations_per_host: int = 24
    #: Connections not yet associations (TCP accepted, TLS handshake or A-ASSOCIATE-RQ under way), per
    #: listener: beyond this many in all, or max_pending_per_host from one address, closed at once.
    max_pending_connections: int = 64
    max_pending_per_host: int = 8
    #: From TCP accept to a complete A-ASSOCIATE-RQ, TLS handshake included (seconds; ARTIM if shorter).
    handshake_timeout: float = 10.0
    #: Requests one association may have outstanding with us when the requestor proposes an
    #: Asynchronous Operations Window (PS3.7 D.3.3.3); without one it is 1.
    max_async_operations: int = 8
    #: The largest data set of one request other than a C-STORE's (a C-FIND/C-GET/C-MOVE identifier,
    #: an N-xxx attribute list) received into memory; past it the request gets its service's
    #: out-of-resources status (net/memory.py). 1 KiB to 1 GiB.
    memory_dataset_max_bytes: int = 16 * MiB
    #: What all those data sets, of every association, and the C-STOREs received into memory
    #: (receive_in_memory_max_bytes each) hold at once: past it a request is refused (out of
    #: resources) and a C-STORE goes to a staging file instead. At least memory_dataset_max_bytes.
    memory_datasets_budget_bytes: int = 256 * MiB
    #: Distinct calling AE titles /metrics labels separately; later ones count as "(other)"
    #: (a peer chooses its title: the labels, and the memory they take, stay bounded).
    metrics_max_ae_labels: int = 200
    #: Maximum PDU length we announce and accept (PS3.8 D.1); 0 = unlimited is refused.
    max_pdu_receive: int = 1 * MiB
    #: Largest PDU length we send, whatever the peer allows (0 = as the peer allows).
    max_pdu_send: int = 1 * MiB
    #: The smallest Maximum Length (PS3.8 D.1) a peer may announce; less: its A-ASSOCIATE-RQ is rejected
    #: (and its A-ASSOCIATE-AC, when we call it, not used). 0 ("no maximum") is always accepted.
    #: 8 (the least that can be honoured) to 1048576.
    max_pdu_peer_min: int = 1024
    #: Most matches one C-FIND returns (0: no limit); past it: 0xA700 after that many.
    max_results: int = 0
    #: Most matches of a C-FIND WE send to another node that are kept (web UI, prefetch, doctor):
    #: past it C-CANCEL is sent and the rest dropped, so a peer's answer cannot fill our memory.
    remote_find_max_matches: int = 10_000
    #: Most stored files one query (C-FIND, QIDO-RS, the web's search) reads to match or answer keys the
    #: index does not hold (a private tag, PatientComments, ...): one file per candidate entity. Past it
    #: C-FIND ends with 0xA700 after the matches found so far, QIDO-RS answers those with a Warning.
    #: 0: no limit.
    query_max_file_reads: int = 10_000
    #: Largest dataset accepted in one C-STORE (bytes).
    max_dataset_bytes: int = 4096 * MiB
    #: A deflated dataset (PS3.5 A.5) inflating to more than this many times its size is refused (0xA700);
    #: 0: no ratio limit (max_dataset_bytes still bounds the inflated size).
    max_inflate_ratio: int = 100
    #: Deepest sequence nesting accepted at ingest (deeper: refused) and read from a stored file
    #: (metadata, transcoding; deeper: unreadable).
    max_sequence_depth: int = 64
    #: ARTIM timer: how long to wait for A-ASSOCIATE-RQ, or for the close after release/abort.
    acse_timeout: float = 30.0
    #: How long a DIMSE exchange may stall (peer silent mid-message, or no response).
    dimse_timeout: float = 60.0
    #: An association idle this long between messages is aborted.
    idle_timeout: float = 300.0
    #: TCP connect timeout for associations we request.
    connect_timeout: float = 15.0
    # --- storage behaviour
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    #: A replaced copy's file (re-sent under "replace", corrected, compressed) stays this many seconds
    #: after the switch, so a retrieve that chose it still reads it (core/blob_removals.py). None: the
    #: older compression_keep_replaced_seconds, else 300.
    keep_replaced_seconds: float | None = None
    #: fsync every stored file and index commit before answering success.
    fsync: bool = True
    #: Stored files up to this size are made durable by the intake log, one flush per batch
    #: (core/intake.py); larger ones by their own fsyncs. 0: never the log.
    intake_inline_max_bytes: int = 1 * MiB
    #: A C-STORE of at most this many bytes (File Meta included) is received into memory, not a
    #: staging file, when the intake log takes it (core/staging.py); 0: always a staging file.
    #: At most max_associations x (max_async_operations + 1) are held at once, and only while
    #: memory_datasets_budget_bytes has room for them (else a staging file).
    receive_in_memory_max_bytes: int = 1 * MiB
    #: Size of one intake-log segment file (data/intake/); the first ones are smaller.
    intake_segment_bytes: int = 16 * MiB
    #: Instances received into memory are stored as entries of pack files of up to this size
    #: (DATA/storage/packs/, blobs/packs.py), not one file each; 0: one file per instance.
    pack_bytes: int = 64 * MiB
    #: A C-STORE alone on a SQLite index is ingested on the event loop, without the writer thread's two
    #: hand-offs (core/archive.py); when those ingests take longer than this on average (a slow disk),
    #: they go through the writer for loop_ingest_pause_seconds. 0: always through the writer.
    loop_ingest_max_ms: float = 5.0
    loop_ingest_pause_seconds: float = 10.0
    #: Every this many seconds, studies whose procedure step is COMPLETED but not yet marked complete
    #: are checked again (a step completed on another node sharing the index).
    completion_recheck_seconds: float = 5.0
    #: Most seconds between intake-log checkpoints while instances arrive.
    intake_checkpoint_seconds: float = 1.0
    #: A checkpoint also starts after this many bytes of log records.
    intake_checkpoint_bytes: int = 64 * MiB
    #: glibc's mmap threshold, fixed (core/malloc_tuning.py): buffers of this size or more go back to
    #: the kernel when freed, so big transfers do not leave the RSS higher. 0: glibc's dynamic default.
    malloc_mmap_threshold_kib: int = 2048
    # --- logging
    log_level: str = "INFO"
    # --- scale-out (docs/SCALE-OUT.md)
    #: This node's name among the nodes sharing one index: in the association log, the changes journal,
    #: the statistics, the jobs it runs (it takes back its own running jobs at start) and its staging
    #: folders. Empty: the host name, sanitised. 1 to 64 of A-Z a-z 0-9 . _ -; two running nodes on one
    #: index never share one (the second is refused), and a SQLite index serves one node only.
    node_id: str = ""
    #: Seconds between writes of this node's own figures (ingests, free disk) to the index, where
    #: ``GET /api/stats`` on any node reads every node's (also written at start and at a clean stop).
    node_stats_seconds: float = 10.0
    # --- access policy and AE registry (see core/access.py)
    #: What a calling AE that is not a registered node may ask for (echo, store, find, move, get, mpps,
    #: commit; store grants mpps and commit too);
    #: empty: only registered nodes may associate (others get A-ASSOCIATE-RJ reason 3).
    allow_unregistered: tuple[str, ...] = ("echo", "store", "find")
    #: A registered calling AE must connect from the host it is registered on.
    check_calling_host: bool = False
    #: Seconds between re-reads of the AE registry by a running server (`minipacs nodes` edits).
    nodes_refresh: float = 5.0
    #: Nodes from the config file (``[[nodes]]`` tables), upserted into the registry at start-up.
    nodes: tuple[Node, ...] = ()
    # --- the doctor (services/doctor.py, core/diagnostics.py)
    #: `minipacs doctor` without a node checks at most this many nodes at once.
    doctor_parallel: int = 8
    #: Step 5 (the way back) waits this many seconds for the images of its C-MOVE to reach us.
    doctor_move_wait: float = 10.0
    #: The passive findings read the latest this many associations of the log.
    diagnostics_window: int = 10000
    #: A running server looks for new findings this often (s) and logs a WARNING when one first appears.
    diagnostics_interval: float = 60.0
    # --- background jobs: sends, retrieves (core/jobs.py; README "Jobs")
    #: The older spelling of node_id (kept so existing configurations still start).
    node_name: str = ""
    #: Jobs this node runs at once.
    job_concurrency: int = 4
    #: Attempts before a job that keeps failing for a passing reason (a peer down) fails for good.
    job_max_attempts: int = 5
    #: Seconds before the second attempt; each further wait doubles, up to job_retry_max_seconds.
    job_retry_seconds: float = 30.0
    job_retry_max_seconds: float = 3600.0
    #: Seconds between looks for due jobs (a job submitted on this node starts at once).
    job_poll_seconds: float = 2.0
    #: Seconds between progress reports of a running job (when cancelling it takes effect).
    job_progress_seconds: float = 1.0
    #: A running job whose node gave no sign of life for this long is taken over (resumed or failed).
    job_stale_seconds: float = 60.0
    #: Finished jobs are deleted this many days after they ended; 0 keeps them.
    job_keep_days: float = 30.0
    # --- HTTP: REST API and DICOMweb (web/)
    http_host: str = "127.0.0.1"
    #: 0 turns the HTTP server off.
    http_port: int = 8042
    #: Largest HTTP request body accepted (uploads, STOW-RS); larger: 413.
    max_upload_bytes: int = 1024 * MiB
    #: HTTP connections open at once; one more is answered 503 and closed.
    http_max_connections: int = 512
    #: Seconds a connection may take to send a complete request head (after opening or a response).
    http_header_timeout: float = 10.0
    #: Seconds a request body may stall (no byte) while it is read; then 408.
    http_body_timeout: float = 30.0
    #: Largest request head (request line, header fields, blank line; RFC 9112 §2.1); larger: 431
    #: (RFC 6585 §5), or 414 when the request line alone is larger. 16 KiB: h11's and Node's default.
    http_max_header_bytes: int = 16 * 1024
    #: A ZIP upload may inflate to at most this many bytes in all (each member: max_dataset_bytes); larger: 413.
    max_zip_inflated_bytes: int = 8192 * MiB
    #: ... and to at most this many times its own size (beyond 1 MiB): an inflation bomb is refused (413).
    max_zip_ratio: int = 200
    #: Renders and transcodes (/rendered, /thumbnail, WADO-URI images, transcoded WADO-RS) running at once ...
    max_concurrent_renders: int = 2
    #: ... and waiting for a turn; beyond both: 503 with Retry-After.
    render_queue: int = 16
    #: Most files in one request: STOW-RS parts, upload multipart parts or ZIP members; more: 413.
    max_upload_parts: int = 10000
    #: This many failed HTTP logins from one address, or for one user name, within login_lockout_seconds ...
    login_attempts: int = 10
    #: ... lock that address or name out (429) for this many seconds.
    login_lockout_seconds: float = 300.0
    #: A web UI session (login page, cookie) unused this many seconds ends.
    session_idle_timeout: float = 28800.0
    #: At most this many UI sessions at once (kept in memory); the least recently used ends first.
    max_sessions: int = 10000
    #: The web study list filters, counts and sorts at most this many studies (after the name and date filters,
    #: which the index applies); beyond: it says so and asks for a narrower search.
    ui_search_max_studies: int = 5000
    #: The web association log filters and pages the latest this many associations.
    ui_log_window: int = 10000
    # --- HL7 v2 orders over MLLP (hl7/mllp.py)
    hl7_host: str = "127.0.0.1"
    #: 0 turns the HL7 listener off.
    hl7_port: int = 0
    #: Largest MLLP frame accepted; larger: NAK (AR) and the connection is closed.
    hl7_max_message_bytes: int = 1 * MiB
    #: An HL7 connection silent this long is closed.
    hl7_idle_timeout: float = 300.0
    #: HL7 connections open at once; one more is closed at once (each may hold hl7_max_message_bytes).
    hl7_max_connections: int = 64
    #: A message sent again byte for byte within this many seconds of its AA (the sender lost the ACK) gets
    #: that ACK again and is not applied twice (hl7/sequence.py Resends); 0 turns it off.
    hl7_resend_window: float = 600.0
    #: At most this many accepted messages are remembered for that (the oldest go first).
    hl7_resend_max: int = 1000
    # --- de-identification (core/anonymize.py, docs/ANONYMIZATION.md)
    #: Secret of the keyed pseudonyms (HMAC-SHA256), at least 16 characters; empty: a random key
    #: generated once into DATA/anonymization.key. Same key, same pseudonyms and UIDs in every run.
    anonymization_key: str = dataclasses.field(default="", repr=False)
    #: Whose rejection notes (IHE IOCM: a Key Object Selection titled 113001, 113037, 113038 or 113039) delete
    #: the instances they list: registered (AE registry nodes and HTTP users who may store), any, off (every
    #: note refused). A note its sender may not make is refused before it is stored (core/rejection.py).
    rejection_notes: str = "registered"
    #: Instances arriving under a Patient ID a merge took away (core/merge_watch.py): warn (a WARNING naming
    #: the merge to apply), merge (merged into the survivor again at once: only where prior IDs are never
    #: reused for another person), off.
    merged_patient_arrivals: str = "warn"
    #: ``[[pixel_regions]]`` tables: where machines burn text into their images, for the clean-pixel-data
    #: de-identification option (core/pixel_clean.py; docs/ANONYMIZATION.md).
    pixel_regions: tuple[PixelRegions, ...] = ()
    #: A REST anonymization of more instances than this runs as a job (202 and the job's id).
    anonymize_job_threshold: int = 200
    # --- the audit trail (core/audit.py, docs/AUDIT.md)
    #: Audit rows are deleted this many days after they were written; 0 keeps them for ever.
    audit_retention_days: int = 365
    #: Waiting audit events are written to the index this often (s), in one transaction.
    audit_flush_seconds: float = 1.0
    #: At most this many audit events wait in memory (the index down); beyond, the oldest are dropped.
    audit_max_pending: int = 100_000
    #: Send each audit row on as a DICOM Audit Message (PS3.15 A.5) over syslog to this collector (an
    #: IHE ATNA audit record repository): "udp://host:514" (RFC 5426) or "tls://host:6514" (RFC 5425); "" off.
    audit_syslog: str = ""
    #: tls://: the CA (PEM) the collector's certificate must chain to; tls_cert_file/tls_key_file, when
    #: set, are our client certificate.
    audit_syslog_ca_file: str = ""
    #: Audit messages waiting for the collector at most; beyond, the oldest are dropped (the index keeps them).
    audit_syslog_queue: int = 10_000
    # --- corrections (core/corrections.py, docs/CORRECTIONS.md)
    #: A modify, merge or series move touching more instances than this runs as a job (202 + job id).
    correction_inline_max_instances: int = 200
    #: Passes that rewrite instances stored into the resource while it is corrected (at least 1).
    correction_max_passes: int = 3
    #: ``[[users]]`` (name, password_hash, role) and ``[[tokens]]`` (name, token_hash, role, expires).
    users: tuple[User, ...] = ()
    tokens: tuple[ApiToken, ...] = ()
    # --- retention (core/retention.py; docs/RETENTION.md)
    #: ``[[retention]]`` rules: name, older_than_days + by, max_storage_bytes, match, protect_label.
    retention: tuple[RetentionRule, ...] = ()
    #: Seconds between the periodic retention runs (jobs of kind "retention"); 0: only when asked.
    retention_interval_seconds: float = 3600.0
    #: Days the changes journal (GET /api/changes) keeps its rows (core/journal_retention.py); 0: for ever.
    changes_retention_days: int = 0
    #: Folder the server backs the archive up into (core/backup.py, jobs of kind "backup"); "" none.
    backup_dir: str = ""
    #: Seconds between the periodic backups into backup_dir; 0: only when asked (POST /api/backup).
    backup_interval_seconds: float = 86400.0
    #: Most studies one retention run deletes (the next run goes on).
    retention_max_deletions: int = 1000
    # --- lossless compression of stored instances (core/compression.py; docs/COMPRESSION.md)
    #: ``[[compression]]`` tables: name, syntax, match, older_than_days, when.
    compression: tuple[CompressionPolicy, ...] = ()
    #: An ingest policy's job starts once no instance arrived for this many seconds.
    compression_ingest_delay_seconds: float = 5.0
    #: Every this many seconds each policy sweeps the archive for instances it has not looked at.
    compression_sweep_seconds: float = 3600.0
    #: The older name of keep_replaced_seconds (it covers every replaced copy now), still read.
    compression_keep_replaced_seconds: float | None = None
    #: Stored instances larger than this are not compressed (encoding holds the pixels ~3 times in memory).
    compression_max_instance_bytes: int = 512 * MiB
    # --- auto-routing (core/rules.py, core/routing.py; docs/ROUTING.md)
    #: ``[[rules]]`` tables: read-only here; rules made through /api/rules live in the index.
    rules: tuple[Rule, ...] = ()
    #: Seconds between looks for quiet studies (when = "stable"), completed studies and new worklist entries.
    routing_poll_seconds: float = 1.0
    #: A "complete" or "scheduled" rule also acts on studies completed / entries created this many seconds
    #: before it first looked (at start-up, or when it was made): what happened while the server was down.
    routing_catch_up_seconds: float = 3600.0
    #: After the first arrival of a burst, the router waits this long for more before routing it ("instance"
    #: and "stable" rules): a burst becomes one job per study and destination rather than many small ones.
    routing_coalesce_seconds: float = 0.2
    # --- PROXY protocol behind a load balancer (net/proxy_protocol.py; docs/SCALE-OUT.md)
    #: Addresses / networks (e.g. "10.0.0.0/8") whose connections to the DICOM, DICOM TLS and HL7 ports must
    #: start with a PROXY header (HAProxy send-proxy / send-proxy-v2) naming the real client; empty: off.
    proxy_protocol_from: tuple[str, ...] = ()
    #: Longest version 2 PROXY header accepted after its 16 fixed bytes (addresses and extensions).
    proxy_protocol_v2_max_bytes: int = 1024
    #: Reverse proxies (addresses / networks) whose X-Forwarded-For and X-Forwarded-Proto headers the HTTP
    #: port believes: the client they name is the address in the audit trail, logs and login limits.
    #: Empty (default): the headers are ignored, from loopback too (anyone could write them).
    http_trusted_proxies: tuple[str, ...] = ()
    # --- where stored instances live (blobs/; docs/S3.md)
    #: "" (default): files under DATA/storage. "s3://BUCKET/PREFIX": objects in an S3-compatible store
    #: (credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws, as every AWS client reads them).
    storage: str = ""
    #: URL of the S3 API (e.g. http://127.0.0.1:9000 for MinIO); "": AWS's own, from the region.
    s3_endpoint: str = ""
    #: S3 region (e.g. eu-central-1); "": from AWS_DEFAULT_REGION or ~/.aws/config.
    s3_region: str = ""
    #: Files of this size or more are uploaded in parts of this size (5 MiB, S3's smallest part, to 5 GiB).
    s3_multipart_bytes: int = 64 * MiB
    #: Uploads in flight at once (the instances of one writer batch go up together).
    s3_concurrency: int = 8

    def _validate_storage(self) -> None:
        if self.storage:
            if not self.storage.startswith("s3://"):
                raise ConfigError(
                    f"storage {self.storage[:100]!r} is not an S3 location: leave it empty (files under "
                    "DATA/storage) or write s3://BUCKET/PREFIX"
                )
            try:
                parse_s3_url(self.storage)
            except ValueError as exc:
                raise ConfigError(f"storage: {exc}") from None
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"s3_endpoint {self.s3_endpoint[:100]!r} must be an http:// or https:// URL")
        if not 5 * MiB <= self.s3_multipart_bytes <= 5 * 1024 * MiB:
            raise ConfigError("s3_multipart_bytes must be 5242880 (5 MiB, S3's smallest part) to 5 GiB")
        if not 1 <= self.s3_concurrency <= 64:
            raise ConfigError("s3_concurrency must be 1 to 64")

    @property
    def resolved_node_id(self) -> str:
        """node_id, else the older node_name, else the host name made fit (default_node_id)."""
        return self.node_id or self.node_name or default_node_id()

    @property
    def resolved_keep_replaced_seconds(self) -> float:
        """keep_replaced_seconds, else the older compression_keep_replaced_seconds, else 300."""
        for value in (self.keep_replaced_seconds, self.compression_keep_replaced_seconds):
            if value is not None:
                return value
        return DEFAULT_KEEP_REPLACED_SECONDS

    @property
    def resolved_index_url(self) -> str:
        if self.index_url:
            return self.index_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    def validate(self) -> Settings:
        self._validate_storage()
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ConfigError(f"ae_title {self.ae_title!r} must be 1 to 16 characters")
        if not all(0x20 <= ord(c) < 0x7F and c != "\\" for c in self.ae_title):
            raise ConfigError(f"ae_title {self.ae_title!r} may only use printable ASCII without backslash")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if not 0 <= self.tls_port <= 65535:
            raise ConfigError(f"tls_port {self.tls_port} is outside 0..65535 (0 turns the TLS listener off)")
        if self.tls_port and self.tls_port == self.port:
            raise ConfigError(f"tls_port {self.tls_port} is also the plain DICOM port; give TLS its own (2762)")
        if self.tls_port and not (self.tls_cert_file and self.tls_key_file):
            raise ConfigError("tls_port needs tls_cert_file and tls_key_file (our certificate and its key, PEM)")
        if self.tls_crl_file and not self.tls_ca_file:
            raise ConfigError("tls_crl_file needs tls_ca_file: revocation is checked for certificates of those CAs")
        if self.tls_require_client_cert and not self.tls_ca_file:
            raise ConfigError("tls_require_client_cert needs tls_ca_file, the CA that signs the clients' certificates")
        if self.dicom_user_identity not in DICOM_IDENTITY_MODES:
            raise ConfigError(
                f"dicom_user_identity {self.dicom_user_identity!r} must be one of {', '.join(DICOM_IDENTITY_MODES)}"
            )
        if self.max_associations < 1:
            raise ConfigError("max_associations must be at least 1")
        if self.max_associations_per_host < 0:
            raise ConfigError("max_associations_per_host must be 0 (no cap of its own) or more")
        if self.max_pending_connections < 1 or self.max_pending_per_host < 1:
            raise ConfigError("max_pending_connections and max_pending_per_host must be at least 1")
        if self.max_pending_per_host > self.max_pending_connections:
            raise ConfigError(
                f"max_pending_per_host ({self.max_pending_per_host}) is more than "
                f"max_pending_connections ({self.max_pending_connections}); lower it or raise the total"
            )
        if not 1 <= self.max_async_operations <= 64:
            raise ConfigError("max_async_operations must be 1 to 64")
        if not KiB <= self.memory_dataset_max_bytes <= 1024 * MiB:
            raise ConfigError("memory_dataset_max_bytes must be 1024 (1 KiB) to 1073741824 (1 GiB)")
        if not self.memory_dataset_max_bytes <= self.memory_datasets_budget_bytes <= 1024 * 1024 * MiB:
            raise ConfigError(
                f"memory_datasets_budget_bytes ({self.memory_datasets_budget_bytes}) must be at least "
                f"memory_dataset_max_bytes ({self.memory_dataset_max_bytes}), which one request may hold, "
                "and at most 1 TiB"
            )
        if not 1 <= self.metrics_max_ae_labels <= 100_000:
            raise ConfigError("metrics_max_ae_labels must be 1 to 100000")
        if self.max_pdu_receive < 4096:
            raise ConfigError("max_pdu_receive must be at least 4096 bytes")
        if not 8 <= self.max_pdu_peer_min <= MiB:
            raise ConfigError(
                "max_pdu_peer_min must be 8 (a PDV header and 2 bytes, the least that can be honoured) to 1048576"
            )
        if self.max_pdu_send < 0 or 0 < self.max_pdu_send < 4096:
            raise ConfigError("max_pdu_send must be 0 (as the peer allows) or at least 4096 bytes")
        if self.ui_log_window < 1:
            raise ConfigError("ui_log_window must be at least 1")
        if self.ui_search_max_studies < 1:
            raise ConfigError("ui_search_max_studies must be at least 1")
        if self.doctor_parallel < 1 or self.diagnostics_window < 1:
            raise ConfigError("doctor_parallel and diagnostics_window must be at least 1")
        if self.max_results < 0:
            raise ConfigError("max_results must be 0 (no limit) or a positive number")
        if not 1 <= self.remote_find_max_matches <= 10_000_000:
            raise ConfigError("remote_find_max_matches must be 1 to 10000000")
        if not 0 <= self.query_max_file_reads <= 100_000_000:
            raise ConfigError("query_max_file_reads must be 0 (no limit) or a positive number up to 100000000")
        if self.max_dataset_bytes < 1024:
            raise ConfigError("max_dataset_bytes must be at least 1024")
        if self.max_inflate_ratio < 0:
            raise ConfigError("max_inflate_ratio must be 0 (no limit) or a positive number")
        if not 1 <= self.max_sequence_depth <= 128:
            raise ConfigError("max_sequence_depth must be 1 to 128 (pydicom reads nesting recursively)")
        if not 0 <= self.intake_inline_max_bytes <= 64 * MiB:
            raise ConfigError("intake_inline_max_bytes must be 0 (no intake log) to 67108864 (64 MiB)")
        if not 0 <= self.receive_in_memory_max_bytes <= 64 * MiB:
            raise ConfigError("receive_in_memory_max_bytes must be 0 (always a staging file) to 67108864 (64 MiB)")
        if not 1 * MiB <= self.intake_segment_bytes <= 1024 * MiB:
            raise ConfigError("intake_segment_bytes must be 1 MiB to 1 GiB")
        if self.pack_bytes != 0 and not 1 * MiB <= self.pack_bytes <= 4096 * MiB:
            raise ConfigError("pack_bytes must be 0 (one file per instance) or 1 MiB to 4 GiB")
        if not 0 <= self.loop_ingest_max_ms <= 1000:
            raise ConfigError("loop_ingest_max_ms must be 0 (ingests always through the writer thread) to 1000")
        if not 0 <= self.malloc_mmap_threshold_kib <= 32768:
            raise ConfigError("malloc_mmap_threshold_kib must be 0 (glibc's dynamic threshold) to 32768 (32 MiB)")
        if not 1 <= self.loop_ingest_pause_seconds <= 3600:
            raise ConfigError("loop_ingest_pause_seconds must be 1 to 3600")
        if not 0 < self.completion_recheck_seconds <= 86400:
            raise ConfigError("completion_recheck_seconds must be more than 0 and at most 86400")
        if not 0 < self.intake_checkpoint_seconds <= 3600:
            raise ConfigError("intake_checkpoint_seconds must be more than 0 and at most 3600")
        if self.intake_checkpoint_bytes < 1 * MiB:
            raise ConfigError("intake_checkpoint_bytes must be at least 1 MiB")
        for name in (
            "acse_timeout",
            "dimse_timeout",
            "idle_timeout",
            "connect_timeout",
            "nodes_refresh",
            "handshake_timeout",
            "doctor_move_wait",
            "diagnostics_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        unknown = sorted(set(self.allow_unregistered) - set(OPERATIONS))
        if unknown:
            raise ConfigError(
                f"allow_unregistered: unknown operation {', '.join(map(repr, unknown))}; "
                f"use any of {', '.join(OPERATIONS)} (or an empty list: registered nodes only)"
            )
        for name in ("node_id", "node_name"):
            value = getattr(self, name)
            if value and not NODE_ID_PATTERN.fullmatch(value):
                raise ConfigError(
                    f"{name} {value[:80]!r} must be 1 to {NODE_ID_MAX} characters of A-Z a-z 0-9 . _ - "
                    "(it names this node in logs, folders and the job queue)"
                )
        if not 0 < self.node_stats_seconds <= 3600:
            raise ConfigError("node_stats_seconds must be more than 0 and at most 3600")
        if self.node_id and self.node_name and self.node_id != self.node_name:
            raise ConfigError(
                f"node_id {self.node_id!r} and node_name {self.node_name!r} differ; node_name is the older "
                "spelling of node_id: keep only node_id"
            )
        if not 1 <= self.job_concurrency <= 64:
            raise ConfigError("job_concurrency must be 1 to 64")
        if not 1 <= self.job_max_attempts <= 100:
            raise ConfigError("job_max_attempts must be 1 to 100")
        for name in ("job_retry_seconds", "job_poll_seconds", "job_progress_seconds", "job_stale_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.job_retry_max_seconds < self.job_retry_seconds:
            raise ConfigError("job_retry_max_seconds must be at least job_retry_seconds")
        if self.job_stale_seconds < 3 * self.job_progress_seconds:
            raise ConfigError(
                "job_stale_seconds must be at least 3 times job_progress_seconds, or running jobs would look stale"
            )
        if self.job_keep_days < 0:
            raise ConfigError("job_keep_days must be 0 (keep finished jobs) or a positive number of days")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"http_port {self.http_port} is outside 0..65535 (0 turns HTTP off)")
        if self.max_upload_bytes < 1024:
            raise ConfigError("max_upload_bytes must be at least 1024")
        if self.max_zip_inflated_bytes < 1024 or self.max_zip_ratio < 1:
            raise ConfigError("max_zip_inflated_bytes must be at least 1024 and max_zip_ratio at least 1")
        if self.http_max_connections < 1:
            raise ConfigError("http_max_connections must be at least 1")
        if self.http_header_timeout <= 0 or self.http_body_timeout <= 0:
            raise ConfigError("http_header_timeout and http_body_timeout must be positive numbers of seconds")
        if not 1024 <= self.http_max_header_bytes <= MiB:
            raise ConfigError(
                f"http_max_header_bytes {self.http_max_header_bytes} is outside 1024..1048576 (bytes of a request "
                "head: request line and header fields)"
            )
        if self.max_concurrent_renders < 1 or self.render_queue < 0:
            raise ConfigError("max_concurrent_renders must be at least 1 and render_queue at least 0")
        if self.max_upload_parts < 1:
            raise ConfigError("max_upload_parts must be at least 1")
        if self.session_idle_timeout <= 0 or self.max_sessions < 1:
            raise ConfigError("session_idle_timeout must be a positive number of seconds and max_sessions at least 1")
        if self.login_attempts < 1 or self.login_lockout_seconds <= 0:
            raise ConfigError("login_attempts must be at least 1 and login_lockout_seconds a positive number")
        if not 0 <= self.hl7_port <= 65535:
            raise ConfigError(f"hl7_port {self.hl7_port} is outside 0..65535 (0 turns the HL7 listener off)")
        if self.hl7_max_message_bytes < 1024:
            raise ConfigError("hl7_max_message_bytes must be at least 1024")
        if self.hl7_idle_timeout <= 0:
            raise ConfigError("hl7_idle_timeout must be a positive number of seconds")
        if self.hl7_max_connections < 1:
            raise ConfigError("hl7_max_connections must be at least 1")
        if self.hl7_resend_window < 0 or self.hl7_resend_max < 0:
            raise ConfigError("hl7_resend_window and hl7_resend_max must be 0 (off) or more")
        if self.changes_retention_days < 0:
            raise ConfigError("changes_retention_days must be 0 (keep the journal whole) or a number of days")
        if self.backup_interval_seconds < 0:
            raise ConfigError("backup_interval_seconds must be 0 (no periodic backups) or a positive number")
        if self.backup_dir and not Path(self.backup_dir).is_absolute():
            raise ConfigError(f"backup_dir {self.backup_dir[:100]!r} must be an absolute path")
        if self.retention_interval_seconds < 0:
            raise ConfigError("retention_interval_seconds must be 0 (no periodic runs) or a positive number")
        if not 1 <= self.retention_max_deletions <= 100000:
            raise ConfigError("retention_max_deletions must be 1 to 100000")
        try:
            check_rules(self.retention)
        except InvalidRetentionRule as exc:
            raise ConfigError(str(exc)) from None
        if self.merged_patient_arrivals not in MERGED_ARRIVAL_MODES:
            raise ConfigError(f"merged_patient_arrivals must be {', '.join(MERGED_ARRIVAL_MODES)}")
        if self.rejection_notes not in REJECTION_MODES:
            raise ConfigError(f"rejection_notes must be {', '.join(REJECTION_MODES[:-1])} or {REJECTION_MODES[-1]}")
        if self.anonymization_key and len(self.anonymization_key) < 16:
            raise ConfigError("anonymization_key must be at least 16 characters (or empty: a generated key)")
        if self.anonymize_job_threshold < 0:
            raise ConfigError("anonymize_job_threshold must be 0 (always a job) or more instances")
        if self.audit_retention_days < 0:
            raise ConfigError("audit_retention_days must be 0 (keep the audit trail for ever) or a number of days")
        if not 0.05 <= self.audit_flush_seconds <= 3600:
            raise ConfigError("audit_flush_seconds must be from 0.05 to 3600 seconds")
        if self.audit_max_pending < 1000:
            raise ConfigError("audit_max_pending must be at least 1000 events")
        if self.audit_syslog and not self.audit_syslog.startswith(("udp://", "tls://")):
            raise ConfigError(f"audit_syslog {self.audit_syslog!r} must be udp://host:port or tls://host:port")
        if self.audit_syslog.startswith("tls://") and not self.audit_syslog_ca_file:
            raise ConfigError("audit_syslog over tls:// needs audit_syslog_ca_file, the CA of the collector")
        if self.audit_syslog_queue < 1:
            raise ConfigError("audit_syslog_queue must be at least 1 message")
        self._validate_compression()
        if not 0.05 <= self.routing_poll_seconds <= 3600:
            raise ConfigError("routing_poll_seconds must be 0.05 to 3600")
        if not 0 <= self.routing_catch_up_seconds <= 30 * 86400:
            raise ConfigError("routing_catch_up_seconds must be 0 to 2592000 (30 days)")
        if not 0 <= self.routing_coalesce_seconds <= 60:
            raise ConfigError("routing_coalesce_seconds must be 0 to 60")
        if self.correction_inline_max_instances < 0:
            raise ConfigError("correction_inline_max_instances must be 0 (every correction a job) or more")
        if not 1 <= self.correction_max_passes <= 100:
            raise ConfigError("correction_max_passes must be 1 to 100")
        self._validate_proxy_protocol()
        return self

    def _validate_proxy_protocol(self) -> None:
        for key, sources, what in (
            ("proxy_protocol_from", self.proxy_protocol_from, "load balancers"),
            ("http_trusted_proxies", self.http_trusted_proxies, "reverse proxies"),
        ):
            for source in sources:
                try:
                    ipaddress.ip_network(source, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"{key}: {source!r} is not an IP address or network (e.g. 127.0.0.1, "
                        f"10.0.0.0/8, fd00::/8): list the {what}' addresses"
                    ) from None
        if not 216 <= self.proxy_protocol_v2_max_bytes <= 65535:
            raise ConfigError("proxy_protocol_v2_max_bytes must be 216 (an AF_UNIX header) to 65535")

    def _validate_compression(self) -> None:
        if not 0 < self.compression_ingest_delay_seconds <= 3600:
            raise ConfigError("compression_ingest_delay_seconds must be more than 0 and at most 3600")
        if not 1 <= self.compression_sweep_seconds <= 7 * 86400:
            raise ConfigError("compression_sweep_seconds must be 1 to 604800 (a week)")
        for name in ("keep_replaced_seconds", "compression_keep_replaced_seconds"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 86400:
                raise ConfigError(f"{name} must be 0 to 86400 (a day)")
        new, old = self.keep_replaced_seconds, self.compression_keep_replaced_seconds
        if new is not None and old is not None and new != old:
            raise ConfigError(
                f"keep_replaced_seconds ({new:g}) and compression_keep_replaced_seconds ({old:g}) differ; "
                "compression_keep_replaced_seconds is the older name of keep_replaced_seconds: keep only "
                "keep_replaced_seconds"
            )
        if self.compression_max_instance_bytes < 1024:
            raise ConfigError("compression_max_instance_bytes must be at least 1024")
        names = [p.name for p in self.compression]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"[[compression]] name {twice[0]!r} is used twice; each policy needs its own name")
        for policy in self.compression:
            if policy.when == "ingest" and policy.older_than_days:
                raise ConfigError(
                    f'[[compression]] {policy.name!r}: older_than_days needs when = "background" '
                    "(an instance just stored is never older than that)"
                )


_TABLES = ("nodes", "users", "tokens", "retention", "compression", "rules", "pixel_regions")
_FIELDS = {f.name: f for f in fields(Settings) if f.name not in _TABLES}


def _coerce(name: str, raw: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type, or say why not."""
    kind = _FIELDS[name].type
    try:
        if kind == "Path":
            return Path(str(raw))
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
        if kind == "DuplicatePolicy":
            return DuplicatePolicy(str(raw).lower())
        if kind == "tuple[str, ...]":
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, (list, tuple)):
                raise ValueError(raw)
            return tuple(str(item).strip().lower() for item in items if str(item).strip())
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"setting {name}={raw!r} is not a valid {kind}") from exc


def _nodes(tables: Any, config_file: Path) -> tuple[Node, ...]:
    """``[[nodes]]`` tables of the config file -> nodes, or a ConfigError naming the bad one."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{config_file}: 'nodes' must be [[nodes]] tables (ae_title, host, port, ...)")
    nodes: list[Node] = []
    for number, table in enumerate(tables, 1):
        try:
            nodes.append(node_from_mapping(table))
        except InvalidNode as exc:
            title = table.get("ae_title", "?")
            raise ConfigError(f"{config_file}: [[nodes]] number {number} ({title!r}): {exc}") from exc
    return tuple(nodes)


def _accounts(doc: Mapping[str, Any], section: Mapping[str, Any], config_file: Path) -> dict[str, Any]:
    """``[[users]]`` and ``[[tokens]]`` tables -> users and API tokens, or a ConfigError naming the bad one."""
    out: dict[str, Any] = {}
    for key, build in (("users", user_from_mapping), ("tokens", token_from_mapping)):
        tables = section.get(key, doc.get(key, []))
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{config_file}: '{key}' must be [[{key}]] tables (name, ..., role)")
        try:
            out[key] = tuple(build(table) for table in tables)
        except InvalidUser as exc:
            raise ConfigError(f"{config_file}: [[{key}]]: {exc}") from exc
    return out


def _retention(tables: Any, config_file: Path) -> tuple[RetentionRule, ...]:
    """``[[retention]]`` tables -> rules, or a ConfigError naming the bad one."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{config_file}: 'retention' must be [[retention]] tables (name, older_than_days, ...)")
    rules: list[RetentionRule] = []
    for number, table in enumerate(tables, 1):
        try:
            rules.append(rule_from_mapping(table))
        except InvalidRetentionRule as exc:
            raise ConfigError(f"{config_file}: [[retention]] number {number}: {exc}") from exc
    return tuple(rules)


def _compression(tables: Any, config_file: Path) -> tuple[CompressionPolicy, ...]:
    """``[[compression]]`` tables of the config file -> policies, or a ConfigError naming the bad one."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{config_file}: 'compression' must be [[compression]] tables (name, syntax, match, ...)")
    policies: list[CompressionPolicy] = []
    for number, table in enumerate(tables, 1):
        try:
            policies.append(policy_from_mapping(table))
        except InvalidPolicy as exc:
            raise ConfigError(
                f"{config_file}: [[compression]] number {number} ({table.get('name', '?')!r}): {exc}"
            ) from exc
    return tuple(policies)


#: MINIPACS_* environment variables that are not settings: read by the tests and benchmarks only.
NOT_SETTINGS_PREFIXES: Final = ("MINIPACS_TEST_", "MINIPACS_BENCH_")


def _closest(name: str, *, env: bool = False) -> str:
    """'; did you mean X?' for a misspelled setting name, or ''."""
    known = [k for k in _FIELDS if k not in _TABLES]
    found = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    if not found:
        return ""
    return f"; did you mean {'MINIPACS_' + found[0].upper() if env else repr(found[0])}?"


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the TOML file, then MINIPACS_<FIELD> variables, then flags."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        section = doc.get("minipacs", doc)
        tables = section.get("nodes", doc.get("nodes", []))
        values["nodes"] = _nodes(tables, config_file)
        values.update(_accounts(doc, section, config_file))
        values["retention"] = _retention(section.get("retention", doc.get("retention", [])), config_file)
        values["compression"] = _compression(section.get("compression", doc.get("compression", [])), config_file)
        try:
            values["rules"] = rules_from_tables(section.get("rules", doc.get("rules", [])))
        except InvalidRule as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc
        try:
            values["pixel_regions"] = regions_from_tables(section.get("pixel_regions", doc.get("pixel_regions", [])))
        except InvalidPixelRegions as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc
        for key, raw in section.items():
            if key in _TABLES:
                continue
            if key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}{_closest(key)}")
            values[key] = _coerce(key, raw)
        for key in doc:
            if key != "minipacs" and key not in _TABLES and key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}{_closest(key)}")
    env = os.environ if env is None else env
    for key, raw in env.items():
        if key.startswith("MINIPACS_") and not key.startswith(NOT_SETTINGS_PREFIXES):
            name = key[len("MINIPACS_") :].lower()
            if name not in _FIELDS or name in _TABLES:
                hint = _closest(name, env=True)
                raise ConfigError(
                    f"unknown environment variable {key}{hint} (variables starting with MINIPACS_ "
                    f"are settings; unset it or correct the name)"
                )
            values[name] = _coerce(name, raw)
    for key, raw in (overrides or {}).items():
        if raw is not None:
            if key not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    return dataclasses.replace(Settings(), **values).validate()
