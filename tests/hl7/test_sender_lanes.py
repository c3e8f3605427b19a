"""A sender's HL7 messages, ADT and orders alike, applied in the order it sent them; other senders never
wait for it (hl7/sequence.py; HL7 v2.5 2.9 original acknowledgment mode, 2.10.1 sequence number protocol).

Orders used to be applied at once whatever waited in the ADT lane, so an order that followed an A40 merge
reached the worklist before the merge: a change (XO) to the merged patient's order moved the entry first,
and the merge, when its job ran, found nothing to merge and failed. And the one ADT lane served every
sender, so one hospital system's large merge made every other system's ADT messages wait behind it.

``correction_inline_max_instances = 1`` makes an ADT message naming two instances wait in its lane, and
the job runner is started only after the messages are acknowledged (tests/hl7/test_adt_lane.py ``Server``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from minipacs.core.jobs import JobState
from minipacs.core.worklist import CANCELLED, Worklist
from minipacs.hl7.message import parse
from minipacs.hl7.sequence import LEGACY_LANE, ORDER_JOB_KIND, sender_lane
from tests.hl7.samples import orm
from tests.hl7.test_adt import adt, send, store, stored
from tests.hl7.test_adt_lane import Server, run


def order(control: str, accession: str, pid3: str, *, modality: str = "CT", sender: str = "HIS|HOSP") -> str:
    """An ORM^O01 from ``sender`` (MSH-3|MSH-4): by default the system that sends the ADT messages."""
    return orm(control, accession, pid3=pid3, modality=modality).replace("|RIS|HOSP|", f"|{sender}|", 1)


async def busy_lane(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tmp: Path) -> int:
    """The sender HIS/HOSP's lane made busy: an A08 for P9, whose two instances make it a job; its id."""
    await store(server.archive, tmp, "P9", n=2)
    code, text, _ = await send(reader, writer, adt("A08", "P9", name="Busy^Lane"))
    assert code == "AA" and "checked and queued as job" in text, text
    [job] = await server.jobs.list()
    return job.id


async def states(server: Server) -> dict[int, tuple[str, str]]:
    return {j.id: (j.state.value, j.kind) for j in await server.jobs.list()}


def test_an_order_after_a_merge_waits_for_it(tmp_path: Path) -> None:
    """A40 merges P2 (on the worklist only, order ACC1) into P1; the sender's next message changes ACC1 for
    P1 (XO). Both wait behind the sender's earlier job and run in that order: the merge moves ACC1 to P1,
    then the change applies to it. Before, the XO ran at once and the merge job failed (nothing to merge)."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worklist = Worklist(server.archive)
        await store(server.archive, tmp_path, "P1")
        code, text, _ = await send(reader, writer, order("NW", "ACC1", "P2"))
        assert code == "AA" and "scheduled" in text, text  # the lane is free: at once, as always
        first = await busy_lane(server, reader, writer, tmp_path)
        code, text, _ = await send(reader, writer, adt("A40", "P1", mrg="P2"))
        assert code == "AA" and f"behind ADT job {first}" in text, text
        code, text, _ = await send(reader, writer, order("XO", "ACC1", "P1", modality="MR"))
        assert code == "AA" and "behind ADT job" in text, text
        [entry] = await worklist.by_accession("ACC1")
        assert entry.dataset.PatientID == "P2"  # nothing applied yet: the order waits its turn
        jobs = await server.run_jobs()
        assert len(jobs) == 3
        assert await states(server) == {
            jobs[0]: ("done", "adt"),
            jobs[1]: ("done", "adt"),
            jobs[2]: ("done", ORDER_JOB_KIND),
        }
        [entry] = await worklist.by_accession("ACC1")
        assert entry.dataset.PatientID == "P1"
        assert entry.dataset.ScheduledProcedureStepSequence[0].Modality == "MR"

    run(tmp_path, body)


def test_a_merge_after_an_order_waits_for_it(tmp_path: Path) -> None:
    """The reverse: a new order for P2 waits behind the sender's earlier job, and the A40 merging P2 into P1
    that follows it waits behind the order (not applied at once: P2 would be unknown yet, AE 204, and the
    order would then land on the merged-away P2). The order lands on the surviving P1."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worklist = Worklist(server.archive)
        await store(server.archive, tmp_path, "P1")
        first = await busy_lane(server, reader, writer, tmp_path)
        code, text, _ = await send(reader, writer, order("NW", "ACC2", "P2"))
        assert code == "AA" and f"behind ADT job {first}" in text, text
        assert await worklist.by_accession("ACC2") == []
        code, text, _ = await send(reader, writer, adt("A40", "P1", mrg="P2"))
        assert code == "AA" and "behind order job" in text, text
        jobs = await server.run_jobs()
        assert [s for s, _ in (await states(server)).values()] == ["done"] * 3, await states(server)
        assert [k for _, k in (await states(server)).values()] == ["adt", ORDER_JOB_KIND, "adt"]
        assert len(jobs) == 3
        [entry] = await worklist.by_accession("ACC2")
        assert entry.dataset.PatientID == "P1"

    run(tmp_path, body)


def test_other_senders_are_not_held_up_by_one_senders_queue(tmp_path: Path) -> None:
    """HIS/HOSP's lane holds a job: the RIS's order and another system's A08 are applied at once, each in
    its own lane. Before, the one ADT lane made the A08 of every sender wait behind HIS/HOSP's job."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worklist = Worklist(server.archive)
        [sop] = await store(server.archive, tmp_path, "P1")
        first = await busy_lane(server, reader, writer, tmp_path)
        code, text, _ = await send(reader, writer, order("NW", "ACC3", "P1", sender="RIS|HOSP"))
        assert code == "AA" and "scheduled as worklist entry" in text, text
        assert len(await worklist.by_accession("ACC3")) == 1
        other = adt("A08", "P1", name="Other^Sender").replace("|HIS|HOSP|", "|PAS|CLINIC|", 1)
        code, text, _ = await send(reader, writer, other)
        assert (code, text) == ("AA", "patient P1 updated (PatientName): 1 instance(s) rewritten"), text
        assert [j.id for j in await server.jobs.list()] == [first]  # still only HIS/HOSP's job waits
        [job] = await server.jobs.list()
        assert job.lane == "hl7:HIS/HOSP"
        assert str((await stored(server.archive, sop)).PatientName) == "Other^Sender"

    run(tmp_path, body)


def test_a_queued_order_refused_when_it_runs_fails_its_job_and_the_lane_goes_on(tmp_path: Path) -> None:
    """A change to an order that is not on the worklist, queued (AA): its job fails with the sentence an AE
    would have carried; the sender's next message still applies. A fault of the message itself (no
    patient ID) is refused at once, in its ACK, and queues nothing."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worklist = Worklist(server.archive)
        await busy_lane(server, reader, writer, tmp_path)
        code, text, ack = await send(reader, writer, order("NW", "ACC5", ""))
        assert code == "AE" and "PID-3" in text and ack.value(ack.first("ERR"), 3) == "101", text
        code, text, _ = await send(reader, writer, order("XO", "ACC404", "P1"))
        assert code == "AA" and "behind ADT job" in text, text
        code, text, _ = await send(reader, writer, order("NW", "ACC6", "P1"))
        assert code == "AA" and "behind order job" in text, text
        code, text, _ = await send(reader, writer, order("CA", "ACC6", "P1"))
        assert code == "AA" and "behind order job" in text, text
        busy, refused, new, cancel = await server.run_jobs()
        failed = await server.jobs.get(refused)
        assert failed is not None and failed.state is JobState.FAILED
        assert failed.message == (
            "HL7 ORM^O01 CTLACC404 from HIS/HOSP, acknowledged AA and queued, cannot be applied now: no open "
            "worklist entry for order ACC404 to change; send NW for a new order"
        )
        done = [await server.jobs.get(i) for i in (busy, new, cancel)]
        assert [j.state if j else None for j in done] == [JobState.DONE] * 3
        assert [e.status for e in await worklist.by_accession("ACC6")] == [CANCELLED]  # NW, then CA: in order

    run(tmp_path, body)


def test_jobs_of_the_former_single_lane_are_waited_for(tmp_path: Path) -> None:
    """After an upgrade, ADT jobs still queued in the former single lane (``hl7-adt``) run first: while it
    is busy, any sender's messages queue there, behind them."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worklist = Worklist(server.archive)
        await store(server.archive, tmp_path, "P7")
        params = {"event": "A08", "groups": [["P7", "", {"PatientName": "Old^Lane"}]], "actor": "old", "audit": []}
        old = await server.jobs.submit("adt", "queued by the former version", params, lane=LEGACY_LANE)
        code, text, _ = await send(reader, writer, order("NW", "ACC7", "P7", sender="RIS|HOSP"))
        assert code == "AA" and f"behind ADT job {old.id}" in text, text
        queued = [j for j in await server.jobs.list() if j.id != old.id]
        assert [j.lane for j in queued] == [LEGACY_LANE]
        await server.run_jobs()
        [entry] = await worklist.by_accession("ACC7")
        assert str(entry.dataset.PatientName) == "Doe^John^Q^Dr^Jr"  # the order as sent, after the A08

    run(tmp_path, body)


def test_sender_lane_names_fit_a_lane_and_stay_apart() -> None:
    short = parse(order("NW", "A", "P"))
    assert sender_lane(short) == "hl7:HIS/HOSP"
    long_a = parse(order("NW", "A", "P", sender="X" * 80 + "|A"))
    long_b = parse(order("NW", "A", "P", sender="X" * 80 + "|B"))
    lanes = {sender_lane(long_a), sender_lane(long_b)}
    assert len(lanes) == 2 and all(len(lane) == 64 and lane.startswith("hl7:XXX") for lane in lanes)
    unnamed = parse(order("NW", "A", "P", sender="|"))
    assert sender_lane(unnamed) == "hl7:an unnamed sender"
