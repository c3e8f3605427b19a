"""The last-fragment bit of a dataset sent from a file (net/association.py ``_send_file``).

The next block is read in a worker thread while the current one is framed. When that read finished
before the framing did (a loaded machine), its decrement of the bytes remaining marked the current
block's end as the dataset's last fragment: DCMTK storescp then read the rest of the dataset as the
next command and aborted ("cmdSet->read() Failed"), seen while forwarding a CT study by a routing rule.
Here every read finishes at once (an eager executor), so the old code fails every time.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.core.nodes import Node
from minipacs.core.retrieve import StoredInstance, locate
from minipacs.net.association import AssociationSettings
from minipacs.services.outbound import Outbound, OutboundSettings
from tests.dicomgen import write_ct
from tests.peers import dataset_bytes, dcmtk, free_port, wait_for_port


def test_a_file_of_several_blocks_arrives_whole_when_reads_finish_early(tmp_path: Path) -> None:
    study, series = str(generate_uid()), str(generate_uid())
    files = [
        write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=study, series_uid=series, rows=512, cols=512)
        for n in range(2)
    ]  # 512 KiB of pixels each: three 256 KiB blocks, framed in storescp's 16 KiB PDUs
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "+B", "-aet", "DEST", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()

        def eager(executor: Executor | None, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = loop.create_future()
            future.set_result(call(*args))
            return future

        loop.run_in_executor = eager  # type: ignore[method-assign,assignment]
        instances = []
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            stub = StoredInstance(
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
                path.name,
                FilesystemBlobStore(path.parent),
                -1,
            )
            instances.append(locate(stub))
        outbound = Outbound(OutboundSettings(AssociationSettings(ae_title="MINIPACS"), connect_timeout=10.0))
        result = await outbound.send(Node("DEST", "127.0.0.1", port), instances)
        return [result.sent == 2, not result.failed]

    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        assert asyncio.run(main()) == [True, True]
    finally:
        proc.terminate()
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "cmdSet->read() Failed" not in log, log
    got = sorted(out.iterdir())
    assert len(got) == 2
    assert sorted(dataset_bytes(p) for p in got) == sorted(dataset_bytes(p) for p in files)
