"""services/route_jobs.py: what an attempt delivered is on its receipts even when it does not end by
itself (a clean stop of the server, a cancel), so the next attempt does not send it twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core import routing
from minipacs.core.jobs import JobQueue, JobSettings
from minipacs.core.model import Origin
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.services.outbound import SendOutcome, SendResult
from minipacs.services.route_jobs import route_handler
from tests.dicomgen import write_ct

RULE, DESTINATION = "to-pacs", "PACS_B"


class _Outbound:
    """Delivers the first ``stall_after`` instances it is given, then hangs (a peer that stopped
    answering) until cancelled; records every SOP Instance UID it was asked to send."""

    def __init__(self, archive: Any, stall_after: int | None) -> None:
        self.archive = archive
        self.stall_after = stall_after
        self.asked: list[str] = []
        self.progressed = asyncio.Event()

    async def send(self, node: Node, usable: list[Any], progress: Any = None) -> SendResult:
        result = SendResult(associations=1)
        for n, item in enumerate(usable):
            if self.stall_after is not None and n == self.stall_after:
                self.progressed.set()
                await asyncio.Event().wait()
            self.asked.append(item.sop_instance_uid)
            progress(SendOutcome(item, 0))
            result.sent += 1
        return result


async def _setup(tmp: Path) -> tuple[Any, str, list[str], Settings]:
    settings = Settings(data_dir=tmp / "data", fsync=False)
    archive = await open_archive(settings)
    study, series = str(generate_uid()), str(generate_uid())
    sops = []
    for n in range(4):
        sop = str(generate_uid())
        sops.append(sop)
        path = write_ct(tmp / "src" / f"{n}.dcm", study_uid=study, series_uid=series, sop_uid=sop, InstanceNumber=n + 1)
        await archive.import_file(path, Origin("import"))
    await NodeRegistry(archive).add(Node(DESTINATION, "127.0.0.1", 11112))
    return archive, study, sops, settings


async def _statuses(archive: Any, job_id: int) -> dict[str, str]:
    return {r["sop_instance_uid"]: str(r["status"]) for r in await routing.job_receipts(archive, job_id)}


def test_what_was_sent_before_a_clean_stop_is_not_sent_again(tmp_path: Path) -> None:
    async def main() -> None:
        archive, study, sops, _ = await _setup(tmp_path)
        try:
            queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.05))
            stalling = _Outbound(archive, stall_after=2)
            queue.register(routing.ROUTE, route_handler(stalling, NodeRegistry(archive)))  # type: ignore[arg-type]
            params = {"rule": RULE, "study": study, "destination": DESTINATION, "method": "C-STORE"}
            job = await queue.submit(routing.ROUTE, "rule to-pacs: 4 instances", params, total=4)
            rows = [routing.receipt_row(job.id, RULE, "C-STORE", DESTINATION, study, "", s) for s in sops]
            await routing.add_receipts(archive, rows)
            await queue.start()
            await asyncio.wait_for(stalling.progressed.wait(), 30)
            await queue.close()  # a clean stop while the third instance is on its way
            statuses = await _statuses(archive, job.id)
            assert [statuses[s] for s in sops[:2]] == ["sent", "sent"], statuses
            assert statuses[sops[2]] != "sent" and statuses[sops[3]] != "sent"

            queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.05))
            rest = _Outbound(archive, stall_after=None)
            queue.register(routing.ROUTE, route_handler(rest, NodeRegistry(archive)))  # type: ignore[arg-type]
            await queue.start()
            try:
                done = await queue.wait(job.id, timeout=30)
            finally:
                await queue.close()
            assert done.state == "done", done
            assert rest.asked == sops[2:]  # the two delivered before the stop are not sent twice
            assert set((await _statuses(archive, job.id)).values()) == {"sent"}
        finally:
            await archive.close()

    asyncio.run(main())


def test_what_a_running_attempt_delivered_is_on_its_receipts_before_it_ends(tmp_path: Path) -> None:
    """A kill -9 ends an attempt without a word: the receipts written while it ran are what the next
    attempt goes by, so they follow the delivery every few seconds (RECEIPTS_SECONDS)."""

    async def main() -> None:
        archive, study, sops, _ = await _setup(tmp_path)
        try:
            queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.05))
            stalling = _Outbound(archive, stall_after=3)
            queue.register(routing.ROUTE, route_handler(stalling, NodeRegistry(archive)))  # type: ignore[arg-type]
            params = {"rule": RULE, "study": study, "destination": DESTINATION, "method": "C-STORE"}
            job = await queue.submit(routing.ROUTE, "rule to-pacs: 4 instances", params, total=4)
            await routing.add_receipts(
                archive, [routing.receipt_row(job.id, RULE, "C-STORE", DESTINATION, study, "", s) for s in sops]
            )
            await queue.start()
            try:
                await asyncio.wait_for(stalling.progressed.wait(), 30)
                for _ in range(100):
                    statuses = await _statuses(archive, job.id)
                    if [statuses[s] for s in sops[:3]] == ["sent"] * 3:
                        break
                    await asyncio.sleep(0.1)
                assert [statuses[s] for s in sops] == ["sent", "sent", "sent", "queued"], statuses
                assert (await queue.get(job.id)).state == "running"  # type: ignore[union-attr]
            finally:
                await queue.close()
        finally:
            await archive.close()

    asyncio.run(main())
