"""Storage Commitment Push Model SOP Class, SCP: PS3.4 Annex J (J.3), PS3.7 10.1.1 / 10.1.4.

N-ACTION (Action Type 1, Request Storage Commitment) with a Transaction UID
and the Referenced SOP Sequence is answered Success at once (J.3.2); then the
references are checked against the index (core/commitment.py: a row exists
only once the file is durable) and the result goes back as N-EVENT-REPORT
(J.3.3): Event Type 1 when every instance is committed, 2 with the Failed SOP
Sequence and a Failure Reason per instance otherwise.

Where the report goes (J.3.3, PS3.7 D.3.3.4):
- on the requesting association while it is still established: there we are
  the SCP of the class and the SCP sends the N-EVENT-REPORT, no role selection;
- otherwise on a new association to the requester's registered node, where we
  are association requestor yet SCP of the class, so we propose the context
  with an SCP/SCU Role Selection item (SCU role 0, SCP role 1). An acceptor that
  refuses that role (it rejects the context, or accepts it with SCP role 0 in its
  reply) gets no report: the log and the association log say so; one that sends
  no role reply at all (default roles) gets it anyway, as many modalities expect.
  With no registered node the report cannot be delivered; the log says how to fix it.

A report that could not go out on a new association for a passing reason (the node did not answer
or refused the association, or the association broke off) is retried by the persistent job queue
(core/jobs.py, kind ``commitment-report``): the references are checked again at each attempt (an
instance that arrived meanwhile is reported committed), first after ``job_retry_seconds``, doubling
up to ``job_retry_max_seconds``, :data:`REPORT_ATTEMPTS` attempts in all (about three hours with the
defaults), on whichever node of a shared index claims it. A node that refuses the Storage
Commitment context, our SCP role or the report itself is a configuration to fix, not retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from minipacs.core.commitment import CommitmentResult, Failure, Reference, all_failed, check_commitment
from minipacs.core.errors import InvalidIdentifier
from minipacs.core.jobs import JobContext, JobFailed, JobQueue
from minipacs.core.model import AssociationRecord
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.paths import validate_uid
from minipacs.core.worklist import IndexAccess
from minipacs.dicom.identifier import decode_identifier, encode_identifier
from minipacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    transfer_syntax,
)
from minipacs.net.association import (
    Association,
    AssociationError,
    AssociationRejected,
    AssociationSettings,
    DatasetSink,
    Message,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.fsm import State
from minipacs.net.memory import BytesSink
from minipacs.net.pdu_items import RoleSelection
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Operation, Response
from minipacs.services.status import COMMITMENT, FAILURE_REASONS, SUCCESS, describe

log = logging.getLogger("minipacs.commitment")

COMMITMENT_TRANSFER_SYNTAXES: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: PS3.4 Table J.3-1: Action Type ID of "Request Storage Commitment"
REQUEST_STORAGE_COMMITMENT: Final = 1
# PS3.4 Table J.3-2: Event Type IDs of the report
EVENT_ALL_SUCCESS: Final = 1
EVENT_FAILURES_EXIST: Final = 2
# PS3.7 C.5 / 10.1.4.1.10: N-ACTION refusals used here
NO_SUCH_SOP_INSTANCE: Final = 0x0112
INVALID_ARGUMENT_VALUE: Final = 0x0115
NO_SUCH_ACTION: Final = 0x0123
NO_SUCH_SOP_CLASS: Final = 0x0118
#: The job kind that retries a report a new association could not deliver (module docstring).
REPORT_JOB: Final = "commitment-report"
#: Attempts of a retried report, the first one's included: 30 s doubling to 1 h is ~3 h.
REPORT_ATTEMPTS: Final = 10


def _refused_our_scp_role(assoc: Association) -> bool:
    """Whether the acceptor answered our SCP/SCU Role Selection item for Storage Commitment with SCP
    role 0 (an explicit refusal), rather than not answering it (PS3.7 D.3.3.4)."""
    ac = assoc.ac
    if ac is None:
        return False
    return any(
        item.sop_class_uid == STORAGE_COMMITMENT_PUSH_MODEL and not item.scp_role for item in ac.user_information.roles
    )


class StorageCommitmentSCP(Service):
    name = "storage commitment"

    def __init__(
        self,
        index: IndexAccess,
        nodes: NodeRegistry | None,
        settings: AssociationSettings,
        *,
        connect_timeout: float = 15.0,
        association_logger: Callable[[AssociationRecord], Awaitable[object]] | None = None,
    ) -> None:
        self.index = index
        self.nodes = nodes
        #: Our side of a new association for the report (our AE title, PDU sizes, timeouts).
        self.settings = settings
        self.connect_timeout = connect_timeout
        #: Where a report's new association goes in the association log (role "requestor"), delivered or
        #: not, with an N-EVENT-REPORT operation: the doctor's findings read undelivered reports from it.
        self.association_logger = association_logger
        #: Where an undelivered report is retried; None: it is not (the log says so).
        self.jobs: JobQueue | None = None

    def use_jobs(self, queue: JobQueue) -> None:
        """Retry undelivered reports through ``queue`` (registers the :data:`REPORT_JOB` kind)."""
        queue.register(REPORT_JOB, self._report_job, on_restart="resume", max_attempts=REPORT_ATTEMPTS)
        self.jobs = queue

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {
            STORAGE_COMMITMENT_PUSH_MODEL: SupportedContext(
                STORAGE_COMMITMENT_PUSH_MODEL, frozenset(COMMITMENT_TRANSFER_SYNTAXES)
            )
        }

    def handlers(self) -> Mapping[str, Operation]:
        return {"N-ACTION-RQ": Operation(self.n_action, access="commit")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    async def n_action(self, assoc: Association, message: Message) -> Response:
        """PS3.4 J.3.2: accept the request (or refuse it with why), then, once the answer is sent, report (J.3.3)."""
        cmd = message.command
        sop_class = cmd.requested_sop_class_uid
        status, text = SUCCESS, ""
        transaction, refs = "", list[Reference]()
        try:
            if sop_class != STORAGE_COMMITMENT_PUSH_MODEL:
                status, text = NO_SUCH_SOP_CLASS, f"N-ACTION for SOP class {sop_class} on the commitment context"
            elif cmd.requested_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
                status, text = (
                    NO_SUCH_SOP_INSTANCE,
                    (
                        f"requested SOP instance {cmd.requested_sop_instance_uid} "
                        f"is not the well-known {STORAGE_COMMITMENT_INSTANCE}"
                    ),
                )
            elif cmd.action_type_id != REQUEST_STORAGE_COMMITMENT:
                status, text = NO_SUCH_ACTION, f"action type {cmd.action_type_id} (only 1 is defined)"
            else:  # pydicom work, some 10 s for 100,000 references: off the event loop (_read_request)
                transaction, refs = await asyncio.to_thread(_read_request, message)
        except ValueError as exc:
            status, text = INVALID_ARGUMENT_VALUE, str(exc)
        fields: dict[str, Any] = {
            "AffectedSOPClassUID": STORAGE_COMMITMENT_PUSH_MODEL,
            "AffectedSOPInstanceUID": STORAGE_COMMITMENT_INSTANCE,
        }
        if status != SUCCESS:
            log.warning(
                "%s storage commitment request refused with %s: %s", assoc.label, describe(status, COMMITMENT), text
            )
        else:
            fields["ActionTypeID"] = REQUEST_STORAGE_COMMITMENT
        record_operation(
            assoc,
            op="N-ACTION",
            sop_class=sop_class,
            transaction=transaction,
            instances=len(refs),
            status=status,
            outcome="success" if status == SUCCESS else "failed",
            error=text,
        )
        if status != SUCCESS:
            return Response(status, error=text, fields=fields)
        return Response(status, fields=fields, then=lambda: self._check_and_report(assoc, transaction, refs))

    async def _check_and_report(self, assoc: Association, transaction: str, refs: list[Reference]) -> None:
        try:
            result = await check_commitment(self.index, refs)
        except Exception as exc:  # noqa: BLE001 - the requester must still hear: every instance failed
            # PS3.3 C.14.1.1 Failure Reason 0110 Processing failure: without a report the modality waits
            # for one until its own timeout, not knowing whether to ask again.
            log.error(
                "%s storage commitment %s: the index could not be checked (%s); reporting every instance "
                "failed with 0x0110 Processing failure so the requester asks again",
                assoc.label,
                transaction,
                exc,
            )
            result = all_failed(refs, Failure.PROCESSING_FAILURE)
        log.info(
            "%s storage commitment %s: %d of %d instance(s) committed%s",
            assoc.label,
            transaction,
            len(result.committed),
            len(refs),
            ""
            if not result.failed
            else f"; {len(result.failed)} failed ({', '.join(sorted({f.value for _r, f in result.failed}))})",
        )
        await self.report(assoc, transaction, result)

    # ------------------------------------------------------------------ the report

    async def report(self, assoc: Association, transaction: str, result: CommitmentResult) -> bool:
        """Send the N-EVENT-REPORT: same association if still open, else a new one; True when delivered."""
        event, ds = await asyncio.to_thread(event_report, transaction, result)  # one pydicom item per instance
        context = assoc.context_for(STORAGE_COMMITMENT_PUSH_MODEL)
        if context is not None and assoc.dul.state is State.STA6:
            try:
                status = await _send_report(assoc, context, event, ds)
                record_operation(
                    assoc,
                    op="N-EVENT-REPORT",
                    transaction=transaction,
                    event_type=event,
                    status=status,
                    outcome="success" if status == SUCCESS else "failed",
                )
                log.info(
                    "%s storage commitment %s reported on the same association (event type %d): %s",
                    assoc.label,
                    transaction,
                    event,
                    describe(status, COMMITMENT),
                )
                if status == SUCCESS:
                    return True
                log.info(
                    "%s storage commitment %s: the requester refused the report on its association; "
                    "trying its registered node",
                    assoc.label,
                    transaction,
                )
            except AssociationError as exc:
                log.info(
                    "%s storage commitment %s: the requesting association ended (%s); reporting on a new association",
                    assoc.label,
                    transaction,
                    exc,
                )
        outcome: dict[str, object] = {}
        if await self._report_new_association(assoc.calling_ae, transaction, event, ds, outcome):
            return True
        if outcome.get("transient"):
            await self._retry_later(assoc.calling_ae, transaction, result)
        return False

    async def _retry_later(self, calling_ae: str, transaction: str, result: CommitmentResult) -> None:
        """Queue the report for the job queue to try again (a passing trouble)."""
        if self.jobs is None:
            log.warning("storage commitment %s for %r is not retried (no job queue here)", transaction, calling_ae)
            return
        refs = [*result.committed, *(ref for ref, _why in result.failed)]
        delay = self.jobs.settings.backoff(1)
        try:
            job = await self.jobs.submit(
                REPORT_JOB,
                f"storage commitment report {transaction} to {calling_ae}",
                {
                    "transaction": transaction,
                    "calling_ae": calling_ae,
                    "references": [[ref.sop_class_uid, ref.sop_instance_uid] for ref in refs],
                },
                total=len(refs),
                details={"transaction": transaction, "ae_title": calling_ae},
                delay_seconds=delay,
            )
        except Exception as exc:  # noqa: BLE001 - the index is unwell: the log is all that is left
            log.error("storage commitment %s for %r could not be queued for a retry: %s", transaction, calling_ae, exc)
            return
        log.warning(
            "storage commitment %s for %r: the report will be tried again in %.0f s (job %d)",
            transaction,
            calling_ae,
            delay,
            job.id,
        )

    async def _report_job(self, job: JobContext) -> str:
        """The :data:`REPORT_JOB` handler: check the references again and report them on a new association."""
        transaction = str(job.params.get("transaction", ""))
        calling_ae = str(job.params.get("calling_ae", ""))
        raw = job.params.get("references")
        if not transaction or not calling_ae or not isinstance(raw, list):
            raise JobFailed("the job names no transaction, requester or references")
        refs = [Reference(str(pair[0]), str(pair[1])) for pair in raw if isinstance(pair, list) and len(pair) == 2]
        try:
            result = await check_commitment(self.index, refs)
        except Exception as exc:
            raise JobFailed(f"the index could not be checked: {exc}", retry=True) from exc
        job.done, job.failed = len(result.committed), len(result.failed)
        event, ds = await asyncio.to_thread(event_report, transaction, result)
        outcome: dict[str, object] = {}
        if await self._report_new_association(calling_ae, transaction, event, ds, outcome):
            return (
                f"reported to {calling_ae} (event type {event}): {len(result.committed)} committed, "
                f"{len(result.failed)} failed"
            )
        why = str(outcome.get("error") or f"{calling_ae} is not a registered node")
        raise JobFailed(f"the report to {calling_ae} was not delivered: {why}", retry=bool(outcome.get("transient")))

    async def _report_new_association(
        self, calling_ae: str, transaction: str, event: int, ds: Dataset, outcome: dict[str, object] | None = None
    ) -> bool:
        """Report on a new association to ``calling_ae``'s registered node; True when delivered.
        ``outcome`` gets ``error`` and ``transient`` (the trouble may pass: worth a retry)."""
        nodes = await self.nodes.find(calling_ae) if self.nodes is not None else []
        if not nodes:
            log.warning(
                "storage commitment %s for %r cannot be reported: the requesting association is closed and "
                "%r is not a registered node; register it (minipacs nodes add %s HOST PORT) or have the "
                "modality keep its association open until the report arrives",
                transaction,
                calling_ae,
                calling_ae,
                calling_ae,
            )
            return False
        node = nodes[0]
        started = datetime.now(UTC)
        record: dict[str, object] = {"op": "N-EVENT-REPORT", "transaction": transaction, "event_type": event}
        delivered = False
        try:
            delivered = await self._deliver(node, nodes, transaction, event, ds, record)
        finally:
            transient = bool(record.pop("transient", False))
            if outcome is not None:
                outcome.update(error=record.get("error", ""), transient=transient and not delivered)
            record.setdefault("outcome", "success" if delivered else "failed")
            await self._log_report(node, started, record)
        return delivered

    async def _log_report(self, node: Node, started: datetime, outcome: dict[str, object]) -> None:
        if self.association_logger is None:
            return
        assoc = outcome.pop("association", None)
        if isinstance(assoc, Association):
            from minipacs.services.server import association_record

            rec = association_record(assoc, "requestor")
            rec.operations = [outcome]
        else:
            rec = AssociationRecord(
                started_at=started,
                ended_at=datetime.now(UTC),
                role="requestor",
                calling_aet=self.settings.ae_title,
                called_aet=node.ae_title,
                peer_host=node.host,
                peer_port=node.port,
                accepted=False,
                reject_reason=str(outcome.get("error", "")),
                operations=[outcome],
            )
        try:
            await self.association_logger(rec)
        except Exception as exc:  # noqa: BLE001 - the log is not worth losing the report over
            log.error("could not write the association log: %s", exc)

    async def _deliver(
        self, node: Node, nodes: list[Node], transaction: str, event: int, ds: Dataset, outcome: dict[str, object]
    ) -> bool:
        if len(nodes) > 1:
            log.warning(
                "storage commitment %s: %r is registered %d times; reporting to %s",
                transaction,
                node.ae_title,
                len(nodes),
                node.label(),
            )
        # PS3.7 D.3.3.4: requestor of the association, SCP of the class: propose SCU role 0, SCP role 1.
        rq = build_rq(
            self.settings.ae_title,
            node.ae_title,
            [(STORAGE_COMMITMENT_PUSH_MODEL, COMMITMENT_TRANSFER_SYNTAXES)],
            self.settings,
            roles=[RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, False, True)],
        )
        try:
            out = await connect(
                node.host, node.port, rq, self.settings, connect_timeout=self.connect_timeout, tls=node.tls
            )
        except AssociationError as exc:
            log.warning("storage commitment %s cannot be reported to %s: %s", transaction, node.label(), exc)
            outcome["error"] = f"no association: {exc}"
            # PS3.8 Table 9-21: a rejection the node calls permanent (result 1) is its configuration
            outcome["transient"] = not (isinstance(exc, AssociationRejected) and exc.rj.result == 1)
            return False
        outcome["association"] = out
        try:
            context = out.context_for(STORAGE_COMMITMENT_PUSH_MODEL)
            if context is None:
                log.warning(
                    "storage commitment %s: %s refused the Storage Commitment context; configure it to "
                    "accept Storage Commitment Push Model as SCU with SCP role selection",
                    transaction,
                    node.label(),
                )
                outcome["error"] = "the node refused the Storage Commitment context"
                return False
            if not context.requestor_is_scp:
                if _refused_our_scp_role(out):
                    # It answered our role selection item with SCP role 0: it will not take an N-EVENT-REPORT
                    # from the association requestor, and sending one anyway breaks what was negotiated.
                    log.warning(
                        "storage commitment %s: %s refused us the SCP role for Storage Commitment (its role "
                        "selection reply has SCP role 0, PS3.7 D.3.3.4), so the report cannot go on an "
                        "association we open; configure it to accept the SCP role for the report on a new "
                        "association, or to keep its own association open until the report comes",
                        transaction,
                        node.label(),
                    )
                    outcome["error"] = "the node refused our SCP role for Storage Commitment (role selection)"
                    return False
                # No role selection reply at all: many modalities never send one yet take the report.
                log.warning(
                    "storage commitment %s: %s did not answer the SCP role selection (PS3.7 D.3.3.4); "
                    "sending the report anyway",
                    transaction,
                    node.label(),
                )
            status = await _send_report(out, context, event, ds)
            log.info(
                "storage commitment %s reported to %s on a new association (event type %d): %s",
                transaction,
                node.label(),
                event,
                describe(status, COMMITMENT),
            )
            outcome["status"] = status
            if status != SUCCESS:
                outcome["error"] = describe(status, COMMITMENT)
            return status == SUCCESS
        except AssociationError as exc:
            log.warning("storage commitment %s: report to %s failed: %s", transaction, node.label(), exc)
            outcome["error"] = str(exc)
            outcome["transient"] = True
            return False
        finally:
            try:
                await asyncio.wait_for(out.release(), self.settings.timeouts.acse + 1)
            except (AssociationError, TimeoutError):
                out.abort("release failed")


def _read_request(message: Message) -> tuple[str, list[Reference]]:
    """PS3.4 Table J.3-1: Transaction UID and Referenced SOP Sequence; raises ValueError. Runs in a
    worker thread: a request is bounded only by memory_dataset_max_bytes (16 MiB by default, some
    130,000 references; 0x0213 Resource limitation beyond), and parsing that many items takes seconds
    that no other association may wait for."""
    if message.dataset_error is not None or not isinstance(message.dataset, BytesSink):
        raise ValueError("the N-ACTION has no Action Information")
    ds = decode_identifier(message.dataset.getvalue(), message.context.transfer_syntax)
    transaction = str(ds.get("TransactionUID", "") or "").strip(" \x00")
    if not transaction:
        raise ValueError("Transaction UID (0008,1195) is missing")
    try:  # a UID (PS3.5 9.1): it is logged and echoed in the report (Table J.3-2)
        validate_uid("Transaction UID", transaction)
    except InvalidIdentifier as exc:
        raise ValueError(str(exc)) from None
    refs = []
    for item in ds.get("ReferencedSOPSequence") or []:
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not uid:
            raise ValueError("a Referenced SOP Sequence item has no Referenced SOP Instance UID")
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        if not sop_class:  # Type 1 in the request, and in the report that echoes it (PS3.4 Tables J.3-1, J.3-2)
            raise ValueError(f"the Referenced SOP Sequence item of {uid} has no Referenced SOP Class UID")
        refs.append(Reference(sop_class, uid))
    if not refs:
        raise ValueError("Referenced SOP Sequence (0008,1199) is missing or empty")
    return transaction, refs


def event_report(transaction: str, result: CommitmentResult) -> tuple[int, Dataset]:
    """PS3.4 Table J.3-2: (Event Type ID, Event Information)."""
    ds = Dataset()
    ds.TransactionUID = transaction
    if result.committed:
        ds.ReferencedSOPSequence = DicomSequence([_item(ref) for ref in result.committed])
    if not result.failed:
        return EVENT_ALL_SUCCESS, ds
    failed = []
    for ref, why in result.failed:
        item = _item(ref)
        item.FailureReason = FAILURE_REASONS[why]
        failed.append(item)
    ds.FailedSOPSequence = DicomSequence(failed)
    return EVENT_FAILURES_EXIST, ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


async def _send_report(assoc: Association, context: NegotiatedContext, event: int, ds: Dataset) -> int:
    ts = transfer_syntax(context.transfer_syntax)
    if ts is None:  # pragma: no cover - we only accept the two above
        raise AssociationError(f"cannot encode the report in {context.transfer_syntax}")
    command = Command.make(
        "N-EVENT-REPORT-RQ",
        has_dataset=True,
        MessageID=assoc.next_message_id(),
        AffectedSOPClassUID=STORAGE_COMMITMENT_PUSH_MODEL,
        AffectedSOPInstanceUID=STORAGE_COMMITMENT_INSTANCE,
        EventTypeID=event,
    )
    encoded = await asyncio.to_thread(encode_identifier, ds, ts)  # seconds for a large report: off the loop
    status = -1
    async for rsp in assoc.request(context.context_id, command, encoded):
        status = rsp.command.status
    return status


__all__ = [
    "REPORT_ATTEMPTS",
    "REPORT_JOB",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "StorageCommitmentSCP",
    "event_report",
]
