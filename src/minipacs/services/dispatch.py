"""The DIMSE dispatcher: it owns the response (PS3.7 §9.3, §10.3).

A service handler returns a :class:`Response` (a status, an Error Comment, an
identifier, further response fields), or is an async generator that yields
Pending responses (:class:`Response` or, for many C-FIND matches,
:class:`PendingBatch`) and then the final one; code after the final ``yield``
runs once it has been sent (e.g. the Storage Commitment report). The dispatcher
builds each -RSP command from the request and sends it.

Any exception escaping a handler before its final response becomes the failure
status of that service (``status.HANDLER_FAILURE``) with a log line: the peer is
answered at once instead of waiting for its DIMSE timeout. A handler may still
send its own responses through the association (older code does); the
dispatcher then only checks that a final response went out.

Every operation is registered with the access-policy operation that guards it
(:class:`Operation`, core/access.py): a service cannot be served without one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from minipacs.core.access import AccessPolicy
from minipacs.core.nodes import ALL_OPERATIONS, OPERATIONS
from minipacs.net.association import Association, Message, RequestHandler
from minipacs.net.dimse import Command
from minipacs.net.memory import InMemoryRefused
from minipacs.services.base import ServiceClass, record_operation
from minipacs.services.status import (
    HANDLER_FAILURE,
    NOT_AUTHORIZED,
    OUT_OF_MEMORY,
    PENDING_STATUSES,
    access_comment,
    describe,
    error_comment,
)

log = logging.getLogger("minipacs.server")


@dataclass(frozen=True)
class Response:
    """One DIMSE response as a handler sees it; the dispatcher adds MessageIDBeingRespondedTo and
    the Affected SOP Class / Instance UIDs of the request (``fields`` may override them)."""

    status: int
    #: Error Comment (0000,0902): a sentence within the LO's 64 characters (``status.error_comment``);
    #: a longer one is logged and replaced by the short sentence of its status, never cut.
    error: str = ""
    #: The identifier / attribute list / action reply, already encoded in the context's transfer syntax.
    dataset: bytes | None = None
    #: Further command fields by keyword (sub-operation counts, OffendingElement, ErrorID, ...).
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: Work that follows a final response, run once it is sent -- or could not be, the association
    #: having ended (e.g. the Storage Commitment report, which then goes on a new association).
    then: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class PendingBatch:
    """Several Pending responses that differ only in their identifier (C-FIND matches): one write."""

    status: int
    datasets: Sequence[bytes]


Answer = Response | PendingBatch
#: A handler: ``async def`` returning a Response (or None when it sent its own), or an async generator.
Handler = Callable[[Association, Message], Awaitable[Response | None] | AsyncGenerator[Answer, None]]


@dataclass(frozen=True)
class Operation:
    """A DIMSE request a service answers, and the access-policy operation (core/nodes.py OPERATIONS) that guards it."""

    handler: Handler
    access: str


class ServiceRegistrationError(ValueError):
    """A service cannot be served as registered; the message says what to change."""


def check_operation(service: str, request: str, operation: object) -> Operation:
    """The registration of ``request`` by ``service``, or the reason it cannot be served."""
    if not isinstance(operation, Operation):
        raise ServiceRegistrationError(
            f"service {service!r} registers {request} without an access rule: its handlers() must map "
            f"{request} to Operation(handler, access=...) with access one of {', '.join(OPERATIONS)}"
        )
    if operation.access not in ALL_OPERATIONS:
        raise ServiceRegistrationError(
            f"service {service!r} registers {request} with access rule {operation.access!r}, which the access "
            f"policy does not know; use one of {', '.join(OPERATIONS)}"
        )
    return operation


def request_handler(service: ServiceClass, request: str) -> RequestHandler:
    """The association-level handler serving ``request`` with ``service`` through the dispatcher: what an
    SCU passes to ``connect(handler=...)`` to answer requests coming back (C-GET's C-STOREs)."""
    operation = check_operation(service.name, request, service.handlers()[request])

    async def handle(assoc: Association, message: Message) -> None:
        await dispatch(assoc, message, operation)

    return handle


def response_command(request: Command, answer: Response | PendingBatch, *, has_dataset: bool) -> Command:
    """The -RSP of ``request`` for ``answer`` (PS3.7 Tables 9.3-x / 10.3-x: the response names the
    message it answers and the SOP class and instance the request named)."""
    fields: dict[str, Any] = {"MessageIDBeingRespondedTo": request.message_id}
    if request.sop_class_uid:
        fields["AffectedSOPClassUID"] = request.sop_class_uid
    if request.sop_instance_uid:
        fields["AffectedSOPInstanceUID"] = request.sop_instance_uid
    fields["Status"] = answer.status
    if isinstance(answer, Response):
        if answer.error:
            fields["ErrorComment"] = error_comment(answer.status, answer.error)
            if fields["ErrorComment"] != answer.error:
                log.info("%s answered 0x%04X: %s", request.name, answer.status, answer.error)
        fields.update(answer.fields)
    return Command.make(request.name.replace("-RQ", "-RSP"), has_dataset=has_dataset, **fields)


async def send_answer(assoc: Association, message: Message, answer: Answer) -> None:
    if isinstance(answer, PendingBatch):
        if answer.status not in PENDING_STATUSES:
            raise ValueError(f"a batch of responses must be Pending, not 0x{answer.status:04X}")
        if answer.datasets:
            rsp = response_command(message.command, answer, has_dataset=True)
            await assoc.send_responses(message.context.context_id, rsp, answer.datasets)
        return
    rsp = response_command(message.command, answer, has_dataset=answer.dataset is not None)
    await assoc.send_message(message.context.context_id, rsp, answer.dataset, answering=message)


async def dispatch(assoc: Association, message: Message, operation: Operation) -> None:
    """Run ``operation``'s handler for ``message`` and see that the peer gets a final response."""
    request = message.command.name
    if isinstance(message.dataset_error, InMemoryRefused):
        await refuse_for_memory(assoc, message, message.dataset_error)
        return
    try:
        result = operation.handler(assoc, message)
        if isinstance(result, AsyncGenerator):
            async with aclosing(result) as answers:
                async for answer in answers:
                    if message.answered:
                        raise RuntimeError(f"the {request} handler answered again after its final response")
                    await send_answer(assoc, message, answer)
        else:
            single = await result
            if single is not None:
                if message.answered:
                    raise RuntimeError(f"the {request} handler returned a response after sending its own")
                try:
                    await send_answer(assoc, message, single)
                finally:
                    if single.then is not None:
                        # not in this request's task: a release the peer sends now is answered at
                        # once, not after the follow-up (PS3.4 J.3.3: the report may come later,
                        # on a new association)
                        assoc.spawn_after(_follow_up(assoc, request, single.then))
        if not message.answered:
            raise RuntimeError(f"the {request} handler ended without a final response")
    except Exception as exc:
        if not assoc.can_respond:
            return  # the association ended under the handler: counted and logged once by the association
        if message.answered:
            log.error("%s %s failed after its final response: %s", assoc.label, request, exc, exc_info=exc)
            return
        await fail(assoc, message, exc)


async def _follow_up(assoc: Association, request: str, work: Callable[[], Awaitable[None]]) -> None:
    try:
        await work()
    except Exception as exc:
        log.error("%s %s: the work after the response failed: %s", assoc.label, request, exc, exc_info=exc)


async def fail(assoc: Association, message: Message, exc: Exception) -> None:
    """Answer ``message`` with its service's failure status (PS3.4 / PS3.7 C.4.2) because of ``exc``."""
    request = message.command.name
    status = HANDLER_FAILURE.get(request, HANDLER_FAILURE["default"])
    why = f"internal error: {type(exc).__name__}: {exc}"
    short = error_comment(status, f"internal error: {type(exc).__name__}")
    log.error(
        "%s %s failed, answered %s: %s", assoc.label, message.command.summary(), describe(status), why, exc_info=exc
    )
    if message.dataset is not None:
        message.dataset.discard()
    record_operation(assoc, op=request.removesuffix("-RQ"), status=status, outcome="failed", error=why)
    try:
        await send_answer(assoc, message, Response(status, error=short))
    except Exception as again:  # noqa: BLE001 - nothing more we can say to this peer
        log.warning("%s could not send the failure response to %s: %s", assoc.label, request, again)


async def refuse_for_memory(assoc: Association, message: Message, exc: InMemoryRefused) -> None:
    """Answer a request whose data set could not be held in memory (net/memory.py) with its service's
    out-of-resources status (``status.OUT_OF_MEMORY``) and an Error Comment; one log line says why."""
    request = message.command.name
    status = OUT_OF_MEMORY.get(request, OUT_OF_MEMORY["default"])
    log.warning("%s %s refused with %s: %s", assoc.label, request.removesuffix("-RQ"), describe(status), exc)
    record_operation(assoc, op=request.removesuffix("-RQ"), status=status, outcome="refused", error=str(exc))
    try:
        await send_answer(assoc, message, Response(status, error=error_comment(status, exc)))
    except Exception as again:  # noqa: BLE001 - the association ended: nothing more to say to this peer
        log.debug("%s could not send the refusal of %s: %s", assoc.label, request, again)


def guarded(operation: Operation, access: AccessPolicy) -> Operation:
    """``operation`` behind the access policy: a refused request is answered 0x0124 with the reason."""

    async def guard(assoc: Association, message: Message) -> Response | None:
        refusal = access.operation_refusal(operation.access, assoc.calling_ae, assoc.peer_host)
        if refusal is None:
            await dispatch(assoc, message, operation)
            return None
        why = f"{refusal.reason} (rule: {refusal.rule})"
        log.warning("%s %s refused: %s", assoc.label, message.command.name.removesuffix("-RQ"), why)
        if message.dataset is not None:
            message.dataset.discard()
        record_operation(
            assoc, op=message.command.name.removesuffix("-RQ"), status=NOT_AUTHORIZED, outcome="refused", reason=why
        )
        comment = access_comment(refusal.rule, assoc.calling_ae.strip(), operation.access, refusal.reason)
        return Response(NOT_AUTHORIZED, error=comment)

    return Operation(guard, operation.access)


__all__ = [
    "Answer",
    "Handler",
    "Operation",
    "PendingBatch",
    "Response",
    "ServiceRegistrationError",
    "dispatch",
    "guarded",
    "request_handler",
    "response_command",
]
