"""HL7 ADT applied in the order received, when corrections are queued as jobs (hl7/sequence.py lanes,
core/jobs.py lanes; docs/CORRECTIONS.md "Order"). An HL7 v2 feed is an ordered stream (one MLLP
connection, one ACK per message, HL7 v2.5 2.9 original acknowledgment mode): the archive must end as
if every message had been applied in that order, even when a large correction waits on the job queue.

``correction_inline_max_instances = 1`` forces the queueing; the job runner is started only after
the messages are acknowledged, as when a large correction is still running when the next message
comes. The wiring is bootstrap's (``job_queue``, ``corrections``), as ``minipacs serve`` has it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

from minipacs.bootstrap import corrections, job_queue, open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections
from minipacs.core.jobs import RESTART_REASON, JobState
from minipacs.core.nodes import NodeRegistry
from minipacs.core.worklist import Worklist
from minipacs.hl7.adt import HL7Receiver
from minipacs.hl7.mllp import MLLPServer
from minipacs.index import jobs_repo
from minipacs.index.audit_repo import audit_rows
from tests.hl7.test_adt import adt, groups, send, store, stored

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def settings_for(tmp: Path) -> Settings:
    return Settings(
        data_dir=tmp / "data",
        fsync=False,
        node_id="node-a",
        correction_inline_max_instances=1,
        job_poll_seconds=0.05,
        job_progress_seconds=0.05,
        job_stale_seconds=600,
    )


class Server:
    """An archive, its job queue (not started) and the MLLP listener, wired as ``minipacs serve`` does."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        self.archive = archive
        self.jobs = job_queue(settings, archive, NodeRegistry(archive))
        receiver = HL7Receiver(Worklist(archive), corrections(settings, archive, self.jobs), settings.ae_title)
        self.mllp = MLLPServer(receiver, host="127.0.0.1", port=0)

    @classmethod
    async def open(cls, settings: Settings) -> Server:
        server = cls(settings, await open_archive(settings))
        await server.mllp.start()
        return server

    async def connect(self) -> Streams:
        return await asyncio.open_connection("127.0.0.1", self.mllp.port)

    async def run_jobs(self) -> list[int]:
        """Start the runner and wait until no job is queued or running; the ids of the jobs, oldest first."""
        await self.jobs.start()
        for _ in range(600):
            jobs = await self.jobs.list()
            if not any(j.state in (JobState.QUEUED, JobState.RUNNING) for j in jobs):
                return sorted(j.id for j in jobs)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"jobs still waiting: {[(j.id, j.state.value, j.message) for j in jobs]}")

    async def close(self, writer: asyncio.StreamWriter | None = None) -> None:
        if writer is not None:
            writer.close()
            await writer.wait_closed()
        await self.mllp.close()
        await self.jobs.close()
        await self.archive.close()


def run(tmp: Path, body: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await Server.open(settings_for(tmp))
        reader, writer = await server.connect()
        try:
            await body(server, reader, writer)
        finally:
            await server.close(writer)

    asyncio.run(main())


def test_a_large_first_group_and_a_small_second_apply_in_the_message_order(tmp_path: Path) -> None:
    """(a) ADT^A40 with two patient groups, P3 into P2 then P2 into P1: every study ends with P1. The first
    group (2 instances) was queued and the second (1 instance) ran at once, so the queued merge then
    found no P2 to merge into and P3's studies stayed apart."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        archive = server.archive
        sops = await store(archive, tmp_path, "P3", n=2) + await store(archive, tmp_path, "P2")
        sops += await store(archive, tmp_path, "P1")
        code, text, _ = await send(reader, writer, groups("A40", [("P2", "P3"), ("P1", "P2")]))
        assert code == "AA", text
        await server.run_jobs()
        assert [(await stored(archive, sop)).PatientID for sop in sops] == ["P1"] * 4
        c = Corrections(archive)
        assert (await c.patient("P3"), await c.patient("P2")) == (None, None)

    run(tmp_path, body)


def test_an_update_after_a_queued_merge_is_not_undone_by_it(tmp_path: Path) -> None:
    """(b) A40 merges P2 (large: queued) into P1 with PID-5 First^Name, then A08 names P1 Second^Name:
    the later message wins. The A08 ran at once and the queued merge then wrote message 1's name over it."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        archive = server.archive
        sops = await store(archive, tmp_path, "P2", n=2) + await store(archive, tmp_path, "P1")
        code, text, _ = await send(reader, writer, adt("A40", "P1", name="First^Name", mrg="P2"))
        assert code == "AA" and "queued as job" in text, text
        [first] = await server.jobs.list()
        code, text, _ = await send(reader, writer, adt("A08", "P1", name="Second^Name"))
        assert code == "AA" and f"behind ADT job {first.id}" in text, text
        await server.run_jobs()
        for sop in sops:
            ds = await stored(archive, sop)
            assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Second^Name")
        patient = await Corrections(archive).patient("P1")
        assert patient is not None and patient["PatientName"] == "Second^Name"

    run(tmp_path, body)


def test_nothing_pending_applies_at_once_and_refuses_at_once(tmp_path: Path) -> None:
    """With the lane free, a small message is applied before its ACK (AA with what was done) and a large
    one that cannot apply is refused in its ACK (AE 205), nothing queued: the behaviour without a queue."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        archive = server.archive
        [sop] = await store(archive, tmp_path, "P1")
        await store(archive, tmp_path, "P2", n=2)
        code, text, _ = await send(reader, writer, adt("A08", "P1", name="Now^Name"))
        assert (code, text) == ("AA", "patient P1 updated (PatientName): 1 instance(s) rewritten")
        assert str((await stored(archive, sop)).PatientName) == "Now^Name"
        code, text, ack = await send(reader, writer, adt("A47", "P1", mrg="P2"))  # 3 instances: would be a job
        err = ack.first("ERR")
        assert code == "AE" and "already exists" in text and err is not None and ack.value(err, 3) == "205"
        assert await server.jobs.list() == []

    run(tmp_path, body)


def test_a_queued_lane_survives_a_restart_and_runs_in_order(tmp_path: Path) -> None:
    """The lane is in the index: messages queued before a stop run in order after the start; one whose
    job was running when the server died fails (it may be half applied, docs/CORRECTIONS.md) and the
    lane goes on with the next."""

    async def main() -> None:
        settings = settings_for(tmp_path)
        server = await Server.open(settings)
        reader, writer = await server.connect()
        try:
            archive = server.archive
            sops = await store(archive, tmp_path, "P2", n=2) + await store(archive, tmp_path, "P1")
            cut_short = await store(archive, tmp_path, "P9", n=2)
            for message in (
                adt("A08", "P9", name="Cut^Short"),  # its job is left running by the "crash" below
                adt("A40", "P1", name="First^Name", mrg="P2"),
                adt("A08", "P1", name="Second^Name"),
            ):
                code, text, _ = await send(reader, writer, message)
                assert code == "AA" and "queued as job" in text, text
            jobs = sorted(j.id for j in await server.jobs.list())
            assert len(jobs) == 3
            now = dt.datetime.now(dt.UTC)
            claimed = await archive.write(lambda conn: jobs_repo.claim(conn, ["adt"], "node-a", now, 10))
            assert [r["id"] for r in claimed] == jobs[:1]  # only the lane's head
        finally:
            await server.close(writer)

        again = await Server.open(settings)  # node-a again: its running job was cut short
        try:
            assert await again.run_jobs() == jobs
            cut, merge, update = [await again.jobs.get(i) for i in jobs]
            assert cut is not None and (cut.state, cut.message) == (JobState.FAILED, RESTART_REASON)
            assert [j.state if j else None for j in (merge, update)] == [JobState.DONE, JobState.DONE]
            for sop in sops:
                ds = await stored(again.archive, sop)
                assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Second^Name")
            assert [str((await stored(again.archive, sop)).PatientName) for sop in cut_short] == ["Doe^John"] * 2
        finally:
            await again.close()

    asyncio.run(main())


def test_a_message_refused_when_its_job_runs_fails_the_job_and_the_lane_goes_on(tmp_path: Path) -> None:
    """Message 2 merges P2 into P4, but message 1 (queued before it) merges P2 into P1: when message 2's
    job runs there is nothing to merge. Its ACK was AA (queued); the job fails with the sentence an AE
    would have carried, the audit trail has the refusal (outcome 8), and message 3 still applies."""

    async def body(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        archive = server.archive
        await store(archive, tmp_path, "P2", n=2)
        [one] = await store(archive, tmp_path, "P1")
        [four] = await store(archive, tmp_path, "P4")
        acks = [
            await send(reader, writer, message)
            for message in (
                adt("A40", "P1", mrg="P2"),
                adt("A40", "P4", mrg="P2"),
                adt("A08", "P1", name="Third^Name"),
            )
        ]
        assert [code for code, _, _ in acks] == ["AA"] * 3, acks
        merge, refused, update = await server.run_jobs()
        failed = await server.jobs.get(refused)
        assert failed is not None and failed.state is JobState.FAILED, failed
        assert failed.message.startswith(
            "HL7 ADT^A40 CTLA40 from HIS/HOSP, acknowledged AA and queued, cannot be applied now: prior patient "
            "'P2' (MRG-1) was merged into 'P1' by correction "
        ) and failed.message.endswith("; nothing to merge"), failed.message
        assert "P2 into P4" in failed.description
        others = [await server.jobs.get(i) for i in (merge, update)]
        assert [j.state if j else None for j in others] == [JobState.DONE, JobState.DONE]
        assert str((await stored(archive, one)).PatientName) == "Third^Name"
        assert (await stored(archive, four)).PatientID == "P4"
        await archive.audit.flush()
        [row] = [r for r in await archive.read(lambda conn: audit_rows(conn, actor="HIS/HOSP")) if r["outcome"]]
        assert (row["action"], row["outcome"], row["actor_kind"], row["patient_id"]) == ("merged", 8, "hl7", "P4")
        assert f"job {refused}:" in row["detail"] and "nothing to merge" in row["detail"]

    run(tmp_path, body)
