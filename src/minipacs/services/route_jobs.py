"""The job kinds of auto-routing (core/routing.py): "route" (C-STORE or STOW-RS of given instances to
one destination) and "prefetch" (C-FIND the patient's studies on a node, C-MOVE the priors to a
destination). Registered by bootstrap with :func:`register_routing_jobs`.

Each attempt brings the delivery receipts up to date: delivered instances become "sent"; the others
"retrying" (with the reason) when the queue will try again, "failed" when it will not. A retry sends
only what is not yet "sent". What an attempt delivered is written to its receipts every few seconds
while it runs and when it is stopped (a clean stop, a cancel), so a later attempt does not send it
again (after a kill, at most the last few seconds' worth). Which failures are retried: no association
or connection (the peer is down), an association that broke off, an HTTP 5xx; a peer that refuses an
instance is not.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Final

from minipacs.core import routing
from minipacs.core.anonymize import Anonymizer
from minipacs.core.audit import Action, ActorKind
from minipacs.core.jobs import Handler, JobContext, JobFailed, JobQueue
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.retrieve import StoredInstance, select_instances
from minipacs.services.outbound import (
    AssociationLost,
    FindRequest,
    NoAssociation,
    Outbound,
    RetrieveRequest,
    SendOutcome,
    TooManyContexts,
)
from minipacs.services.status import MOVE, describe
from minipacs.services.stow_scu import StowError, stow

log = logging.getLogger("minipacs.routing")

#: Failures listed per job in its JSON (the counts are complete).
MAX_LISTED: Final = 100
#: Seconds between two writes of the receipts of what a running attempt delivered.
RECEIPTS_SECONDS: Final = 2.0


async def _node(registry: NodeRegistry, title: str, rule: str) -> Node:
    found = await registry.find(title)
    if not found:
        raise JobFailed(f"rule {rule}: {title} is no longer a registered node (GET /api/nodes lists them)")
    if len(found) > 1:
        raise JobFailed(f"rule {rule}: {title} is registered {len(found)} times; keep one")
    return found[0]


#: Instances a rule's ``anonymize`` de-identifies, then sends, at a time: the staging folder holds at
#: most this many copies, whatever the size of the job (up to routing.MAX_PER_JOB).
ANONYMIZE_BATCH: Final = 200


def _audit_sent(archive: Any, job: JobContext, sent: list[str], note: str) -> None:
    """One "sent" audit row per job attempt that delivered something: actor kind "rule", the rule's name."""
    if sent:
        p = job.params
        archive.audit.record(
            Action.SENT,
            actor_kind=ActorKind.RULE,
            actor=str(p["rule"]),
            study_uid=str(p["study"]),
            detail=f"{len(sent)} instance(s) to {p['destination']} ({p['method']}, job {job.id})"
            + (f"; {note}" if note else ""),
        )


async def _keep_receipts(archive: Any, job_id: int, sent: list[str], note: str) -> None:
    """Every :data:`RECEIPTS_SECONDS`, mark "sent" the receipts of what this attempt delivered since the
    last time: after a kill, the next attempt re-sends at most that much, not the whole attempt."""
    written = 0
    while True:
        await asyncio.sleep(RECEIPTS_SECONDS)
        upto = len(sent)
        if upto > written:
            try:
                await routing.record_outcomes(archive, job_id, sent[written:upto], {}, retrying=True, note=note)
            except Exception:  # noqa: BLE001 - a bad moment of the index: the attempt's end writes them all
                log.warning("routing: job %s: the receipts of what it sent could not be written yet", job_id)
                continue
            written = upto


def _will_retry(job: JobContext) -> bool:
    return job.attempt < job.max_attempts


def anonymized_note(options: list[str] | None) -> str:
    """What a receipt of a de-identified delivery says (its reason while "sent")."""
    if options is None:
        return ""
    return "anonymized: a de-identified copy was sent (PS3.15 E.1 basic profile" + (
        f"; {', '.join(options)})" if options else ")"
    )


def corrected_note(correction: Any) -> str:
    """What a receipt of a re-send after a correction says (its reason while "sent")."""
    if correction is None:
        return ""
    return f"sent again: correction {correction} changed it after it was first delivered"


def route_handler(
    outbound: Outbound,
    registry: NodeRegistry,
    tls: ssl.SSLContext | None = None,
    anonymizer: Anonymizer | None = None,
) -> Handler:
    async def route(job: JobContext) -> str:
        p = job.params
        archive = outbound.archive
        if archive is None:  # pragma: no cover - bootstrap always gives one
            raise JobFailed("this node has no archive to send from")
        receipts = await routing.job_receipts(archive, job.id)
        if not receipts:
            raise JobFailed("its delivery receipts, which list the instances to send, are gone")
        done = {r["sop_instance_uid"] for r in receipts if r["status"] == routing.DeliveryStatus.SENT}
        wanted = [r["sop_instance_uid"] for r in receipts if r["sop_instance_uid"] not in done]
        job.total, job.done, job.failed = len(receipts), len(done), 0
        destination, method = str(p["destination"]), str(p["method"])
        if not wanted:
            return f"all {job.total} instance(s) already delivered to {destination}"
        found = await select_instances(
            archive, "IMAGE", {"StudyInstanceUID": p["study"], "SOPInstanceUID": "\\".join(wanted)}
        )
        failed: dict[str, str] = {}
        stored = {i.sop_instance_uid for i in found}
        for sop in wanted:
            if sop not in stored:
                failed[sop] = "no longer stored here (deleted after it was routed)"
        usable = [i for i in found if not i.problem]
        for i in found:
            if i.problem:
                failed[i.sop_instance_uid] = i.problem
        options = p.get("anonymize")
        note = "; ".join(n for n in (corrected_note(p.get("correction")), anonymized_note(options)) if n)
        sent: list[str] = []
        keeper = asyncio.create_task(_keep_receipts(archive, job.id, sent, note))
        try:
            if options is None:
                passing = await deliver(job, usable, sent, failed, {})
            else:
                passing = await deliver_anonymized(job, usable, list(options), sent, failed)
        except JobFailed:
            await routing.record_outcomes(archive, job.id, sent, failed, retrying=False, note=note)
            _audit_sent(archive, job, sent, note)
            raise
        except asyncio.CancelledError:  # a clean stop or a cancel: what went is not sent again
            await asyncio.shield(routing.record_outcomes(archive, job.id, list(sent), {}, retrying=True, note=note))
            _audit_sent(archive, job, sent, note)
            raise
        finally:
            keeper.cancel()
        job.failed = len(failed)
        retrying = bool(passing) and _will_retry(job)
        await routing.record_outcomes(archive, job.id, sent, failed, retrying=retrying, note=note)
        _audit_sent(archive, job, sent, note)
        job.details["failures"] = [{"uid": u, "reason": w} for u, w in list(failed.items())[:MAX_LISTED]]
        said = f"delivered {job.done} of {job.total} instance(s) to {destination} ({method})" + (
            ", anonymized" if options is not None else ""
        )
        if passing:
            raise JobFailed(f"{said}; {passing}", retry=True)
        if failed and not sent and not done:
            raise JobFailed(f"{said}; every one failed (see failures)")
        return said + (f"; {len(failed)} failed (see failures)" if failed else "")

    async def deliver_anonymized(
        job: JobContext, usable: list[StoredInstance], options: list[str], sent: list[str], failed: dict[str, str]
    ) -> str:
        """De-identify and send :data:`ANONYMIZE_BATCH` instances at a time (the staging folder holds
        at most one batch of copies); the first passing failure stops it (the rest wait for a retry)."""
        if anonymizer is None:
            raise JobFailed(f"rule {job.params['rule']} anonymizes, but this node has no anonymizer; nothing was sent")
        made = 0
        passing = ""
        try:
            for start in range(0, len(usable), ANONYMIZE_BATCH):
                batch = usable[start : start + ANONYMIZE_BATCH]
                if passing:
                    failed.update({i.sop_instance_uid: passing for i in batch})
                    continue
                copies, unusable = await anonymizer.copies(batch, frozenset(options))
                made += len(copies)
                failed.update(unusable)
                failed.update({uid: f"its de-identified copy {c.problem}" for uid, c in copies if c.problem})
                try:
                    passing = await deliver(
                        job,
                        [c for _, c in copies if not c.problem],
                        sent,
                        failed,
                        {c.sop_instance_uid: uid for uid, c in copies},
                    )
                finally:
                    for _, copy in copies:
                        copy.blobs.delete(copy.blob_key)
        finally:
            if made and outbound.archive is not None:
                outbound.archive.audit.record(
                    Action.ANONYMIZED,
                    actor_kind=ActorKind.RULE,
                    actor=str(job.params["rule"]),
                    study_uid=str(job.params["study"]),
                    detail=f"{made} instance(s) de-identified to send to {job.params['destination']} (job {job.id}); "
                    "the copies are not stored",
                )
        return passing

    async def deliver(
        job: JobContext, usable: list[StoredInstance], sent: list[str], failed: dict[str, str], original: dict[str, str]
    ) -> str:
        """Send ``usable`` (C-STORE or STOW-RS); delivered ones go to ``sent``, refused ones to ``failed``,
        both under the stored original's UID (``original``: UID sent -> it). Answers why the rest may go
        through on another attempt ("" if nothing passing went wrong); JobFailed when nothing can."""
        p = job.params
        destination, method = str(p["destination"]), str(p["method"])

        def back(uid: str) -> str:
            return original.get(uid, uid)

        if not usable:
            return ""
        passing = ""
        if method == "C-STORE":
            node = await _node(registry, destination, p["rule"])

            def count(outcome: SendOutcome) -> None:
                if outcome.ok:
                    sent.append(back(outcome.instance.sop_instance_uid))
                    job.done += 1
                else:
                    failed[back(outcome.instance.sop_instance_uid)] = outcome.reason
                    job.failed += 1
                job.message = f"sent {job.done} of {job.total} instance(s) to {node.label()}"

            try:
                result = await outbound.send(node, usable, progress=count)
                if result.broken or result.gave_up:
                    passing = result.gave_up or result.broken[-1]
            except TooManyContexts as exc:
                failed.update({back(i.sop_instance_uid): str(exc) for i in usable})
                raise JobFailed(
                    f"these instances need {exc.needed} presentation contexts, more than one association allows"
                ) from None
            except NoAssociation as exc:
                passing = f"cannot send to {node.label()}: {exc}"
                failed.update({back(i.sop_instance_uid): passing for i in usable})
        else:
            try:
                answer = await stow(destination, [i.open for i in usable], context=tls)
            except StowError as exc:
                failed.update({back(i.sop_instance_uid): str(exc) for i in usable})
                if not exc.retry:
                    raise JobFailed(str(exc)) from None
                passing = str(exc)
            else:
                failed.update({back(uid): why for uid, why in answer.failed.items()})
                delivered = [back(i.sop_instance_uid) for i in usable if i.sop_instance_uid not in answer.failed]
                sent.extend(delivered)
                job.done += len(delivered)
        return passing

    return route


def prefetch_handler(outbound: Outbound, registry: NodeRegistry) -> Handler:
    async def prefetch(job: JobContext) -> str:
        p = job.params
        archive = outbound.archive
        if archive is None:  # pragma: no cover
            raise JobFailed("this node has no archive")
        source = await _node(registry, str(p["from"]), p["rule"])
        destination = str(p["to"])
        request = FindRequest.build(
            {"PatientID": p["patient_id"], "StudyInstanceUID": "", "StudyDate": ""}, model="study", level="STUDY"
        )
        try:
            found = await outbound.query(source, request)
        except (NoAssociation, AssociationLost) as exc:
            raise JobFailed(f"cannot ask {source.label()} for the priors: {exc}", retry=True) from None
        priors = sorted(
            {str(ds.get("StudyInstanceUID", "") or "") for ds in found.matches} - {"", str(p.get("exclude", ""))}
        )
        receipts = {r["study_instance_uid"]: r for r in await routing.job_receipts(archive, job.id)}
        new = [s for s in priors if s not in receipts]
        if new:
            await routing.add_receipts(
                archive, [routing.receipt_row(job.id, p["rule"], "C-MOVE", destination, s) for s in new]
            )
        todo = [s for s in priors if s not in receipts or receipts[s]["status"] != routing.DeliveryStatus.SENT]
        job.total, job.done, job.failed = len(priors), len(priors) - len(todo), 0
        if not priors:
            return f"{source.label()} has no prior study of patient {p['patient_id']}"
        failed: dict[str, str] = {}
        passing = ""
        for study in todo:
            move = RetrieveRequest.build({"StudyInstanceUID": study}, level="STUDY")
            try:
                result = await outbound.retrieve(source, move, method="move", destination=destination)
            except (NoAssociation, AssociationLost) as exc:
                passing = f"C-MOVE from {source.label()} failed: {exc}"
                failed[study] = passing
                continue
            if result.status == 0 or (result.status == 0xB000 and result.completed):
                job.done += 1
                await _study_sent(archive, job.id, study, result.completed)
                archive.audit.record(  # a rule had another node send a patient's study: "retrieved"
                    Action.RETRIEVED,
                    actor_kind=ActorKind.RULE,
                    actor=str(p["rule"]),
                    patient_id=str(p["patient_id"]),
                    study_uid=study,
                    detail=f"prefetch: C-MOVE from {source.label()} to {destination}, "
                    f"{result.completed} instance(s) (job {job.id})",
                )
            else:
                why = f"{source.label()} answered {describe(result.status, MOVE)}" + (
                    f" ({result.error_comment})" if result.error_comment else ""
                )
                if result.status == 0xA801:
                    why += f"; {source.ae_title} must know {destination} as a move destination"
                failed[study] = why
            job.message = f"moved {job.done} of {job.total} prior stud(ies) to {destination}"
        job.failed = len(failed)
        retrying = bool(passing) and _will_retry(job)
        if failed:
            await _studies_failed(archive, job.id, failed, retrying=retrying)
        said = f"{job.done} of {job.total} prior stud(ies) of patient {p['patient_id']} moved to {destination}"
        if passing:
            raise JobFailed(f"{said}; {passing}", retry=True)
        if failed:
            raise JobFailed(f"{said}; {next(iter(failed.values()))}")
        return said

    return prefetch


async def _study_sent(archive: Any, job_id: int, study: str, count: int) -> None:
    await routing.set_study_receipt(archive, job_id, study, routing.DeliveryStatus.SENT, f"{count} instance(s) moved")


async def _studies_failed(archive: Any, job_id: int, failed: dict[str, str], *, retrying: bool) -> None:
    status = routing.DeliveryStatus.RETRYING if retrying else routing.DeliveryStatus.FAILED
    for study, why in failed.items():
        await routing.set_study_receipt(archive, job_id, study, status, why)


def register_routing_jobs(
    queue: JobQueue,
    outbound: Outbound,
    registry: NodeRegistry,
    tls: ssl.SSLContext | None = None,
    anonymizer: Anonymizer | None = None,
) -> None:
    """The "route" and "prefetch" kinds; both resume after a restart (sending again is harmless).
    ``anonymizer``: de-identifies for rules with ``anonymize`` (without one, their jobs fail)."""
    queue.register(routing.ROUTE, route_handler(outbound, registry, tls, anonymizer), on_restart="resume")
    queue.register(routing.PREFETCH, prefetch_handler(outbound, registry), on_restart="resume")


__all__ = ["prefetch_handler", "register_routing_jobs", "route_handler"]
