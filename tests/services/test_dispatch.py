"""The DIMSE dispatcher owns the response (issue 9 point 2): an exception in any handler is
answered at once with its service's failure status (services/status.py HANDLER_FAILURE), and a
service registered without an access rule is refused at start-up. On the server bootstrap wires."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.dicom.uids import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    MODALITY_PERFORMED_PROCEDURE_STEP,
    MODALITY_WORKLIST_FIND,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION_SOP_CLASS,
)
from minipacs.net.association import (
    Association,
    AssociationSettings,
    Message,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services import commitment, qr_move
from minipacs.services.base import Service
from minipacs.services.commitment import StorageCommitmentSCP
from minipacs.services.dispatch import Operation, Response, ServiceRegistrationError
from minipacs.services.mpps import MPPSSCP
from minipacs.services.qr_find import QueryRetrieveFindSCP
from minipacs.services.qr_get import GetSCP
from minipacs.services.qr_move import MoveSCP
from minipacs.services.server import DicomServer
from minipacs.services.storage import StorageSCP
from minipacs.services.verification import VerificationSCP
from minipacs.services.worklist import ModalityWorklistSCP
from tests.dicomgen import CT_IMAGE_STORAGE, encode_dataset, make_ct

pytestmark = pytest.mark.interop

CLASSES = (
    VERIFICATION_SOP_CLASS,
    CT_IMAGE_STORAGE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    STUDY_ROOT_GET,
    MODALITY_WORKLIST_FIND,
    MODALITY_PERFORMED_PROCEDURE_STEP,
    STORAGE_COMMITMENT_PUSH_MODEL,
)


# ------------------------------------------------------------------ registration
class Bare(Service):
    """A service from before: a handler with no access rule."""

    name = "bare"

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return VerificationSCP().supported_contexts()

    def handlers(self) -> Mapping[str, Any]:
        return {"C-ECHO-RQ": VerificationSCP().c_echo}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> None:
        return None


class Unknown(Bare):
    def handlers(self) -> Mapping[str, Any]:
        return {"C-ECHO-RQ": Operation(VerificationSCP().c_echo, access="everything")}


def test_a_service_without_an_access_rule_is_refused_at_start_up() -> None:
    with pytest.raises(ServiceRegistrationError) as info:
        DicomServer("MINIPACS", [VerificationSCP(), Bare()], host="127.0.0.1", port=0)
    assert str(info.value).startswith("service 'bare' registers C-ECHO-RQ without an access rule")
    with pytest.raises(ServiceRegistrationError, match="access rule 'everything', which the access policy does not"):
        DicomServer("MINIPACS", [Unknown()], host="127.0.0.1", port=0)


def test_every_service_bootstrap_wires_declares_its_access_rule(tmp_path: Path) -> None:
    async def main() -> dict[str, str]:
        app = await build_app(Settings(data_dir=tmp_path / "data", host="127.0.0.1", port=0, fsync=False))
        try:
            return {f"{abstract} {name}": op.access for (abstract, name), op in app.dicom.dispatch.items()}
        finally:
            await app.close(grace=0.1)

    rules = asyncio.run(main())
    assert rules[f"{VERIFICATION_SOP_CLASS} C-ECHO-RQ"] == "echo"
    assert rules[f"{CT_IMAGE_STORAGE} C-STORE-RQ"] == "store"
    assert rules[f"{MODALITY_WORKLIST_FIND} C-FIND-RQ"] == "find"
    assert rules[f"{STUDY_ROOT_MOVE} C-MOVE-RQ"] == "move"
    assert rules[f"{STUDY_ROOT_GET} C-GET-RQ"] == "get"
    assert rules[f"{MODALITY_PERFORMED_PROCEDURE_STEP} N-SET-RQ"] == "mpps"
    assert rules[f"{STORAGE_COMMITMENT_PUSH_MODEL} N-ACTION-RQ"] == "commit"


# ------------------------------------------------------------------ a handler that raises
@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title="MINIPACS",
        fsync=False,
        acse_timeout=5.0,
        dimse_timeout=60.0,
        allow_unregistered=("echo", "store", "find", "move", "get", "mpps", "commit"),
    )
    app = await build_app(settings)
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


def identifier(**keys: str) -> bytes:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return encode_dataset(ds, IMPLICIT_VR_LITTLE_ENDIAN)


def request(case: str) -> tuple[str, Command, bytes | None]:
    """(SOP class, the request, its dataset) for each kind of handler."""
    uid = generate_uid()
    query = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3")
    if case == "echo":
        return (
            VERIFICATION_SOP_CLASS,
            Command.make("C-ECHO-RQ", MessageID=1, AffectedSOPClassUID=VERIFICATION_SOP_CLASS),
            None,
        )
    if case == "store":
        ct = make_ct(generate_uid(), generate_uid(), uid)
        return (
            CT_IMAGE_STORAGE,
            Command.make(
                "C-STORE-RQ",
                has_dataset=True,
                MessageID=1,
                Priority=0,
                AffectedSOPClassUID=CT_IMAGE_STORAGE,
                AffectedSOPInstanceUID=uid,
            ),
            encode_dataset(ct, IMPLICIT_VR_LITTLE_ENDIAN),
        )
    if case in ("find", "move", "get", "mwl"):
        sop_class, name = {
            "find": (STUDY_ROOT_FIND, "C-FIND-RQ"),
            "move": (STUDY_ROOT_MOVE, "C-MOVE-RQ"),
            "get": (STUDY_ROOT_GET, "C-GET-RQ"),
            "mwl": (MODALITY_WORKLIST_FIND, "C-FIND-RQ"),
        }[case]
        extra = {"MoveDestination": "SOMEWHERE"} if case == "move" else {}
        data = identifier(AccessionNumber="") if case == "mwl" else query
        return (
            sop_class,
            Command.make(name, has_dataset=True, MessageID=1, Priority=0, AffectedSOPClassUID=sop_class, **extra),
            data,
        )
    if case == "n-create":
        return (
            MODALITY_PERFORMED_PROCEDURE_STEP,
            Command.make(
                "N-CREATE-RQ",
                has_dataset=True,
                MessageID=1,
                AffectedSOPClassUID=MODALITY_PERFORMED_PROCEDURE_STEP,
                AffectedSOPInstanceUID=uid,
            ),
            identifier(PerformedProcedureStepStatus="IN PROGRESS"),
        )
    if case == "n-set":
        return (
            MODALITY_PERFORMED_PROCEDURE_STEP,
            Command.make(
                "N-SET-RQ",
                has_dataset=True,
                MessageID=1,
                RequestedSOPClassUID=MODALITY_PERFORMED_PROCEDURE_STEP,
                RequestedSOPInstanceUID=uid,
            ),
            identifier(PerformedProcedureStepStatus="COMPLETED"),
        )
    assert case in ("n-action", "n-action-body")
    return (
        STORAGE_COMMITMENT_PUSH_MODEL,
        Command.make(
            "N-ACTION-RQ",
            has_dataset=True,
            MessageID=1,
            RequestedSOPClassUID=STORAGE_COMMITMENT_PUSH_MODEL,
            RequestedSOPInstanceUID=STORAGE_COMMITMENT_INSTANCE,
            ActionTypeID=1,
        ),
        identifier(TransactionUID=uid),
    )


async def raising(self: object, assoc: Association, message: Message) -> Response:
    raise RuntimeError("the handler broke")


async def raising_generator(self: object, assoc: Association, message: Message) -> AsyncGenerator[Response, None]:
    raise RuntimeError("the handler broke")
    yield Response(0)  # an async generator, as the real one  # pragma: no cover


def broken_select(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the index broke")


def broken_read(message: Message) -> None:
    raise KeyError("TransactionUID")


# (case, what breaks, expected status): PS3.7 C.4.2 0x0110 Processing failure for C-ECHO, C-STORE
# and the N-services; PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4 0xC000 Unable to process for
# C-FIND (worklist too), C-MOVE and C-GET.
CASES: list[tuple[str, Any, str, Any, int]] = [
    ("echo", VerificationSCP, "c_echo", raising, 0x0110),
    ("store", StorageSCP, "c_store", raising, 0x0110),
    ("find", QueryRetrieveFindSCP, "c_find", raising_generator, 0xC000),
    ("move", MoveSCP, "c_move", raising_generator, 0xC000),
    ("get", GetSCP, "c_get", raising_generator, 0xC000),
    ("mwl", ModalityWorklistSCP, "c_find", raising_generator, 0xC000),
    ("n-create", MPPSSCP, "n_create", raising, 0x0110),
    ("n-set", MPPSSCP, "n_set", raising, 0x0110),
    ("n-action", StorageCommitmentSCP, "n_action", raising, 0x0110),
    # failures deep inside a real handler, which used to leave the peer waiting
    ("move", qr_move, "select_instances", broken_select, 0xC000),
    ("n-action-body", commitment, "_read_request", broken_read, 0x0110),
]


@pytest.mark.parametrize(
    ("case", "owner", "attribute", "replacement", "expected"), CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES]
)
def test_an_exception_in_a_handler_is_answered_at_once_with_the_failure_status(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: str,
    owner: Any,
    attribute: str,
    replacement: Any,
    expected: int,
) -> None:
    monkeypatch.setattr(owner, attribute, replacement)
    caplog.set_level(logging.INFO, logger="minipacs")
    sop_class, command, dataset = request(case)

    async def main() -> tuple[int, str, int]:
        async with serving(tmp_path) as app:
            settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=5, idle=5))
            rq = build_rq("SCU", "MINIPACS", [(uid, [IMPLICIT_VR_LITTLE_ENDIAN]) for uid in CLASSES], settings)
            assoc = await connect("127.0.0.1", app.dicom.port, rq, settings)
            context = assoc.context_for(sop_class)
            assert context is not None
            replies = [m async for m in assoc.request(context.context_id, command, dataset, timeout=5)]
            final = replies[-1].command
            # the association survives: it still answers
            echo_ctx = assoc.context_for(VERIFICATION_SOP_CLASS)
            assert echo_ctx is not None
            echo = Command.make("C-ECHO-RQ", MessageID=2, AffectedSOPClassUID=VERIFICATION_SOP_CLASS)
            echoed = [m async for m in assoc.request(echo_ctx.context_id, echo, timeout=5)][-1].command["Status"]
            await assoc.release()
            return int(final["Status"]), str(final.get("ErrorComment", "")), int(echoed)

    status, comment, echoed = asyncio.run(main())
    assert status == expected
    assert comment.startswith("internal error: ")
    assert echoed == (expected if case == "echo" else 0)
    lines = [r for r in caplog.records if f"answered 0x{expected:04X}" in r.getMessage()]
    assert len(lines) == (2 if case == "echo" else 1) and lines[0].levelno == logging.ERROR


def test_a_handler_that_ends_without_answering_gets_a_failure_response(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def silent(self: object, assoc: Association, message: Message) -> None:
        return None

    monkeypatch.setattr(VerificationSCP, "c_echo", silent)

    async def main() -> int:
        async with serving(tmp_path) as app:
            settings = AssociationSettings(ae_title="SCU", timeouts=Timeouts(acse=5, dimse=5, idle=5))
            rq = build_rq("SCU", "MINIPACS", [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LITTLE_ENDIAN])], settings)
            assoc = await connect("127.0.0.1", app.dicom.port, rq, settings)
            ctx = assoc.context_for(VERIFICATION_SOP_CLASS)
            assert ctx is not None
            echo = Command.make("C-ECHO-RQ", MessageID=1, AffectedSOPClassUID=VERIFICATION_SOP_CLASS)
            status = [m async for m in assoc.request(ctx.context_id, echo, timeout=5)][-1].command["Status"]
            await assoc.release()
            return int(status)

    assert asyncio.run(main()) == 0x0110


def test_the_response_names_the_request() -> None:
    """PS3.7 9.3 / 10.3: MessageIDBeingRespondedTo and the Affected SOP Class / Instance of the request
    (an N-request's Requested ones), unless the handler says otherwise."""
    from minipacs.services.dispatch import response_command
    from minipacs.services.status import STATUS_COMMENTS

    n_set = Command.make("N-SET-RQ", MessageID=7, RequestedSOPClassUID="1.2", RequestedSOPInstanceUID="1.2.3")
    rsp = response_command(
        n_set, Response(0x0106, error="x" * 80, fields={"OffendingElement": [0x00400252]}), has_dataset=False
    )
    assert rsp.name == "N-SET-RSP"
    assert (
        rsp["MessageIDBeingRespondedTo"],
        rsp["AffectedSOPClassUID"],
        rsp["AffectedSOPInstanceUID"],
        rsp["Status"],
        rsp["ErrorComment"],
        rsp["OffendingElement"],
    ) == (7, "1.2", "1.2.3", 0x0106, STATUS_COMMENTS[0x0106], [0x00400252])  # too long: its status's sentence
    find = Command.make("C-FIND-RQ", has_dataset=True, MessageID=3, Priority=0, AffectedSOPClassUID="1.2.4")
    rsp = response_command(find, Response(0xFF00), has_dataset=True)
    assert "AffectedSOPInstanceUID" not in rsp and rsp.has_dataset and rsp["AffectedSOPClassUID"] == "1.2.4"
    assert dataclasses.fields(Response)[0].name == "status"


class NoHooks:
    """Everything but extended_negotiation: the hook is declared by ServiceClass, not looked up."""

    name = "no-hooks"

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return VerificationSCP().supported_contexts()

    def handlers(self) -> Mapping[str, Operation]:
        return VerificationSCP().handlers()

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> None:
        return None


def test_a_service_without_the_declared_hooks_is_refused_at_start_up() -> None:
    with pytest.raises(
        ServiceRegistrationError, match="'no-hooks' does not implement ServiceClass .*inherit services.base.Service"
    ):
        DicomServer("MINIPACS", [NoHooks()], host="127.0.0.1", port=0)  # type: ignore[list-item]
