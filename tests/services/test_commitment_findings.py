"""A storage commitment report that cannot be delivered on a new association is in the association log
(role requestor, an N-EVENT-REPORT operation with why), so the doctor's findings name it (issue 15)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt

from minipacs.core.diagnostics import analyse
from minipacs.core.nodes import Node
from tests.dicomgen import CT_IMAGE_STORAGE
from tests.modality import COMMIT_CLASS, COMMIT_INSTANCE, commitment_request, serving, with_scu
from tests.peers import free_port
from tests.services.test_commitment import _stored

pytestmark = pytest.mark.interop


def test_report_to_a_node_that_is_not_listening_is_a_finding(tmp_path: Path) -> None:
    gone = free_port()

    answered = threading.Event()

    def refuse(event: Any) -> tuple[int, None]:
        return 0x0110, None  # Processing failure: the report is refused on this association

    def sent(event: Any) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            answered.set()

    def ask_and_leave(server_port: int, ds: Dataset) -> int:
        def body(assoc: Any) -> int:
            status, _reply = assoc.send_n_action(ds, 1, COMMIT_CLASS, COMMIT_INSTANCE)
            answered.wait(30)  # release only after our refusal went out (pynetdicom refuses Evt9 in Sta7)
            return int(status.Status)

        handlers = [(evt.EVT_N_EVENT_REPORT, refuse), (evt.EVT_DIMSE_SENT, sent)]
        return with_scu(server_port, body, [COMMIT_CLASS], calling="CT02", handlers=handlers)

    async def main() -> None:
        async with serving(tmp_path) as app:
            await app.nodes.add(Node("CT02", "127.0.0.1", gone))
            uids = await _stored(tmp_path, app, 1)
            txn = generate_uid()
            ds = commitment_request(txn, [(CT_IMAGE_STORAGE, u) for u in uids])
            assert await asyncio.to_thread(ask_and_leave, app.dicom.port, ds) == 0
            for _ in range(100):
                records = await app.archive.list_associations(20)
                if {r.role for r in records} >= {"requestor", "acceptor"}:  # both written (in either order)
                    break
                await asyncio.sleep(0.1)
            (attempt,) = [r for r in records if r.role == "requestor"]
            assert (attempt.called_aet, attempt.peer_port, attempt.accepted) == ("CT02", gone, False)
            (op,) = attempt.operations
            assert (op["op"], op["outcome"], op["transaction"]) == ("N-EVENT-REPORT", "failed", txn)
            assert str(op["error"]).startswith("no association: cannot connect to 127.0.0.1")
            found = {
                f.title: f
                for f in analyse(records, await app.nodes.list(), "MINIPACS")
                if f.kind == "commitment-undelivered"
            }
            # the requester refused it on its own association, and no new one could be opened
            assert set(found) == {
                "1 storage commitment report(s) for 'CT02' could not be delivered",
                f"1 storage commitment report(s) to 'CT02' at 127.0.0.1:{gone} failed",
            }
            new = found[f"1 storage commitment report(s) to 'CT02' at 127.0.0.1:{gone} failed"]
            assert f"transaction {txn}: no association" in new.evidence[0]

    asyncio.run(main())
