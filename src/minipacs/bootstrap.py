"""Settings -> a running archive. The only place where the parts are wired."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from minipacs.blobs.base import BlobStore
from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.s3 import S3BlobStore, parse_s3_url
from minipacs.config import ConfigError, Settings
from minipacs.core import blob_removals, journal_retention, malloc_tuning
from minipacs.core.access import AccessPolicy, AccessRules
from minipacs.core.anonymize import Anonymizer, load_key, register_anonymize_job
from minipacs.core.archive import Archive, ArchiveSettings
from minipacs.core.audit import Action, ActorKind, AuditSettings, Outcome, login_name
from minipacs.core.backup import periodic as periodic_backup
from minipacs.core.backup import register_backup_job
from minipacs.core.compression import CompressionSettings, Compressor
from minipacs.core.compression_jobs import CompressionScheduler, SchedulerSettings, register_compression_jobs
from minipacs.core.corrections import Corrections, register_correction_jobs
from minipacs.core.hl7_acks import AckStore
from minipacs.core.jobs import JobQueue, JobSettings
from minipacs.core.merge_watch import MergedArrivals
from minipacs.core.metrics import Metrics
from minipacs.core.mpps import ProcedureSteps
from minipacs.core.nodes import NodeRegistry, calling_host_warning
from minipacs.core.reforward import correction_resender
from minipacs.core.rejection import Rejections
from minipacs.core.retention import periodic, register_retention_job
from minipacs.core.routing import Router, RoutingSettings
from minipacs.core.rules import RuleBook, check_against_nodes
from minipacs.core.stats import NodeStatsPublisher
from minipacs.core.worklist import Worklist
from minipacs.hl7.adt import HL7Receiver, register_adt_jobs
from minipacs.hl7.mllp import MLLPServer, PeerResolver
from minipacs.index.database import IndexDatabase
from minipacs.index.node_claim import NodeClaim, NodeClaimRefused, claim_node
from minipacs.net.association import AssociationSettings
from minipacs.net.dul import Timeouts
from minipacs.net.proxy_protocol import ProxySources
from minipacs.net.tls import TLSConfigError, TLSContext, client_context, current_context, server_context
from minipacs.services.audit_syslog import SyslogConfigError, SyslogSender, parse_collector
from minipacs.services.commitment import StorageCommitmentSCP
from minipacs.services.job_kinds import register_transfer_jobs
from minipacs.services.mpps import MPPSSCP
from minipacs.services.outbound import Outbound, OutboundSettings
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.route_jobs import register_routing_jobs
from minipacs.services.server import DicomServer, TLSListenError
from minipacs.services.storage import StorageSCP
from minipacs.services.user_identity import UserIdentityPolicy
from minipacs.services.verification import VerificationSCP
from minipacs.services.worklist import ModalityWorklistSCP
from minipacs.web.server import start_http

log = logging.getLogger("minipacs")


def timeouts(settings: Settings) -> Timeouts:
    return Timeouts(acse=settings.acse_timeout, dimse=settings.dimse_timeout, idle=settings.idle_timeout)


def tls_client(settings: Settings) -> TLSContext | None:
    """Our side when calling nodes registered with ``tls`` (None without tls_ca_file); ConfigError if unusable."""
    if not settings.tls_ca_file:
        return None
    try:
        return client_context(
            settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file, settings.tls_crl_file
        )
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from exc


def tls_server(settings: Settings) -> TLSContext | None:
    """The TLS listener's context when tls_port is set; ConfigError if the files cannot be used."""
    if not settings.tls_port:
        return None
    try:
        return server_context(
            settings.tls_cert_file,
            settings.tls_key_file,
            settings.tls_ca_file,
            settings.tls_require_client_cert,
            settings.tls_crl_file,
        )
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from exc


def association_settings(settings: Settings, ae_title: str | None = None) -> AssociationSettings:
    return AssociationSettings(
        ae_title=ae_title or settings.ae_title,
        max_pdu_receive=settings.max_pdu_receive,
        max_pdu_send=settings.max_pdu_send,
        timeouts=timeouts(settings),
        tls_context=tls_client(settings),
        max_memory_dataset=settings.memory_dataset_max_bytes,
        max_pdu_peer_min=settings.max_pdu_peer_min,
    )


def outbound(settings: Settings, archive: Archive) -> Outbound:
    """Echo, query, send and retrieve to other nodes as ``settings.ae_title`` (services/outbound.py),
    C-GET receiving into ``archive``; given to the web edge (it imports neither bootstrap nor net/)."""
    return Outbound(
        OutboundSettings(
            association_settings(settings),
            connect_timeout=settings.connect_timeout,
            find_max_matches=settings.remote_find_max_matches,
        ),
        archive,
    )


def job_settings(settings: Settings) -> JobSettings:
    return JobSettings(
        runner=settings.resolved_node_id,
        concurrency=settings.job_concurrency,
        max_attempts=settings.job_max_attempts,
        retry_seconds=settings.job_retry_seconds,
        retry_max_seconds=settings.job_retry_max_seconds,
        poll_seconds=settings.job_poll_seconds,
        progress_seconds=settings.job_progress_seconds,
        stale_seconds=settings.job_stale_seconds,
        keep_days=settings.job_keep_days,
    )


def job_queue(settings: Settings, archive: Archive, nodes: NodeRegistry, calls: Outbound | None = None) -> JobQueue:
    """The persistent job queue with every kind this build knows (not started: ``await queue.start()``
    runs it; commands that only list, cancel or retry never start it)."""
    queue = JobQueue(archive, job_settings(settings))
    calls = calls or outbound(settings, archive)
    deid = anonymizer(settings, archive)
    register_transfer_jobs(queue, calls, nodes)
    register_routing_jobs(queue, calls, nodes, anonymizer=deid)
    register_retention_job(queue, archive, settings.retention, settings.retention_max_deletions)
    if settings.backup_dir:
        register_backup_job(queue, archive, Path(settings.backup_dir), storage_dir(Path(settings.backup_dir)))
    register_anonymize_job(queue, deid)
    register_compression_jobs(queue, compressor(settings, archive))
    corrector = corrections(settings, archive, routing_jobs=queue)
    register_correction_jobs(queue, corrector)
    register_adt_jobs(queue, corrector)
    return queue


def corrections(
    settings: Settings, archive: Archive, jobs: JobQueue | None = None, *, routing_jobs: JobQueue | None = None
) -> Corrections:
    """Modify, merge and series moves (core/corrections.py); large ones go on ``jobs``. The corrected
    instances routing had delivered are queued again on ``routing_jobs`` (or ``jobs``) when it runs
    "route" jobs (core/reforward.py)."""
    return Corrections(
        archive,
        jobs=jobs,
        inline_max=settings.correction_inline_max_instances,
        max_passes=settings.correction_max_passes,
        resend=correction_resender(archive, routing_jobs or jobs, RuleBook(archive, settings.rules)),
    )


def anonymizer(settings: Settings, archive: Archive) -> Anonymizer:
    """De-identification with the configured key, or DATA/anonymization.key (created once)."""
    return Anonymizer(
        archive, load_key(settings.anonymization_key, settings.data_dir.resolve()), settings.pixel_regions
    )


def compressor(settings: Settings, archive: Archive) -> Compressor:
    """Lossless compression of stored instances (core/compression.py)."""
    return Compressor(
        archive,
        CompressionSettings(
            settings.resolved_keep_replaced_seconds, settings.fsync, settings.compression_max_instance_bytes
        ),
    )


def compression_scheduler(settings: Settings, app: App) -> CompressionScheduler:
    """Submits the ``[[compression]]`` policies' jobs (core/compression_jobs.py); ``attach()`` starts it."""
    return CompressionScheduler(
        app.archive,
        app.jobs,
        compressor(settings, app.archive),
        settings.compression,
        SchedulerSettings(settings.compression_ingest_delay_seconds, settings.compression_sweep_seconds),
    )


async def router(settings: Settings, archive: Archive, nodes: NodeRegistry, jobs: JobQueue) -> Router:
    """Auto-routing (core/routing.py), listening to ``archive``'s arrivals (not started: ``await
    router.start()``). The config's rules must name registered nodes: ConfigError naming the rule."""
    problems = check_against_nodes(settings.rules, nodes.snapshot)
    if problems:
        raise ConfigError("; ".join(problems))
    routing = Router(
        archive,
        jobs,
        RuleBook(archive, settings.rules, nodes),
        RoutingSettings(
            poll_seconds=settings.routing_poll_seconds,
            catch_up_seconds=settings.routing_catch_up_seconds,
            coalesce_seconds=settings.routing_coalesce_seconds,
        ),
    )
    await routing.prepare()  # before the listener: what arrives from the first association on is routed
    archive.on_stored.append(routing.instance_stored)
    if settings.rules:
        log.info(
            "routing: %d rule(s) from the config file: %s",
            len(settings.rules),
            ", ".join(r.name for r in settings.rules),
        )
    return routing


def archive_settings(settings: Settings) -> ArchiveSettings:
    return ArchiveSettings(
        data_dir=settings.data_dir,
        fsync=settings.fsync,
        max_dataset_bytes=settings.max_dataset_bytes,
        duplicate_policy=settings.duplicate_policy,
        max_inflate_ratio=settings.max_inflate_ratio,
        max_sequence_depth=settings.max_sequence_depth,
        # S3: the upload is on the critical path, so no intake log (docs/S3.md, durability)
        intake_inline_max_bytes=0 if settings.storage else settings.intake_inline_max_bytes,
        receive_in_memory_max_bytes=settings.receive_in_memory_max_bytes,
        intake_segment_bytes=settings.intake_segment_bytes,
        intake_checkpoint_seconds=settings.intake_checkpoint_seconds,
        intake_checkpoint_bytes=settings.intake_checkpoint_bytes,
        node_id=settings.resolved_node_id,
        keep_replaced_seconds=settings.resolved_keep_replaced_seconds,
        query_max_file_reads=settings.query_max_file_reads,
        loop_ingest_max_seconds=settings.loop_ingest_max_ms / 1000,
        loop_ingest_pause_seconds=settings.loop_ingest_pause_seconds,
    )


def storage_dir(data_dir: Path) -> Path:
    """Where the files of a data folder's archive live, when its storage is files (DATA/storage): also
    the layout a backup writes (core/backup.py), so that it is a data folder too."""
    return data_dir / "storage"


def blob_store(settings: Settings) -> BlobStore:
    """Where stored instances live: files under DATA/storage, or the S3 bucket of ``storage``
    (checked now: a bucket that cannot be reached stops the start with what to do). Blocking."""
    data_dir = settings.data_dir.resolve()
    if not settings.storage:
        return FilesystemBlobStore(storage_dir(data_dir), fsync=settings.fsync, pack_bytes=settings.pack_bytes)
    store = S3BlobStore(
        parse_s3_url(settings.storage),
        data_dir / "tmp",
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        multipart_bytes=settings.s3_multipart_bytes,
        concurrency=settings.s3_concurrency,
    )
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store


async def open_archive(settings: Settings) -> Archive:
    """The archive of ``settings``: its index (migrated to head) and blob store, built here, given to it."""
    data_dir = settings.data_dir.resolve()

    def prepare() -> tuple[IndexDatabase, BlobStore]:
        data_dir.mkdir(parents=True, exist_ok=True)
        blobs = blob_store(settings)
        try:
            index = IndexDatabase.open(settings.resolved_index_url, fsync=settings.fsync)
        except BaseException:
            blobs.close()
            raise
        return index, blobs

    index, blobs = await asyncio.to_thread(prepare)
    try:
        archive = await Archive.start(archive_settings(settings), index, blobs)
    except BaseException:
        index.dispose()
        blobs.close()
        raise
    archive.audit.settings = audit_settings(settings)
    return archive


def audit_settings(settings: Settings) -> AuditSettings:
    return AuditSettings(
        retention_days=settings.audit_retention_days,
        flush_seconds=settings.audit_flush_seconds,
        max_pending=settings.audit_max_pending,
    )


def access_rules(settings: Settings) -> AccessRules:
    return AccessRules(
        ae_title=settings.ae_title,
        allow_unregistered=frozenset(settings.allow_unregistered),
        check_calling_host=settings.check_calling_host,
        check_called_aet=settings.check_called_aet,
    )


@dataclass
class App:
    settings: Settings
    archive: Archive
    dicom: DicomServer
    nodes: NodeRegistry
    access: AccessPolicy
    #: The persistent job queue (core/jobs.py); ``serve`` starts its runner.
    jobs: JobQueue
    #: Prometheus figures (core/metrics.py), counted by the DICOM server and the HTTP edge.
    metrics: Metrics
    #: Re-reads the AE registry every settings.nodes_refresh seconds (edits by `minipacs nodes`).
    nodes_watch: asyncio.Task[None] | None = None
    #: Looks for new findings in the association log every settings.diagnostics_interval seconds.
    diagnostics_watch: asyncio.Task[None] | None = None
    #: Looks for studies whose procedure step another node completed (core/mpps.py ``watch``).
    completion_watch: asyncio.Task[None] | None = None
    #: Queues a retention run every settings.retention_interval_seconds (core/retention.py).
    retention_watch: asyncio.Task[None] | None = None
    #: Prunes the changes journal every hour when settings.changes_retention_days is set.
    journal_watch: asyncio.Task[None] | None = None
    #: Queues a backup into settings.backup_dir every settings.backup_interval_seconds (core/backup.py).
    backup_watch: asyncio.Task[None] | None = None
    #: Removes replaced copies' files once their grace period is over (core/blob_removals.py), on every node.
    replaced_watch: asyncio.Task[None] | None = None
    #: Writes the audit trail's waiting events and prunes old rows (core/audit.py ``run``).
    audit_watch: asyncio.Task[None] | None = None
    #: Sends the audit rows on to the ATNA collector (services/audit_syslog.py), when audit_syslog is set.
    audit_syslog_watch: asyncio.Task[None] | None = None
    #: That sender itself: drained (bounded by the shutdown grace) at close, before its task is cancelled.
    audit_syslog: SyslogSender | None = None
    #: Submits compression jobs (``serve`` starts it after the job runner).
    compression: CompressionScheduler | None = None
    #: Auto-routing (core/routing.py); ``serve`` starts it with the job runner.
    router: Router | None = None
    #: This node's claim on its node_id (index/node_claim.py), released last.
    claim: NodeClaim | None = None
    #: Takes the claim again when its PostgreSQL session was lost (``keep_claim``).
    claim_watch: asyncio.Task[None] | None = None
    #: Writes this node's own figures into the index for /api/stats on every node (core/stats.py).
    node_stats: NodeStatsPublisher | None = None
    node_stats_watch: asyncio.Task[None] | None = None
    #: Applies the rejection notes stored (IHE IOCM, core/rejection.py).
    rejections: Rejections | None = None
    #: Watches for instances arriving under a merged-away Patient ID (core/merge_watch.py).
    merged_arrivals: MergedArrivals | None = None

    async def close(self, grace: float = 5.0) -> None:
        if self.router is not None:
            await self.router.close()
        if self.rejections is not None:
            await self.rejections.close()
        if self.merged_arrivals is not None:
            await self.merged_arrivals.close()
        if self.compression is not None:
            await self.compression.close()
        await self.jobs.close()  # running jobs go back to the queue while the index is still open
        tasks = (
            self.nodes_watch,
            self.diagnostics_watch,
            self.completion_watch,
            self.retention_watch,
            self.backup_watch,
            self.journal_watch,
            self.replaced_watch,
        )
        for task in (*tasks, self.audit_watch):  # the audit log's last flush hands its rows to the sender
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.audit_syslog is not None and self.audit_syslog_watch is not None:
            await self.audit_syslog.drain(grace)  # bounded: an unreachable collector costs ``grace`` s
        for task in (self.audit_syslog_watch, self.node_stats_watch, self.claim_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.dicom.close(grace)
        if self.node_stats is not None:
            try:
                await self.node_stats.publish(running=False)
            except Exception as exc:  # noqa: BLE001 - the stop goes on; the row only looks stale
                log.warning("node statistics: could not write this node's last figures: %s", exc)
        await self.archive.close()
        if self.claim is not None:
            self.claim.release()


async def open_registry(settings: Settings, archive: Archive) -> tuple[NodeRegistry, AccessPolicy]:
    """The AE registry seeded from the config file, and the access policy following it.

    Nodes in the config are upserted (by AE title and host); nodes added with
    `minipacs nodes add` stay. Duplicate titles are warned about here, in plain words.
    """
    registry = NodeRegistry(archive)
    access = AccessPolicy(access_rules(settings), resolver=registry.resolver)
    registry.subscribe(access.load)
    if settings.nodes:
        await registry.add_all(settings.nodes)
        log.info("AE registry: %d node(s) from the config file registered", len(settings.nodes))
    nodes = await registry.refresh()
    for warning in await registry.check():
        log.warning("AE registry: %s", warning)
    exposed = calling_host_warning(nodes, settings.check_calling_host)
    if exposed:
        log.warning("AE registry: %s", exposed)
    log.info(
        "AE registry: %d node(s); unregistered callers may %s%s",
        len(nodes),
        ", ".join(settings.allow_unregistered) or "not connect",
        "; registered callers must come from their registered host" if settings.check_calling_host else "",
    )
    return registry, access


async def build_app(settings: Settings) -> App:
    server_tls, client_tls = tls_server(settings), tls_client(settings)  # unusable files: ConfigError, now
    sender = audit_syslog(settings)  # likewise
    if settings.dicom_user_identity != "ignore" and not settings.users:
        log.warning(
            "dicom_user_identity is %r but no [[users]] are configured: every association that %s will be rejected",
            settings.dicom_user_identity,
            "is made" if settings.dicom_user_identity == "required" else "sends a user identity",
        )
    claim = await take_node_claim(settings)
    try:
        archive = await open_archive(settings)
    except BaseException:
        claim.release()
        raise
    try:
        registry, access = await open_registry(settings, archive)
        steps = ProcedureSteps(archive, Worklist(archive))
        archive.on_stored.append(steps.instance_stored)  # study completion re-checked after each ingest
        archive.on_uncompleted.append(steps.studies_uncompleted)  # ... and after a deletion withdrew it
        await steps.resume()
    except BaseException:
        await archive.close()
        claim.release()
        raise
    metrics = Metrics(max_ae_labels=settings.metrics_max_ae_labels)
    archive.metrics = metrics
    storage = StorageSCP(archive, scu_role=True, accept_unknown_sop_classes=settings.accept_unknown_sop_classes)
    commitment = StorageCommitmentSCP(
        archive,
        registry,
        association_settings(settings),
        connect_timeout=settings.connect_timeout,
        association_logger=archive.record_association,
    )
    server = DicomServer(
        settings.ae_title,
        [
            VerificationSCP(),
            storage,
            QueryRetrieveFindSCP(archive, max_results=settings.max_results or None, ae_title=settings.ae_title),
            MoveSCP(
                archive,
                registry,
                connect_timeout=settings.connect_timeout,
                association_logger=archive.record_association,
            ),
            GetSCP(archive),
            ModalityWorklistSCP(Worklist(archive)),
            MPPSSCP(steps),
            commitment,
        ],
        host=settings.host,
        port=settings.port,
        max_associations=settings.max_associations,
        max_associations_per_host=settings.max_associations_per_host,
        check_called_aet=settings.check_called_aet,
        max_pdu_receive=settings.max_pdu_receive,
        max_pdu_send=settings.max_pdu_send,
        timeouts=timeouts(settings),
        association_logger=archive.record_association,
        access=access,
        tls_port=settings.tls_port,
        tls_context=server_tls,
        tls_client=client_tls,
        identity=UserIdentityPolicy(
            settings.dicom_user_identity, settings.users, trust_usernames=settings.dicom_trust_usernames
        ),
        max_pending_connections=settings.max_pending_connections,
        max_pending_per_host=settings.max_pending_per_host,
        handshake_timeout=settings.handshake_timeout,
        max_async_operations=settings.max_async_operations,
        memory_dataset_max_bytes=settings.memory_dataset_max_bytes,
        memory_datasets_budget_bytes=settings.memory_datasets_budget_bytes,
        max_pdu_peer_min=settings.max_pdu_peer_min,
        unknown_sop_classes=storage,
        metrics=metrics,
        proxy_sources=proxy_sources(settings),
    )
    jobs = job_queue(settings, archive, registry)
    commitment.use_jobs(jobs)  # undelivered Storage Commitment reports are retried
    try:
        routing = await router(settings, archive, registry, jobs)
    except BaseException:
        await archive.close()
        raise
    watch = asyncio.ensure_future(registry.watch(settings.nodes_refresh))
    findings = asyncio.ensure_future(watch_diagnostics(settings, archive, registry))
    completion = asyncio.ensure_future(steps.watch(settings.completion_recheck_seconds))
    node_stats = NodeStatsPublisher(archive, settings.resolved_node_id, settings.node_stats_seconds)
    try:
        await node_stats.publish()
    except Exception as exc:  # noqa: BLE001 - statistics never stop a node from serving
        log.warning("node statistics: could not write this node's figures to the index: %s", exc)
    app = App(
        settings,
        archive,
        server,
        registry,
        access,
        jobs,
        metrics,
        watch,
        findings,
        completion,
        router=routing,
        claim=claim,
        node_stats=node_stats,
        node_stats_watch=asyncio.ensure_future(node_stats.run()),
    )
    app.audit_watch = asyncio.ensure_future(archive.audit.run())
    app.rejections = Rejections(archive, settings.rejection_notes)
    app.rejections.start()
    app.merged_arrivals = MergedArrivals(
        archive, corrections(settings, archive, jobs, routing_jobs=jobs), settings.merged_patient_arrivals
    )
    await app.merged_arrivals.start()
    if sender is not None:
        archive.audit.forward.append(sender.submit)
        app.audit_syslog = sender
        app.audit_syslog_watch = asyncio.ensure_future(sender.run())
    return app


def audit_syslog(settings: Settings) -> SyslogSender | None:
    """The ATNA sender of the audit trail when ``audit_syslog`` is set; ConfigError if it cannot be used."""
    if not settings.audit_syslog:
        return None
    try:
        collector = parse_collector(settings.audit_syslog)
        tls = None
        if collector.scheme == "tls":
            tls = current_context(
                client_context(settings.audit_syslog_ca_file, settings.tls_cert_file, settings.tls_key_file)
            )
        return SyslogSender(collector, settings.ae_title, tls=tls, max_queue=settings.audit_syslog_queue)
    except (SyslogConfigError, TLSConfigError) as exc:
        raise ConfigError(str(exc)) from exc


#: Seconds between two looks at this node's claim (``keep_claim``).
CLAIM_CHECK_SECONDS: Final = 5.0


async def keep_claim(claim: NodeClaim, every: float = CLAIM_CHECK_SECONDS) -> None:
    """Every ``every`` s: this node's claim is still held, or taken again (a PostgreSQL restart drops every
    session's advisory locks: without it, other nodes would take this live node for gone and route what
    it stores). A WARNING when it is lost, an INFO when it is back."""
    held = True
    while True:
        await asyncio.sleep(every)
        try:
            now = await asyncio.to_thread(claim.keep)
        except Exception as exc:  # noqa: BLE001 - the next look tries again
            log.warning("node %s: cannot check this node's claim on the index: %s", claim.node_id, exc)
            continue
        if held and not now:
            log.warning(
                "node %s: this node's claim on the index was lost (PostgreSQL restarted or the connection was "
                "cut) and is held elsewhere for now; taking it again every %g s",
                claim.node_id,
                every,
            )
        elif now and not held:
            log.info("node %s: this node's claim on the index is held again", claim.node_id)
        held = now


async def take_node_claim(settings: Settings) -> NodeClaim:
    """This serving node's claim on its node_id (index/node_claim.py), before anything in the data
    folder is touched: a second node on a SQLite index, or a second live node with one node_id on
    PostgreSQL, stops here with a sentence saying what to do (a ConfigError: the deployment is wrong)."""
    node_id = settings.resolved_node_id
    try:
        claim = await asyncio.to_thread(claim_node, settings.resolved_index_url, node_id)
    except NodeClaimRefused as exc:
        raise ConfigError(str(exc)) from None
    log.info("node %s: serving the index as this node_id", node_id)
    return claim


async def watch_diagnostics(settings: Settings, archive: Archive, registry: NodeRegistry) -> None:
    """Every ``diagnostics_interval`` s: the passive findings of the association log (core/diagnostics.py),
    a WARNING in the log for each one that appears for the first time."""
    from minipacs.core.diagnostics import FindingWatch, analyse

    seen = FindingWatch()
    while True:
        await asyncio.sleep(settings.diagnostics_interval)
        try:
            records = await archive.list_associations(settings.diagnostics_window)
            seen.update(analyse(records, registry.snapshot, settings.ae_title))
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("diagnostics: could not analyse the association log: %s", exc)


def proxy_sources(settings: Settings) -> ProxySources | None:
    """proxy_protocol_from: the load balancers whose connections start with a PROXY header; None: off."""
    if not settings.proxy_protocol_from:
        return None
    return ProxySources(settings.proxy_protocol_from, settings.proxy_protocol_v2_max_bytes)


def hl7_peer_resolver(settings: Settings) -> PeerResolver | None:
    """The HL7 listener reads PROXY headers as the DICOM one does, by the same handshake_timeout."""
    sources = proxy_sources(settings)
    return None if sources is None else sources.stream_resolver(settings.handshake_timeout)


async def start_hl7(settings: Settings, app: App) -> MLLPServer | None:
    """The HL7 v2 MLLP listener when hl7_port > 0 (orders -> the worklist; ADT -> corrections, hl7/adt.py)."""
    if settings.hl7_port <= 0:
        return None
    server = MLLPServer(
        HL7Receiver(
            Worklist(app.archive),
            corrections(settings, app.archive, app.jobs),
            settings.ae_title,
            resend_window=settings.hl7_resend_window,
            resend_max=settings.hl7_resend_max,
            acks=AckStore(app.archive, settings.hl7_resend_window) if settings.hl7_resend_max else None,
        ),
        host=settings.hl7_host,
        port=settings.hl7_port,
        max_message_bytes=settings.hl7_max_message_bytes,
        idle_timeout=settings.hl7_idle_timeout,
        max_connections=settings.hl7_max_connections,
        application=settings.ae_title,
        peer_resolver=hl7_peer_resolver(settings),
    )
    try:
        await server.start()
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot listen for HL7 on {settings.hl7_host}:{settings.hl7_port}: "
            f"{exc.strerror} (is another server using that port? set hl7_port = 0 to turn HL7 off)",
        ) from exc
    return server


async def serve(settings: Settings, on_ready: Callable[[App], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM; then stop listening, let open associations finish
    for a few seconds, abort the rest, drain pending stores and close the index."""
    if settings.malloc_mmap_threshold_kib:
        malloc_tuning.set_mmap_threshold(settings.malloc_mmap_threshold_kib * 1024)
    app = await build_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hl7: MLLPServer | None = None
    started = False  # the Application Start row was recorded: a stop row follows
    clean = False
    http = None  # the HTTP edge (web/): REST and DICOMweb, same process and loop
    try:
        http = await start_http(
            settings,
            app.archive,
            app.nodes,
            outbound(settings, app.archive),
            app.jobs,
            anonymizer=anonymizer(settings, app.archive),
            metrics=app.metrics,
        )
        try:
            await app.dicom.start()
        except TLSListenError:
            raise
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen for DICOM on {settings.host}:{settings.port}: {exc.strerror} "
                "(is another server using that port?)",
            ) from exc
        web = (
            f"http://{'127.0.0.1' if settings.http_host in ('0.0.0.0', '::', '') else settings.http_host}"
            f":{settings.http_port}/"
        )
        log.info(
            "minipacs ready: AE %s, DICOM port %d%s, data in %s; %s",
            settings.ae_title,
            app.dicom.port,
            f", DICOM TLS port {app.dicom.tls_port}" if app.dicom.tls_context is not None else "",
            settings.data_dir.resolve(),
            f"web UI at {web}" if settings.http_port else "no HTTP (http_port = 0)",
        )
        hl7 = await start_hl7(settings, app)
        await app.jobs.start()
        if settings.retention and settings.retention_interval_seconds > 0:
            app.retention_watch = asyncio.ensure_future(periodic(app.jobs, settings.retention_interval_seconds))
        if settings.changes_retention_days > 0:
            app.journal_watch = asyncio.ensure_future(
                journal_retention.watch(app.archive, settings.changes_retention_days)
            )
        if settings.backup_dir and settings.backup_interval_seconds > 0:
            app.backup_watch = asyncio.ensure_future(
                periodic_backup(app.jobs, settings.backup_interval_seconds, Path(settings.backup_dir))
            )
        # every node, whatever the compression settings: replaced copies of any kind wait here
        app.replaced_watch = asyncio.ensure_future(
            blob_removals.watch(app.archive, settings.resolved_keep_replaced_seconds)
        )
        app.compression = compression_scheduler(settings, app)
        app.compression.attach()
        if app.claim is not None:
            app.claim_watch = asyncio.ensure_future(keep_claim(app.claim))
        if app.router is not None:
            await app.router.start()
        # What startup made (modules, configuration, the app) lives as long as the process: out of the
        # cyclic collector's way, a full collection walks only what serving made since, not ~150,000
        # objects (~40 ms, a stall of whatever was running: a C-FIND's responses, a C-STORE)
        gc.freeze()
        _application_activity(app, settings, Action.APP_START, "ready")
        started = True
        if on_ready is not None:
            on_ready(app)
        await stop.wait()
        log.info("shutting down")
        clean = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if http is not None:
            await http.close()
        if hl7 is not None:
            await hl7.close()
        if started:  # before close: its last flush writes the row and hands it to the syslog sender
            if clean:
                _application_activity(app, settings, Action.APP_STOP, "stopped (SIGINT/SIGTERM)")
            else:
                _application_activity(app, settings, Action.APP_STOP, "stopped by an error", Outcome.SERIOUS_FAILURE)
        await app.close()
        log.info("stopped cleanly")


def _application_activity(
    app: App, settings: Settings, action: Action, what: str, outcome: Outcome = Outcome.SUCCESS
) -> None:
    """An Application Activity row (PS3.15 A.5.3, docs/AUDIT.md): the archive (its AE title) started or
    stopped; the actor is the OS user who launched ``minipacs serve`` (Application Launcher)."""
    app.archive.audit.record(
        action,
        actor_kind=ActorKind.CLI,
        actor=login_name(),
        detail=f"minipacs serve {what}: AE {settings.ae_title}, DICOM port {app.dicom.port}",
        outcome=outcome,
    )
