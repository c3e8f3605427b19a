"""services/job_kinds.py "send" against a real peer (pynetdicom) that takes CT Image Storage only: an
instance of a SOP Class it refused (no accepted presentation context, PS3.8 9.3.3.2) is a refusal that
would repeat, named in the job's failures, never "the association broke off" retried with back-off."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from minipacs.bootstrap import association_settings, open_archive
from minipacs.config import Settings
from minipacs.core.jobs import JobQueue, JobSettings
from minipacs.core.model import Origin
from minipacs.core.nodes import Node, NodeRegistry
from minipacs.services.job_kinds import SEND, register_transfer_jobs
from minipacs.services.outbound import Outbound, OutboundSettings
from tests.dicomgen import write_ct
from tests.peers import free_port

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_a_sop_class_the_peer_refused_fails_once_and_is_not_retried(tmp_path: Path) -> None:
    port = free_port()
    received: list[str] = []
    scp = AE(ae_title="CTONLY")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(settings)
        try:
            study, ct, mr = str(generate_uid()), str(generate_uid()), str(generate_uid())
            for sop, sop_class in ((ct, CTImageStorage), (mr, MR_IMAGE_STORAGE)):
                path = write_ct(tmp_path / "src" / f"{sop}.dcm", study_uid=study, sop_uid=sop, SOPClassUID=sop_class)
                await archive.import_file(path, Origin("import"))
            registry = NodeRegistry(archive)
            node = await registry.add(Node("CTONLY", "127.0.0.1", port))
            queue = JobQueue(archive, JobSettings(poll_seconds=0.05, retry_seconds=0.1, max_attempts=3))
            outbound = Outbound(OutboundSettings(association_settings(settings)), archive)
            register_transfer_jobs(queue, outbound, registry)
            params = {"node": node.id, "level": "STUDY", "model": "STUDY", "key": "StudyInstanceUID", "uids": [study]}
            job = await queue.submit(SEND, "send a study to CTONLY", params, total=2)
            await queue.start()
            try:
                done = await queue.wait(job.id, timeout=60)
            finally:
                await queue.close()
            assert received == [ct]
            assert done.state == "done" and done.attempts == 1, done  # not retried: it would be refused again
            assert "broke off" not in done.message and "1 failed" in done.message, done.message
            (failure,) = done.details["failures"]
            assert failure["uid"] == mr and "accepted no presentation context for MR Image Storage" in failure["reason"]
        finally:
            await archive.close()

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
