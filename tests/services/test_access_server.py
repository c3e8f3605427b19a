"""The access policy on real loopback associations: A-ASSOCIATE-RJ (1,1,3) and 0x0124, and why, in the log.

The server is the one bootstrap wires (archive, registry, policy); peers are
pynetdicom (bound to 127.0.0.2 / 127.0.0.3 to play different hosts) and our own
requestor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from minipacs.bootstrap import App, build_app
from minipacs.config import Settings
from minipacs.core.nodes import Node
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS
from minipacs.net.association import AssociationRejected, AssociationSettings, build_rq, connect
from minipacs.services.verification import echo
from tests.dicomgen import CT_IMAGE_STORAGE, make_ct
from tests.peers import associate_seeing_rejection

pytestmark = pytest.mark.interop

T = TypeVar("T")
SERVER_AE = "MINIPACS"


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    base = Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        ae_title=SERVER_AE,
        fsync=False,
        acse_timeout=10.0,
        dimse_timeout=10.0,
    )
    app = await build_app(dataclasses.replace(base, **settings))
    await app.dicom.start()
    try:
        yield app
    finally:
        await app.close(grace=1.0)


def associate(port: int, calling: str, bind: str, contexts: tuple[str, ...] = (VERIFICATION_SOP_CLASS,)) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15  # a loaded CI machine is slow
    for ctx in contexts:
        ae.add_requested_context(ctx)
    return ae.associate("127.0.0.1", port, ae_title=SERVER_AE, bind_address=(bind, 0))


def rejection(port: int, calling: str, bind: str) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ, or None when accepted (then released)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15  # a loaded CI machine is slow
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc, rj = associate_seeing_rejection(ae, "127.0.0.1", port, ae_title=SERVER_AE, bind_address=(bind, 0))
    if assoc.is_established:
        assoc.release()
        return None
    assert rj is not None, f"neither accepted nor rejected (bind {bind}, aborted {assoc.is_aborted})"
    return rj


def in_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    return asyncio.ensure_future(asyncio.to_thread(call))


def warnings_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("minipacs")
    )


async def _association_log(app: App) -> list[Any]:
    for _ in range(50):  # the association log is written when the association ends
        records = await app.archive.list_associations(10)
        if records:
            return records
        await asyncio.sleep(0.05)
    return []


def test_registered_only_rejects_an_unknown_calling_ae(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def main() -> tuple[Any, ...]:
        async with serving(tmp_path, allow_unregistered=()) as app:
            await app.nodes.add(Node("VIEWER", "127.0.0.3", 104))
            unknown = await in_thread(lambda: rejection(app.dicom.port, "STRANGER", "127.0.0.2"))
            known = await in_thread(lambda: rejection(app.dicom.port, "VIEWER", "127.0.0.2"))
            records = await _association_log(app)
            return unknown, known, records

    unknown, known, records = asyncio.run(main())
    assert unknown == (1, 1, 3)  # rejected-permanent, service-user, calling AE title not recognized
    assert known is None  # registered; its host does not matter while check_calling_host is off
    line = warnings_of(caplog)
    assert "[STRANGER@127.0.0.2:" in line and "association rejected" in line
    assert "calling AE title 'STRANGER' from 127.0.0.2 is not a registered node" in line
    assert "(rule: allow_unregistered)" in line and "minipacs nodes add STRANGER 127.0.0.2 PORT" in line
    rejected = [r for r in records if not r.accepted]
    assert rejected and "rule: allow_unregistered" in rejected[0].reject_reason


def test_host_check_rejects_a_registered_title_from_another_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")

    async def main() -> tuple[Any, Any]:
        async with serving(tmp_path, allow_unregistered=(), check_calling_host=True) as app:
            await app.nodes.add(Node("VIEWER", "127.0.0.3", 104))
            wrong = await in_thread(lambda: rejection(app.dicom.port, "VIEWER", "127.0.0.2"))
            right = await in_thread(lambda: rejection(app.dicom.port, "VIEWER", "127.0.0.3"))
            return wrong, right

    wrong, right = asyncio.run(main())
    assert wrong == (1, 1, 3)
    assert right is None
    line = warnings_of(caplog)
    assert "calling AE title 'VIEWER' connected from 127.0.0.2, but it is registered only on 127.0.0.3" in line
    assert "(rule: check_calling_host)" in line


def test_our_requestor_sees_the_rejection(tmp_path: Path) -> None:
    async def main() -> AssociationRejected:
        async with serving(tmp_path, allow_unregistered=()) as app:
            settings = AssociationSettings(ae_title="STRANGER")
            rq = build_rq("STRANGER", SERVER_AE, [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
            with pytest.raises(AssociationRejected) as info:
                await connect("127.0.0.1", app.dicom.port, rq, settings, connect_timeout=5)
            return info.value

    rejected = asyncio.run(main())
    assert (rejected.rj.result, rejected.rj.source, rejected.rj.reason) == (1, 1, 3)


def test_registry_changes_apply_without_a_restart(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        async with serving(tmp_path, allow_unregistered=()) as app:
            settings = AssociationSettings(ae_title="LATE")
            rq = build_rq("LATE", SERVER_AE, [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
            outcomes: list[Any] = []
            for step in ("before", "after add", "after remove"):
                if step == "after add":
                    await app.nodes.add(Node("LATE", "127.0.0.1", 104))
                if step == "after remove":
                    await app.nodes.remove("LATE")
                try:
                    assoc = await connect("127.0.0.1", app.dicom.port, rq, settings, connect_timeout=5)
                except AssociationRejected as exc:
                    outcomes.append(exc.rj.reason)
                    continue
                outcomes.append(await echo(assoc))
                await assoc.release()
            return outcomes

    assert asyncio.run(main()) == [3, 0, 3]


def test_operations_outside_a_nodes_permissions_get_0x0124(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="minipacs")
    sop_uid = generate_uid()
    dataset = make_ct(generate_uid(), generate_uid(), sop_uid)

    def session(port: int) -> tuple[int, int, int, str]:
        assoc = associate(port, "MODALITY", "127.0.0.2", (VERIFICATION_SOP_CLASS, CT_IMAGE_STORAGE))
        assert assoc.is_established
        try:
            refused = assoc.send_c_echo()
            stored = assoc.send_c_store(dataset)
            again = assoc.send_c_echo()  # the association survives a refusal
            return int(refused.Status), int(stored.Status), int(again.Status), str(refused.ErrorComment)
        finally:
            assoc.release()

    def unknown_echo(port: int) -> int:
        assoc = associate(port, "ANYONE", "127.0.0.3")
        try:
            return int(assoc.send_c_echo().Status)
        finally:
            assoc.release()

    async def main() -> tuple[Any, ...]:
        async with serving(tmp_path) as app:  # default policy
            await app.nodes.add(Node("MODALITY", "127.0.0.2", 104, permissions=frozenset({"store"})))
            statuses = await in_thread(lambda: session(app.dicom.port))
            other = await in_thread(lambda: unknown_echo(app.dicom.port))
            return statuses, other, await app.archive.count_instances()

    (refused, stored, again, comment), other, count = asyncio.run(main())
    assert (refused, stored, again) == (0x0124, 0x0000, 0x0124)
    assert comment.startswith("calling AE title 'MODALITY'") and len(comment) <= 64
    assert other == 0x0000  # an unregistered caller may echo by default
    assert count == 1
    line = warnings_of(caplog)
    assert "C-ECHO refused: calling AE title 'MODALITY' (from 127.0.0.2) is registered with permission to store" in line
    assert "(rule: node permissions)" in line


def test_without_a_policy_everyone_is_accepted(tmp_path: Path) -> None:
    from minipacs.services.server import DicomServer
    from minipacs.services.verification import VerificationSCP

    async def main() -> Any:
        server = DicomServer(SERVER_AE, [VerificationSCP()], host="127.0.0.1", port=0)
        assert server.access is None
        await server.start()
        try:
            return await in_thread(lambda: rejection(server.port, "ANYONE", "127.0.0.2"))
        finally:
            await server.close(grace=1.0)

    assert asyncio.run(main()) is None


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("MOD\\ALITY", SERVER_AE, 3), ("MOD\tALITY", SERVER_AE, 3), ("MODALITY", "MINI\\PACS", 7)],
    ids=["backslash-calling", "control-calling", "backslash-called"],
)
def test_an_ae_title_the_standard_forbids_is_rejected_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, calling: str, called: str, reason: int
) -> None:
    """PS3.5 Table 6.2-1 AE excludes backslash and control characters. Accepted, such a caller then had
    every C-STORE refused (its title cannot go into the stored file's Source AE Title): now the
    association is rejected (1/1/3 calling, 1/1/7 called) and the log says which title and why."""
    caplog.set_level(logging.INFO, logger="minipacs")

    async def main() -> AssociationRejected:
        async with serving(tmp_path, check_called_aet=False) as app:
            settings = AssociationSettings(ae_title=calling)
            rq = build_rq(calling, called, [(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
            with pytest.raises(AssociationRejected) as info:
                await connect("127.0.0.1", app.dicom.port, rq, settings, connect_timeout=5)
            return info.value

    rejected = asyncio.run(main())
    assert (rejected.rj.result, rejected.rj.source, rejected.rj.reason) == (1, 1, reason)
    line = warnings_of(caplog)
    assert "may only use printable ASCII characters without backslash" in line
    assert ("calling AE title" if reason == 3 else "called AE title") in line
