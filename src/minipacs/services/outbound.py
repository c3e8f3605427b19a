"""One outbound path: echo, query, send and retrieve to another DICOM node.

PS3.4 A.4 (C-ECHO), C.4.1 (C-FIND, and K.6.1 the Modality Worklist), B.2 (C-STORE),
C.4.2 / C.4.3 (C-MOVE / C-GET), all as requester. Both edges call this module: the
CLI (``minipacs echo | find | store | move | get | worklist query``) and the web
(``/api/nodes/{id}/echo | query | retrieve``, ``/api/send``). Neither builds an
association itself.

The caller builds an :class:`Outbound` from an :class:`OutboundSettings` (our AE title,
PDU sizes, timeouts, the TLS client context, the connect timeout) and, for C-GET into
the archive, the archive: bootstrap for the web (the web never imports bootstrap or
net/), the CLI from its flags. A peer is anything with ``ae_title``, ``host``, ``port``,
``tls`` and ``label()``: a registered ``core.nodes.Node`` or an :class:`Address`.

Keys are structured (keyword, tag or sequence path -> value), never ``"k=v"`` text: the
CLI parses its ``-k`` flags (cli/keys.py), the web passes its JSON. A request is built
(and refused, :class:`InvalidKeys`) before anything connects: :class:`FindRequest`,
:class:`RetrieveRequest`.

Failures an edge words for people: :class:`NoAssociation` (nothing was done: refused,
rejected, unreachable, timed out), :class:`AssociationLost` (it broke off midway:
aborted, timed out, or the peer refused the presentation context the operation needs),
:class:`TooManyContexts`. Their text is the wire's own sentence, unchanged.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol, cast

from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset

from minipacs.core.transcode import TranscodeError
from minipacs.dicom.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MODALITY_WORKLIST_FIND,
    VERIFICATION_SOP_CLASS,
)
from minipacs.net.association import (
    Association,
    AssociationError,
    AssociationSettings,
    DatasetSink,
    SinkFactory,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.pdu_items import RoleSelection, UserIdentityRQ
from minipacs.net.presentation import NegotiatedContext
from minipacs.services.base import ServiceClass
from minipacs.services.dispatch import request_handler
from minipacs.services.find_scu import (
    DEFAULT_KEYS,
    MODELS,
    FindResult,
    InvalidKeySpec,
    KeyValue,
    build_identifier,
)
from minipacs.services.find_scu import find_all as _find_all
from minipacs.services.retrieve_scu import (
    KeySyntaxError,
    Progress,
    RetrieveResult,
    c_get,
    c_move,
    get_contexts,
    move_contexts,
    retrieve_identifier,
)
from minipacs.services.status import describe, is_success, is_warning
from minipacs.services.storage_scu import SendableFile, proposal, store_file

if TYPE_CHECKING:
    from minipacs.core.archive import Archive

#: The syntaxes we propose for C-ECHO, C-FIND, C-MOVE and the C-GET model itself.
QR_SYNTAXES: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: PS3.8 9.3.2.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ.
MAX_CONTEXTS: Final = 128
#: C-FIND information models -> (SOP class, default level): the Q/R ones (PS3.4 C.6) and the
#: Modality Worklist (PS3.4 K.6.1.1, no Query/Retrieve Level).
FIND_MODELS: Final[Mapping[str, tuple[str, str | None]]] = {
    **MODELS,
    "worklist": (MODALITY_WORKLIST_FIND, None),
}

__all__ = [
    "DEFAULT_KEYS",
    "FIND_MODELS",
    "Address",
    "AssociationLost",
    "EchoResponse",
    "FindRequest",
    "FindResult",
    "InvalidKeys",
    "KeyValue",
    "NoAssociation",
    "Outbound",
    "OutboundError",
    "OutboundSettings",
    "Peer",
    "RetrieveRequest",
    "RetrieveResult",
    "SendOutcome",
    "SendResult",
    "StorageReceiver",
    "TooManyContexts",
    "UserIdentity",
]


# ------------------------------------------------------------------ who we call, as whom


class Peer(Protocol):
    """The node we call: a registered ``core.nodes.Node`` or an :class:`Address`."""

    @property
    def ae_title(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tls(self) -> bool: ...

    def label(self) -> str: ...


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Address:
    """A node named by its address (the CLI's HOST PORT -aec), not by the AE registry."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    def label(self) -> str:
        return f"{self.ae_title!r} at {self.host}:{self.port}"


#: PS3.7 D.3.3.7.1: the Primary- and Secondary-field lengths are 16-bit.
MAX_IDENTITY_FIELD: Final = 0xFFFF


@dataclass(frozen=True)
class UserIdentity:
    """The User Identity we send in the A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1, sub-item 58H): type 2
    (username and passcode) with a password, type 1 (username only) without; both UTF-8.
    ``positive_response``: ask the acceptor to confirm it (D.3.3.7.2). ``repr`` never shows the password."""

    username: str
    password: str | None = field(default=None, repr=False)
    positive_response: bool = False

    def __post_init__(self) -> None:
        if not self.username:
            raise ValueError("a DICOM user identity needs a username")
        for name, value in (("username", self.username), ("password", self.password or "")):
            if len(value.encode("utf-8")) > MAX_IDENTITY_FIELD:
                raise ValueError(
                    f"the {name} is longer than the {MAX_IDENTITY_FIELD} bytes a User Identity "
                    "field holds (PS3.7 D.3.3.7.1)"
                )

    def item(self) -> UserIdentityRQ:
        if self.password is None:
            return UserIdentityRQ(1, self.positive_response, self.username.encode("utf-8"))
        return UserIdentityRQ(2, self.positive_response, self.username.encode("utf-8"), self.password.encode("utf-8"))


@dataclass(frozen=True)
class OutboundSettings:
    """How we call out: ``association`` carries our AE title, PDU sizes, timeouts and the TLS client
    context (used for peers with ``tls``); ``local_host`` the address we connect from (None: any);
    ``user_identity`` who we say we are in every A-ASSOCIATE-RQ (None: nobody, PS3.7 D.3.3.7)."""

    association: AssociationSettings
    connect_timeout: float = 15.0
    local_host: str | None = None
    user_identity: UserIdentity | None = None
    #: Most matches of one C-FIND we keep (config.py remote_find_max_matches): past it, C-CANCEL.
    find_max_matches: int = 10_000

    @property
    def ae_title(self) -> str:
        return self.association.ae_title


class StorageReceiver(ServiceClass, Protocol):
    """Where C-GET's C-STOREs go (PS3.4 C.4.3.1.3): ``services.storage.StorageSCP`` (the archive, the ONE
    ingest path) or ``services.retrieve_scu.FolderStorage`` (a folder) — a service class whose C-STORE
    operation the dispatcher runs (services/dispatch.py), as for the listener's."""

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None: ...


# ------------------------------------------------------------------ failures


class OutboundError(Exception):
    """Calling another node failed; the text is the reason as the wire gave it."""


class NoAssociation(OutboundError):
    """No association: connection refused or timed out, or the peer rejected us. Nothing was done."""


class AssociationLost(OutboundError):
    """The association broke off midway (aborted, timed out), or the peer did not accept the presentation
    context the operation needs. What was done before stays done."""


class TooManyContexts(OutboundError):
    """The instances of one send need more presentation contexts than one association carries."""

    def __init__(self, needed: int) -> None:
        super().__init__(
            f"these instances need {needed} presentation contexts and one association allows {MAX_CONTEXTS}"
        )
        self.needed = needed


class InvalidKeys(ValueError):
    """The keys cannot make an identifier; the text says which key and why."""


# ------------------------------------------------------------------ requests, built before connecting


@dataclass(frozen=True)
class FindRequest:
    """A C-FIND: the SOP class of its information model and the identifier."""

    sop_class: str
    identifier: Dataset

    @classmethod
    def build(
        cls, keys: Mapping[str, KeyValue], *, model: str = "study", level: str | None = None, strict: bool = False
    ) -> FindRequest:
        """``keys`` at ``level`` (the model's default level when None) in ``model`` (:data:`FIND_MODELS`).

        No keys: the level's usual return keys. ``strict`` (the web): pydicom's value checks off, any other
        warning refuses the keys, nothing is printed on the server. Raises :class:`InvalidKeys`.
        """
        if model not in FIND_MODELS:
            raise InvalidKeys(f"information model {model!r} is not one of {', '.join(FIND_MODELS)}")
        sop_class, default_level = FIND_MODELS[model]
        try:
            if not strict:
                return cls(sop_class, build_identifier(keys, level or default_level))
            with disable_value_validation(), warnings.catch_warnings():
                warnings.simplefilter("error")
                return cls(sop_class, build_identifier(keys, level or default_level))
        except (InvalidKeySpec, ValueError, TypeError, UserWarning) as exc:
            raise InvalidKeys(str(exc)) from None


@dataclass(frozen=True)
class RetrieveRequest:
    """A C-MOVE or C-GET: information model (PATIENT or STUDY root), level, identifier (encoded once the
    association says in which transfer syntax)."""

    model: str
    level: str
    identifier: Dataset

    @classmethod
    def build(cls, keys: Mapping[str, KeyValue], *, level: str, model: str = "STUDY") -> RetrieveRequest:
        """``keys`` (unique keys, PS3.4 C.4.2.2.1) at ``level``; raises :class:`InvalidKeys`."""
        if model not in ("PATIENT", "STUDY"):
            raise InvalidKeys(f"retrieve model {model!r} is not PATIENT or STUDY")
        try:
            return cls(model, level.upper(), retrieve_identifier(level, keys))
        except (KeySyntaxError, ValueError) as exc:
            raise InvalidKeys(str(exc)) from None


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class EchoResponse:
    status: int  # -1: no response
    ms: float
    error_comment: str = ""  # (0000,0902), when the peer sent one


@dataclass(frozen=True)
class SendOutcome:
    """One instance of a send: its C-STORE status (None: not sent) and, when it failed, why."""

    instance: SendableFile
    status: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (is_success(self.status) or is_warning(self.status))

    @property
    def warning(self) -> bool:
        return self.status is not None and is_warning(self.status)


@dataclass
class SendResult:
    sent: int = 0  # success or warning
    warnings: int = 0
    failed: list[SendOutcome] = field(default_factory=list)  # refused, or not sent (status None), with why
    associations: int = 0  # opened: one, plus one after each that broke off
    broken: list[str] = field(default_factory=list)  # why each association that broke off did
    gave_up: str = ""  # no new association after one broke off: why (the rest were not sent)


# ------------------------------------------------------------------ the operations


class Outbound:
    """Echo, query, send and retrieve to other nodes, as ``settings.ae_title``."""

    def __init__(self, settings: OutboundSettings, archive: Archive | None = None) -> None:
        self.settings = settings
        self.archive = archive

    @property
    def ae_title(self) -> str:
        return self.settings.ae_title

    @asynccontextmanager
    async def session(
        self,
        peer: Peer,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        receiver: StorageReceiver | None = None,
        roles: Sequence[RoleSelection] = (),
    ) -> AsyncIterator[Association]:
        """An association from us to ``peer``, released at the end; aborted when the body fails.

        Raises :class:`NoAssociation`; an AssociationError or LookupError inside the body
        becomes :class:`AssociationLost`.
        """
        aset = self.settings.association
        rq = build_rq(aset.ae_title, peer.ae_title, contexts, aset, roles=roles)
        if self.settings.user_identity is not None:
            rq.user_information.user_identity_rq = self.settings.user_identity.item()
        # A receiver's sink_for may answer None (no dataset expected); the association keeps that as "no sink".
        sinks = cast(SinkFactory, receiver.sink_for) if receiver is not None else None
        try:
            assoc = await connect(
                peer.host,
                peer.port,
                rq,
                aset,
                connect_timeout=self.settings.connect_timeout,
                local_host=self.settings.local_host,
                tls=peer.tls,
                handler=request_handler(receiver, "C-STORE-RQ") if receiver is not None else None,
                sink_factory=sinks,
            )
        except AssociationError as exc:
            raise NoAssociation(str(exc)) from exc
        try:
            yield assoc
        except (AssociationError, LookupError) as exc:
            assoc.abort()
            await assoc.wait_closed()
            raise AssociationLost(str(exc)) from exc
        except BaseException:
            assoc.abort()
            raise
        await assoc.release()

    async def echo(
        self, peer: Peer, *, repeat: int = 1, on_response: Callable[[EchoResponse], None] | None = None
    ) -> list[EchoResponse]:
        """C-ECHO (PS3.4 A.4) ``repeat`` times on one association; each response as it comes."""
        responses: list[EchoResponse] = []
        async with self.session(peer, [(VERIFICATION_SOP_CLASS, QR_SYNTAXES)]) as assoc:
            for _ in range(max(repeat, 1)):
                start = time.perf_counter()
                status, text = await _c_echo(assoc)
                response = EchoResponse(status, (time.perf_counter() - start) * 1000, text)
                responses.append(response)
                if on_response is not None:
                    on_response(response)
        return responses

    async def query(self, peer: Peer, request: FindRequest, *, cancel_after: int | None = None) -> FindResult:
        """C-FIND (PS3.4 C.4.1); every match, and C-CANCEL after ``cancel_after`` of them, or after
        ``find_max_matches`` (remote_find_max_matches) when that is fewer: a peer's answer must not hold
        this process's memory without bound."""
        most = self.settings.find_max_matches
        limit = most if cancel_after is None else min(cancel_after, most)
        async with self.session(peer, [(request.sop_class, QR_SYNTAXES)]) as assoc:
            result = await _find_all(assoc, request.sop_class, request.identifier, cancel_after=limit)
        if len(result.matches) >= most and (cancel_after is None or cancel_after > most):
            log.warning(
                "C-FIND of %s: kept the first %d matches (remote_find_max_matches); C-CANCEL sent, %d more dropped",
                peer.label(),
                most,
                result.dropped,
            )
        return result

    async def send(
        self, peer: Peer, instances: Sequence[SendableFile], *, progress: Callable[[SendOutcome], None] | None = None
    ) -> SendResult:
        """C-STORE (PS3.4 B.2) each instance as stored (transcoded only when the peer takes none of its
        syntax); a refused or unreadable instance is counted and the others go on.

        When the association breaks off (the peer aborts, a DIMSE timeout), the instance in flight is
        reported failed with the reason (the peer may or may not have kept it) and a NEW association
        carries the rest, as DCMTK storescu does with ``--no-halt``; when no new association can be had,
        every instance not sent is reported with that reason. So ``progress`` hears of every instance
        exactly once. Raises :class:`TooManyContexts` before connecting, :class:`NoAssociation` only
        when the first association fails (nothing was done).
        """
        contexts = proposal(instances)
        if len(contexts) > MAX_CONTEXTS:
            raise TooManyContexts(len(contexts))
        result = SendResult()
        queue = deque(instances)

        def report(outcome: SendOutcome) -> None:
            if outcome.ok:
                result.sent += 1
                result.warnings += outcome.warning
            else:
                result.failed.append(outcome)
            if progress is not None:
                progress(outcome)

        while queue:
            try:
                async with self.session(peer, contexts) as assoc:
                    result.associations += 1
                    while queue:
                        outcome = await _store_one(assoc, queue[0])
                        queue.popleft()
                        report(outcome)
            except NoAssociation as exc:
                if not result.associations:
                    raise
                result.gave_up = str(exc)
                why = f"not sent: no new association after the last one broke off ({exc})"
                while queue:
                    report(SendOutcome(queue.popleft(), None, why))
            except AssociationLost as exc:
                result.broken.append(str(exc))
                if queue:
                    report(
                        SendOutcome(
                            queue.popleft(),
                            None,
                            f"the association broke off while it was being sent ({exc}); the peer may not have kept it",
                        )
                    )
        return result

    async def retrieve(
        self,
        peer: Peer,
        request: RetrieveRequest,
        *,
        method: Literal["move", "get"] = "move",
        destination: str | None = None,
        receiver: StorageReceiver | None = None,
        offer: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> RetrieveResult:
        """C-MOVE (PS3.4 C.4.2) to ``destination`` (us when None), or C-GET (C.4.3) into ``receiver``
        (the archive when None), offering the Storage classes of ``offer`` first; the final counts."""
        if method == "move":
            async with self.session(peer, move_contexts(request.model)) as assoc:
                return await c_move(assoc, request.model, request.identifier, destination or self.ae_title, progress)
        if receiver is None:
            if self.archive is None:
                raise ValueError("C-GET needs a receiver, or an archive to receive into")
            from minipacs.services.storage import StorageSCP

            receiver = StorageSCP(self.archive)  # the ONE ingest path
        contexts, roles = get_contexts(request.model, offer)
        async with self.session(peer, contexts, receiver=receiver, roles=roles) as assoc:
            return await c_get(assoc, request.model, request.identifier, progress)


async def _c_echo(assoc: Association) -> tuple[int, str]:
    """C-ECHO-RQ (PS3.7 9.3.5); the response's Status and Error Comment (-1: no response)."""
    ctx = assoc.context_for(VERIFICATION_SOP_CLASS)
    if ctx is None:
        raise LookupError("the peer did not accept the Verification SOP Class")
    rq = Command.make("C-ECHO-RQ", MessageID=assoc.next_message_id(), AffectedSOPClassUID=VERIFICATION_SOP_CLASS)
    status, text = -1, ""
    async for rsp in assoc.request(ctx.context_id, rq):
        status = rsp.command.status
        text = rsp.command.error_comment
    return status, text


async def _store_one(assoc: Association, instance: SendableFile) -> SendOutcome:
    try:
        status, text = await store_file(assoc, instance)
    except (LookupError, TranscodeError) as exc:
        return SendOutcome(instance, None, str(exc))
    except OSError as exc:
        return SendOutcome(instance, None, f"cannot read its file: {exc.strerror or exc}")
    if is_success(status) or is_warning(status):
        return SendOutcome(instance, status)
    return SendOutcome(instance, status, describe(status) + (f" ({text})" if text else ""))
