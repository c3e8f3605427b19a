"""The job kinds that talk to other DICOM nodes: "send" (C-STORE) and "retrieve" (C-MOVE / C-GET).

Each is a handler of the persistent job queue (core/jobs.py), registered by bootstrap with
:func:`register_transfer_jobs`. Their parameters are plain JSON, so a job runs again after a
restart, or on another node sharing the index:

- ``send``: ``{"node": <registry id>, "level": "STUDY", "model": "STUDY", "key": "StudyInstanceUID",
  "uids": [...]}``. The stored instances are selected when the job runs (an instance deleted
  meanwhile is not sent), and all of them are sent on each attempt (a receiver keeps or replaces
  the copies it already has).
- ``retrieve``: ``{"node": <id>, "method": "move"|"get", "level": "SERIES", "model": "STUDY",
  "keys": {"StudyInstanceUID": ..., "SeriesInstanceUID": ...}}``.

Both are "resume" after an unclean stop: sending or retrieving again is harmless (the
duplicate policy decides what a second copy does here). Which failures are retried:
no association (the peer is down or refuses us) and instances not sent because an association
broke off are a passing trouble (retried with back-off); a peer that answers with a failure
status (it refused the instances, it does not know us as a move destination) is not.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from minipacs.core.jobs import Handler, JobContext, JobFailed, JobQueue
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.core.retrieve import InvalidRetrieveIdentifier, StoredInstance, select_instances
from minipacs.services.outbound import (
    MAX_CONTEXTS,
    AssociationLost,
    InvalidKeys,
    NoAssociation,
    Outbound,
    RetrieveRequest,
    RetrieveResult,
    SendOutcome,
    TooManyContexts,
)
from minipacs.services.status import GET, MOVE, describe

#: Failures kept per job for the JSON (the counts are always complete).
MAX_FAILURES_LISTED: Final = 100
SEND: Final = "send"
RETRIEVE: Final = "retrieve"


def node_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "ae_title": node.ae_title,
        "host": node.host,
        "port": node.port,
        "description": node.description,
        "permissions": sorted(node.permissions),
        "tls": node.tls,
    }


async def _node(registry: NodeRegistry, job: JobContext) -> Node:
    node_id = job.params.get("node")
    node = await registry.get(int(node_id)) if isinstance(node_id, int) else None
    if node is None:
        raise JobFailed(f"node {node_id} is no longer registered (GET /api/nodes lists the nodes)")
    job.details["node"] = node_json(node)
    return node


def _fail(job: JobContext, uid: str, why: str) -> None:
    job.failed += 1
    failures = job.details.setdefault("failures", [])
    if len(failures) < MAX_FAILURES_LISTED:
        failures.append({"uid": uid, "reason": why})


async def select_for_send(archive: Any, params: dict[str, Any]) -> list[StoredInstance]:
    """The stored instances a send job's params name (also used at submit to count them)."""
    return await select_instances(
        archive, params["level"], {params["key"]: "\\".join(params["uids"])}, params.get("model", "STUDY")
    )


def send_handler(outbound: Outbound, registry: NodeRegistry) -> Handler:
    async def send(job: JobContext) -> str:
        node = await _node(registry, job)
        if outbound.archive is None:  # pragma: no cover - bootstrap always gives one
            raise JobFailed("this node has no archive to send from")
        try:
            found = await select_for_send(outbound.archive, job.params)
        except (InvalidRetrieveIdentifier, KeyError) as exc:
            raise JobFailed(f"the job's selection cannot be used: {exc}") from None
        if not found:
            raise JobFailed("none of the instances to send is stored any more")
        job.total, job.done, job.failed = len(found), 0, 0
        job.details["failures"] = []
        usable = [i for i in found if not i.problem]
        for instance in found:
            if instance.problem:
                _fail(job, instance.sop_instance_uid, instance.problem)

        def count(outcome: SendOutcome) -> None:
            if outcome.ok:
                job.done += 1
            else:
                _fail(job, outcome.instance.sop_instance_uid, outcome.reason)
            job.message = f"sent {job.done} of {job.total} instance(s) to {node.label()}"

        try:
            result = await outbound.send(node, usable, progress=count)
        except TooManyContexts as exc:
            raise JobFailed(
                f"these instances need {exc.needed} presentation contexts and one association allows "
                f"{MAX_CONTEXTS}; send the series one by one"
            ) from None
        except NoAssociation as exc:
            job.failed = job.total
            raise JobFailed(f"cannot send to {node.label()}: {exc}", retry=True) from None
        said = f"sent {job.done} of {job.total} instance(s) to {node.label()}"
        if result.broken or result.gave_up:  # a passing trouble; a SOP Class or syntax refused is not one
            raise JobFailed(f"{said}; the association broke off: {result.gave_up or result.broken[-1]}", retry=True)
        if job.failed and not job.done:
            raise JobFailed(said + "; every one failed (see failures)")
        return said + (f"; {job.failed} failed (see failures)" if job.failed else "")

    return send


def _counted(job: JobContext, result: RetrieveResult) -> None:
    job.done = result.completed + result.warning
    job.failed = result.failed
    job.total = max(job.total, job.done + job.failed + result.remaining)
    job.details.update(completed=result.completed, warning=result.warning)


def retrieve_handler(outbound: Outbound, registry: NodeRegistry) -> Handler:
    async def retrieve(job: JobContext) -> str:
        node = await _node(registry, job)
        asked = job.params.get("method")
        method: Literal["move", "get"] = "get" if asked == "get" else "move"
        try:
            query = RetrieveRequest.build(
                job.params["keys"], level=job.params["level"], model=job.params.get("model", "STUDY")
            )
        except (InvalidKeys, KeyError) as exc:
            raise JobFailed(f"the job's keys cannot be used: {exc}") from None
        job.total = job.done = job.failed = 0
        try:
            result = await outbound.retrieve(node, query, method=method, progress=lambda r: _counted(job, r))
        except NoAssociation as exc:
            raise JobFailed(f"cannot retrieve from {node.label()}: {exc}", retry=True) from None
        except AssociationLost as exc:
            raise JobFailed(f"the retrieve from {node.label()} broke off: {exc}", retry=True) from None
        _counted(job, result)
        job.details["failed_uids"] = result.failed_uids[:MAX_FAILURES_LISTED]
        said = f"C-{method.upper()} from {node.label()}: {job.done} received, {job.failed} failed"
        if result.status == 0 or (result.status == 0xB000 and job.done):
            return said
        meaning = describe(result.status, GET if method == "get" else MOVE)
        hint = ""
        if method == "move" and result.status == 0xA801:
            hint = f"; {node.ae_title} must have us registered as {outbound.ae_title!r} to move images to us"
        raise JobFailed(
            f"{said}; it answered {meaning}" + (f" ({result.error_comment})" if result.error_comment else "") + hint
        )

    return retrieve


def register_transfer_jobs(queue: JobQueue, outbound: Outbound, registry: NodeRegistry) -> None:
    """The "send" and "retrieve" kinds, run through ``outbound`` to nodes of ``registry``."""
    queue.register(SEND, send_handler(outbound, registry), on_restart="resume")
    queue.register(RETRIEVE, retrieve_handler(outbound, registry), on_restart="resume")


__all__ = [
    "MAX_FAILURES_LISTED",
    "RETRIEVE",
    "SEND",
    "node_json",
    "register_transfer_jobs",
    "retrieve_handler",
    "select_for_send",
    "send_handler",
]
