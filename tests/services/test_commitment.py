"""Storage Commitment SCP (PS3.4 Annex J) with pynetdicom as the requester: the report on the
same association, on a new one to the registered node (role selection), and failures."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from minipacs.core.model import Origin
from minipacs.core.nodes import Node
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.modality import COMMIT_CLASS, COMMIT_INSTANCE, commitment_request, serving, with_scu
from tests.peers import free_port

pytestmark = pytest.mark.interop
STUDY = "1.2.826.0.1.3680043.10.9.7"
SERIES = "1.2.826.0.1.3680043.10.9.7.1"


class Reports:
    """pynetdicom's EVT_N_EVENT_REPORT handler: keeps (event type, event information).

    ``arrived`` is set when a report came in; ``answered`` once pynetdicom has sent its
    N-EVENT-REPORT-RSP. Release only after ``answered``: releasing in between makes
    pynetdicom send the response in Sta7, which it refuses ("Invalid event Evt9 in Sta7").
    """

    def __init__(self) -> None:
        self.got: list[tuple[int, Dataset]] = []
        self.arrived = threading.Event()
        self.answered = threading.Event()

    def handle(self, event: Any) -> tuple[int, None]:
        self.got.append((int(event.request.EventTypeID), event.event_information))
        self.arrived.set()
        return 0x0000, None

    def sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            self.answered.set()

    @property
    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_EVENT_REPORT, self.handle), (evt.EVT_DIMSE_SENT, self.sent)]


def ask_same_association(port: int, ds: Dataset, reports: Reports) -> int:
    def body(assoc: Any) -> int:
        status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
        reports.answered.wait(30)  # the report follows the N-ACTION-RSP; a loaded CI machine is slow
        return int(status.Status)

    return with_scu(port, body, [COMMIT_CLASS], handlers=reports.handlers)


async def _stored(tmp_path: Path, app: Any, count: int) -> list[str]:
    uids = [generate_uid() for _ in range(count)]
    for n, uid in enumerate(uids):
        path = write_ct(tmp_path / f"{n}.dcm", study_uid=STUDY, series_uid=SERIES, sop_uid=uid)
        await app.archive.import_file(path, Origin("import"))
    return uids


def test_report_on_same_association_all_committed(tmp_path: Path) -> None:
    reports = Reports()

    async def main() -> None:
        async with serving(tmp_path) as app:
            uids = await _stored(tmp_path, app, 3)
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            assert await asyncio.to_thread(ask_same_association, app.dicom.port, ds, reports) == 0
            [(event, info)] = reports.got
            assert event == 1 and info.TransactionUID == txn
            assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(uids)
            assert "FailedSOPSequence" not in info

    asyncio.run(main())


def test_instances_not_stored_are_failed_with_0112(tmp_path: Path) -> None:
    reports = Reports()

    async def main() -> None:
        async with serving(tmp_path) as app:
            [stored] = await _stored(tmp_path, app, 1)
            missing = generate_uid()
            before = await app.archive.count_instances()
            ds = commitment_request(
                generate_uid(),
                [(CT_IMAGE_STORAGE, stored), (CT_IMAGE_STORAGE, missing), ("1.2.840.10008.5.1.4.1.1.4", stored)],
            )
            assert await asyncio.to_thread(ask_same_association, app.dicom.port, ds, reports) == 0
            [(event, info)] = reports.got
            assert event == 2
            assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [stored]
            failed = {
                (i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID): int(i.FailureReason)
                for i in info.FailedSOPSequence
            }
            assert failed == {(missing, CT_IMAGE_STORAGE): 0x0112, (stored, "1.2.840.10008.5.1.4.1.1.4"): 0x0119}
            assert await app.archive.count_instances() == before

    asyncio.run(main())


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    def ask(port: int, ds: Dataset, action: int, instance: str) -> int:
        def body(assoc: Any) -> int:
            status, _reply = assoc.send_n_action(ds, action, COMMIT_CLASS, instance)
            return int(status.Status)

        return with_scu(port, body, [COMMIT_CLASS])

    async def main() -> None:
        async with serving(tmp_path) as app:
            port = app.dicom.port
            good = commitment_request(generate_uid(), [(CT_IMAGE_STORAGE, generate_uid())])
            no_txn = commitment_request("", [(CT_IMAGE_STORAGE, generate_uid())])
            empty = commitment_request(generate_uid(), [])
            no_class = commitment_request(generate_uid(), [("", generate_uid())])  # Type 1, PS3.4 Table J.3-1
            assert await asyncio.to_thread(ask, port, good, 2, COMMIT_INSTANCE) == 0x0123
            assert await asyncio.to_thread(ask, port, good, 1, generate_uid()) == 0x0112
            assert await asyncio.to_thread(ask, port, no_txn, 1, COMMIT_INSTANCE) == 0x0115
            assert await asyncio.to_thread(ask, port, empty, 1, COMMIT_INSTANCE) == 0x0115
            assert await asyncio.to_thread(ask, port, no_class, 1, COMMIT_INSTANCE) == 0x0115

    asyncio.run(main())


@pytest.mark.parametrize("transaction", ["1.2.3\n2026-01-01 00:00:00,000 ERROR minipacs.commitment forged", "1.2.abc"])
def test_a_transaction_uid_that_is_no_uid_is_refused_with_0115(tmp_path: Path, transaction: str) -> None:
    """PS3.4 Table J.3-1: the Transaction UID is a UID (PS3.5 9.1). Found by fuzzing: it was taken as
    any text, logged as is ("storage commitment 1.2.3" and a forged log line after the newline) and
    echoed in the report. It is now checked like the other request fields: 0x0115 Invalid argument
    value, with the value shown quoted in the log."""

    def ask(port: int, ds: Dataset) -> int:
        def body(assoc: Any) -> int:
            status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
            return int(status.Status)

        return with_scu(port, body, [COMMIT_CLASS])

    async def main() -> None:
        async with serving(tmp_path) as app:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns of the invalid UI it is asked to send
                ds = commitment_request(transaction, [(CT_IMAGE_STORAGE, generate_uid())])
                assert await asyncio.to_thread(ask, app.dicom.port, ds) == 0x0115

    asyncio.run(main())


def check_after(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the commitment check until the returned event is set (the requester's release has
    returned), as a long check would, so the report cannot race the release."""
    from minipacs.services import commitment

    released = threading.Event()
    real_check = commitment.check_commitment

    async def check_after_release(*args: Any, **kwargs: Any) -> Any:
        await asyncio.to_thread(released.wait, 15)
        return await real_check(*args, **kwargs)

    monkeypatch.setattr(commitment, "check_commitment", check_after_release)
    return released


def ask_and_leave(server_port: int, ds: Dataset, released: threading.Event) -> int:
    """The N-ACTION of a requester that binds no report handler and releases right away; ``released``
    is set once it is gone (check_after: the commitment check waits for it)."""

    def body(assoc: Any) -> int:
        status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
        return int(status.Status)

    try:
        return with_scu(server_port, body, [COMMIT_CLASS])
    finally:
        released.set()


def test_report_on_new_association_to_registered_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The requester releases at once; the report comes on an association we open, proposing
    the SCP role for the commitment class (PS3.7 D.3.3.4), to the node registered for its title.
    The check waits for the release, so the report cannot race it onto the requesting association
    (whose requester, here, binds no report handler)."""
    released = check_after(monkeypatch)
    reports = Reports()
    port = free_port()
    modality = AE(ae_title="CT01")
    modality.add_supported_context(COMMIT_CLASS, scu_role=True, scp_role=True)
    listener = modality.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)]
    )

    async def main() -> None:
        async with serving(tmp_path) as app:
            await app.nodes.add(Node("CT01", "127.0.0.1", port))
            uids = await _stored(tmp_path, app, 2)
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            assert await asyncio.to_thread(ask_and_leave, app.dicom.port, ds, released) == 0
            assert await asyncio.to_thread(reports.arrived.wait, 10)
            [(event, info)] = reports.got
            assert event == 1 and info.TransactionUID == txn and len(info.ReferencedSOPSequence) == 2

    try:
        asyncio.run(main())
    finally:
        listener.shutdown()
        modality.shutdown()


def test_a_release_right_after_the_n_action_is_answered_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 4: a requester that releases right after the N-ACTION-RSP and takes the report
    only once it is released (a single-threaded modality) gets its A-RELEASE-RP within a second, and
    the N-EVENT-REPORT on a new association to its registered node (PS3.4 J.3.3) -- not a release
    held until the report, which such a modality can only answer after the release: a deadlock
    ended by a timeout and an abort. The check is held until the release returned (as a long check
    would be), so the report cannot race the release onto the requesting association."""
    released = check_after(monkeypatch)
    reports = Reports()
    port = free_port()
    modality = AE(ae_title="CT01")
    modality.add_supported_context(COMMIT_CLASS, scu_role=True, scp_role=True)

    def after_release(event: Any) -> tuple[int, None]:
        released.wait(15)  # the modality listens for the report only once its release is done
        return reports.handle(event)

    listener = modality.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, after_release)]
    )

    def ask_and_release(server_port: int, ds: Dataset) -> tuple[int, float, bool]:
        ae = AE(ae_title="CT01")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(COMMIT_CLASS)
        same = Reports()
        assoc = ae.associate("127.0.0.1", server_port, ae_title="MINIPACS", evt_handlers=same.handlers)
        assert assoc.is_established
        try:
            status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
            started = time.monotonic()
            assoc.release()
            took = time.monotonic() - started
            assert not same.got, "the report came on the requesting association, not a new one"
            return int(status.Status), took, bool(assoc.is_released)
        finally:
            released.set()
            ae.shutdown()

    async def main() -> None:
        async with serving(tmp_path) as app:
            await app.nodes.add(Node("CT01", "127.0.0.1", port))
            uids = await _stored(tmp_path, app, 2)
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            status, took, was_released = await asyncio.to_thread(ask_and_release, app.dicom.port, ds)
            assert status == 0
            assert was_released and took < 1.0, f"release answered after {took:.1f}s"
            assert await asyncio.to_thread(reports.arrived.wait, 10)
            [(event, info)] = reports.got
            assert event == 1 and info.TransactionUID == txn and len(info.ReferencedSOPSequence) == 2

    try:
        asyncio.run(main())
    finally:
        listener.shutdown()
        modality.shutdown()


def test_a_class_the_archive_does_not_store_fails_with_0122(tmp_path: Path) -> None:
    """PS3.3 C.14.1.1 Failure Reason 0122 Referenced SOP Class not supported: commitment asked for an
    instance of a class that is no storage class (it was 0112, as if sending it could help); one stored
    under that UID with a storage class is still a class / instance conflict (0119)."""
    reports = Reports()

    async def main() -> None:
        async with serving(tmp_path) as app:
            [stored] = await _stored(tmp_path, app, 1)
            other = generate_uid()
            ds = commitment_request(generate_uid(), [("1.2.3.4.99999", other), ("1.2.3.4.99999", stored)])
            assert await asyncio.to_thread(ask_same_association, app.dicom.port, ds, reports) == 0
            [(event, info)] = reports.got
            assert event == 2 and "ReferencedSOPSequence" not in info
            failed = {i.ReferencedSOPInstanceUID: int(i.FailureReason) for i in info.FailedSOPSequence}
            assert failed == {other: 0x0122, stored: 0x0119}

    asyncio.run(main())


@pytest.mark.parametrize("modality_roles", ["refuses our SCP role", "answers no role selection"])
def test_a_report_on_a_new_association_respects_an_explicit_role_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modality_roles: str
) -> None:
    """PS3.7 D.3.3.4: the report on a new association needs the SCP role for the commitment class. A
    modality that refuses it (pynetdicom with scp_role=False rejects the whole context) gets no
    N-EVENT-REPORT, and the association log says why. One that answers no role selection at all
    (common) still gets the report."""
    released = check_after(monkeypatch)
    reports = Reports()
    port = free_port()
    modality = AE(ae_title="CT01")
    if modality_roles == "refuses our SCP role":
        modality.add_supported_context(COMMIT_CLASS, scu_role=True, scp_role=False)
    else:
        modality.add_supported_context(COMMIT_CLASS)
    listener = modality.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)]
    )

    async def main() -> None:
        async with serving(tmp_path) as app:
            await app.nodes.add(Node("CT01", "127.0.0.1", port))
            uids = await _stored(tmp_path, app, 1)
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            assert await asyncio.to_thread(ask_and_leave, app.dicom.port, ds, released) == 0
            attempt = None
            for _ in range(100):
                records = await app.archive.list_associations(20)
                attempt = next((r for r in records if r.role == "requestor"), None)
                if attempt is not None:
                    break
                await asyncio.sleep(0.1)
            assert attempt is not None, "the report's association was not logged"
            (op,) = attempt.operations
            assert (op["op"], op["transaction"]) == ("N-EVENT-REPORT", txn)
            if modality_roles == "refuses our SCP role":
                assert op["outcome"] == "failed"
                assert op["error"] == "the node refused the Storage Commitment context"
                assert not reports.got
            else:
                assert op["outcome"] == "success"
                assert await asyncio.to_thread(reports.arrived.wait, 10)
                [(event, info)] = reports.got
                assert event == 1 and info.TransactionUID == txn

    try:
        asyncio.run(main())
    finally:
        listener.shutdown()
        modality.shutdown()


def test_an_accepted_context_whose_role_reply_refuses_the_scp_role_gets_no_report() -> None:
    """An acceptor that accepts the context yet answers our role selection item with SCP role 0 (which
    leaves us no role on it) refused the report on this association; one that sends no reply item did
    not (default roles, PS3.7 D.3.3.4), and gets the report anyway, as many modalities expect."""
    from types import SimpleNamespace

    from minipacs.dicom.uids import STORAGE_COMMITMENT_PUSH_MODEL
    from minipacs.net.pdu_items import RoleSelection
    from minipacs.services.commitment import _refused_our_scp_role

    def answered(*roles: RoleSelection) -> Any:
        return SimpleNamespace(ac=SimpleNamespace(user_information=SimpleNamespace(roles=list(roles))))

    assert _refused_our_scp_role(answered(RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, False, False)))
    assert not _refused_our_scp_role(answered(RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, False, True)))
    assert not _refused_our_scp_role(answered())  # no reply item: default roles, sent anyway
    assert not _refused_our_scp_role(answered(RoleSelection("1.2.840.10008.5.1.4.1.1.2", False, False)))
    assert not _refused_our_scp_role(SimpleNamespace(ac=None))


class LoopLag:
    """The longest the event loop went without running a 10 ms tick: what every other association
    waited for while it was busy."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


def test_a_large_request_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """A request for 30,000 instances (about 3.6 MB; memory_dataset_max_bytes bounds it, 0x0213 beyond)
    was read into references and its report built and encoded on the event loop: some 2 s each, 10 s
    each at 100,000, during which no other association of the server was served (C-STOREs waited,
    associations timed out). Both now run in a worker thread (docs: ARCHITECTURE "the loop never
    stalls an association"); the requester gets the same answer and report."""
    reports = Reports()
    count = 30_000

    async def main() -> None:
        async with serving(tmp_path, dimse_timeout=60.0) as app:
            [stored] = await _stored(tmp_path, app, 1)
            refs = [(CT_IMAGE_STORAGE, stored)] + [(CT_IMAGE_STORAGE, generate_uid()) for _ in range(count - 1)]
            ds = commitment_request(generate_uid(), refs)
            with LoopLag() as lag:
                assert await asyncio.to_thread(ask_same_association, app.dicom.port, ds, reports) == 0
            [(event, info)] = reports.got
            assert event == 2 and [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [stored]
            assert len(info.FailedSOPSequence) == count - 1
            assert lag.longest < 1.0, f"the event loop was busy for {lag.longest:.1f} s at a time"

    asyncio.run(main())


def test_a_transaction_uid_used_again_is_reported_again(tmp_path: Path) -> None:
    """A modality that got no report asks again with the same Transaction UID; it gets a report for
    each request, as checked at the time (the second sees the instance stored in between). The
    Failure Reason 0131 Duplicate transaction UID (PS3.3 C.14.1.1) is not used: README says why."""
    reports = Reports()

    def ask_twice(port: int, first: Dataset, second: Dataset, store: Any) -> list[int]:
        def body(assoc: Any) -> list[int]:
            codes = []
            for ds in (first, second):
                reports.answered.clear()
                status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
                codes.append(int(status.Status))
                assert reports.answered.wait(30)
                store()
            return codes

        return with_scu(port, body, [COMMIT_CLASS], handlers=reports.handlers)

    async def main() -> None:
        async with serving(tmp_path) as app:
            uid, txn = generate_uid(), generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, uid)])
            path = write_ct(tmp_path / "late.dcm", study_uid=STUDY, series_uid=SERIES, sop_uid=uid)
            loop = asyncio.get_running_loop()

            def store() -> None:
                if len(reports.got) == 1:
                    asyncio.run_coroutine_threadsafe(app.archive.import_file(path, Origin("import")), loop).result(30)

            assert await asyncio.to_thread(ask_twice, app.dicom.port, ds, ds, store) == [0, 0]
            assert [(event, str(info.TransactionUID)) for event, info in reports.got] == [(2, txn), (1, txn)]

    asyncio.run(main())


def test_a_check_that_fails_is_reported_as_processing_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PS3.4 J.3.3.1.1 / PS3.3 C.14.1.1 Failure Reason 0110 Processing failure. The check against the
    index failing (a database gone, a lock held past its timeout) left the request with NO report, only a
    line in our log: the modality waited for it until its own timeout, not knowing whether to send
    again. Every instance is now reported failed with 0x0110 (Event Type 2), so it asks again later."""
    from sqlalchemy.exc import OperationalError

    from minipacs.services import commitment

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(commitment, "check_commitment", broken)
    reports = Reports()
    uids = [generate_uid(), generate_uid()]

    def ask(port: int, ds: Dataset) -> tuple[int, bool]:
        def body(assoc: Any) -> tuple[int, bool]:
            status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
            return int(status.Status), reports.answered.wait(10)

        return with_scu(port, body, [COMMIT_CLASS], handlers=reports.handlers)

    async def main() -> None:
        async with serving(tmp_path) as app:
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            assert await asyncio.to_thread(ask, app.dicom.port, ds) == (0, True)
            [(event, info)] = reports.got
            assert event == 2 and info.TransactionUID == txn and "ReferencedSOPSequence" not in info
            assert {(i.ReferencedSOPInstanceUID, int(i.FailureReason)) for i in info.FailedSOPSequence} == {
                (u, 0x0110) for u in uids
            }

    asyncio.run(main())


async def _report_job(app: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await app.jobs.list(kinds=("commitment-report",))
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no commitment-report job was queued")


def test_an_undelivered_report_is_retried_and_checks_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The requester's node is down when the report is due: a job tries again later (PS3.4 J.3.3 leaves
    the timing to us; the modality waits for its report), checking the references again, so an instance
    that arrived meanwhile is reported committed; the node listening again gets event type 1."""
    released = check_after(monkeypatch)
    reports = Reports()
    port = free_port()  # nothing listens there yet
    modality = AE(ae_title="CT01")
    modality.add_supported_context(COMMIT_CLASS, scu_role=True, scp_role=True)
    listeners: list[Any] = []

    async def main() -> None:
        async with serving(tmp_path, job_retry_seconds=1.0, job_poll_seconds=0.1) as app:
            await app.jobs.start()
            await app.nodes.add(Node("CT01", "127.0.0.1", port))
            [stored] = await _stored(tmp_path, app, 1)
            late, txn = generate_uid(), generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, stored), (CT_IMAGE_STORAGE, late)])
            assert await asyncio.to_thread(ask_and_leave, app.dicom.port, ds, released) == 0
            job = await _report_job(app)
            assert job.state.value == "queued" and job.params["transaction"] == txn
            assert [pair[1] for pair in job.params["references"]] == [stored, late]
            path = write_ct(tmp_path / "late.dcm", study_uid=STUDY, series_uid=SERIES, sop_uid=late)
            await app.archive.import_file(path, Origin("import"))
            listeners.append(
                modality.start_server(
                    ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)]
                )
            )
            finished = await app.jobs.wait(job.id, timeout=30)
            assert finished.state.value == "done", finished.message
            assert "event type 1" in finished.message
            [(event, info)] = reports.got
            assert event == 1 and info.TransactionUID == txn
            committed = sorted(item.ReferencedSOPInstanceUID for item in info.ReferencedSOPSequence)
            assert committed == sorted([stored, late])

    try:
        asyncio.run(main())
    finally:
        for listener in listeners:
            listener.shutdown()
        modality.shutdown()


def test_a_node_that_refuses_the_commitment_context_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal is its configuration, not a passing trouble: no job, the log says what to configure."""
    released = check_after(monkeypatch)
    port = free_port()
    other = AE(ae_title="CT01")
    other.add_supported_context("1.2.840.10008.1.1")  # Verification only: the commitment context is refused
    listener = other.start_server(("127.0.0.1", port), block=False)

    async def main() -> None:
        async with serving(tmp_path, job_retry_seconds=1.0, job_poll_seconds=0.1) as app:
            await app.jobs.start()
            await app.nodes.add(Node("CT01", "127.0.0.1", port))
            uids = await _stored(tmp_path, app, 1)
            ds = commitment_request(generate_uid(), [(CT_IMAGE_STORAGE, uids[0])])
            assert await asyncio.to_thread(ask_and_leave, app.dicom.port, ds, released) == 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the attempt on a new association has been made and logged
                rows = await app.archive.read(
                    lambda conn: conn.exec_driver_sql(
                        "SELECT count(*) FROM associations WHERE called_aet = 'CT01'"
                    ).scalar()
                )
                if rows:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert await app.jobs.list(kinds=("commitment-report",)) == []

    try:
        asyncio.run(main())
    finally:
        listener.shutdown()
        other.shutdown()
